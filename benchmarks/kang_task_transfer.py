"""Task transfer on Kang IFN-beta: switch each auxiliary task of the perturbation model off in turn, and vary loss weights.

Protocol:

- Data and folds as in ``kang_perturbation.py`` (log1p-normalised counts, 2,000 highly variable genes of the training
  cells): for each held-out cell type in ``FOLDS`` (fixed before any run), its stimulated cells are held out and
  predicted from its control cells. Of the remaining cells, 20 % (stratified by cell type and condition, seed 0)
  form a test set for the other tasks (``split_key``); 10 % of the rest validate (best weights).
- Tasks and their metrics:
  ``perturbation`` R² (coefficient of determination of per-gene means) on the top-100 DEGs of the held-out type
  (``mode="neighbours"``, the default; ``perturbation_calibrated``: the same with ``mode="calibrated"``, which decodes
  the latent direction); ``identification`` accuracy of the identified condition on all observed cells of the
  held-out type; ``cell_type`` accuracy of the predicted cell type on the test cells; ``reconstruction``
  variance-weighted R² of the reconstructed expression of the test cells.
- Configurations (``CONFIGS``): ``full`` (supervised task, default weights); one auxiliary task off at a time:
  ``no_classification`` (translation task: the cell-type head is not trained), ``no_identification``
  (``perturbation_identification`` weight 0), ``no_alignment`` (``perturbation_alignment`` 0), ``no_adversarial``
  (``generator`` and ``discriminator`` 0); a loss-weight sweep (alignment 0.3 / 3, identification 3,
  classification 3); and one addition (``counterfactual_identification``: the identification head also trained on
  control cells moved along the direction). Kang has one modality, so translation and contrastive terms are zero in every configuration.
- Transfer: for each task, the metric of a configuration minus that of ``full`` (mean over folds and ``--seeds``). A task losing when an
  auxiliary task is switched off is positive transfer from that task; gaining is negative transfer.

Run from the repository root: ``python benchmarks/kang_task_transfer.py`` (one model per fold and configuration, about a
minute of CPU each; ``--jobs N`` trains N at a time, ``--folds`` / ``--configs`` / ``--max-epochs`` shorten it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    default_json_path,
    machine_info,
    package_versions,
    print_table,
    quiet,
    set_threads,
    timer,
    use_local_data,
    write_json,
)
from kang_perturbation import (
    CELL_TYPE,
    CONDITION,
    CONTROL,
    SEED,
    SETTING,
    fold_data,
    held_out_mask,
    identification,
    load_kang,
    score,
    unitednet_predict,
)

NAME = "kang_task_transfer"
FOLDS = ("CD14 Mono", "B")
TEST_SIZE = 0.2
TASKS = ("perturbation", "perturbation_calibrated", "identification", "cell_type", "reconstruction")

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_classification": {"task": "translation"},
    "no_identification": {"loss_weights": {"perturbation_identification": 0.0}},
    "no_alignment": {"loss_weights": {"perturbation_alignment": 0.0}},
    "no_adversarial": {"loss_weights": {"generator": 0.0, "discriminator": 0.0}},
    "alignment_x0.3": {"loss_weights": {"perturbation_alignment": 0.3}},
    "alignment_x3": {"loss_weights": {"perturbation_alignment": 3.0}},
    "identification_x3": {"loss_weights": {"perturbation_identification": 3.0}},
    "classification_x3": {"loss_weights": {"classification": 3.0}},
    "counterfactual_identification": {"model": {"counterfactual_identification": True}},
}


def split_column(obs: pd.DataFrame, held: np.ndarray, seed: int = SEED) -> np.ndarray:
    """``"train"`` / ``"test"`` per cell: 20 % of the non-held-out cells per cell type and condition are test."""
    rng = np.random.default_rng(seed)
    split = np.full(len(obs), "train", dtype=object)
    strata = (obs[CELL_TYPE].astype(str) + "|" + obs[CONDITION].astype(str)).to_numpy()
    for stratum in np.unique(strata[~held]):
        cells = rng.permutation(np.flatnonzero((strata == stratum) & ~held))
        split[cells[: int(round(TEST_SIZE * len(cells)))]] = "test"
    split[held] = "test"  # never trained on; held out explicitly as well
    return split.astype(str)


def run_config(
    mdata, held: np.ndarray, cell_type: str, config: dict[str, Any], epochs: int, seed: int = SEED
) -> dict[str, float]:
    import scvi

    import unitednet
    from unitednet.model import UnitedNetPerturbationModel

    scvi.settings.seed = seed
    data = mdata.copy()
    data.obs["split"] = split_column(data.obs, held, seed)
    UnitedNetPerturbationModel.setup_mudata(
        data, perturbation_key=CONDITION, control_category=CONTROL, labels_key=CELL_TYPE
    )
    model = UnitedNetPerturbationModel(
        data, loss_weights=config.get("loss_weights"), **{**SETTING["model"], **config.get("model", {})}
    )
    model.train(
        config.get("task", "supervised"),
        held_out=held,
        split_key="split",
        validation_size=0.1,
        max_epochs=epochs,
        batch_size=128,
        enable_progress_bar=False,
    )
    out = {
        "perturbation": score(data, cell_type, unitednet_predict(model, data, cell_type, "neighbours"))["r2_top100"],
        "perturbation_calibrated": score(data, cell_type, unitednet_predict(model, data, cell_type, "calibrated"))[
            "r2_top100"
        ],
        "identification": identification(model, data, cell_type)["accuracy"],
    }
    test = (data.obs["split"] == "test").to_numpy() & ~held
    if model.task_ == "supervised":
        truth = data.obs[CELL_TYPE].astype(str).to_numpy()[test]
        out["cell_type"] = float((model.predict_labels()[test] == truth).mean())
    else:
        out["cell_type"] = float("nan")
    x = np.asarray(data.mod["rna"].X)[test]
    recon = model.predict_modality(source="rna", target="rna")[test]
    out["reconstruction"] = unitednet.tl.regression_metrics(x, recon)["r2_variance_weighted"]
    return out


def _run(full, cell_type: str, name: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    held = held_out_mask(full, cell_type)
    with timer() as t:
        metrics = run_config(fold_data(full, held), held, cell_type, CONFIGS[name], args.max_epochs, seed)
    return metrics, t.seconds


def _worker(job: tuple[str, str, int, argparse.Namespace]) -> tuple[dict[str, float], float]:
    cell_type, name, seed, args = job
    import unitednet  # noqa: F401  (sets scvi's logger level, silenced next)

    use_local_data()
    set_threads(args.threads, verbose=False)
    quiet()
    return _run(load_kang(), cell_type, name, seed, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", nargs="*", default=list(FOLDS), help="held-out cell types")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="configurations")
    parser.add_argument("--seeds", nargs="*", type=int, default=[SEED], help="seeds (split and training)")
    parser.add_argument("--max-epochs", type=int, default=SETTING["train"]["max_epochs"], help="epochs per model")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    data_dir = use_local_data()
    import unitednet  # noqa: F401  (sets scvi's logger level, silenced next)

    quiet()
    set_threads(args.threads)
    jobs = [(cell_type, name, seed) for seed in args.seeds for cell_type in args.folds for name in args.configs]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: forking a process that already runs OpenMP (torch) aborts the children
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outputs = list(pool.map(_worker, [(*job, args) for job in jobs]))
    else:
        full = load_kang()
        outputs = [_run(full, *job, args) for job in jobs]
    # one entry per fold and seed ("<cell type>|seed<k>")
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in args.configs}
    seconds: dict[str, float] = {}
    for (cell_type, name, seed), (metrics, elapsed) in zip(jobs, outputs, strict=True):
        results[name][f"{cell_type}|seed{seed}"] = metrics
        seconds[f"{name}|{cell_type}|seed{seed}"] = elapsed
        print(f"{cell_type:>12} seed {seed} {name:<30} {metrics}  ({elapsed:.0f} s)", flush=True)
    means = {
        name: {task: float(np.nanmean([v[task] for v in results[name].values()])) for task in TASKS}
        for name in args.configs
    }
    rows = [{"config": name, **means[name]} for name in args.configs]
    print_table(f"Task metrics, mean over held-out types {args.folds} and seeds {args.seeds}", rows)
    if "full" in means:
        delta_rows = [
            {"config": name, **{task: means[name][task] - means["full"][task] for task in TASKS}}
            for name in args.configs
            if name != "full"
        ]
        print_table("Change from 'full' (negative: the task lost, i.e. the switched-off part helped it)", delta_rows)
    else:
        delta_rows = []
    result = {
        "protocol": __doc__,
        "data_dir": data_dir,
        "folds": args.folds,
        "seeds": args.seeds,
        "configs": {name: CONFIGS[name] for name in args.configs},
        "max_epochs": args.max_epochs,
        "per_fold": results,
        "means": means,
        "change_from_full": delta_rows,
        "seconds": seconds,
        "threads": args.threads,
        "versions": package_versions(["unitednet", "torch", "scvi-tools", "scanpy", "mudata"]),
        "machine": machine_info(),
    }
    path = write_json(result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
