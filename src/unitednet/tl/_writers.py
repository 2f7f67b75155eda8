"""Scanpy-style writers: run a trained model and put its results into the MuData under documented keys."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from unitednet._constants import RESULT_KEYS

from ._metrics import classification_metrics, clustering_metrics, regression_metrics

if TYPE_CHECKING:
    from unitednet.model import UnitedNetModel


def _target(model: UnitedNetModel, mdata: MuData | None, copy: bool) -> MuData:
    mdata = model.adata if mdata is None else mdata
    if not isinstance(mdata, MuData):
        raise TypeError(f"Expected a MuData, got {type(mdata).__name__}.")
    return mdata.copy() if copy else mdata


def _uns(mdata: MuData) -> dict:
    """The package's ``mdata.uns["unitednet"]`` dict (created when missing)."""
    if RESULT_KEYS.UNS not in mdata.uns:
        mdata.uns[RESULT_KEYS.UNS] = {}
    return mdata.uns[RESULT_KEYS.UNS]


def latent(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    key_added: str = RESULT_KEYS.LATENT,
    per_modality: bool = True,
    batch_size: int | None = None,
    copy: bool = False,
) -> MuData | None:
    """Write the fused latent and each modality's latent.

    Parameters
    ----------
    model
        Trained :class:`~unitednet.model.UnitedNetModel`.
    mdata
        MuData to embed; the model's registered MuData by default. May hold a subset of the modalities.
    key_added
        obsm key of the latents.
    per_modality
        Also write each modality's own latent.
    batch_size
        Minibatch size.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.obsm[key_added]``: fused latent, cells x ``n_latent``;
    - ``mdata.mod[m].obsm[key_added]`` for each modality ``m`` present (when ``per_modality``).
    """
    if key_added in model.modalities:
        raise ValueError(f"key_added={key_added!r} equals a modality name; mudata reserves those obsm keys.")
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    out.obsm[key_added] = model.get_latent_representation(query, batch_size=batch_size)
    if per_modality:
        for m in model.modalities:
            if m in out.mod:
                out.mod[m].obsm[key_added] = model.get_latent_representation(query, modality=m, batch_size=batch_size)
    return out if copy else None


def predict_groups(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    key_added: str = RESULT_KEYS.GROUP,
    batch_size: int | None = None,
    copy: bool = False,
) -> MuData | None:
    """Write each cell's predicted group and the group probabilities.

    Parameters
    ----------
    model
        Trained model with group heads.
    mdata
        MuData to annotate; the registered one by default. May hold a subset of the modalities.
    key_added
        obs key of the groups; the probabilities go to ``obsm[f"{key_added}_proba"]``.
    batch_size
        Minibatch size.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.obs[key_added]``: categorical, label names (supervised) or group ids (unsupervised);
    - ``mdata.obsm[f"{key_added}_proba"]``: DataFrame cells x groups of probabilities.
    """
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    proba = model.predict_labels(query, return_proba=True, batch_size=batch_size)
    groups = np.asarray(proba.columns)[proba.to_numpy().argmax(1)]
    out.obs[key_added] = pd.Categorical(groups, categories=list(proba.columns))
    out.obsm[f"{key_added}_proba"] = proba.set_axis(out.obs_names, axis=0)
    return out if copy else None


def predict_modality(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    source: str,
    target: str,
    key_added: str | None = None,
    batch_size: int | None = None,
    copy: bool = False,
) -> MuData | None:
    """Write the cross-modal prediction ``source -> target``.

    Parameters
    ----------
    model
        Trained model.
    mdata
        MuData holding the ``source`` modality; the registered one by default.
    source
        Modality read.
    target
        Modality predicted.
    key_added
        Layer name; default ``f"unitednet_from_{source}"``.
    batch_size
        Minibatch size.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes ``mdata.mod[target].layers[key_added]`` (dense, cells x
    target features, in the target's units). When ``mdata`` has no ``target`` modality, one is added as
    ``mdata.mod[target]`` with the model's target features, the prediction in that layer, ``X`` left empty
    (all-zero sparse) and ``mdata.mod[target].uns["unitednet"]["predicted_only"] = True``, so the model never reads
    it as measured data.
    """
    key_added = key_added or f"{RESULT_KEYS.PREDICTION_PREFIX}{source}"
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    pred = model.predict_modality(query, source=source, target=target, batch_size=batch_size)
    if target not in out.mod:
        new = ad.AnnData(
            X=sparse.csr_matrix(pred.shape, dtype=np.float32),
            obs=pd.DataFrame(index=out.obs_names.copy()),
            var=pd.DataFrame(index=model.var_names(target).copy()),
            uns={RESULT_KEYS.UNS: {RESULT_KEYS.PREDICTED_ONLY: True}},
        )
        out.mod[target] = new
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="mudata")
            out.update()
    tgt = out.mod[target]
    if not tgt.var_names.equals(model.var_names(target)):
        pred = pd.DataFrame(pred, columns=model.var_names(target)).reindex(columns=tgt.var_names).to_numpy()
    tgt.layers[key_added] = pred
    return out if copy else None


def evaluate(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    labels_key: str | None = None,
    split: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    key_added: str = "metrics",
    batch_size: int | None = None,
) -> dict:
    """Evaluate groups and cross-modal predictions against the measured data.

    Parameters
    ----------
    model
        Trained model.
    mdata
        MuData with measured modalities (and labels); the registered one by default.
    labels_key
        obs column with the true labels; defaults to the registered labels (skipped when ``mdata`` lacks that
        column, e.g. an unlabelled query). Without labels, or for a model whose group heads were not trained
        (``task="translation"``), only cross-modal metrics are computed.
    split
        Evaluate only the cells whose ``obs["unitednet_split"]`` equals this (e.g. ``"test"``).
    pairs
        ``(source, target)`` pairs to score; all ordered pairs of modalities present by default.
    key_added
        Key under ``mdata.uns["unitednet"]``.
    batch_size
        Minibatch size.

    Returns
    -------
    Dict with ``groups`` (``accuracy`` — Hungarian-matched when unsupervised — ``ari``, ``nmi``, and for
    supervised models ``balanced_accuracy`` and ``macro_f1``), ``cross_modal`` (per pair: variance-weighted R²,
    mean per-feature R² over features with variance, mean per-feature and per-cell Pearson, RMSE, MAE), and
    ``r2`` / ``pearson`` (DataFrames, rows target, columns source: variance-weighted R² and mean per-feature
    Pearson). Also written to ``mdata.uns["unitednet"][key_added]``.
    """
    mdata = model.adata if mdata is None else mdata
    if split is not None:
        if RESULT_KEYS.SPLIT not in mdata.obs:
            raise KeyError(f"split={split!r} needs mdata.obs[{RESULT_KEYS.SPLIT!r}], written by model.train.")
        mask = (mdata.obs[RESULT_KEYS.SPLIT] == split).to_numpy()
        if not mask.any():
            raise ValueError(f"No cell has {RESULT_KEYS.SPLIT} == {split!r}.")
        with warnings.catch_warnings():
            # mudata's notice about a future default of update(); the subset copy pulls nothing either way
            warnings.filterwarnings("ignore", category=FutureWarning, module="mudata")
            view = mdata[mask].copy()
    else:
        view = mdata
    query = None if view is model.adata else view
    result: dict = {"n_cells": int(view.n_obs)}
    explicit_labels = labels_key is not None
    labels_key = labels_key or model.labels_key
    # group metrics need trained heads (a translation-only model may still have untrained heads) and labels
    heads_trained = model.module.heads is not None and model.task_ != "translation"
    if labels_key is not None and labels_key not in view.obs and not explicit_labels:
        labels_key = None  # e.g. an unlabelled query: the registered labels column is absent, score modalities only
    if labels_key is not None and heads_trained:
        if labels_key not in view.obs:
            raise KeyError(f"labels_key={labels_key!r} is not a column of mdata.obs.")
        truth = view.obs[labels_key].astype(str).to_numpy()
        pred = model.predict_labels(query, batch_size=batch_size)
        groups = clustering_metrics(truth, pred)
        if model.task_ == "supervised":
            groups.update(classification_metrics(truth, pred))
        result["groups"] = groups
    present = [m for m in model.modalities if m in view.mod]
    if pairs is None:
        pairs = [(s, t) for s in present for t in present if s != t]
    cross: dict[str, dict] = {}
    r2 = pd.DataFrame(np.nan, index=present, columns=present)
    pearson = r2.copy()
    for s, t in pairs:
        pred = model.predict_modality(query, source=s, target=t, batch_size=batch_size)
        scores = regression_metrics(model._matrix(view, t), pred)
        cross[f"{s}->{t}"] = scores
        r2.loc[t, s] = scores["r2_variance_weighted"]
        pearson.loc[t, s] = scores["pearson_mean"]
    if pairs:
        result["cross_modal"] = cross
        result["r2"] = r2.rename_axis(index="target", columns="source")
        result["pearson"] = pearson.rename_axis(index="target", columns="source")
    _uns(mdata)[key_added] = result
    return result
