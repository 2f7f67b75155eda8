"""Perturbation tools: write predicted perturbed profiles and identified perturbations, and score predictions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import anndata as ad
import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse
from scipy.spatial.distance import cdist

from unitednet._constants import PERTURBATION_KEYS

from ._writers import _as_models, _check_ensemble, _mean, _target, _uns

if TYPE_CHECKING:
    from unitednet.model import UnitedNetPerturbationModel


def _check_perturbation_model(model) -> None:
    if not hasattr(model, "predict_perturbation"):
        raise TypeError(
            f"{type(model).__name__} has no perturbation parts; train a unitednet.model.UnitedNetPerturbationModel."
        )


def predict_perturbation(
    model: UnitedNetPerturbationModel | Sequence[UnitedNetPerturbationModel],
    mdata: MuData | None = None,
    *,
    target: str | None = None,
    source: str | None = None,
    modality: str | None = None,
    mode: Literal["neighbours", "calibrated", "shift", "decode"] = "neighbours",
    key_added: str | None = None,
    batch_size: int | None = None,
    copy: bool = False,
) -> MuData | None:
    """Write every cell's predicted profile under perturbation ``target``.

    Each cell is moved from its own perturbation (``mdata.obs[perturbation_key]``) to ``target`` with
    :meth:`~unitednet.model.UnitedNetPerturbationModel.predict_perturbation`; cells already under ``target`` are moved
    by a zero shift (their measured profile with ``mode="neighbours"``, ``"shift"`` or ``"calibrated"``, their reconstruction with
    ``mode="decode"``).

    Parameters
    ----------
    model
        Trained :class:`~unitednet.model.UnitedNetPerturbationModel`, or a sequence of them (an ensemble, e.g.
        trained with different ``scvi.settings.seed``): the profiles are then the mean of the models' predictions.
        The models must share the perturbation column and categories and the features of ``modality``. On Kang
        IFN-beta, five seeds raise the top-100-DEG R² from 0.822 to 0.855 (``benchmarks/README.md``).
    mdata
        MuData to annotate; the registered one by default (for an ensemble, the MuData all its models are
        registered on).
    target
        Perturbation to predict; by default the only non-control category.
    source
        Take every cell to be under this perturbation (for a query without the perturbation column; with the column,
        every cell must be under ``source``); by default each cell's own ``obs[perturbation_key]``.
    modality
        Modality predicted; the first registered modality by default. It must be a modality of ``mdata``.
    mode
        ``"neighbours"``, ``"calibrated"``, ``"shift"`` or ``"decode"``, see :meth:`~unitednet.model.UnitedNetPerturbationModel.predict_perturbation`.
    key_added
        Layer name; default ``f"unitednet_perturbed_{target}"``.
    batch_size
        Minibatch size.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.mod[modality].layers[key_added]``: dense cells x features, predicted profiles under ``target``;
    - ``mdata.uns["unitednet"]["perturbation"][key_added]``: ``{"target", "modality", "mode", "n_models"}``
      (``n_models``: the number of models averaged).
    """
    models = _as_models(model)
    for m in models:
        _check_perturbation_model(m)
    model = models[0]
    modality = model.modalities[0] if modality is None else modality
    _check_ensemble(models, mdata, modality)
    for i, m in enumerate(models[1:], start=1):
        if (m.perturbation_key, list(m.perturbation_categories)) != (
            model.perturbation_key,
            list(model.perturbation_categories),
        ):
            raise ValueError(
                f"Model {i} of the ensemble is registered with other perturbations ({m.perturbation_key!r}: "
                f"{list(m.perturbation_categories)}) than model 0 ({model.perturbation_key!r}: "
                f"{list(model.perturbation_categories)}); an ensemble averages models of the same perturbations."
            )
    out = _target(model, mdata, copy)
    if modality not in out.mod:
        raise KeyError(f"The MuData has no modality {modality!r} to write into; it has {list(out.mod)}.")
    if target is None:
        others = [c for c in model.perturbation_categories if c != model.control_category]
        if len(others) != 1:
            raise ValueError(f"Give the target perturbation: one of {others}.")
        target = others[0]
    if source is not None:
        groups = {str(source): np.arange(out.n_obs)}
    else:
        if model.perturbation_key not in out.obs:
            raise KeyError(
                f"mdata.obs has no {model.perturbation_key!r} column with each cell's perturbation; add it or pass "
                "source=... to take every cell to be under one perturbation."
            )
        column = out.obs[model.perturbation_key].astype(str).to_numpy()
        groups = {c: np.flatnonzero(column == c) for c in pd.unique(column)}
    adata = out.mod[modality]
    names = model.var_names(modality)
    result = np.zeros((out.n_obs, len(names)), dtype=np.float32)
    for category, idx in groups.items():
        preds = [
            m.predict_perturbation(
                None if out is m.adata else out,
                source=category,
                target=target,
                indices=idx,
                modality=modality,
                mode=mode,
                batch_size=batch_size,
            ).X
            for m in models
        ]
        result[idx] = _mean(preds)
    if not adata.var_names.equals(names):
        result = pd.DataFrame(result, columns=names).reindex(columns=adata.var_names).to_numpy()
    key_added = key_added or f"{PERTURBATION_KEYS.PREDICTED_PREFIX}{target}"
    adata.layers[key_added] = result
    record = _uns(out).setdefault(PERTURBATION_KEYS.UNS, {})
    record[key_added] = {"target": str(target), "modality": modality, "mode": mode, "n_models": len(models)}
    return out if copy else None


def identify_perturbation(
    model: UnitedNetPerturbationModel,
    mdata: MuData | None = None,
    *,
    key_added: str = PERTURBATION_KEYS.IDENTIFIED,
    batch_size: int | None = None,
    copy: bool = False,
) -> MuData | None:
    """Write each cell's perturbation as identified by the model, and the probabilities.

    Parameters
    ----------
    model
        Trained :class:`~unitednet.model.UnitedNetPerturbationModel`.
    mdata
        MuData to annotate; the registered one by default. May hold a subset of the modalities.
    key_added
        obs key of the identified perturbation; the probabilities go to ``obsm[f"{key_added}_proba"]``.
    batch_size
        Minibatch size.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.obs[key_added]``: categorical, perturbation categories;
    - ``mdata.obsm[f"{key_added}_proba"]``: DataFrame cells x perturbations of probabilities.
    """
    _check_perturbation_model(model)
    if key_added in model.modalities or f"{key_added}_proba" in model.modalities:
        raise ValueError(f"key_added={key_added!r} clashes with a modality name; mudata reserves those obsm keys.")
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    proba = model.identify_perturbation(query, return_proba=True, batch_size=batch_size)
    labels = np.asarray(proba.columns)[proba.to_numpy().argmax(1)]
    out.obs[key_added] = pd.Categorical(labels, categories=list(proba.columns))
    out.obsm[f"{key_added}_proba"] = proba.set_axis(out.obs_names, axis=0)
    return out if copy else None


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------
def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float64)


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination of ``predicted`` for ``observed`` (1 - SS_res / SS_tot over the entries)."""
    ss_tot = float(((observed - observed.mean()) ** 2).sum())
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(((observed - predicted) ** 2).sum()) / ss_tot


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a**2).sum() * (b**2).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance ``2 E|A - B| - E|A - A'| - E|B - B'|`` between two samples of points (Euclidean)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def rank_degs(
    control: np.ndarray, perturbed: np.ndarray, var_names: Sequence[str], method: str = "wilcoxon"
) -> pd.DataFrame:
    """Genes ranked by a two-sided test between perturbed and control cells (scanpy ``rank_genes_groups``).

    Returns a DataFrame indexed by gene, in rank order (largest absolute score first), with ``score``,
    ``logfoldchange`` and ``pval_adj``.
    """
    import scanpy as sc

    X = np.vstack([control, perturbed]).astype(np.float32)
    groups = np.repeat(["control", "perturbed"], [len(control), len(perturbed)])
    obs = pd.DataFrame({"group": pd.Categorical(groups)}, index=[f"c{i}" for i in range(len(groups))])
    tmp = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[str(g) for g in var_names]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            tmp, "group", groups=["perturbed"], reference="control", method=method, rankby_abs=True, n_genes=X.shape[1]
        )
    res = tmp.uns["rank_genes_groups"]
    return pd.DataFrame(
        {
            "score": np.asarray(res["scores"]["perturbed"], dtype=float),
            "logfoldchange": np.asarray(res["logfoldchanges"]["perturbed"], dtype=float),
            "pval_adj": np.asarray(res["pvals_adj"]["perturbed"], dtype=float),
        },
        index=pd.Index(np.asarray(res["names"]["perturbed"]).astype(str), name="gene"),
    )


def perturbation_metrics(
    observed: ad.AnnData | MuData,
    predicted: ad.AnnData | np.ndarray,
    *,
    perturbation_key: str,
    control: str,
    perturbed: str,
    modality: str | None = None,
    layer: str | None = None,
    n_degs: Sequence[int] = (20, 100),
    degs: Sequence[str] | None = None,
    n_comps: int | None = 50,
    seed: int = 0,
) -> dict:
    """Score predicted perturbed profiles against the observed perturbed cells of one cell population.

    R² is the coefficient of determination ``1 - SS_res / SS_tot`` of the observed mean expression of the perturbed
    cells (one value per gene) by the mean of the predicted cells, over all genes and over the top differentially
    expressed genes (DEGs). ``r2_squared_pearson_*`` gives the squared Pearson correlation of the same means, the
    convention of scGen. DEGs are ranked by a two-sided Wilcoxon test between the observed perturbed and control
    cells (largest absolute score first).

    Parameters
    ----------
    observed
        Observed control and perturbed cells of one population (e.g. one cell type), in the units the prediction is
        in (e.g. log1p-normalised expression). AnnData, or MuData with ``modality``.
    predicted
        Predicted perturbed profiles (AnnData from
        :meth:`~unitednet.model.UnitedNetPerturbationModel.predict_perturbation`, matched to ``observed`` by var
        names, or an array with ``observed``'s features as columns).
    perturbation_key
        Column of ``observed.obs`` (of ``mdata.obs`` for a MuData) with each cell's perturbation.
    control, perturbed
        The control and perturbed categories.
    modality
        Modality of a MuData ``observed``.
    layer
        Layer of ``observed`` to read (``.X`` by default; also read from an AnnData ``predicted``).
    n_degs
        Numbers of top DEGs to score.
    degs
        Use this gene ranking instead of computing one.
    n_comps
        Principal components (fitted on the observed cells) in which the energy distance is computed; ``None``: in
        the gene space.
    seed
        Seed of the randomised PCA solver.

    Returns
    -------
    Dict with ``n_control``, ``n_perturbed``, ``n_predicted``, ``n_genes``; ``r2_all`` and ``r2_top{k}``;
    ``r2_squared_pearson_all`` and ``r2_squared_pearson_top{k}``; ``pearson_delta_all`` and ``pearson_delta_top{k}``
    (Pearson correlation of the predicted and observed mean changes from the control mean); ``r2_control_all`` and
    ``r2_control_top{k}`` (R² of the control means, i.e. of predicting no change); ``energy_distance`` (predicted
    vs observed perturbed cells) and ``energy_distance_control`` (observed control vs perturbed, for scale);
    ``degs`` (the top ``max(n_degs)`` genes in rank order) and ``means`` (DataFrame genes x ``control``,
    ``observed``, ``predicted``, ``deg_rank``; rank 0 is the top DEG).
    """
    if isinstance(observed, MuData):
        if modality is None or modality not in observed.mod:
            raise KeyError(f"Give modality=... naming one of the MuData's modalities {list(observed.mod)}.")
        obs = observed.obs
        observed = observed.mod[modality]
    elif isinstance(observed, ad.AnnData):
        obs = observed.obs
    else:
        raise TypeError(f"observed must be an AnnData or a MuData, got {type(observed).__name__}.")
    if perturbation_key not in obs:
        raise KeyError(f"perturbation_key={perturbation_key!r} is not a column of the observed cells' obs.")
    if layer is not None and layer not in observed.layers:
        raise KeyError(f"The observed data have no layer {layer!r}; available: {list(observed.layers)}.")
    X = _dense(observed.X if layer is None else observed.layers[layer])
    genes = observed.var_names
    column = obs[perturbation_key].astype(str).to_numpy()
    ctrl, pert = X[column == str(control)], X[column == str(perturbed)]
    for name, part in (("control", ctrl), ("perturbed", pert)):
        if len(part) < 2:
            raise ValueError(
                f"Only {len(part)} observed {name} cells ({perturbation_key} == "
                f"{control if name == 'control' else perturbed!r}); at least 2 are needed."
            )
    if isinstance(predicted, ad.AnnData):
        missing = genes.difference(predicted.var_names)
        if len(missing):
            raise ValueError(f"The prediction lacks {len(missing)} observed genes, e.g. {list(missing[:5])}.")
        P = predicted.X if layer is None or layer not in predicted.layers else predicted.layers[layer]
        P = _dense(P)[:, predicted.var_names.get_indexer(genes)]
    else:
        P = _dense(predicted)
        if P.ndim != 2 or P.shape[1] != len(genes):
            raise ValueError(f"predicted must be cells x {len(genes)} genes, got shape {P.shape}.")
    if len(P) < 1:
        raise ValueError("predicted holds no cells.")
    if degs is None:
        ranking = list(rank_degs(ctrl, pert, genes).index)
    else:
        ranking = [str(g) for g in degs]
        unknown = sorted(set(ranking) - set(genes))
        if unknown:
            raise KeyError(f"degs names genes that are not observed, e.g. {unknown[:5]}.")
    order = genes.get_indexer(ranking)
    mean_ctrl, mean_obs, mean_pred = ctrl.mean(0), pert.mean(0), P.mean(0)
    result: dict = {
        "n_control": len(ctrl),
        "n_perturbed": len(pert),
        "n_predicted": len(P),
        "n_genes": len(genes),
    }
    subsets = {"all": np.arange(len(genes))}
    for k in n_degs:
        subsets[f"top{int(k)}"] = order[: int(k)]
    for name, idx in subsets.items():
        result[f"r2_{name}"] = _r2(mean_obs[idx], mean_pred[idx])
        result[f"r2_squared_pearson_{name}"] = _pearson(mean_obs[idx], mean_pred[idx]) ** 2
        result[f"pearson_delta_{name}"] = _pearson(mean_obs[idx] - mean_ctrl[idx], mean_pred[idx] - mean_ctrl[idx])
        result[f"r2_control_{name}"] = _r2(mean_obs[idx], mean_ctrl[idx])
    reference = np.vstack([ctrl, pert])
    if n_comps is not None:
        from sklearn.decomposition import PCA

        k = int(min(n_comps, reference.shape[0] - 1, reference.shape[1]))
        pca = PCA(n_components=k, random_state=seed).fit(reference)
        ctrl_p, pert_p, pred_p = pca.transform(ctrl), pca.transform(pert), pca.transform(P)
    else:
        ctrl_p, pert_p, pred_p = ctrl, pert, P
    result["energy_distance"] = energy_distance(pred_p, pert_p)
    result["energy_distance_control"] = energy_distance(ctrl_p, pert_p)
    result["degs"] = ranking[: max([int(k) for k in n_degs], default=0)]
    rank = np.full(len(genes), -1)
    rank[order] = np.arange(len(order))
    result["means"] = pd.DataFrame(
        {"control": mean_ctrl, "observed": mean_obs, "predicted": mean_pred, "deg_rank": rank},
        index=pd.Index(genes.copy(), name="gene"),
    )
    return result
