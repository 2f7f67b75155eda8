"""BMMC 10x Multiome starter (OpenProblems): cell-type transfer and RNA <-> ATAC prediction across batches.

Protocol:

- Data: ``unitednet.datasets.bmmc_multiome()``: 500 cells, ``rna`` 600 genes (``X``: normalised, log) and ``atac``
  600 peaks (``X``: binary); labels ``cell_type`` (21 types); ``obs["split"]`` is ``"train"`` for batch s1d1 (221
  cells) and ``"test"`` for batch s1d2 (279 cells). Test cells are only predicted: nothing is fit, scaled or selected
  on them. Some cell types occur only in s1d2: no method can predict them, so accuracy is also reported on the test
  cells whose label occurs in training ("seen").
- UnitedNet (``scvi.settings.seed = 0``, registered with ``likelihoods={"rna": "gaussian", "atac": "bernoulli"}``,
  ``labels_key="cell_type"`` (supervised), ``batch_key="batch"``, default architecture; the model standardises ``rna`` with the
  training cells' statistics itself): ``model.train(task, split_key="split", validation_size=0.1)``, i.e. 10 % of the
  s1d1 cells, stratified by cell type, are drawn for validation (best-weights selection; a cell type with a single
  s1d1 cell stays in training). Tasks: ``supervised`` (test accuracy, balanced accuracy, macro F1, and RNA <-> ATAC
  prediction) and ``translation`` (prediction only; registered without labels, so the model has no group heads).
  Per validation term the JSON keeps its value at the restored epoch, its minimum and that epoch.
- Baselines on the same split: per-feature ``StandardScaler`` on the concatenated modalities and ``PCA(50)``, both
  fit on the training cells, then ``LogisticRegression`` and 15-nearest-neighbour classifiers; for prediction,
  ``RidgeCV`` on a 50-component ``TruncatedSVD`` of the source (fit on the training cells) and the training mean.
- Prediction metrics on the test cells, in the units of ``X``. ATAC (the model outputs probabilities; the baselines
  continuous scores): AUROC of the flattened binary matrix (``roc_auc_score(y.ravel(), p.ravel())``), mean
  per-feature AUROC over peaks with both classes among the test cells, mean per-cell AUROC, average precision of the
  flattened matrix, mean per-feature and per-cell Pearson, RMSE. RNA: variance-weighted R², mean per-feature Pearson
  (features with variance), mean per-cell Pearson, RMSE (:func:`unitednet.tl.regression_metrics`).

Run from the repository root: ``python benchmarks/bmmc_multiome.py`` (about 1-2 minutes on one thread).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    default_json_path,
    dense,
    machine_info,
    package_versions,
    peak_rss_mb,
    print_table,
    quiet,
    set_threads,
    timer,
    traced_peak,
    use_local_data,
    write_json,
)
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

NAME = "bmmc_multiome"
MODALITIES = ("rna", "atac")
LIKELIHOODS = {"rna": "gaussian", "atac": "bernoulli"}
LABELS_KEY = "cell_type"
BATCH_KEY = "batch"
SPLIT_KEY = "split"
PAIRS = (("rna", "atac"), ("atac", "rna"))
TASKS = ("supervised", "translation")
SEED = 0
VALIDATION_SIZE = 0.1
DEFAULT_MAX_EPOCHS = 200
N_PCS = 50
N_SVD = 50
N_NEIGHBORS = 15
RIDGE_ALPHAS = np.logspace(-2, 5, 15)

REFERENCE = {
    "source": "shared/data/README.md, 'Published reference figures on these exact files'",
    "multiome_joint_embedding_baseline_nmi": 0.560,
    "note": "The only published figure on this subset is a joint-embedding NMI; none for label transfer or prediction.",
}


# ---------------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-epochs", type=int, default=DEFAULT_MAX_EPOCHS, help="UnitedNet epochs (model default)")
    parser.add_argument("--batch-size", type=int, default=128, help="UnitedNet minibatch size (model default)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="UnitedNet tasks to run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace the peak of Python-tracked allocations per training"
    )
    args = parser.parse_args(argv)
    if args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------
def binary_metrics(y_true: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """AUROC (flattened, per feature, per cell) and average precision of scores for a binary matrix."""
    y = y_true.astype(bool)
    out: dict[str, Any] = {
        "auroc_flat": float(roc_auc_score(y.ravel(), score.ravel())),
        "average_precision_flat": float(average_precision_score(y.ravel(), score.ravel())),
        "positive_rate": float(y.mean()),
    }
    for axis, name in ((0, "feature"), (1, "cell")):
        positives = y.sum(axis=axis)
        usable = np.flatnonzero((positives > 0) & (positives < y.shape[axis]))
        take = (lambda i: (y[:, i], score[:, i])) if axis == 0 else (lambda i: (y[i], score[i]))
        values = [roc_auc_score(*take(i)) for i in usable]
        out[f"auroc_{name}_mean"] = float(np.mean(values)) if values else float("nan")
        out[f"n_{name}s_auroc"] = len(values)
    return out


def prediction_metrics(target: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Regression metrics (all targets) plus AUROC / average precision for the binary ATAC target."""
    from unitednet.tl import regression_metrics

    out = dict(regression_metrics(y_true, y_pred))
    if LIKELIHOODS[target] == "bernoulli":
        out.update(binary_metrics(y_true, y_pred))
    return out


def label_metrics(truth: np.ndarray, pred: np.ndarray, seen: set[str]) -> dict[str, Any]:
    """Classification metrics on all test cells and on those whose label occurs in training."""
    from unitednet.tl import classification_metrics

    out = dict(classification_metrics(truth, pred))
    mask = np.isin(truth, sorted(seen))
    seen_metrics = classification_metrics(truth[mask], pred[mask])
    out.update({f"{k}_seen": v for k, v in seen_metrics.items()})
    out["n_test_cells"] = len(truth)
    out["n_test_cells_seen_label"] = int(mask.sum())
    out["n_predicted_unseen_label"] = int((~np.isin(pred, sorted(seen))).sum())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# UnitedNet
# ---------------------------------------------------------------------------------------------------------------------
def validation_summary(history) -> dict[str, dict[str, float]]:
    """Per validation term: value at the restored (lowest ``validation_loss``) epoch, its minimum and that epoch."""
    best = int(np.argmin(history["validation_loss"].to_numpy().ravel()))
    out = {}
    for key, frame in history.items():
        if key.endswith("_validation") or key == "validation_loss":
            values = frame.to_numpy().ravel().astype(float)
            out[key] = {
                "at_restored_epoch": float(values[best]),
                "min": float(values.min()),
                "epoch_of_min": int(values.argmin()),
                "last": float(values[-1]),
            }
    return out


def run_unitednet(task: str, mdata, test: np.ndarray, truth: dict[str, np.ndarray], seen, args) -> dict[str, Any]:
    """Set up, train and evaluate one UnitedNet model; ``mdata`` is a private copy (set-up writes to it)."""
    import scvi

    import unitednet as un

    un.UnitedNetModel.setup_mudata(
        mdata,
        modalities=list(MODALITIES),
        likelihoods=LIKELIHOODS,
        # translation models are registered without labels: with labels the model would get group heads that this
        # task never trains, and their (random) predictions would choose the contrastive loss's negatives
        labels_key=LABELS_KEY if task == "supervised" else None,
        batch_key=BATCH_KEY,
    )
    train_kwargs = {"max_epochs": args.max_epochs, "batch_size": args.batch_size, "enable_progress_bar": False}
    result: dict[str, Any] = {"task": task, "split_key": SPLIT_KEY, "validation_size": VALIDATION_SIZE}
    scvi.settings.seed = SEED
    model = un.UnitedNetModel(mdata)
    with traced_peak(args.tracemalloc) as traced, timer() as t_train:
        model.train(task, split_key=SPLIT_KEY, validation_size=VALIDATION_SIZE, **train_kwargs)
    result["train_s"] = t_train.seconds
    result["traced_peak_mb"] = traced.mb
    result["peak_rss_mb_after_train"] = peak_rss_mb()
    split = np.asarray(model.split_)
    result.update(
        n_train_cells=int((split == "train").sum()),
        n_validation_cells=int((split == "validation").sum()),
        n_test_cells=int((split == "test").sum()),
        test_cells_match=bool(np.array_equal(np.flatnonzero(split == "test"), test)),
        best_epoch=None if model.best_epoch_ is None else int(model.best_epoch_),
        epochs_run=len(model.history["validation_loss"]),
        best_validation_loss=float(model.history["validation_loss"].to_numpy().min()),
        validation_terms=validation_summary(model.history),
    )
    with timer() as t_pred:
        if task == "supervised":
            pred = model.predict_labels()[test]
            result["classification"] = label_metrics(truth[LABELS_KEY], pred, seen)
        result["prediction"] = {
            f"{s}->{t}": prediction_metrics(t, truth[t], model.predict_modality(source=s, target=t)[test])
            for s, t in PAIRS
        }
    result["predict_s"] = t_pred.seconds
    # the package's own evaluation of the same test cells, as a cross-check of the figures above
    evaluation = un.tl.evaluate(model, split="test")
    result["tl_evaluate"] = {
        "groups": evaluation.get("groups"),
        "cross_modal": {
            k: v for k, v in evaluation.get("cross_modal", {}).items() if k in {f"{s}->{t}" for s, t in PAIRS}
        },
    }
    return result


# ---------------------------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------------------------
def run_baselines(X: dict[str, np.ndarray], labels: np.ndarray, train: np.ndarray, test: np.ndarray, seen) -> dict:
    """PCA + logistic regression / kNN classifiers; truncated-SVD ridge and training-mean predictors."""
    out: dict[str, Any] = {"classification": {}, "prediction": {}, "timing_s": {}}
    with timer() as t_pca:
        joint = np.hstack([X[m] for m in MODALITIES])
        scaler = StandardScaler().fit(joint[train])
        pca = PCA(n_components=N_PCS, random_state=SEED).fit(scaler.transform(joint[train]))
        pcs_train = pca.transform(scaler.transform(joint[train]))
        pcs_test = pca.transform(scaler.transform(joint[test]))
    out["pca_explained_variance"] = float(pca.explained_variance_ratio_.sum())
    classifiers = {
        "logreg_pca": LogisticRegression(max_iter=5000),
        f"knn{N_NEIGHBORS}_pca": KNeighborsClassifier(n_neighbors=N_NEIGHBORS),
    }
    for name, clf in classifiers.items():
        with timer() as t:
            clf.fit(pcs_train, labels[train])
            pred = clf.predict(pcs_test)
        out["classification"][name] = label_metrics(labels[test], np.asarray(pred).astype(str), seen)
        out["timing_s"][name] = t.seconds + t_pca.seconds

    for source, target in PAIRS:
        key = f"{source}->{target}"
        with timer() as t:
            svd = TruncatedSVD(n_components=N_SVD, random_state=SEED).fit(X[source][train])
            ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(svd.transform(X[source][train]), X[target][train])
            pred = ridge.predict(svd.transform(X[source][test]))
        out["prediction"].setdefault("ridge_svd", {})[key] = prediction_metrics(target, X[target][test], pred)
        out["prediction"]["ridge_svd"][key]["alpha"] = float(ridge.alpha_)
        out["timing_s"][f"ridge_svd {key}"] = t.seconds
        mean = np.broadcast_to(X[target][train].mean(0), X[target][test].shape)
        out["prediction"].setdefault("train_mean", {})[key] = prediction_metrics(target, X[target][test], mean)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------------
def classification_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per classifier."""
    rows = []
    methods = {}
    if "unitednet_supervised" in results:
        methods["unitednet supervised"] = (
            results["unitednet_supervised"]["classification"],
            results["unitednet_supervised"]["train_s"],
        )
    for name, metrics in results["baselines"]["classification"].items():
        methods[name] = (metrics, results["baselines"]["timing_s"][name])
    for name, (m, seconds) in methods.items():
        rows.append(
            {
                "method": name,
                "accuracy": m["accuracy"],
                "balanced_acc": m["balanced_accuracy"],
                "macro_f1": m["macro_f1"],
                "acc_seen": m["accuracy_seen"],
                "bal_acc_seen": m["balanced_accuracy_seen"],
                "pred_unseen": m["n_predicted_unseen_label"],
                "fit_s": seconds,
            }
        )
    return rows


def prediction_rows(results: dict[str, Any], key: str, columns: dict[str, str]) -> list[dict[str, Any]]:
    """One row per predictor for the pair ``key``; ``columns`` maps table headers to metric names."""
    methods = {}
    for task in TASKS:
        if f"unitednet_{task}" in results:
            methods[f"unitednet {task}"] = results[f"unitednet_{task}"]["prediction"][key]
    for name, pairs in results["baselines"]["prediction"].items():
        methods[name] = pairs[key]
    return [{"method": name, **{h: m[c] for h, c in columns.items()}} for name, m in methods.items()]


ATAC_COLUMNS = {
    "auroc_flat": "auroc_flat",
    "auroc_feature": "auroc_feature_mean",
    "auroc_cell": "auroc_cell_mean",
    "ap_flat": "average_precision_flat",
    "pearson_feature": "pearson_mean",
    "pearson_cell": "pearson_cell_mean",
    "rmse": "rmse",
}
RNA_COLUMNS = {
    "r2_vw": "r2_variance_weighted",
    "pearson_feature": "pearson_mean",
    "pearson_cell": "pearson_cell_mean",
    "rmse": "rmse",
}


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run UnitedNet and the baselines, print the tables and write the JSON."""
    args = parse_args(argv)
    data_dir = use_local_data()
    n_threads = set_threads(args.threads)
    import unitednet as un

    quiet()
    with timer() as t_total:
        mdata = un.datasets.bmmc_multiome()
        split = mdata.obs[SPLIT_KEY].astype(str).to_numpy()
        train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        labels = mdata.obs[LABELS_KEY].astype(str).to_numpy()
        seen = set(labels[train])
        X = {m: dense(mdata.mod[m].X) for m in MODALITIES}
        truth = {m: X[m][test] for m in MODALITIES} | {LABELS_KEY: labels[test]}
        unseen_types = sorted(set(labels[test]) - seen)
        counts = {c: int(n) for c, n in zip(*np.unique(labels[train], return_counts=True), strict=True)}
        data = {
            "n_cells": int(mdata.n_obs),
            "n_features": {m: int(mdata.mod[m].n_vars) for m in MODALITIES},
            "n_train": len(train),
            "n_test": len(test),
            "batches": {
                s: sorted(set(mdata.obs[BATCH_KEY].astype(str).to_numpy()[idx]))
                for s, idx in (("train", train), ("test", test))
            },
            "n_cell_types": int(len(set(labels))),
            "n_cell_types_train": len(seen),
            "cell_types_only_in_test": unseen_types,
            "n_test_cells_unseen_label": int((~np.isin(labels[test], sorted(seen))).sum()),
            "single_cell_types_in_train": sorted(c for c, n in counts.items() if n == 1),
            "atac_positive_rate_test": float(X["atac"][test].mean()),
        }
        print(
            f"BMMC multiome: {data['n_train']} train (s1d1) / {data['n_test']} test (s1d2) cells; "
            f"{data['n_test_cells_unseen_label']} test cells have a cell type absent from training "
            f"({', '.join(unseen_types)})",
            flush=True,
        )

        results: dict[str, Any] = {}
        for task in args.tasks:
            print(f"-- unitednet {task}, max_epochs={args.max_epochs}", flush=True)
            results[f"unitednet_{task}"] = run_unitednet(task, mdata.copy(), test, truth, seen, args)
            r = results[f"unitednet_{task}"]
            print(
                f"   trained in {r['train_s']:.1f} s, best epoch {r['best_epoch']}, "
                f"{r['n_validation_cells']} validation cells (split_key {r['split_key']!r})",
                flush=True,
            )
        print("-- baselines", flush=True)
        results["baselines"] = run_baselines(X, labels, train, test, seen)

    if "unitednet_supervised" in results:
        print_table("Cell-type transfer s1d1 -> s1d2 (test cells)", classification_rows(results))
    print_table("RNA -> ATAC on test cells (ATAC X, binary)", prediction_rows(results, "rna->atac", ATAC_COLUMNS))
    print_table("ATAC -> RNA on test cells (RNA X, normalised log)", prediction_rows(results, "atac->rna", RNA_COLUMNS))
    peak = peak_rss_mb()
    print(f"\ntotal {t_total.seconds:.1f} s, peak RSS {peak:.0f} MB, torch threads {n_threads}")

    out = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {
            "max_epochs": args.max_epochs,
            "batch_size": args.batch_size,
            "threads": n_threads,
            "seed": SEED,
            "validation_size": VALIDATION_SIZE,
            "n_pcs": N_PCS,
            "n_svd": N_SVD,
            "n_neighbors": N_NEIGHBORS,
            "ridge_alphas": RIDGE_ALPHAS,
            "data_dir": data_dir,
        },
        "data": data,
        "results": results,
        "reference": REFERENCE,
        "total_s": t_total.seconds,
        "peak_rss_mb": peak,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch", "scikit-learn", "mudata"]),
    }
    path = write_json(out, args.out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
