"""Explainability figures (issue 3): SHAP group-to-feature relevance, its stability across seeds, cross-modal relevance.

Protocol:

- Patch-seq (``--part patchseq``): ``unitednet.datasets.patchseq()`` (``rna``, ``ephys``, ``morph``; labels
  ``cell_type_TEM``, 27 MET types), 448 cells. For each model setting of ``MODEL_SETTINGS`` (``--models``) and each
  seed: ``scvi.settings.seed = seed``, registered with ``labels_key="cell_type_TEM"``, ``UnitedNetModel`` with the
  setting's arguments, ``train("supervised", max_epochs, batch_size=64)`` (the model's own stratified 90 / 10 train /
  validation split; best validation weights kept). The settings: ``no_batch_norm`` (``use_batch_norm=False``, the
  setting the explainability tutorial used until 2026-12-07) and ``default`` (the package defaults, batch
  normalisation in every hidden layer), run side by side because the marker ranks differ between them; and three
  with batch normalisation in some parts only (``norm`` as a mapping over ``encoders``, ``decoders`` and ``heads``):
  ``decoder_batch_norm`` (decoders only; the setting the tutorial and the real-data test explain since 2026-12-07,
  marked ``(acceptance)`` in the tables), ``no_encoder_norm`` (decoders and heads) and ``no_head_norm`` (encoders and
  decoders); ``variational`` (variational encoders, whose posterior mean is explained) and
  ``decoder_batch_norm_variational`` (both changes; the two added on 2026-12-07, fourth session, before any run).
  Then

  * ``obs["major"]``: the major class, the part of ``cell_type_TEM`` before ``"-MET"`` (Sst, Pvalb, Vip, Lamp5,
    Sncg). ``un.tl.feature_relevance(model, groupby="major", modalities=["rna"], n_cells_per_group=100, output=...,
    background=..., method=...)`` (timed) for the default options and, with ``--compare`` (on by default), for every
    option in ``COMPARED``: output ``"logit"`` (the logit of each cell's own MET type: the previous default, with
    ``background="group_means"``), ``"log_proba"`` (log of the summed probability of the class's MET types) or
    ``"log_odds"`` (that against the other types' summed probability); background ``"group_means"`` (the mean of each
    predicted MET type's training cells) or ``"rest"`` (one reference per *other* major class: the mean of its
    training cells); DeepExplainer (``"deep"``) or expected gradients (``"gradient"``). The relevance of a gene for
    a class is the mean of its SHAP values over the class's sampled cells (``aggregate="mean"``, signed, the default
    since 2026-12-08) or of their absolute values (``"mean_abs"``, the default before); ``--aggregates`` runs the
    default output, background and method with the summaries named as well. Reported per class and option: the rank
    (1 = most relevant) of the class's marker gene among the 1252 RNA features (Sst, Pvalb, Vip, Lamp5; Sncg as an
    extra), whether it is in the top 10, and (default) the top-10 genes.
  * per predicted MET type (``groupby=None``, timed) under the default and the previous default: each type explained
    through its own output (for ``"log_odds"``: against all other MET types, with the other types' means as
    reference), and the rank of the marker of its major class.
  * stability: ``un.tl.relevance_stability`` of the per-class RNA relevance matrices of all seeds (``top_k=20``) for
    every option: mean / min / max pairwise Jaccard index of the top-20 gene sets per class (and the same for the MET
    types that every seed predicts, as an extra).

- BMMC Multiome (``--part bmmc``): ``unitednet.datasets.bmmc_multiome()`` (``rna`` gaussian, ``atac`` binary,
  bernoulli; labels ``cell_type``; ``batch_key="batch"``), seed 0, ``train("supervised", split_key="split",
  validation_size=0.1)`` (validation drawn from the s1d1 training cells). Timed: ``feature_relevance(model)`` (all
  predicted cell types, both modalities, default options) and ``cross_modal_relevance(model, source="atac", target="rna",
  n_target_features=20, top_k=20)`` (ATAC -> RNA, the 20 most relevant genes of each cell type). Reported: runtimes,
  memory, sizes of the outputs and the top links of two cell types.

Memory: ``peak_rss_mb`` is the process peak so far (``ru_maxrss``, never decreases); ``sampled_peak_rss_mb`` the
highest resident set size sampled every 20 ms during a step and ``delta`` its rise over the resident size before the
step (torch tensors included, unlike ``tracemalloc``).

Run from the repository root: ``python benchmarks/explain.py --part all`` (``--no-compare``: the default options only;
``--models no_batch_norm``: one model setting).
"""

from __future__ import annotations

import argparse
import inspect
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
    PART_NORMS,
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
# UnitedNetModel arguments of each Patch-seq model setting (ACCEPTANCE_MODEL: the one the explainability tutorial uses)
MODEL_SETTINGS: dict[str, dict[str, Any]] = {
    "no_batch_norm": {"use_batch_norm": False},
    "default": {},
    # batch normalisation in some parts of the network only (issue 15: the SHAP-marker conflict)
    **{name: {"norm": norm} for name, norm in PART_NORMS.items()},
    # variational encoders (the posterior mean is explained), alone and with batch normalisation in the decoders only
    "variational": {"encoder": "variational"},
    "decoder_batch_norm_variational": {"norm": PART_NORMS["decoder_batch_norm"], "encoder": "variational"},
}
ACCEPTANCE_MODEL = "decoder_batch_norm"
TOP_N = 10
STABILITY_TOP_K = 20
# feature_relevance options (output, background, method) compared by major class; the default always runs
Variant = tuple[str, str, str, str]  # output, background, method, aggregate
PREVIOUS_DEFAULT: Variant = ("logit", "group_means", "deep", "mean_abs")
COMPARED: tuple[Variant, ...] = (
    ("logit", "group_means", "deep", "mean_abs"),
    ("log_proba", "group_means", "deep", "mean_abs"),
    ("log_odds", "group_means", "deep", "mean_abs"),
    ("logit", "rest", "deep", "mean_abs"),
    ("log_proba", "rest", "deep", "mean_abs"),
    ("log_odds", "rest", "deep", "mean_abs"),
    ("logit", "group_means", "gradient", "mean_abs"),
    ("log_odds", "rest", "gradient", "mean_abs"),
)
AGGREGATES = ("mean_abs", "mean")

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
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODEL_SETTINGS),
        default=list(MODEL_SETTINGS),
        help="Patch-seq model settings (MODEL_SETTINGS)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Patch-seq: also run the other feature_relevance options (output x background x method)",
    )
    parser.add_argument(
        "--aggregates",
        nargs="+",
        choices=AGGREGATES,
        default=[],
        help="Patch-seq: also run the default output/background/method with these summaries of the SHAP values",
    )
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    args = parser.parse_args(argv)
    if args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.models = list(dict.fromkeys(args.models))
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
def variant_name(variant: Variant) -> str:
    """``output/background/method/aggregate``."""
    return "/".join(variant)


def default_variant() -> Variant:
    """The defaults of ``unitednet.tl.feature_relevance`` (read from its signature, so the label cannot drift)."""
    import unitednet as un

    params = inspect.signature(un.tl.feature_relevance).parameters
    return (
        params["output"].default,
        params["background"].default,
        params["method"].default,
        params["aggregate"].default,
    )


def class_ranks(rel: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Marker rank and top-10 genes of each column of a relevance matrix whose columns are major classes."""
    out = {}
    for cls in rel.columns:
        col = rel[cls]
        marker = MARKERS.get(cls)
        rank = marker_rank(col, marker) if marker in col.index else None
        out[cls] = {
            "marker": marker,
            "marker_rank": rank,
            "marker_in_top10": None if rank is None else rank <= TOP_N,
            "top10": list(col.sort_values(ascending=False).index[:TOP_N]),
        }
    return out


def fine_ranks(rel: pd.DataFrame, counts: pd.Series) -> dict[str, dict[str, Any]]:
    """Rank of the major-class marker in the relevance of each MET type."""
    out = {}
    for group in rel.columns:
        col = rel[group]
        marker = MARKERS.get(major_of(group))
        rank = marker_rank(col, marker) if marker in col.index else None
        out[group] = {
            "major": major_of(group),
            "marker": marker,
            "marker_rank": rank,
            "marker_in_top10": None if rank is None else rank <= TOP_N,
            "top5": list(col.sort_values(ascending=False).index[:5]),
            "n_predicted_cells": int(counts.get(group, 0)),
        }
    return out


def marker_diagnostics(model, mdata) -> dict[str, dict[str, int]]:
    """Per major class, two ranks of its marker among the RNA genes that do not involve SHAP.

    ``data_rank``: by the absolute difference, in the model's standardised units, between the class's mean and the
    mean of the other classes' means (training cells). ``weight_rank``: by the norm of the gene's column in the first
    linear layer of the RNA encoder (how strongly the trained network reads the gene at all).
    """
    import torch

    module = model.module
    train = np.asarray(model.split_) == "train"
    x = mdata.mod["rna"].X
    x = torch.as_tensor(np.asarray(x.toarray() if hasattr(x, "toarray") else x)[train])
    with torch.no_grad():
        x = module.standardize("rna", x.to(model.device)).cpu().numpy().astype(np.float64)
    major = mdata.obs[MAJOR_KEY].astype(str).to_numpy()[train]
    first = next(m for m in module.encoders["rna"].modules() if isinstance(m, torch.nn.Linear))
    weight = pd.Series(first.weight.detach().norm(dim=0).cpu().numpy(), index=mdata.mod["rna"].var_names)
    out = {}
    for cls, gene in MARKERS.items():
        if gene not in weight.index or not (major == cls).any():
            continue
        others = [c for c in np.unique(major) if c != cls]
        diff = pd.Series(np.abs(x[major == cls].mean(0) - np.mean([x[major == c].mean(0) for c in others], 0)))
        diff.index = weight.index
        out[cls] = {
            "data_rank": int(diff.rank(ascending=False, method="min")[gene]),
            "weight_rank": int(weight.rank(ascending=False, method="min")[gene]),
        }
    return out


def patchseq_seed(seed: int, args, variants: list[Variant], fine_variants: list[Variant], model_kwargs: dict):
    """Train one supervised model; relevance by major class under every variant, by MET type under some."""
    import scvi

    import unitednet as un

    mdata = un.datasets.patchseq()
    mdata.obs[MAJOR_KEY] = pd.Categorical([major_of(x) for x in mdata.obs[PATCHSEQ_LABELS].astype(str)])
    scvi.settings.seed = seed
    un.UnitedNetModel.setup_mudata(mdata, labels_key=PATCHSEQ_LABELS)
    model = un.UnitedNetModel(mdata, **model_kwargs)
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
    counts = pd.Series(predicted).value_counts()
    rna_names = mdata.mod["rna"].var_names
    result["marker_diagnostics"] = marker_diagnostics(model, mdata)
    major_rel: dict[str, pd.DataFrame] = {}
    fine_rel: dict[str, pd.DataFrame] = {}
    result["major"], result["fine"] = {}, {}
    for variant in variants:
        output, background, method, aggregate = variant
        key = f"rel_{output}_{background}_{method}_{aggregate}"
        with timer() as t_major, rss_sampler() as mem_major:
            un.tl.feature_relevance(
                model,
                groupby=MAJOR_KEY,
                modalities=["rna"],
                n_cells_per_group=N_CELLS_PER_GROUP,
                n_top=TOP_N,
                output=output,
                background=background,
                method=method,
                aggregate=aggregate,
                key_added=key,
            )
        rel = pd.DataFrame(mdata.mod["rna"].varm[key], index=rna_names)
        major_rel[variant_name(variant)] = rel
        result["major"][variant_name(variant)] = {
            "relevance_s": t_major.seconds,
            "memory": mem_major.as_dict(),
            "shape": list(rel.shape),
            "classes": class_ranks(rel),
        }
        if variant not in fine_variants:
            continue
        # MET types: the predicted groups (groupby=None), each explained through its own type's output
        key_fine = f"{key}_fine"
        with timer() as t_fine, rss_sampler() as mem_fine:
            un.tl.feature_relevance(
                model,
                modalities=["rna"],
                n_cells_per_group=N_CELLS_PER_GROUP,
                n_top=TOP_N,
                output=output,
                background=background,
                method=method,
                aggregate=aggregate,
                key_added=key_fine,
            )
        rel_fine = pd.DataFrame(mdata.mod["rna"].varm[key_fine], index=rna_names)
        fine_rel[variant_name(variant)] = rel_fine
        result["fine"][variant_name(variant)] = {
            "relevance_s": t_fine.seconds,
            "memory": mem_fine.as_dict(),
            "shape": list(rel_fine.shape),
            "n_groups_predicted": int(rel_fine.shape[1]),
            "groups": fine_ranks(rel_fine, counts),
        }
    result["peak_rss_mb"] = peak_rss_mb()
    return result, major_rel, fine_rel


def run_patchseq(args) -> dict[str, Any]:
    """Every model setting: all seeds under every variant, then the stability of the relevance across seeds."""
    return {
        "acceptance_model": ACCEPTANCE_MODEL,
        "models": {name: run_patchseq_model(args, name) for name in args.models},
    }


def run_patchseq_model(args, setting: str) -> dict[str, Any]:
    """One model setting: all seeds under every variant, then the stability of the relevance across seeds."""
    import unitednet as un

    default = default_variant()
    variants = [default] + [v for v in (COMPARED if args.compare else ()) if v != default]
    variants += [(*default[:3], a) for a in args.aggregates if (*default[:3], a) not in variants]
    fine_variants = [default] + [v for v in (PREVIOUS_DEFAULT,) if args.compare and v != default]
    seeds, major_rel, fine_rel = [], [], []
    for seed in args.seeds:
        with timer() as t_seed:
            res, major, fine = patchseq_seed(seed, args, variants, fine_variants, MODEL_SETTINGS[setting])
        res["seed_s"] = t_seed.seconds
        seeds.append(res)
        major_rel.append(major)
        fine_rel.append(fine)
        for name, info in res["major"].items():
            ranks = ", ".join(f"{c} {v['marker_rank']}" for c, v in info["classes"].items())
            print(
                f"patchseq [{setting}] seed {seed} {name}: {info['relevance_s']:.1f} s; marker ranks: {ranks}",
                flush=True,
            )
        print(
            f"patchseq [{setting}] seed {seed}: train {res['train_s']:.1f} s (best epoch {res['best_epoch']}, "
            f"validation acc {res['accuracy_validation']:.3f}); seed total {res['seed_s']:.1f} s; peak RSS "
            f"{res['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    out: dict[str, Any] = {
        "model_kwargs": MODEL_SETTINGS[setting],
        "default": variant_name(default),
        "previous_default": variant_name(PREVIOUS_DEFAULT),
        "variants": [variant_name(v) for v in variants],
        "fine_variants": [variant_name(v) for v in fine_variants],
        "seeds": seeds,
    }
    if len(seeds) >= 2:
        out["stability_major"] = {
            name: un.tl.relevance_stability([r[name] for r in major_rel], top_k=STABILITY_TOP_K).to_dict(orient="index")
            for name in out["variants"]
        }
        out["stability_fine"] = {}
        for name in out["fine_variants"]:
            rels = [r[name] for r in fine_rel]
            shared = set.intersection(*(set(r.columns) for r in rels))
            stab = un.tl.relevance_stability(rels, top_k=STABILITY_TOP_K) if shared else pd.DataFrame()
            out["stability_fine"][name] = stab.to_dict(orient="index")
    return out


def _ranks_cell(seeds: list[dict[str, Any]], level: str, variant: str, group: str) -> str:
    """``r0/r1/r2`` ranks of one group's marker over the seeds (``-`` where the group is missing)."""
    ranks = []
    for s in seeds:
        info = s[level].get(variant, {}).get("classes" if level == "major" else "groups", {}).get(group)
        ranks.append("-" if info is None or info["marker_rank"] is None else str(info["marker_rank"]))
    return "/".join(ranks)


def _acceptance_in_top(seeds: list[dict[str, Any]], variant: str) -> str:
    """``"hits/total"``: (class, seed) pairs of the acceptance classes whose marker is in the top 10 (major class)."""
    hits = sum(
        bool(s["major"][variant]["classes"].get(cls, {}).get("marker_in_top10"))
        for cls in ACCEPTANCE_CLASSES
        for s in seeds
    )
    return f"{hits}/{len(ACCEPTANCE_CLASSES) * len(seeds)}"


def print_patchseq(res: dict[str, Any], threads: int) -> None:
    """Tables of the Patch-seq part: each model setting, then the settings side by side."""
    for setting, model_res in res["models"].items():
        print_patchseq_model(model_res, threads, setting)
    print_model_comparison(res, threads)


def print_model_comparison(res: dict[str, Any], threads: int) -> None:
    """Marker ranks by major class (default relevance options), validation accuracy and training time per setting."""
    rows = []
    for setting, model_res in res["models"].items():
        seeds = model_res["seeds"]
        default = model_res["default"]
        row: dict[str, Any] = {"model": setting + (" (acceptance)" if setting == res["acceptance_model"] else "")}
        row["arguments"] = ", ".join(f"{k}={v}" for k, v in model_res["model_kwargs"].items()) or "package defaults"
        row.update({cls: _ranks_cell(seeds, "major", default, cls) for cls in MARKERS})
        row["in top 10"] = _acceptance_in_top(seeds, default)
        row["val acc"] = "/".join(f"{s['accuracy_validation']:.3f}" for s in seeds)
        row["train s (mean)"] = float(np.mean([s["train_s"] for s in seeds]))
        rows.append(row)
    seed_ids = "/".join(str(s["seed"]) for s in next(iter(res["models"].values()))["seeds"])
    print_table(
        f"Patch-seq model settings compared: marker rank per major class (seeds {seed_ids}; default relevance "
        f"options), validation accuracy over the 27 MET types, training time (torch threads {threads})",
        rows,
        digits=1,
    )


def print_patchseq_model(res: dict[str, Any], threads: int, setting: str) -> None:
    """Tables of one Patch-seq model setting."""
    seeds = res["seeds"]
    default = res["default"]
    n_genes = seeds[0]["major"][default]["shape"][0]
    seed_ids = "/".join(str(s["seed"]) for s in seeds)
    print(
        f"\nfeature_relevance options compared (output/background/method/aggregate), relevance by major class: "
        f"{', '.join(res['variants'])}; default: {default}; previous default: {res['previous_default']}",
        flush=True,
    )
    classes = sorted({c for s in seeds for c in s["major"][default]["classes"]})
    rows = []
    for name in res["variants"]:
        row: dict[str, Any] = {"variant": name + (" (default)" if name == default else "")}
        row.update({f"{cls} ({MARKERS.get(cls, '-')})": _ranks_cell(seeds, "major", name, cls) for cls in classes})
        row["acceptance markers in top 10"] = _acceptance_in_top(seeds, name)
        if "stability_major" in res:
            stab = res["stability_major"][name]
            row[f"mean top-{STABILITY_TOP_K} Jaccard"] = float(np.mean([d["mean_jaccard"] for d in stab.values()]))
        row["seconds (mean)"] = float(np.mean([s["major"][name]["relevance_s"] for s in seeds]))
        rows.append(row)
    print_table(
        f"Patch-seq [{setting}]: rank of each class's marker among {n_genes} RNA genes, relevance by major class, seeds "
        f"{seed_ids} (acceptance: Sst, Pvalb, Vip, Lamp5 in the top 10; Sncg extra; torch threads {threads})",
        rows,
        digits=2,
    )
    for s in seeds:
        rows = [
            {"class": c, "marker rank": v["marker_rank"], "top-10 genes (most relevant first)": ", ".join(v["top10"])}
            for c, v in s["major"][default]["classes"].items()
        ]
        print_table(
            f"Patch-seq [{setting}] seed {s['seed']}, default ({default}): top-10 RNA genes per major class", rows
        )

    for name in res["fine_variants"]:
        groups = sorted({g for s in seeds for g in s["fine"][name]["groups"]}, key=lambda g: (major_of(g), len(g), g))
        rows = [
            {
                "MET type": g,
                "marker": MARKERS.get(major_of(g), "-"),
                f"rank s{seed_ids}": _ranks_cell(seeds, "fine", name, g),
                f"n predicted s{seed_ids}": "/".join(
                    str(s["fine"][name]["groups"].get(g, {}).get("n_predicted_cells", "-")) for s in seeds
                ),
            }
            for g in groups
        ]
        print_table(
            f"Patch-seq [{setting}], {name}: rank of the major-class marker per predicted MET type (each type explained against "
            "the other types; - : type not predicted for that seed)",
            rows,
        )
        rows = []
        for s in seeds:
            ranks = [v["marker_rank"] for v in s["fine"][name]["groups"].values() if v["marker_rank"] is not None]
            rows.append(
                {
                    "seed": s["seed"],
                    "MET types predicted": s["fine"][name]["n_groups_predicted"],
                    "marker in top 10": sum(r <= TOP_N for r in ranks),
                    "median rank": float(np.median(ranks)) if ranks else float("nan"),
                    "worst rank": max(ranks) if ranks else None,
                }
            )
        print_table(f"Patch-seq [{setting}], {name}: per-MET-type marker ranks, summary", rows, digits=1)

    rows = [
        {
            "class": cls,
            "marker": MARKERS[cls],
            f"SHAP rank s{seed_ids}": _ranks_cell(seeds, "major", default, cls),
            f"data rank s{seed_ids}": "/".join(str(s["marker_diagnostics"][cls]["data_rank"]) for s in seeds),
            f"weight-norm rank s{seed_ids}": "/".join(str(s["marker_diagnostics"][cls]["weight_rank"]) for s in seeds),
        }
        for cls in classes
        if all(cls in s["marker_diagnostics"] for s in seeds)
    ]
    print_table(
        f"Patch-seq [{setting}]: marker ranks among {n_genes} genes by SHAP relevance (default), by the class's standardised mean "
        "difference in the data, and by the first-layer weight norm of the RNA encoder",
        rows,
    )

    if "stability_major" in res:
        rows = [{"class": g, **d} for g, d in res["stability_major"][default].items()]
        print_table(
            f"Patch-seq [{setting}], default ({default}): top-{STABILITY_TOP_K} RNA gene Jaccard across seeds {seed_ids}, per "
            "major class",
            rows,
        )
        for name, fine in res["stability_fine"].items():
            means = [d["mean_jaccard"] for d in fine.values()]
            print(
                f"\n{name}: MET types predicted by every seed: {len(fine)}; their mean top-{STABILITY_TOP_K} Jaccard: "
                f"{fmt_mean_sd(means)} (mean ± sd over types; min {fmt(min(means) if means else None)}, max "
                f"{fmt(max(means) if means else None)})",
                flush=True,
            )

    rows = []
    for s in seeds:
        row = {"seed": s["seed"], "train s": s["train_s"], "best epoch": s["best_epoch"]}
        row["val acc"] = s["accuracy_validation"]
        row["major-class acc (all cells)"] = s["major_accuracy_all_cells"]
        row["default major relevance s"] = s["major"][default]["relevance_s"]
        row["default major peak Δ MB"] = s["major"][default]["memory"]["sampled_peak_delta_mb"]
        row["default MET relevance s"] = s["fine"][default]["relevance_s"]
        row["process peak MB"] = s["peak_rss_mb"]
        rows.append(row)
    print_table(f"Patch-seq [{setting}] runtimes and memory (torch threads {threads})", rows, digits=2)


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
        "options": variant_name(default_variant()),
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
            "step": f"feature_relevance (rna + atac, all types; {fr['options']})",
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
                "models": {name: MODEL_SETTINGS[name] for name in args.models},
                "acceptance_model": ACCEPTANCE_MODEL,
                "n_cells_per_group": N_CELLS_PER_GROUP,
                "top_n": TOP_N,
                "stability_top_k": STABILITY_TOP_K,
                "relevance": "feature_relevance(groupby='major') per variant (output/background/method/aggregate); MET types "
                "(groupby=None) for the default and the previous default",
                "compare": args.compare,
                "aggregates": args.aggregates,
                "compared_variants": ["/".join(v) for v in COMPARED],
                "previous_default": "/".join(PREVIOUS_DEFAULT),
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
    print(
        f"explain benchmark: part {args.part}; seeds {args.seeds}; max_epochs {args.max_epochs}; data {data_dir}; "
        f"compare feature_relevance options: {args.compare}; Patch-seq models: {args.models}"
    )
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
