"""Ablation of the model-quality variants (issue 15) against today's settings, judged on validation cells only.

Protocol:

- Variants (``VARIANTS``, declared before any run): ``baseline`` (the package defaults: MLP encoders with batch
  normalisation, fixed loss weights, gaussian/bernoulli likelihoods), ``uncertainty`` and ``gradnorm``
  (``loss_weighting``), ``variational`` and ``residual`` (``encoder``), ``layer_norm`` and ``no_norm`` (``norm``),
  ``decoder_batch_norm``, ``no_encoder_norm`` and ``no_head_norm`` (batch normalisation in the decoders only, in
  decoders and heads, in encoders and decoders: ``norm`` as a mapping over the parts);
  ``decoder_batch_norm_variational`` (the former with variational encoders; added on 2026-12-07, fourth session,
  before any run of it, as a candidate that might keep the Patch-seq SHAP markers and the validation scores);
  ``published_translation_weight`` (translation loss weight 1, the published value; the default is 3),
  ``translation_weight_10``, ``no_adversarial`` (generator and discriminator weights 0) and ``no_contrastive``;
  on BMMC CITE also ``adt_nb`` (ADT raw counts, ``layers["counts"]``, under the negative binomial) and ``counts_nb``
  (RNA and ADT raw counts, both negative binomial); ``weight_decay_1e-4``, ``weight_decay_1e-3`` and
  ``weight_decay_1e-2`` (``model.train(weight_decay=...)``, Adam's L2 penalty; the default is 0; added on 2026-12-07,
  third session, before any run of them, because the spread between seeds on BMMC CITE pointed at the variance of
  one network); ``hidden_128`` (``n_hidden=128``, half the default width) and ``latent_64`` (``n_latent=64``, twice
  the default latent; the random forest that wins on BMMC CITE reads 50 SVD components), added on 2026-12-07, sixth
  session, before any run of them, with the rule that a size becomes the default only if, on validation cells, the
  mean paired change of the CITE RNA -> ADT RMSE (seeds 0-5) is below zero in both tasks and Patch-seq validation
  accuracy (ten folds) is better on at least as many folds as worse.
  On BMMC CITE also ``rna_svd50`` (added on 2026-12-07, seventh session, before any run of it): the RNA modality
  replaced by the 50-component ``TruncatedSVD`` of RNA ``X`` fit on the s1d1 cells, the random forest's input in
  ``bmmc_cite.py`` (a gaussian modality of 50 features instead of 1,000 genes, so the encoder has 20x fewer weights
  to fit on 311 cells), with the rule that ``bmmc_cite.py`` adopts it as its data setting only if the mean paired
  change of the RNA -> ADT validation RMSE (seeds 0-5) is below zero in translation and in the supervised task.
  ``dropout_0.1`` and ``dropout_0.5`` (``dropout_rate``; the default is the published 0.3), ``lr_3e-4`` and
  ``lr_3e-3`` (``model.train(lr=...)``; the default is 1e-3), added on 2026-12-08, ninth session, before any run of
  them, with the rule of the sizes above: a value becomes the default only if, on validation cells, the mean paired
  change of the CITE RNA -> ADT RMSE (seeds 0-5) is below zero in both tasks and Patch-seq validation accuracy (ten
  folds) is better on at least as many folds as worse.
  Every other argument is the package default.
- ``patchseq``: supervised cell types (``cell_type_TEM``, 27 MET types), the folds of ``patchseq_cv.py``
  (``StratifiedKFold(10, shuffle=True, random_state=0)``); per fold the model trains on the training fold with the
  validation split ``patchseq_cv.py`` uses (10 % of the training fold, stratified by label, split seed 0, passed as
  ``split_key``); 100 epochs, minibatches of 64. Selection score: accuracy on those validation cells. The test-fold
  accuracy is printed next to it and never used to choose.
- ``bmmc_cite``: ``task="translation"`` (no labels registered), s1d1 cells for training with 10 % of them drawn for
  validation (``split_key="split"``, ``validation_size=0.1``, as ``bmmc_cite.py``), 200 epochs, minibatches of 128.
  Selection score: RNA -> ADT RMSE on the validation cells in the units of ADT ``X`` (the OpenProblems normalisation).
  For ``nb`` variants the predicted expected counts are mapped to those units with the per-cell centred log-ratio
  that reproduces ``X`` from the counts (``log1p(c / exp(mean(log1p(c))))``: correlation 0.9999 with ``X``). The
  test (s1d2) RMSE is printed next to it and never used to choose.
  ``--cite-task supervised`` registers the ``cell_type`` labels and trains ``task="supervised"`` instead (group heads
  present, so the ``heads`` part of ``norm`` matters; same split and score). In translation there are no heads and
  ``norm`` mappings that differ only in ``heads`` train the same model.
- ``bmmc_multiome`` (added on 2026-12-07, seventh session, before any run of it): ``task="unsupervised"`` as
  ``bmmc_select_unsupervised.py`` trains it: on the s1d1 cells only (a copy without the s1d2 cells), 10 % of them
  drawn for validation, ``n_groups`` = the 19 s1d1 cell types, 200 epochs, minibatches of 128, gaussian RNA and
  bernoulli ATAC. Selection score (in the ``validation`` column): the mean of the two Leiden ARIs (K = 19 and
  resolution 1, 15-neighbour graph of the fused latent) of the s1d1 cells, which is that script's score on training
  cells. Printed next to it and never used to choose: the same on the s1d2 cells' inductive latent (``make_query``,
  their labels read for the score only), the scoreboard's measure.
- ``osmfish`` (added with ``bmmc_multiome``): ``task="unsupervised"`` on RNA + niche as ``osmfish.py``'s selection of
  its unsupervised setting trains it: on the 3,915 cells outside the test band only (the niche's number of neighbours
  chosen as that script chooses it, on validation cells outside the band), ``n_groups=11``, 60 epochs. Selection
  score: the ARI of Leiden (11 clusters) on those cells' latent against ``Region``. Printed, never used to choose:
  the ARI on the band's 924 cells of Leiden on the latent of all 4,839 cells (the band's cells inductively; the
  model never trains on them).
- ``kang`` (added with ``bmmc_multiome``): ``kang_perturbation.py``'s default candidate (supervised, 60 epochs,
  ``mode="neighbours"``, the mode its inner selection chose on every fold), one model per cell type ``t`` trained
  with the stimulated cells of ``t`` held out (on ``t``'s highly variable genes, as that script). Selection score:
  the mean top-100-DEG R² of the predicted stimulated profile of the two largest cell types (CD14 Mono,
  CD4 Naive T: the types the script's inner selection reads on most folds). Printed, never used to choose: the mean
  over the other four types.
- On ``bmmc_multiome``, ``osmfish`` and ``kang`` the default variant list is ``SMALL_VARIANTS`` (baseline, the two
  loss weightings, the two other encoders, the norms). Rule, declared before their first run: a variant replaces a
  package default only if its mean paired change is in its favour on at least four of the five data sets (BMMC CITE
  counting as one, in favour only if in both tasks) and no data set selects ``baseline`` over it by more than the
  baseline's sd.
- Seeds: ``scvi.settings.seed`` (model initialisation and minibatch order) takes each value of ``--seeds``. The
  Patch-seq splits do not change with it; on BMMC CITE ``model.train`` draws the validation cells with it, so they
  differ between seeds and are the same for every variant at a given seed (compare variants seed by seed). Scores
  are mean ± sd (sample sd) over seeds (and folds for Patch-seq). Paired with ``baseline`` (same seed and fold):
  the count of runs where the variant is better, and the mean ± sd of its difference from the baseline.
- Also reported: the unweighted validation loss terms at the kept epoch (classification cross-entropy, translation
  error), a finer signal than the accuracy of a few dozen validation cells; the translation error is on each
  likelihood's own scale (MSE of standardised values, or the NB negative log-likelihood), so it compares variants
  with the same likelihoods only.
- The selected variant per data set is the one with the best mean validation score; ``baseline`` is kept unless a
  variant beats it by more than the baseline's sd (``selected``), so that noise alone does not change a default.
  On BMMC CITE that sd mostly measures which validation cells a seed draws, so a variant better on every seed can
  stay unselected: the paired columns show it. A package default is decided across the data sets, from both.

Not covered here: the SHAP marker ranks of each variant (``explain.py`` measures them per setting), and most of the
variants' combinations.

Run from the repository root, e.g. ``python benchmarks/ablation.py --dataset bmmc_cite --seeds 0`` or
``python benchmarks/ablation.py --dataset patchseq --folds 0 1 --seeds 0``; ``--dataset bmmc_multiome`` takes about
1 minute per model, ``osmfish`` 2-3 minutes, ``kang`` 2.5-4.5 minutes per seed (six models).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
from _common import (
    PART_NORMS,
    default_json_path,
    dense,
    fmt_mean_sd,
    machine_info,
    package_versions,
    print_table,
    quiet,
    rmse,
    set_threads,
    timer,
    use_local_data,
    write_json,
)

NAME = "ablation"
DATASETS = ("patchseq", "bmmc_cite", "bmmc_multiome", "osmfish", "kang")
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "uncertainty": {"loss_weighting": "uncertainty"},
    "gradnorm": {"loss_weighting": "gradnorm"},
    "variational": {"encoder": "variational"},
    "residual": {"encoder": "residual"},
    "layer_norm": {"norm": "layer"},
    "no_norm": {"norm": "none"},
    # batch normalisation in some parts of the network only (the SHAP-marker conflict of batch normalisation)
    **{name: {"norm": norm} for name, norm in PART_NORMS.items()},
    "decoder_batch_norm_variational": {"norm": PART_NORMS["decoder_batch_norm"], "encoder": "variational"},
    # loss weights of the translation objective (defaults: translation 3, generator/discriminator 0.1, contrastive 1)
    "published_translation_weight": {"loss_weights": {"translation": 1.0}},
    "translation_weight_10": {"loss_weights": {"translation": 10.0}},
    "no_adversarial": {"loss_weights": {"generator": 0.0, "discriminator": 0.0}},
    "no_contrastive": {"loss_weights": {"contrastive": 0.0}},
    # network sizes (defaults: 256 hidden units, 32 latent dimensions)
    "hidden_128": {"n_hidden": 128},
    "latent_64": {"n_latent": 64},
    # dropout in the hidden layers (default 0.3, the published rate)
    "dropout_0.1": {"dropout_rate": 0.1},
    "dropout_0.5": {"dropout_rate": 0.5},
}
# training-plan variants: keyword arguments of ``model.train``
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    **{f"weight_decay_{value}": {"weight_decay": float(value)} for value in ("1e-4", "1e-3", "1e-2")},
    # Adam's learning rate (default 1e-3)
    **{f"lr_{value}": {"lr": float(value)} for value in ("3e-4", "3e-3")},
}
# likelihood variants (data sets with raw counts only): registered layers and likelihoods
COUNT_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "adt_nb": {"layers": {"adt": "counts"}, "likelihoods": {"rna": "gaussian", "adt": "nb"}},
    "counts_nb": {"layers": {"rna": "counts", "adt": "counts"}, "likelihoods": {"rna": "nb", "adt": "nb"}},
}
# input variants (BMMC CITE): the RNA modality replaced by a representation fit on the training batch
INPUT_VARIANTS: dict[str, dict[str, Any]] = {"rna_svd50": {"rna_svd_components": 50}}
# the default variants on bmmc_multiome, osmfish and kang (each model there takes one to three minutes)
SMALL_VARIANTS = (
    "baseline",
    "uncertainty",
    "gradnorm",
    "variational",
    "residual",
    "layer_norm",
    "no_norm",
    "decoder_batch_norm",
)
SPLIT_SEED = 0

# Patch-seq, as patchseq_cv.py
PATCHSEQ_MODALITIES = ("rna", "ephys", "morph")
PATCHSEQ_LABELS = "cell_type_TEM"
PATCHSEQ_SPLIT_KEY = "ablation_split"
PATCHSEQ_FOLDS = 10
PATCHSEQ_EPOCHS = 100
PATCHSEQ_BATCH = 64
TRAIN_SIZE = 0.9

# BMMC CITE, as bmmc_cite.py
CITE_MODALITIES = ("rna", "adt")
CITE_SPLIT_KEY = "split"
CITE_BATCH_KEY = "batch"
CITE_LABELS = "cell_type"  # registered with --cite-task supervised only
CITE_EPOCHS = 200
CITE_BATCH = 128
CITE_VALIDATION = 0.1

# BMMC multiome, osmFISH and Kang: the settings of bmmc_select_unsupervised.py, osmfish.py and kang_perturbation.py
# (imported from them)
KANG_VALIDATION_TYPES = 2
KANG_MODE = "neighbours"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--variants", nargs="+", default=None, help="variants to run (default: all for the data set)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", nargs="+", type=int, default=None, help="Patch-seq folds (default: all 10)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument(
        "--cite-task",
        choices=("translation", "supervised"),
        default="translation",
        help="BMMC CITE task: translation (default; no group heads) or supervised (cell_type labels, with heads)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="output path (default benchmarks/results/ablation_<dataset>.json)")
    return parser.parse_args(argv)


def clr(counts: np.ndarray) -> np.ndarray:
    """Per-cell centred log-ratio of counts as in the OpenProblems ADT ``X``: ``log1p(c / exp(mean(log1p(c))))``."""
    return np.log1p(counts / np.exp(np.log1p(counts).mean(1, keepdims=True)))


# ---------------------------------------------------------------------------------------------------------------------
# Patch-seq
# ---------------------------------------------------------------------------------------------------------------------
def run_patchseq(mdata, variant: str, seed: int, fold: int, splits, max_epochs: int) -> dict[str, Any]:
    """Train one supervised model on a training fold; accuracy on its validation cells and on the test fold."""
    import scvi

    from unitednet import UnitedNetModel
    from unitednet.train import stratified_split

    train_idx, test_idx = splits[fold]
    train_md, test_md = mdata[train_idx].copy(), mdata[test_idx].copy()
    strata = train_md.obs[PATCHSEQ_LABELS].astype(str).to_numpy()
    tr, va, _ = stratified_split(train_md.n_obs, TRAIN_SIZE, 1.0 - TRAIN_SIZE, strata, seed=SPLIT_SEED)
    split = np.full(train_md.n_obs, "test", dtype=object)
    split[tr], split[va] = "train", "validation"
    train_md.obs[PATCHSEQ_SPLIT_KEY] = split.astype(str)
    scvi.settings.seed = seed
    UnitedNetModel.setup_mudata(train_md, modalities=list(PATCHSEQ_MODALITIES), labels_key=PATCHSEQ_LABELS)
    model = UnitedNetModel(train_md, **VARIANTS.get(variant, {}))
    with timer() as t:
        model.train(
            "supervised",
            split_key=PATCHSEQ_SPLIT_KEY,
            max_epochs=max_epochs,
            batch_size=PATCHSEQ_BATCH,
            enable_progress_bar=False,
            **TRAIN_VARIANTS.get(variant, {}),
        )
    val = np.flatnonzero(np.asarray(model.split_) == "validation")
    predicted = model.predict_labels()
    validation = float(np.mean(predicted[val] == strata[val]))
    test = float(np.mean(model.predict_labels(test_md) == test_md.obs[PATCHSEQ_LABELS].astype(str).to_numpy()))
    return {
        "validation": validation,
        "test": test,
        "train_s": t.seconds,
        "best_epoch": model.best_epoch_,
        **validation_terms(model),
    }


# ---------------------------------------------------------------------------------------------------------------------
# BMMC CITE
# ---------------------------------------------------------------------------------------------------------------------
def run_cite(mdata, variant: str, seed: int, max_epochs: int, task: str = "translation") -> dict[str, Any]:
    """Train one model on s1d1; RNA -> ADT RMSE (ADT ``X`` units) on its validation cells and on s1d2.

    ``task="translation"`` registers no labels (the model has no group heads); ``"supervised"`` registers
    ``cell_type`` and trains the heads too.
    """
    import scvi

    from unitednet import UnitedNetModel

    setup = COUNT_VARIANTS.get(variant, {"likelihoods": {"rna": "gaussian", "adt": "gaussian"}})
    if variant in INPUT_VARIANTS:
        mdata = rna_svd_mdata(mdata, INPUT_VARIANTS[variant]["rna_svd_components"])
    scvi.settings.seed = seed
    UnitedNetModel.setup_mudata(
        mdata,
        modalities=list(CITE_MODALITIES),
        batch_key=CITE_BATCH_KEY,
        layers=setup.get("layers"),
        likelihoods=setup["likelihoods"],
        labels_key=CITE_LABELS if task == "supervised" else None,
    )
    model = UnitedNetModel(mdata, **VARIANTS.get(variant, {}))
    with timer() as t:
        model.train(
            task,
            split_key=CITE_SPLIT_KEY,
            validation_size=CITE_VALIDATION,
            max_epochs=max_epochs,
            batch_size=CITE_BATCH,
            enable_progress_bar=False,
            **TRAIN_VARIANTS.get(variant, {}),
        )
    pred = model.predict_modality(source="rna", target="adt")
    if model.likelihoods["adt"] == "nb":
        pred = clr(pred)
    truth = dense(mdata.mod["adt"].X)
    split = np.asarray(model.split_)
    val, test = np.flatnonzero(split == "validation"), np.flatnonzero(split == "test")
    return {
        "validation": rmse(truth[val], pred[val]),
        "test": rmse(truth[test], pred[test]),
        "train_s": t.seconds,
        "best_epoch": model.best_epoch_,
        **validation_terms(model),
    }


# ---------------------------------------------------------------------------------------------------------------------
# BMMC multiome, osmFISH, Kang
# ---------------------------------------------------------------------------------------------------------------------
def run_multiome(full, variant: str, seed: int, max_epochs: int) -> dict[str, Any]:
    """Train one unsupervised model on the s1d1 cells; Leiden ARIs of its latent on s1d1 (score) and on s1d2."""
    from _baselines import make_query
    from bmmc_select_unsupervised import LIKELIHOODS, latent_aris, train

    s1d1 = full.obs["split"].astype(str).to_numpy() == "train"
    mdata = full[s1d1].copy()
    labels = full.obs["cell_type"].astype(str).to_numpy()
    n_groups = len(set(labels[s1d1]))
    likelihoods = LIKELIHOODS["bmmc_multiome"]
    model_kwargs, train_kwargs = VARIANTS.get(variant, {}), TRAIN_VARIANTS.get(variant, {})
    model, seconds = train(mdata, seed, n_groups, likelihoods, model_kwargs, train_kwargs, max_epochs)
    val_aris = latent_aris(model.get_latent_representation(), n_groups, labels[s1d1])
    query = make_query(full, np.flatnonzero(~s1d1), list(likelihoods))
    test_aris = latent_aris(model.get_latent_representation(query), n_groups, labels[~s1d1])
    return {
        "validation": float(np.mean(list(val_aris.values()))),
        "test": float(np.mean(list(test_aris.values()))),
        "validation_aris": val_aris,
        "test_aris": test_aris,
        "train_s": seconds,
        "best_epoch": model.best_epoch_,
        **validation_terms(model),
    }


def load_osmfish():
    """osmFISH as ``osmfish.py`` prepares it: its split, the band mask and the niche with the chosen neighbours."""
    import osmfish

    mdata = osmfish.load()
    split, band = osmfish.make_split(mdata)
    best_k, _ = osmfish.choose_niche_k(mdata, split)
    osmfish.add_niche(mdata, best_k)
    print(f"osmFISH: niche with k = {best_k} (chosen on validation cells as osmfish.py chooses it)")
    return mdata, band


def run_osmfish(mdata, band: np.ndarray, variant: str, seed: int, max_epochs: int) -> dict[str, Any]:
    """Train one unsupervised RNA + niche model outside the band; Leiden ARI outside (score) and on the band."""
    import osmfish
    from _baselines import make_query
    from sklearn.metrics import adjusted_rand_score

    modalities = ("rna", "niche")
    model_kwargs, train_kwargs = VARIANTS.get(variant, {}), TRAIN_VARIANTS.get(variant, {})
    model, seconds = osmfish.train_unsupervised(
        mdata[~band].copy(), modalities, seed, max_epochs, model_kwargs, train_kwargs
    )
    y = mdata.obs[osmfish.LABELS_KEY].astype(str).to_numpy()
    outside, _, _ = osmfish.leiden_k(model.get_latent_representation(), osmfish.N_REGIONS, seed=0)
    query = make_query(mdata, np.arange(mdata.n_obs), modalities)
    every, _, _ = osmfish.leiden_k(model.get_latent_representation(query), osmfish.N_REGIONS, seed=0)
    return {
        "validation": float(adjusted_rand_score(y[~band], outside)),
        "test": float(adjusted_rand_score(y[band], every[band])),
        "train_s": seconds,
        "best_epoch": model.best_epoch_,
        **validation_terms(model),
    }


def run_kang(full, folds: dict[str, Any], variant: str, seed: int, max_epochs: int) -> dict[str, Any]:
    """One perturbation model per held-out cell type; top-100-DEG R² of the validation types (score) and the rest."""
    import kang_perturbation as kang

    types = list(full.obs[kang.CELL_TYPE].value_counts().index)
    setting = {
        "model": VARIANTS.get(variant, {}),
        "train": {"max_epochs": max_epochs, **TRAIN_VARIANTS.get(variant, {})},
    }
    r2, seconds, epochs = {}, 0.0, []
    for cell_type in types:
        if cell_type not in folds:  # the fold's genes depend on the held-out cells only: computed once
            held = kang.held_out_mask(full, cell_type)
            folds[cell_type] = (held, kang.fold_data(full, held))
        held, mdata = folds[cell_type]
        with timer() as t:
            model = kang.train_unitednet(mdata.copy(), held, setting, seed=seed)
        seconds += t.seconds
        epochs.append(model.best_epoch_)
        predicted = kang.unitednet_predict(model, mdata, cell_type, KANG_MODE)
        r2[cell_type] = float(kang.score(mdata, cell_type, predicted)["r2_top100"])
    validation_types, test_types = types[:KANG_VALIDATION_TYPES], types[KANG_VALIDATION_TYPES:]
    return {
        "validation": float(np.mean([r2[t] for t in validation_types])),
        "test": float(np.mean([r2[t] for t in test_types])),
        "r2_top100": r2,
        "train_s": seconds,
        "best_epoch": epochs,
    }


def rna_svd_mdata(mdata, n_components: int):
    """A copy of the BMMC CITE MuData whose ``"rna"`` is the truncated SVD of RNA ``X`` fit on the s1d1 cells."""
    import anndata as ad
    import mudata as md
    from sklearn.decomposition import TruncatedSVD

    rna = mdata.mod["rna"]
    fit = np.asarray(mdata.obs[CITE_BATCH_KEY] == "s1d1")
    svd = TruncatedSVD(n_components=n_components, random_state=SPLIT_SEED).fit(rna.X[fit])
    reduced = ad.AnnData(
        X=svd.transform(rna.X).astype(np.float32),
        obs=rna.obs.copy(),
        var={"component": np.arange(n_components)},
    )
    reduced.var_names = [f"rna_svd{i + 1}" for i in range(n_components)]
    out = md.MuData({"rna": reduced, "adt": mdata.mod["adt"].copy()})
    out.obs = mdata.obs.copy()
    return out


def validation_terms(model) -> dict[str, float]:
    """Unweighted validation loss terms at the kept epoch (``<term>_validation`` of the history), e.g. the
    classification cross-entropy: a finer signal than the accuracy of a few dozen validation cells."""
    history = model.history
    if model.best_epoch_ is None or "validation_loss" not in history:
        return {}
    return {
        key: float(frame.iloc[model.best_epoch_, 0])
        for key, frame in history.items()
        if key.endswith("_validation")
        and key.split("_validation")[0] in ("classification", "translation", "reconstruction")
    }


# ---------------------------------------------------------------------------------------------------------------------
def summarise(runs: dict[str, list[dict[str, Any]]], higher_is_better: bool) -> tuple[list[dict[str, Any]], str]:
    """Rows of mean ± sd per variant, and the selected variant (validation scores only)."""
    rows, means = [], {}
    sign = 1.0 if higher_is_better else -1.0
    baseline = {(r["seed"], r["fold"]): r["validation"] for r in runs.get("baseline", [])}
    for variant, results in runs.items():
        val = [r["validation"] for r in results]
        means[variant] = (float(np.mean(val)), float(np.std(val, ddof=1)) if len(val) > 1 else 0.0)
        paired = [
            (r["validation"], baseline[(r["seed"], r["fold"])]) for r in results if (r["seed"], r["fold"]) in baseline
        ]
        extra = {}
        for term in ("classification_validation", "translation_validation"):
            values = [r[term] for r in results if term in r]
            if values:
                extra[term.replace("_validation", " loss (val.)")] = fmt_mean_sd(values)
        rows.append(
            {
                "variant": variant,
                "validation": fmt_mean_sd(val),
                **extra,
                "better than baseline (paired)": f"{sum(sign * (v - b) > 0 for v, b in paired)}/{len(paired)}",
                "minus baseline (paired)": fmt_mean_sd([v - b for v, b in paired]) if paired else "–",
                "test (not used to choose)": fmt_mean_sd([r["test"] for r in results]),
                "train s": fmt_mean_sd([r["train_s"] for r in results], digits=1),
                "runs": len(results),
            }
        )
    best = max(means, key=lambda v: sign * means[v][0])
    selected = "baseline"
    if "baseline" in means:
        base_mean, base_sd = means["baseline"]
        if sign * (means[best][0] - base_mean) > base_sd:
            selected = best
    else:
        selected = best
    return rows, selected


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the ablation of one data set, print the tables and write the JSON."""
    args = parse_args(argv)
    data_dir = use_local_data()
    threads = set_threads(args.threads)

    import unitednet

    quiet()
    if args.dataset == "patchseq":
        from sklearn.model_selection import StratifiedKFold

        mdata = unitednet.datasets.patchseq()
        labels = mdata.obs[PATCHSEQ_LABELS].astype(str).to_numpy()
        splits = list(
            StratifiedKFold(PATCHSEQ_FOLDS, shuffle=True, random_state=SPLIT_SEED).split(np.zeros(len(labels)), labels)
        )
        folds = args.folds if args.folds is not None else list(range(PATCHSEQ_FOLDS))
        variants = args.variants or [*VARIANTS, *TRAIN_VARIANTS]
        max_epochs = args.max_epochs or PATCHSEQ_EPOCHS
        score, higher = "supervised accuracy on validation cells", True
    elif args.dataset == "bmmc_cite":
        mdata = unitednet.datasets.bmmc_cite()
        folds = [None]
        variants = args.variants or [*VARIANTS, *TRAIN_VARIANTS, *COUNT_VARIANTS, *INPUT_VARIANTS]
        max_epochs = args.max_epochs or CITE_EPOCHS
        score, higher = f"RNA -> ADT RMSE (ADT X units) on validation cells, task {args.cite_task}", False
    elif args.dataset == "bmmc_multiome":
        mdata = unitednet.datasets.bmmc_multiome()
        folds = [None]
        variants = args.variants or list(SMALL_VARIANTS)
        from bmmc_select_unsupervised import MAX_EPOCHS

        max_epochs = args.max_epochs or MAX_EPOCHS
        score, higher = "Leiden ARI of the s1d1 cells' latent (mean of K = 19 and resolution 1)", True
    elif args.dataset == "osmfish":
        import osmfish

        mdata, band = load_osmfish()
        folds = [None]
        variants = args.variants or list(SMALL_VARIANTS)
        max_epochs = args.max_epochs or osmfish.MAX_EPOCHS
        score, higher = "Leiden ARI of the RNA + niche latent outside the band", True
    else:
        import kang_perturbation as kang

        mdata = kang.load_kang()
        kang_folds: dict[str, Any] = {}
        folds = [None]
        variants = args.variants or list(SMALL_VARIANTS)
        max_epochs = args.max_epochs or kang.SETTING["train"]["max_epochs"]
        score, higher = "top-100-DEG R² of the two largest held-out types (mode neighbours)", True
    variant_arguments = {**VARIANTS, **TRAIN_VARIANTS, **COUNT_VARIANTS, **INPUT_VARIANTS}
    unknown = sorted(set(variants) - set(variant_arguments))
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}.")
    cite_only = sorted(set(variants) & {*COUNT_VARIANTS, *INPUT_VARIANTS})
    if cite_only and args.dataset != "bmmc_cite":
        raise SystemExit(f"Variants {cite_only} change the BMMC CITE data and run on --dataset bmmc_cite only.")
    print(
        f"{args.dataset}: variants {variants}, seeds {args.seeds}, folds {folds}, {max_epochs} epochs; data {data_dir}"
    )

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for variant in variants:
        for seed in args.seeds:
            for fold in folds:
                if args.dataset == "patchseq":
                    result = run_patchseq(mdata, variant, seed, fold, splits, max_epochs)
                elif args.dataset == "bmmc_cite":
                    result = run_cite(mdata, variant, seed, max_epochs, args.cite_task)
                elif args.dataset == "bmmc_multiome":
                    result = run_multiome(mdata, variant, seed, max_epochs)
                elif args.dataset == "osmfish":
                    result = run_osmfish(mdata, band, variant, seed, max_epochs)
                else:
                    result = run_kang(mdata, kang_folds, variant, seed, max_epochs)
                result.update(seed=seed, fold=fold)
                runs[variant].append(result)
                print(
                    f"{variant:12s} seed {seed} fold {fold}: validation {result['validation']:.4f}, test "
                    f"{result['test']:.4f} ({result['train_s']:.1f} s, best epoch {result['best_epoch']})",
                    flush=True,
                )
    rows, selected = summarise(runs, higher)
    print_table(f"{args.dataset}: {score}, mean ± sd over seeds x folds", rows)
    print(f"\nselected on validation cells: {selected}")
    out = {
        "name": NAME,
        "dataset": args.dataset,
        "score": score,
        "cite_task": args.cite_task if args.dataset == "bmmc_cite" else None,
        "seeds": args.seeds,
        "folds": folds,
        "max_epochs": max_epochs,
        "threads": threads,
        "variants": {v: variant_arguments[v] for v in variants},
        "runs": runs,
        "selected": selected,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch"]),
    }
    path = write_json(out, args.json or default_json_path(f"{NAME}_{args.dataset}"))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
