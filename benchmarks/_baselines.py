"""Strong simple baselines shared by the benchmark scripts, and the "unitednet >= best baseline" verdict table.

- classification: logistic regression and k-nearest neighbours on a PCA of the concatenated (standardised)
  modalities;
- cross-modal prediction: ridge and RBF kernel ridge on a truncated SVD of the source (the model family that won the
  NeurIPS 2021 modality-prediction task), and the training mean;
- clustering: Leiden on a kNN graph of the PCA, and on muon's weighted-nearest-neighbour (WNN) graph of several
  modalities, at the resolution whose number of clusters matches a given K (found by bisection, no labels read) and
  at scanpy's default resolution 1.

It also builds the query MuData that UnitedNet's inductive and adapted runs read (:func:`make_query`).

Every transform (scaler, PCA, SVD) is fit on training cells only; hyperparameters of ridge and kernel ridge are
chosen by cross-validation on the training cells. Used by ``bmmc_multiome.py``, ``bmmc_cite.py`` and
``patchseq_cv.py`` (import with ``from _baselines import ...``; this folder is first on ``sys.path``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

N_NEIGHBORS_CLASSIFIER = 15
N_NEIGHBORS_GRAPH = 15
RIDGE_ALPHAS = np.logspace(-2, 5, 15)
KERNEL_RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)
# RBF gamma as multiples of 1 / median squared distance between training cells (the median heuristic)
KERNEL_RIDGE_GAMMA_FACTORS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
KERNEL_RIDGE_CV = 5


# ---------------------------------------------------------------------------------------------------------------------
# representations
# ---------------------------------------------------------------------------------------------------------------------
def concat_pca(
    X: Mapping[str, np.ndarray], train: np.ndarray, n_pcs: int = 50, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """PCA of the concatenated, per-feature standardised modalities; scaler and PCA fit on ``train`` rows.

    Returns the components of every row and a summary (``n_pcs``, ``explained_variance``).
    """
    joint = np.hstack([np.asarray(X[m], dtype=np.float64) for m in X])
    scaler = StandardScaler().fit(joint[train])
    n_pcs = int(min(n_pcs, len(train) - 1, joint.shape[1]))
    pca = PCA(n_components=n_pcs, random_state=seed).fit(scaler.transform(joint[train]))
    pcs = pca.transform(scaler.transform(joint))
    return pcs, {"n_pcs": n_pcs, "explained_variance": float(pca.explained_variance_ratio_.sum())}


def modality_pca(
    X: np.ndarray, train: np.ndarray, n_pcs: int = 50, seed: int = 0, scale: bool = True
) -> tuple[np.ndarray, int]:
    """PCA of one modality (standardised first when ``scale``), fit on ``train`` rows; components of every row."""
    X = np.asarray(X, dtype=np.float64)
    if scale:
        X = StandardScaler().fit(X[train]).transform(X)
    n_pcs = int(min(n_pcs, len(train) - 1, X.shape[1] - 1))
    pca = PCA(n_components=n_pcs, random_state=seed).fit(X[train])
    return pca.transform(X), n_pcs


# ---------------------------------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------------------------------
def classifiers(
    features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, prefix: str = "pca"
) -> dict[str, np.ndarray]:
    """Test-row predictions of logistic regression and kNN fit on the ``train`` rows of ``features``."""
    out = {}
    models = {
        f"logreg_{prefix}": LogisticRegression(max_iter=5000),
        f"knn{N_NEIGHBORS_CLASSIFIER}_{prefix}": KNeighborsClassifier(n_neighbors=N_NEIGHBORS_CLASSIFIER),
    }
    for name, model in models.items():
        model.fit(features[train], labels[train])
        out[name] = np.asarray(model.predict(features[test])).astype(str)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# cross-modal prediction
# ---------------------------------------------------------------------------------------------------------------------
def _svd(source_train: np.ndarray, source_test: np.ndarray, n_svd: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_svd = int(min(n_svd, source_train.shape[1] - 1, source_train.shape[0] - 1))
    svd = TruncatedSVD(n_components=n_svd, random_state=seed).fit(source_train)
    return svd.transform(source_train), svd.transform(source_test)


def ridge_svd(
    source_train: np.ndarray, source_test: np.ndarray, target_train: np.ndarray, n_svd: int = 50, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """``RidgeCV`` (efficient leave-one-out over :data:`RIDGE_ALPHAS`) on a truncated SVD of the source."""
    z_train, z_test = _svd(source_train, source_test, n_svd, seed)
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(z_train, target_train)
    return ridge.predict(z_test), {"alpha": float(ridge.alpha_), "n_svd": z_train.shape[1]}


def kernel_ridge_svd(
    source_train: np.ndarray, source_test: np.ndarray, target_train: np.ndarray, n_svd: int = 50, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """RBF kernel ridge on a truncated SVD of the source; alpha and gamma by 5-fold CV on the training cells.

    The target is centred on its training mean (kernel ridge has no intercept). Gamma is searched as multiples of
    the inverse median squared distance between training cells in SVD space.
    """
    z_train, z_test = _svd(source_train, source_test, n_svd, seed)
    diff = z_train[:, None, :] - z_train[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    median = float(np.median(d2[np.triu_indices_from(d2, k=1)]))
    gammas = [f / max(median, 1e-12) for f in KERNEL_RIDGE_GAMMA_FACTORS]
    mean = target_train.mean(0)
    search = GridSearchCV(
        KernelRidge(kernel="rbf"),
        {"alpha": list(KERNEL_RIDGE_ALPHAS), "gamma": gammas},
        cv=KFold(KERNEL_RIDGE_CV, shuffle=True, random_state=seed),
        scoring="neg_mean_squared_error",
    ).fit(z_train, target_train - mean)
    info = {
        "alpha": float(search.best_params_["alpha"]),
        "gamma_factor": float(search.best_params_["gamma"] * median),
        "cv_mse": float(-search.best_score_),
        "n_svd": z_train.shape[1],
    }
    return search.predict(z_test) + mean, info


def train_mean(target_train: np.ndarray, n_test: int) -> np.ndarray:
    """The training mean of every target feature, for every test cell."""
    return np.broadcast_to(target_train.mean(0), (n_test, target_train.shape[1])).copy()


# ---------------------------------------------------------------------------------------------------------------------
# clustering
# ---------------------------------------------------------------------------------------------------------------------
def knn_graph(rep: np.ndarray, n_neighbors: int = N_NEIGHBORS_GRAPH, seed: int = 0):
    """Scanpy's kNN connectivities (UMAP weights) of the rows of ``rep``; also returns the AnnData holding them."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(np.zeros((rep.shape[0], 1), dtype=np.float32))
    adata.obsm["X_rep"] = np.asarray(rep, dtype=np.float32)
    sc.pp.neighbors(adata, use_rep="X_rep", n_neighbors=n_neighbors, random_state=seed)
    return adata.obsp["connectivities"], adata


def wnn_graph(reps: Mapping[str, np.ndarray], n_neighbors: int = N_NEIGHBORS_GRAPH, seed: int = 0):
    """muon's weighted-nearest-neighbour connectivities from one representation per modality (same cells)."""
    import mudata as md
    import muon as mu

    mods = {m: knn_graph(rep, n_neighbors, seed)[1] for m, rep in reps.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
        mu.pp.neighbors(mdata, key_added="wnn", random_state=seed)
    return mdata.obsp["wnn_connectivities"]


def leiden(adjacency, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters (igraph flavour) of a connectivity graph."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(np.zeros((adjacency.shape[0], 1), dtype=np.float32))
    sc.tl.leiden(adata, adjacency=adjacency, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed)
    return adata.obs["leiden"].astype(str).to_numpy()


def leiden_k(adjacency, k: int, seed: int = 0, lo: float = 0.01, hi: float = 10.0, steps: int = 25):
    """Leiden clusters at the resolution (bisection) whose number of clusters is closest to ``k``.

    Returns the clusters and ``{"resolution", "n_clusters", "target_k"}``. Only the graph is read, no labels.
    """
    best = None
    for _ in range(steps):
        mid = float(np.sqrt(lo * hi))  # bisection on a log scale
        clusters = leiden(adjacency, mid, seed)
        n = len(np.unique(clusters))
        if best is None or abs(n - k) < abs(best[2] - k):
            best = (clusters, mid, n)
        if n == k:
            break
        if n < k:
            lo = mid
        else:
            hi = mid
    clusters, resolution, n = best
    return clusters, {"resolution": resolution, "n_clusters": n, "target_k": k}


def leiden_runs(adjacency, k: int, truth: np.ndarray, seed: int = 0, prefix: str = "leiden") -> dict[str, Any]:
    """ARI / NMI (and Hungarian accuracy) of Leiden at the K-matched resolution and at resolution 1."""
    from unitednet.tl import clustering_metrics

    clusters, info = leiden_k(adjacency, k, seed)
    out = {f"{prefix}_k": {**clustering_metrics(truth, clusters), **info}}
    default = leiden(adjacency, 1.0, seed)
    out[f"{prefix}_res1"] = {
        **clustering_metrics(truth, default),
        "resolution": 1.0,
        "n_clusters": len(np.unique(default)),
    }
    return out


# ---------------------------------------------------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------------------------------------------------
def make_query(mdata, rows: np.ndarray, modalities: Sequence[str]):
    """Cells ``rows`` of ``mdata`` as a new MuData: copies of ``X`` of the given modalities, no obs columns (no labels)."""
    import anndata as ad
    import mudata as md

    mods = {}
    for m in modalities:
        adata = ad.AnnData(mdata.mod[m].X[rows].copy(), var=mdata.mod[m].var[[]].copy())
        adata.obs_names = mdata.obs_names[rows]
        mods[m] = adata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(mods)


# ---------------------------------------------------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------------------------------------------------
def verdict_rows(
    metric: str,
    unitednet: Mapping[str, float],
    baselines: Mapping[str, float],
    *,
    higher_is_better: bool = True,
    main: bool = False,
) -> list[dict[str, Any]]:
    """One row per UnitedNet variant: its value, the best baseline (name, value) and whether UnitedNet >= it.

    "Better or equal" means ``>=`` for metrics where higher is better (accuracy, ARI, Pearson) and ``<=`` for errors
    (RMSE). Each UnitedNet variant is judged on its own: none is chosen on test figures.
    """
    finite = {k: float(v) for k, v in baselines.items() if v is not None and np.isfinite(v)}
    pick = max if higher_is_better else min
    best_name = pick(finite, key=finite.get) if finite else None
    best = finite.get(best_name, float("nan"))
    rows = []
    for name, value in unitednet.items():
        ok = None
        if value is not None and np.isfinite(value) and np.isfinite(best):
            ok = bool(value >= best) if higher_is_better else bool(value <= best)
        rows.append(
            {
                "metric": metric + (" (main)" if main else ""),
                "better": "higher" if higher_is_better else "lower",
                "unitednet": name,
                "value": value,
                "best baseline": best_name or "-",
                "baseline value": best,
                "difference": (value - best) if value is not None else float("nan"),
                "unitednet >= best": ok,
            }
        )
    return rows


VERDICT_COLUMNS: Sequence[str] = (
    "metric",
    "better",
    "unitednet",
    "value",
    "best baseline",
    "baseline value",
    "difference",
    "unitednet >= best",
)
