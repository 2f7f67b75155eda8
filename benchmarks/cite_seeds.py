"""BMMC CITE starter, supervised UnitedNet over several seeds: test accuracy, RNA -> ADT RMSE, validation loss.

A quick check that a change to training leaves the model's quality where it was: run it on the commit before and
after the change (e.g. ``git worktree add /tmp/before <commit>`` and ``PYTHONPATH=/tmp/before/src python
benchmarks/cite_seeds.py``) and compare the seeds pairwise.

Protocol: ``unitednet.datasets.bmmc_cite()``, modalities ``rna`` + ``adt`` (``X``, gaussian), labels ``cell_type``;
``model.train("supervised", split_key="split", validation_size=0.1, max_epochs=200, batch_size=128)`` after
``scvi.settings.seed = seed``, i.e. 10 % of the s1d1 cells for validation and the s1d2 cells as test cells, which
training never reads. Reported per seed: accuracy on the test cells, RNA -> ADT RMSE over all their entries (the
OpenProblems definition), the lowest validation loss; then the mean and sd over seeds. ``--task translation``
registers no labels and trains ``task="translation"`` instead (no accuracy).

Diagnostic (not a figure of one model): the RNA -> ADT RMSE of the mean of the seeds' predictions, after the first
2, 3, ... seeds. It measures how much of one model's error is the variance between trainings (on these 311 training
cells), i.e. what averaging independently trained models would remove.

Run from the repository root: ``python benchmarks/cite_seeds.py`` (about 2 minutes on one thread).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    PRECISIONS,
    default_json_path,
    machine_info,
    mean_sd,
    package_versions,
    print_table,
    quiet,
    rmse,
    set_threads,
    use_local_data,
    write_json,
)

NAME = "cite_seeds"


def run(
    seed: int, epochs: int, precision: str = "32", task: str = "supervised"
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Train one model with ``seed`` and score it on the s1d2 cells.

    Returns the row of figures, the model's RNA -> ADT prediction of the s1d2 cells and their observed ADT.
    """
    import scvi

    import unitednet as un

    mdata = un.datasets.bmmc_cite()
    scvi.settings.seed = seed
    labels_key = "cell_type" if task == "supervised" else None
    un.UnitedNetModel.setup_mudata(mdata, modalities=["rna", "adt"], labels_key=labels_key)
    model = un.UnitedNetModel(mdata)
    model.train(
        task,
        max_epochs=epochs,
        batch_size=128,
        split_key="split",
        validation_size=0.1,
        enable_progress_bar=False,
        precision=precision,
    )
    test = mdata[mdata.obs["split"].astype(str).to_numpy() == "test"].copy()
    accuracy = float("nan")
    if labels_key is not None:
        accuracy = float((model.predict_labels(test) == test.obs["cell_type"].astype(str).to_numpy()).mean())
    pred = model.predict_modality(test, source="rna", target="adt")
    truth = test.mod["adt"].X.toarray()
    row = {
        "seed": seed,
        "accuracy": accuracy,
        "rmse": rmse(truth, pred),
        "validation_loss": float(model.history["validation_loss"].min().iloc[0]),
        "best_epoch": model.best_epoch_,
    }
    return row, pred, truth


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the seeds, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--precision", choices=PRECISIONS, default="32", help="training precision")
    parser.add_argument("--task", choices=["supervised", "translation"], default="supervised", help="training task")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    args = parser.parse_args(argv)
    data_dir = use_local_data()
    n_threads = set_threads(args.threads)
    import unitednet as un

    quiet()
    runs = [run(seed, args.max_epochs, args.precision, args.task) for seed in args.seeds]
    rows, predictions, truth = [r[0] for r in runs], [r[1] for r in runs], runs[0][2]  # the same cells every seed
    averaged = [
        {"seeds averaged": n, "rmse of the mean prediction": rmse(truth, np.mean(predictions[:n], axis=0))}
        for n in range(2, len(rows) + 1)
    ]
    summary = {}
    for key in ("accuracy", "rmse", "validation_loss"):
        mean, sd = mean_sd([r[key] for r in rows])
        summary[key] = {"mean": mean, "sd": sd}
    print_table(
        f"BMMC CITE, {args.task}, s1d2 test cells",
        [*rows, {"seed": "mean", **{k: v["mean"] for k, v in summary.items()}}],
    )
    if averaged:
        print_table("Diagnostic: RNA -> ADT RMSE of the seeds' mean prediction (not one model's figure)", averaged)
    out = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {
            "seeds": args.seeds,
            "task": args.task,
            "max_epochs": args.max_epochs,
            "precision": args.precision,
            "threads": n_threads,
            "data_dir": data_dir,
        },
        "runs": rows,
        "summary": summary,
        "mean_prediction_rmse": averaged,
        "unitednet_file": un.__file__,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch"]),
    }
    path = write_json(out, args.out)
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
