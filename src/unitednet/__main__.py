"""Command line: ``unitednet fit`` trains UnitedNet on an ``.h5mu`` file or a built-in dataset and writes its results."""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
import traceback
from pathlib import Path

# Built-in datasets: loader name -> (labels key, obs column with a published train/test split or None)
_BUILTIN = {
    "patchseq": ("cell_type_TEM", None),
    "bmmc_multiome": ("cell_type", "split"),
    "bmmc_cite": ("cell_type", "split"),
    "kang_ifnb": ("cell_type", None),
    "osmfish": ("Region", None),
}


def _loss_weight(text: str) -> tuple[str, float]:
    """Parse one ``--loss-weight NAME=VALUE`` argument."""
    from unitednet._constants import LOSS_NAMES

    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. ddc=3), got {text!r}")
    if name not in LOSS_NAMES:
        raise argparse.ArgumentTypeError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    try:
        weight = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the weight of {name!r} must be a number, got {value!r}") from None
    if not (math.isfinite(weight) and weight >= 0):
        raise argparse.ArgumentTypeError(f"the weight of {name!r} must be a finite number >= 0, got {value!r}")
    return name, weight


def _norm(text: str) -> tuple[str | None, str]:
    """Parse one ``--norm VALUE`` or ``--norm PART=VALUE`` argument into ``(part or None, value)``."""
    from unitednet.nn._base import NORM_PARTS, NORMS

    part, sep, value = text.rpartition("=")
    if sep and part not in NORM_PARTS:
        raise argparse.ArgumentTypeError(f"unknown part {part!r}; choose from {', '.join(NORM_PARTS)}")
    if value not in NORMS:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(NORMS)}, or PART=VALUE with a part of {', '.join(NORM_PARTS)}, got {text!r}"
        )
    return (part if sep else None), value


def _norm_argument(values: list[tuple[str | None, str]]) -> str | dict[str, str] | None:
    """The model's ``norm`` from the ``--norm`` arguments: one value for every part, or a value per part."""
    if not values:
        return None
    whole = [v for part, v in values if part is None]
    named = [(part, v) for part, v in values if part is not None]
    parts = dict(named)
    if (whole and named) or len(whole) > 1 or len(parts) < len(named):
        raise SystemExit(
            "unitednet: give --norm once for every part (e.g. --norm none) or once per part "
            "(e.g. --norm encoders=none --norm heads=none), not both and not a part twice."
        )
    return whole[0] if whole else parts


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _fraction(low: float, high: float, include_low: bool):
    """An argparse type: a number in ``[low, high)`` (or ``(low, high]`` when ``include_low`` is false)."""
    interval = f"[{low}, {high})" if include_low else f"({low}, {high}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = low <= value < high if include_low else low < value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    from unitednet.nn._base import ENCODERS

    parser = argparse.ArgumentParser(prog="unitednet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit",
        help="train a model and write the annotated MuData, metrics and a UMAP",
        description="Train UnitedNet, evaluate it on held-out test cells and write <out>/annotated.h5mu, "
        "<out>/metrics.json, <out>/umap.png and the saved model <out>/model/.",
    )
    fit.add_argument(
        "data",
        nargs="?",
        default="patchseq",
        help=f"path to an .h5mu file or a built-in dataset ({', '.join(_BUILTIN)}); default patchseq",
    )
    fit.add_argument("--modalities", nargs="+", help="modalities to use (default: all)")
    fit.add_argument("--labels-key", help="obs column with cell labels (built-in datasets have a default)")
    fit.add_argument("--split-key", help="obs column with train / validation / test per cell")
    fit.add_argument("--task", choices=["supervised", "unsupervised", "translation"], default="supervised")
    fit.add_argument("--n-groups", type=_int_at_least(2), help="number of groups for the unsupervised task")
    fit.add_argument("--max-epochs", type=_int_at_least(1), default=100)
    fit.add_argument("--batch-size", type=_int_at_least(2), default=64)
    fit.add_argument("--lr", type=_positive_number, default=1e-3)
    fit.add_argument("--train-size", type=_fraction(0, 1, include_low=False), default=0.8)
    fit.add_argument("--validation-size", type=_fraction(0, 1, include_low=True), default=0.1)
    fit.add_argument("--n-latent", type=_int_at_least(1), default=32)
    fit.add_argument("--n-heads", type=_int_at_least(1), default=1, help="group heads trained in parallel")
    fit.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch normalisation in hidden layers (--no-batch-norm: none anywhere); parts not set by --norm follow it",
    )
    fit.add_argument(
        "--norm",
        type=_norm,
        action="append",
        default=[],
        metavar="[PART=]VALUE",
        help="normalisation of the hidden layers: batch, layer or none for every part, or per part, repeatable "
        "(e.g. --norm encoders=none --norm heads=none: batch normalisation in the decoders only, which kept more "
        "Patch-seq markers in the SHAP top 10 than the default; see benchmarks/README.md)",
    )
    fit.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        default="mlp",
        help="encoder kind: deterministic MLP (default), variational (Gaussian posterior with a KL term; its mean at "
        "inference) or residual MLP blocks",
    )
    fit.add_argument(
        "--loss-weight",
        type=_loss_weight,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="weight of one loss term, repeatable (e.g. --loss-weight ddc=3); others keep their defaults",
    )
    fit.add_argument(
        "--precision",
        choices=["32", "bf16-mixed"],
        default="32",
        help="training precision: bf16-mixed runs the dense products in bfloat16 (faster on CPUs with AMX or "
        "AVX512-BF16 and on recent GPUs; slower elsewhere)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--threads", type=_int_at_least(1), default=1, help="torch CPU threads (1 is fastest for small data)"
    )
    fit.add_argument("--out", type=Path, help="output folder (default results/<dataset name>)")
    return parser


def _load(data: str):
    import mudata as md

    from unitednet import datasets

    if data in _BUILTIN:
        return getattr(datasets, data)(), data, *_BUILTIN[data]
    path = Path(data)
    if not path.is_file():
        raise SystemExit(
            f"unitednet: {data!r} is neither an .h5mu file nor a built-in dataset ({', '.join(_BUILTIN)})."
        )
    _check_h5mu(path)
    return md.read_h5mu(path), path.stem, None, None


def _check_h5mu(path: Path) -> None:
    """Exit with a clear message unless ``path`` is an HDF5 file written by MuData (modalities under ``/mod``)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            is_mudata, is_anndata = "mod" in f, "X" in f or "obs" in f
    except OSError:
        raise SystemExit(
            f"unitednet: {str(path)!r} is not an HDF5 file; give a MuData written with `mdata.write_h5mu(path)`."
        ) from None
    if is_mudata:
        return
    if is_anndata:
        raise SystemExit(
            f"unitednet: {str(path)!r} holds a single AnnData (.h5ad), not a MuData. Wrap it as one modality per "
            "data type: `mudata.MuData({'rna': anndata.read_h5ad(path)}).write_h5mu('data.h5mu')` (paired modalities "
            "are what UnitedNet learns from)."
        )
    raise SystemExit(f"unitednet: {str(path)!r} is an HDF5 file but not a MuData (it has no '/mod' group).")


def fit(args: argparse.Namespace) -> dict:
    """Run the ``fit`` command; returns the metrics written to ``metrics.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import scvi
    import torch

    import unitednet as un

    torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
    norm = _norm_argument(args.norm)
    mdata, name, default_labels, default_split = _load(args.data)
    labels_key = args.labels_key or (default_labels if args.task != "translation" else None)
    if args.task == "supervised" and labels_key is None:
        raise SystemExit("unitednet: the supervised task needs --labels-key (an obs column with cell labels).")
    split_key = args.split_key or default_split
    out = args.out or Path("results") / name
    un.UnitedNetModel.setup_mudata(mdata, modalities=args.modalities, labels_key=labels_key)
    print(
        f"unitednet {un.__version__}: {name} — {mdata.n_obs} cells, modalities "
        + ", ".join(f"{m} ({mdata.mod[m].n_vars})" for m in (args.modalities or mdata.mod))
    )
    model_kwargs = {
        "n_latent": args.n_latent,
        "n_heads": args.n_heads,
        "use_batch_norm": args.batch_norm,
        "norm": norm,
        "encoder": args.encoder,
        "loss_weights": dict(args.loss_weight) or None,
    }
    if args.task == "unsupervised":
        model_kwargs["n_groups"] = args.n_groups or (mdata.obs[labels_key].nunique() if labels_key else None)
        if not model_kwargs["n_groups"]:
            raise SystemExit("unitednet: the unsupervised task needs --n-groups (or --labels-key to count them).")
    model = un.UnitedNetModel(mdata, **model_kwargs)
    start = time.perf_counter()
    model.train(
        args.task,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        train_size=args.train_size,
        validation_size=args.validation_size,
        split_key=split_key,
        precision=args.precision,
    )
    train_seconds = time.perf_counter() - start

    has_test = bool((mdata.obs["unitednet_split"] == "test").any())
    metrics = un.tl.evaluate(model, labels_key=labels_key, split="test" if has_test else None)
    un.tl.latent(model)
    if model.module.heads is not None and args.task != "translation":  # heads exist but are untrained then
        un.tl.predict_groups(model)
    for s in model.modalities:
        for t in model.modalities:
            if s != t:
                un.tl.predict_modality(model, source=s, target=t)
    un.tl.umap(mdata)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    colors = [c for c in (labels_key, "unitednet_group", "unitednet_split") if c and c in mdata.obs]
    fig = un.pl.embedding(mdata, color=colors, show=False, return_fig=True, frameon=False, legend_fontsize=6)
    fig.savefig(out / "umap.png", dpi=120, bbox_inches="tight")

    summary = {
        "dataset": name,
        "task": args.task,
        "n_cells": int(mdata.n_obs),
        "evaluated_on": "test" if has_test else "all cells (no test split)",
        "n_cells_evaluated": metrics["n_cells"],
        "train_seconds": round(train_seconds, 2),
        "best_epoch": model.best_epoch_,
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": args.threads,
        "precision": args.precision,
        **({"groups": metrics["groups"]} if "groups" in metrics else {}),
    }
    if "r2" in metrics:
        summary["r2_variance_weighted"] = metrics["r2"].to_dict()
        summary["pearson_mean"] = metrics["pearson"].to_dict()
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    mdata.write_h5mu(out / "annotated.h5mu")
    model.save(out / "model", overwrite=True)

    print(f"trained in {train_seconds:.1f} s (best epoch {model.best_epoch_}), evaluated on {summary['evaluated_on']}")
    for key, value in summary.get("groups", {}).items():
        print(f"  {key:>18}: {value:.3f}")
    if "r2" in metrics:
        print("  cross-modal variance-weighted R² (rows target, columns source):")
        print(metrics["r2"].round(3).to_string())
    print(f"wrote {out}/annotated.h5mu, metrics.json, umap.png, model/")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unitednet`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            fit(args)
    except (ValueError, KeyError, TypeError) as error:
        # the package's own input checks name the problem and the fix: print them without a traceback; an error
        # raised anywhere else is a bug and keeps its traceback
        if not _raised_by_unitednet(error):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"unitednet {args.command}: {message}", file=sys.stderr)
        return 2
    return 0


def _raised_by_unitednet(error: BaseException) -> bool:
    package = str(Path(__file__).resolve().parent)
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(package)


if __name__ == "__main__":
    sys.exit(main())
