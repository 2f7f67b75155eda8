"""Explainability figures (issue 3): SHAP group-to-feature relevance, its stability across seeds, cross-modal relevance.

Protocol:

- Patch-seq (``--part patchseq``): ``unitednet.datasets.patchseq()`` (``rna``, ``ephys``, ``morph``; labels
  ``cell_type_TEM``, 27 MET types), 448 cells. For each seed: ``scvi.settings.seed = seed``, registered with
  ``labels_key="cell_type_TEM"``, default ``UnitedNetModel``, ``train("supervised", max_epochs, batch_size=64)``
  (the model's own stratified 90 / 10 train / validation split; best validation weights kept). Then

  * ``obs["major"]``: the major class, the part of ``cell_type_TEM`` before ``"-MET"`` (Sst, Pvalb, Vip, Lamp5,
    Sncg). ``un.tl.feature_relevance(model, groupby="major", modalities=["rna"], n_cells_per_group=100)`` (timed):
    the output explained for a cell is the logit of its predicted MET type, the relevance of a gene for a class the
    mean absolute SHAP value over the class's sampled cells. Reported per class: the rank (1 = most relevant) of the
    class's marker gene among the 1252 RNA features (Sst, Pvalb, Vip, Lamp5; Sncg as an extra), whether it is in the
    top 10, and the top-10 genes.
  * the same per predicted MET type (``groupby=None``, ``key_added="unitednet_relevance_fine"``, timed): the rank of
    the marker of each type's major class.
  * stability: ``un.tl.relevance_stability`` of the per-class RNA relevance matrices of all seeds (``top_k=20``):
    mean / min / max pairwise Jaccard index of the top-20 gene sets per class (and the same for the MET types that
    every seed predicts, as an extra).

- BMMC Multiome (``--part bmmc``): ``unitednet.datasets.bmmc_multiome()`` (``rna`` gaussian, ``atac`` binary,
  bernoulli; labels ``cell_type``; ``batch_key="batch"``), seed 0, ``train("supervised", split_key="split",
  validation_size=0.1)`` (validation drawn from the s1d1 training cells). Timed: ``feature_relevance(model)`` (all
  predicted cell types, both modalities) and ``cross_modal_relevance(model, source="atac", target="rna",
  n_target_features=20, top_k=20)`` (ATAC -> RNA, the 20 most relevant genes of each cell type). Reported: runtimes,
  memory, sizes of the outputs and the top links of two cell types.

Memory: ``peak_rss_mb`` is the process peak so far (``ru_maxrss``, never decreases); ``sampled_peak_rss_mb`` the
highest resident set size sampled every 20 ms during a step and ``delta`` its rise over the resident size before the
step (torch tensors included, unlike ``tracemalloc``).

Run from the repository root: ``python benchmarks/explain.py --part all``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    current_rss_mb,
    default_json_path,
    fmt,
    fmt_mean_sd,
    machine_info,
    package_versions,
    peak_rss_mb,
    print_table,
    quiet,
    set_threads,
    timer,
    use_local_data,
    write_json,
)

NAME = "explain"
PARTS = ("patchseq", "bmmc", "all")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_MAX_EPOCHS = 100

PATCHSEQ_LABELS = "cell_type_TEM"
PATCHSEQ_BATCH_SIZE = 64
MAJOR_KEY = "major"
FINE_KEY = "unitednet_relevance_fine"
MARKERS = {"Sst": "Sst", "Pvalb": "Pvalb", "Vip": "Vip", "Lamp5": "Lamp5", "Sncg": "Sncg"}
ACCEPTANCE_CLASSES = ("Sst", "Pvalb", "Vip", "Lamp5")  # Sncg is reported as an extra
N_CELLS_PER_GROUP = 100
TOP_N = 10
STABILITY_TOP_K = 20

BMMC_MODALITIES = ("rna", "atac")
BMMC_LIKELIHOODS = {"rna": "gaussian", "atac": "bernoulli"}
BMMC_LABELS = "cell_type"
BMMC_BATCH = "batch"
BMMC_SPLIT = "split"
BMMC_SEED = 0
BMMC_BATCH_SIZE = 128
BMMC_VALIDATION_SIZE = 0.1
CROSS_SOURCE, CROSS_TARGET = "atac", "rna"
N_TARGET_FEATURES = 20
CROSS_TOP_K = 20
N_SHOWN_GROUPS, N_SHOWN_TARGETS, N_SHOWN_SOURCES = 2, 3, 5


# ---------------------------------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=PARTS, default="all", help="which data set(s) to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="Patch-seq model seeds")
    parser.add_argument("--max-epochs", type=int, default=DEFAULT_MAX_EPOCHS, help="UnitedNet epochs (both parts)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    args = parser.parse_args(argv)
    if args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    args.seeds = list(dict.fromkeys(args.seeds))
    return args


@dataclass
class Memory:
    """Resident memory around a ``with rss_sampler() as mem:`` block, in MB (set on exit)."""

    before_mb: float = float("nan")
    sampled_peak_mb: float = float("nan")
    process_peak_mb: float = float("nan")

    @property
    def delta_mb(self) -> float:
        """Rise of the sampled peak over the resident size before the block."""
        return self.sampled_peak_mb - self.before_mb

    def as_dict(self) -> dict[str, float]:
        """JSON figures."""
        return {
            "rss_before_mb": self.before_mb,
            "sampled_peak_rss_mb": self.sampled_peak_mb,
            "sampled_peak_delta_mb": self.delta_mb,
            "process_peak_rss_mb": self.process_peak_mb,
        }


@contextmanager
def rss_sampler(interval_s: float = 0.02) -> Iterator[Memory]:
    """Sample the resident set size in a background thread while the block runs."""
    mem = Memory(before_mb=current_rss_mb())
    peak = [mem.before_mb]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield mem
    finally:
        stop.set()
        thread.join()
        mem.sampled_peak_mb = max(peak[0], current_rss_mb())
        mem.process_peak_mb = peak_rss_mb()


def frame_mb(df: pd.DataFrame) -> float:
    """Memory of a DataFrame (deep), MB."""
    return float(df.memory_usage(deep=True).sum()) / 1024**2


def marker_rank(column: pd.Series, gene: str) -> int:
    """Rank (1 = most relevant) of ``gene`` in one group's relevance column; ties counted in the gene's favour."""
    values = column.astype(float)
    return int((values > values[gene]).sum()) + 1


def major_of(label: str) -> str:
    """Major class of a MET type: the part before ``"-MET"`` (``"Sst-MET-12"`` -> ``"Sst"``)."""
    return str(label).split("-MET")[0]


# ---------------------------------------------------------------------------------------------------------------------
# Patch-seq
# ---------------------------------------------------------------------------------------------------------------------
def patchseq_seed(seed: int, args) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Train one supervised model and compute the major-class and MET-type RNA relevance."""
    import scvi

    import unitednet as un

    mdata = un.datasets.patchseq()
    mdata.obs[MAJOR_KEY] = pd.Categorical([major_of(x) for x in mdata.obs[PATCHSEQ_LABELS].astype(str)])
    scvi.settings.seed = seed
    un.UnitedNetModel.setup_mudata(mdata, labels_key=PATCHSEQ_LABELS)
    model = un.UnitedNetModel(mdata)
    with timer() as t_train:
        model.train("supervised", max_epochs=args.max_epochs, batch_size=PATCHSEQ_BATCH_SIZE, enable_progress_bar=False)
    result: dict[str, Any] = {
        "seed": seed,
        "train_s": t_train.seconds,
        "best_epoch": None if model.best_epoch_ is None else int(model.best_epoch_),
    }
    predicted = model.predict_labels()
    truth = mdata.obs[PATCHSEQ_LABELS].astype(str).to_numpy()
    split = np.asarray(model.split_)
    val = split == "validation"
    result["accuracy_validation"] = float((predicted[val] == truth[val]).mean()) if val.any() else float("nan")
    result["accuracy_train"] = float((predicted[split == "train"] == truth[split == "train"]).mean())
    result["major_accuracy_all_cells"] = float(
        np.mean([major_of(p) == major_of(t) for p, t in zip(predicted, truth, strict=True)])
    )

    # major classes
    with timer() as t_major, rss_sampler() as mem_major:
        un.tl.feature_relevance(
            model, groupby=MAJOR_KEY, modalities=["rna"], n_cells_per_group=N_CELLS_PER_GROUP, n_top=TOP_N
        )
    rel_major = pd.DataFrame(mdata.mod["rna"].varm["unitednet_relevance"], index=mdata.mod["rna"].var_names)
    majors = {}
    for cls in rel_major.columns:
        col = rel_major[cls]
        top = list(col.sort_values(ascending=False).index[:TOP_N])
        marker = MARKERS.get(cls)
        rank = marker_rank(col, marker) if marker in col.index else None
        majors[cls] = {
            "marker": marker,
            "marker_rank": rank,
            "marker_in_top10": None if rank is None else rank <= TOP_N,
            "top10": top,
            "n_cells_explained": int(min(N_CELLS_PER_GROUP, (mdata.obs[MAJOR_KEY] == cls).sum())),
        }
    result["major"] = {
        "relevance_s": t_major.seconds,
        "memory": mem_major.as_dict(),
        "shape": list(rel_major.shape),
        "classes": majors,
    }

    # MET types (predicted groups)
    with timer() as t_fine, rss_sampler() as mem_fine:
        un.tl.feature_relevance(
            model, modalities=["rna"], n_cells_per_group=N_CELLS_PER_GROUP, n_top=TOP_N, key_added=FINE_KEY
        )
    rel_fine = pd.DataFrame(mdata.mod["rna"].varm[FINE_KEY], index=mdata.mod["rna"].var_names)
    counts = pd.Series(predicted).value_counts()
    fine = {}
    for group in rel_fine.columns:
        col = rel_fine[group]
        marker = MARKERS.get(major_of(group))
        rank = marker_rank(col, marker) if marker in col.index else None
        fine[group] = {
            "major": major_of(group),
            "marker": marker,
            "marker_rank": rank,
            "marker_in_top10": None if rank is None else rank <= TOP_N,
            "top5": list(col.sort_values(ascending=False).index[:5]),
            "n_predicted_cells": int(counts.get(group, 0)),
        }
    result["fine"] = {
        "relevance_s": t_fine.seconds,
        "memory": mem_fine.as_dict(),
        "shape": list(rel_fine.shape),
        "n_groups_predicted": int(rel_fine.shape[1]),
        "groups": fine,
    }
    result["peak_rss_mb"] = peak_rss_mb()
    return result, rel_major, rel_fine


def run_patchseq(args) -> dict[str, Any]:
    """All seeds, then the stability of the relevance across seeds."""
    import unitednet as un

    seeds, rel_major, rel_fine = [], [], []
    for seed in args.seeds:
        with timer() as t_seed:
            res, major, fine = patchseq_seed(seed, args)
        res["seed_s"] = t_seed.seconds
        seeds.append(res)
        rel_major.append(major)
        rel_fine.append(fine)
        ranks = ", ".join(f"{c} {v['marker_rank']}" for c, v in res["major"]["classes"].items())
        print(
            f"patchseq seed {seed}: train {res['train_s']:.1f} s (best epoch {res['best_epoch']}, validation acc "
            f"{res['accuracy_validation']:.3f}); major relevance {res['major']['relevance_s']:.1f} s, MET-type "
            f"relevance {res['fine']['relevance_s']:.1f} s ({res['fine']['n_groups_predicted']} groups); marker "
            f"ranks: {ranks}; peak RSS {res['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    out: dict[str, Any] = {"seeds": seeds}
    if len(rel_major) >= 2:
        stab = un.tl.relevance_stability(rel_major, top_k=STABILITY_TOP_K)
        out["stability_major"] = stab.to_dict(orient="index")
        shared = set.intersection(*(set(r.columns) for r in rel_fine))
        stab_fine = un.tl.relevance_stability(rel_fine, top_k=STABILITY_TOP_K) if shared else pd.DataFrame()
        out["stability_fine"] = stab_fine.to_dict(orient="index")
    return out


def print_patchseq(res: dict[str, Any], threads: int) -> None:
    """Tables of the Patch-seq part."""
    seeds = res["seeds"]
    classes = sorted({c for s in seeds for c in s["major"]["classes"]})
    rows = []
    for cls in classes:
        row: dict[str, Any] = {"class": cls, "marker": MARKERS.get(cls, "-")}
        for s in seeds:
            info = s["major"]["classes"].get(cls, {})
            rank = info.get("marker_rank")
            row[f"rank s{s['seed']}"] = rank
            row[f"top10 s{s['seed']}"] = info.get("marker_in_top10")
        row["acceptance"] = "yes" if cls in ACCEPTANCE_CLASSES else "extra"
        rows.append(row)
    print_table(
        f"Patch-seq: rank of the class marker among {seeds[0]['major']['shape'][0]} RNA genes, relevance by major "
        f"class (torch threads {threads})",
        rows,
    )
    for s in seeds:
        rows = [
            {"class": c, "top-10 genes (most relevant first)": ", ".join(v["top10"])}
            for c, v in s["major"]["classes"].items()
        ]
        print_table(f"Patch-seq seed {s['seed']}: top-10 RNA genes per major class", rows)

    groups = sorted({g for s in seeds for g in s["fine"]["groups"]}, key=lambda g: (major_of(g), len(g), g))
    rows = []
    for g in groups:
        row = {"MET type": g, "marker": MARKERS.get(major_of(g), "-")}
        for s in seeds:
            info = s["fine"]["groups"].get(g)
            row[f"rank s{s['seed']}"] = None if info is None else info["marker_rank"]
            row[f"n pred s{s['seed']}"] = None if info is None else info["n_predicted_cells"]
        rows.append(row)
    print_table(
        "Patch-seq: rank of the major-class marker per predicted MET type (- : type not predicted for that seed)",
        rows,
    )
    rows = []
    for s in seeds:
        fine = s["fine"]["groups"].values()
        ranks = [v["marker_rank"] for v in fine if v["marker_rank"] is not None]
        rows.append(
            {
                "seed": s["seed"],
                "MET types predicted": s["fine"]["n_groups_predicted"],
                "marker in top 10": sum(r <= TOP_N for r in ranks),
                "median rank": float(np.median(ranks)) if ranks else float("nan"),
                "worst rank": max(ranks) if ranks else None,
            }
        )
    print_table("Patch-seq: per-MET-type marker ranks, summary", rows, digits=1)

    if "stability_major" in res:
        rows = [{"class": g, **d} for g, d in res["stability_major"].items()]
        print_table(
            f"Patch-seq: top-{STABILITY_TOP_K} RNA gene Jaccard across seeds {[s['seed'] for s in seeds]}, per major "
            "class",
            rows,
        )
        fine = res["stability_fine"]
        means = [d["mean_jaccard"] for d in fine.values()]
        print(
            f"\nMET types predicted by every seed: {len(fine)}; their mean top-{STABILITY_TOP_K} Jaccard: "
            f"{fmt_mean_sd(means)} (mean ± sd over types; min {fmt(min(means) if means else None)}, max "
            f"{fmt(max(means) if means else None)})",
            flush=True,
        )

    rows = [
        {
            "seed": s["seed"],
            "train s": s["train_s"],
            "best epoch": s["best_epoch"],
            "val acc": s["accuracy_validation"],
            "major relevance s": s["major"]["relevance_s"],
            "major peak Δ MB": s["major"]["memory"]["sampled_peak_delta_mb"],
            "MET relevance s": s["fine"]["relevance_s"],
            "MET peak Δ MB": s["fine"]["memory"]["sampled_peak_delta_mb"],
            "process peak MB": s["peak_rss_mb"],
        }
        for s in seeds
    ]
    print_table(f"Patch-seq runtimes and memory (torch threads {threads})", rows, digits=2)


# ---------------------------------------------------------------------------------------------------------------------
# BMMC Multiome
# ---------------------------------------------------------------------------------------------------------------------
def run_bmmc(args) -> dict[str, Any]:
    """Train the supervised BMMC model, then time group relevance and ATAC -> RNA cross-modal relevance."""
    import scvi

    import unitednet as un

    mdata = un.datasets.bmmc_multiome()
    un.UnitedNetModel.setup_mudata(
        mdata,
        modalities=list(BMMC_MODALITIES),
        likelihoods=BMMC_LIKELIHOODS,
        labels_key=BMMC_LABELS,
        batch_key=BMMC_BATCH,
    )
    train_kwargs = {"max_epochs": args.max_epochs, "batch_size": BMMC_BATCH_SIZE, "enable_progress_bar": False}
    res: dict[str, Any] = {"seed": BMMC_SEED, "split_key": BMMC_SPLIT, "n_cells": mdata.n_obs}
    res["n_features"] = {m: mdata.mod[m].n_vars for m in BMMC_MODALITIES}
    scvi.settings.seed = BMMC_SEED
    model = un.UnitedNetModel(mdata)
    with timer() as t_train:
        model.train("supervised", split_key=BMMC_SPLIT, validation_size=BMMC_VALIDATION_SIZE, **train_kwargs)
    split = np.asarray(model.split_)
    res.update(
        train_s=t_train.seconds,
        best_epoch=None if model.best_epoch_ is None else int(model.best_epoch_),
        n_train=int((split == "train").sum()),
        n_validation=int((split == "validation").sum()),
        n_test=int((split == "test").sum()),
    )
    truth = mdata.obs[BMMC_LABELS].astype(str).to_numpy()
    predicted = model.predict_labels()
    test = split == "test"
    res["test_accuracy"] = float((predicted[test] == truth[test]).mean())
    res["n_predicted_groups"] = len(np.unique(predicted))

    with timer() as t_rel, rss_sampler() as mem_rel:
        un.tl.feature_relevance(model)
    varm = {m: pd.DataFrame(mdata.mod[m].varm["unitednet_relevance"]) for m in BMMC_MODALITIES}
    table = mdata.uns["unitednet"]["relevance"]
    res["feature_relevance"] = {
        "seconds": t_rel.seconds,
        "memory": mem_rel.as_dict(),
        "varm_shapes": {m: list(v.shape) for m, v in varm.items()},
        "varm_mb": {m: frame_mb(v) for m, v in varm.items()},
        "table_rows": len(table),
        "table_mb": frame_mb(table),
    }
    with timer() as t_cross, rss_sampler() as mem_cross:
        un.tl.cross_modal_relevance(
            model, source=CROSS_SOURCE, target=CROSS_TARGET, n_target_features=N_TARGET_FEATURES, top_k=CROSS_TOP_K
        )
    links = mdata.uns["unitednet"]["cross_modal_relevance"][f"{CROSS_SOURCE}->{CROSS_TARGET}"]
    res["cross_modal_relevance"] = {
        "seconds": t_cross.seconds,
        "memory": mem_cross.as_dict(),
        "pair": f"{CROSS_SOURCE}->{CROSS_TARGET}",
        "n_groups": int(links["group"].nunique()),
        "n_target_features_per_group": N_TARGET_FEATURES,
        "top_k": CROSS_TOP_K,
        "table_rows": len(links),
        "table_columns": list(links.columns),
        "table_mb": frame_mb(links),
    }
    counts = pd.Series(predicted).value_counts()
    shown = [g for g in counts.index if g in set(links["group"])][:N_SHOWN_GROUPS]
    examples = []
    for g in shown:
        sub = links[links["group"] == g]
        for target in list(dict.fromkeys(sub["target_feature"]))[:N_SHOWN_TARGETS]:
            top = sub[sub["target_feature"] == target].sort_values("rank").head(N_SHOWN_SOURCES)
            examples.append(
                {
                    "group": g,
                    "n_predicted_cells": int(counts[g]),
                    "target_gene": target,
                    "top_peaks": list(top["source_feature"]),
                    "relevance": [float(x) for x in top["relevance"]],
                }
            )
    res["cross_modal_relevance"]["examples"] = examples
    res["top_rna_per_group"] = {
        g: list(varm["rna"].set_axis(mdata.mod["rna"].var_names)[g].sort_values(ascending=False).index[:5])
        for g in shown
    }
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def print_bmmc(res: dict[str, Any], threads: int) -> None:
    """Tables of the BMMC part."""
    fr, cr = res["feature_relevance"], res["cross_modal_relevance"]
    print(
        f"\nBMMC multiome: {res['n_cells']} cells ({res['n_train']} train / {res['n_validation']} validation / "
        f"{res['n_test']} test, split column {res['split_key']!r}"
        + f"), trained {res['train_s']:.1f} s, best epoch {res['best_epoch']}, test accuracy {res['test_accuracy']:.3f}, "
        f"{res['n_predicted_groups']} predicted cell types",
        flush=True,
    )
    rows = [
        {
            "step": "feature_relevance (rna + atac, all types)",
            "seconds": fr["seconds"],
            "peak Δ RSS MB": fr["memory"]["sampled_peak_delta_mb"],
            "sampled peak RSS MB": fr["memory"]["sampled_peak_rss_mb"],
            "output": ", ".join(f"varm {m} {s[0]}x{s[1]}" for m, s in fr["varm_shapes"].items())
            + f"; table {fr['table_rows']} rows",
            "output MB": sum(fr["varm_mb"].values()) + fr["table_mb"],
        },
        {
            "step": f"cross_modal_relevance {cr['pair']} ({cr['n_target_features_per_group']} genes, top {cr['top_k']})",
            "seconds": cr["seconds"],
            "peak Δ RSS MB": cr["memory"]["sampled_peak_delta_mb"],
            "sampled peak RSS MB": cr["memory"]["sampled_peak_rss_mb"],
            "output": f"{cr['table_rows']} rows ({cr['n_groups']} groups)",
            "output MB": cr["table_mb"],
        },
    ]
    print_table(
        f"BMMC multiome relevance runtimes and memory (torch threads {threads}; process peak "
        f"{res['peak_rss_mb']:.0f} MB)",
        rows,
        digits=2,
    )
    rows = [
        {
            "cell type": e["group"],
            "target gene": e["target_gene"],
            "top ATAC peaks (relevance)": ", ".join(
                f"{p} ({r:.3g})" for p, r in zip(e["top_peaks"], e["relevance"], strict=True)
            ),
        }
        for e in cr["examples"]
    ]
    print_table("BMMC multiome: top ATAC -> RNA links of the two most predicted cell types", rows)


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected parts, print the tables and write the JSON."""
    args = parse_args(argv)
    data_dir = use_local_data()
    threads = set_threads(args.threads)

    import unitednet  # noqa: F401  (imported before quiet(): scvi sets its logger's level when imported)

    quiet()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": NAME,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "part": args.part,
            "seeds": args.seeds,
            "max_epochs": args.max_epochs,
            "threads": threads,
            "data_dir": data_dir,
            "patchseq": {
                "labels_key": PATCHSEQ_LABELS,
                "batch_size": PATCHSEQ_BATCH_SIZE,
                "major_key": "cell_type_TEM before '-MET'",
                "markers": MARKERS,
                "acceptance_classes": list(ACCEPTANCE_CLASSES),
                "n_cells_per_group": N_CELLS_PER_GROUP,
                "top_n": TOP_N,
                "stability_top_k": STABILITY_TOP_K,
                "relevance": "feature_relevance defaults: DeepExplainer, group-mean background, own-group logit",
            },
            "bmmc": {
                "seed": BMMC_SEED,
                "batch_size": BMMC_BATCH_SIZE,
                "likelihoods": BMMC_LIKELIHOODS,
                "labels_key": BMMC_LABELS,
                "batch_key": BMMC_BATCH,
                "split_key": BMMC_SPLIT,
                "validation_size": BMMC_VALIDATION_SIZE,
                "cross_modal": {
                    "source": CROSS_SOURCE,
                    "target": CROSS_TARGET,
                    "n_target_features": N_TARGET_FEATURES,
                    "top_k": CROSS_TOP_K,
                },
            },
            "memory": "peak_rss = ru_maxrss (process); sampled peak = max VmRSS every 20 ms during the step",
        },
        "versions": package_versions(["unitednet", "torch", "scvi-tools", "shap", "numpy", "mudata"]),
        "machine": machine_info(),
        "protocol": __doc__,
    }
    print(f"explain benchmark: part {args.part}; seeds {args.seeds}; max_epochs {args.max_epochs}; data {data_dir}")
    if args.part in ("patchseq", "all"):
        result["patchseq"] = run_patchseq(args)
        print_patchseq(result["patchseq"], threads)
    if args.part in ("bmmc", "all"):
        result["bmmc"] = run_bmmc(args)
        print_bmmc(result["bmmc"], threads)
    result["total_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = peak_rss_mb()
    print(
        f"\nTotal {result['total_s']:.0f} s; process peak memory (ru_maxrss) {result['peak_rss_mb']:.0f} MB; "
        f"torch threads {threads}.",
        flush=True,
    )
    path = write_json(result, args.out)
    print(f"wrote {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
