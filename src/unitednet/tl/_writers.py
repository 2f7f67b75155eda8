"""Scanpy-style writers: run a trained model and put its results into the MuData under documented keys."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from unitednet._constants import RESULT_KEYS
from unitednet.train._data import ColumnSelection

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

    The latents are small (cells x ``n_latent``) and are kept in memory; from a MuData read with
    ``mudata.read_h5mu(path, backed=True)``, only each minibatch's rows are read (and the model's features taken
    from them, whatever the order or extra features of the file), and no cells x features array is ever made.
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
    model: UnitedNetModel | Sequence[UnitedNetModel],
    mdata: MuData | None = None,
    *,
    source: str,
    target: str,
    key_added: str | None = None,
    batch_size: int | None = None,
    copy: bool = False,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> MuData | ad.AnnData | None:
    """Write the cross-modal prediction ``source -> target``.

    Parameters
    ----------
    model
        Trained model, or a sequence of trained models (an ensemble): the prediction is then the mean of the models'
        predictions, cell by cell and feature by feature. Models trained independently (e.g. with different
        ``scvi.settings.seed``) on the same data err differently; their mean has lower variance than any one of them.
        On the BMMC CITE starter (RNA -> ADT, ``benchmarks/README.md``) members that each drew their own validation
        cells (``model.train(split_key=...)`` with the cells to keep out marked ``"test"``: the seed then draws the
        validation cells among the others) averaged better than members sharing one validation split, and five of
        them predicted better than a random forest. Every model must predict ``target``
        with the same features in the same order. The cost is one prediction per model; with ``out`` only one
        minibatch of each model's prediction is held at a time.
    mdata
        MuData holding the ``source`` modality; the registered one by default (for an ensemble, the MuData all its
        models are registered on). May be backed on disk (``mudata.read_h5mu(path, backed=True)``).
    source
        Modality read.
    target
        Modality predicted.
    key_added
        Layer name; default ``f"unitednet_from_{source}"``. Not used with ``out``.
    batch_size
        Minibatch size. With ``out``, the most cells predicted and held in memory at a time.
    copy
        Return a modified copy instead of writing in place. Not used with ``out``.
    out
        Path of an ``.h5ad`` file to create. The prediction is then computed one minibatch at a time and each block
        is written straight to the file's ``X`` (dense float32, chunked by rows), so memory is bounded by the batch
        however many cells and features there are (1M cells x 20k features would be 80 GB in memory). The file's
        ``obs`` are the cells of ``mdata`` (its obs names) and its ``var`` the model's features of ``target``
        (``model.var_names(target)``, in that order), exactly as :meth:`~unitednet.model.UnitedNetModel.predict_modality`
        returns them. Nothing is written to ``mdata``. The file appears only once complete (it is written under a
        temporary name in the same folder, removed if anything fails).
    overwrite
        Replace ``out`` when it exists (otherwise refused).

    Returns
    -------
    With ``out``: the file read back with ``anndata.read_h5ad(out, backed="r")`` (``X`` stays on disk: read rows
    with ``adata.X[start:stop]``, or the whole with ``adata.to_memory()``; close with ``adata.file.close()``).

    Otherwise the copy when ``copy=True``, else ``None``. Writes ``mdata.mod[target].layers[key_added]`` (dense,
    cells x target features, in the target's units). When ``mdata`` has no ``target`` modality, one is added as
    ``mdata.mod[target]`` with the model's target features, the prediction in that layer, ``X`` left empty
    (all-zero sparse) and ``mdata.mod[target].uns["unitednet"]["predicted_only"] = True``, so the model never reads
    it as measured data.
    """
    models = _as_models(model)
    _check_ensemble(models, mdata, target)
    model = models[0]
    if out is not None:
        path = _check_out(out, overwrite=overwrite, copy=copy, key_added=key_added)
        return _write_prediction(models, mdata, source=source, target=target, batch_size=batch_size, path=path)
    if overwrite:
        raise ValueError("overwrite=True only applies to a file given as out=...; pass out= or drop overwrite.")
    key_added = key_added or f"{RESULT_KEYS.PREDICTION_PREFIX}{source}"
    out = _target(model, mdata, copy)
    pred = np.concatenate(list(_mean_blocks(models, out, source=source, target=target, batch_size=batch_size)))
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


def _as_models(model) -> list:
    """A model or a sequence of models (an ensemble) as a non-empty list."""
    if not isinstance(model, Sequence):
        return [model]
    models = list(model)
    if not models:
        raise ValueError("model is an empty sequence; pass a trained model or a list of trained models.")
    return models


def _check_ensemble(models: Sequence[UnitedNetModel], mdata: MuData | None, modality: str) -> None:
    """Refuse an ensemble whose predictions of ``modality`` cannot be averaged for ``mdata`` (one model: its own checks)."""
    if len(models) == 1:
        return
    for i, m in enumerate(models):
        if modality not in m.modalities:
            raise KeyError(f"Model {i} of the ensemble has no modality {modality!r}; registered: {m.modalities}.")
    names = models[0].var_names(modality)
    for i, m in enumerate(models[1:], start=1):
        if not m.var_names(modality).equals(names):
            raise ValueError(
                f"Model {i} of the ensemble predicts other {modality!r} features than model 0 (names or order "
                "differ); an ensemble averages models registered with the same features of the target."
            )
    if mdata is None and any(m.adata is not models[0].adata for m in models[1:]):
        raise ValueError(
            "The models of the ensemble are registered on different MuData objects; pass the MuData to predict "
            "as mdata=..."
        )


def _mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise mean of equally shaped arrays (summed in float64), in the dtype of the first."""
    if len(arrays) == 1:
        return arrays[0]
    total = arrays[0].astype(np.float64)
    for a in arrays[1:]:
        total += a
    return (total / len(arrays)).astype(arrays[0].dtype)


def _mean_blocks(
    models: Sequence[UnitedNetModel], data: MuData, *, source: str, target: str, batch_size: int | None
) -> Iterator[np.ndarray]:
    """The mean prediction ``source -> target`` of ``models`` for the cells of ``data``, one minibatch at a time."""
    streams = [
        m._prediction_blocks(None if data is m.adata else data, source=source, target=target, batch_size=batch_size)
        for m in models
    ]
    for blocks in zip(*streams, strict=True):
        yield _mean(blocks)


# what AnnData.write_h5ad puts on the root group and on a dense X (anndata's on-disk format)
_H5AD_ROOT_ATTRS = {"encoding-type": "anndata", "encoding-version": "0.1.0"}
_H5AD_DENSE_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}
_H5AD_EMPTY_ELEMENTS = ("obsm", "varm", "obsp", "varp", "layers", "uns")
# at most this many bytes per chunk of X: HDF5's default chunk cache, so a backed reader caches a whole chunk
_CHUNK_BYTES = 1 << 20


def _check_out(out: str | os.PathLike, *, overwrite: bool, copy: bool, key_added: str | None) -> Path:
    """The path of the ``.h5ad`` file to create, after refusing what ``tl.predict_modality(out=...)`` cannot do."""
    path = Path(os.fspath(out))
    if copy:
        raise ValueError(
            "out= writes the prediction to a file and leaves the MuData unchanged, so copy=True has nothing to copy; "
            "drop copy=True (or drop out= to get a copy of the MuData with the prediction as a layer)."
        )
    if key_added is not None:
        raise ValueError(
            f"key_added={key_added!r} names a layer of the MuData, but with out= the prediction is written to the "
            "file's X and no layer is added; drop key_added (or drop out= to write the layer)."
        )
    if path.suffix != ".h5ad":
        raise ValueError(f"out={str(out)!r} must be the path of an .h5ad file; give a name ending in '.h5ad'.")
    if path.is_dir():
        raise ValueError(f"out={str(out)!r} is a folder; give the path of an .h5ad file to create.")
    if path.exists() and not overwrite:
        raise ValueError(f"out={str(out)!r} already exists; pass overwrite=True to replace it, or choose another path.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder of out={str(out)!r} does not exist; create it first.")
    return path


def _chunk_rows(batch_rows: int, n_vars: int) -> int:
    """Rows per chunk of X: a divisor of the batch (each batch then fills whole chunks) within :data:`_CHUNK_BYTES`."""
    limit = max(1, _CHUNK_BYTES // (np.dtype(np.float32).itemsize * n_vars))
    if batch_rows <= limit:
        return batch_rows
    return max(d for d in range(1, limit + 1) if batch_rows % d == 0)


def _write_prediction(
    models: Sequence[UnitedNetModel],
    mdata: MuData | None,
    *,
    source: str,
    target: str,
    batch_size: int | None,
    path: Path,
) -> ad.AnnData:
    """Stream the (mean) prediction ``source -> target`` into a new ``.h5ad`` file at ``path``, a minibatch at a time."""
    model = models[0]
    data = _target(model, mdata, copy=False)
    blocks = _mean_blocks(models, data, source=source, target=target, batch_size=batch_size)
    block = next(blocks)  # the input checks run here, before any file is made
    n_obs, n_vars = data.n_obs, block.shape[1]
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with h5py.File(partial, "w-") as f:
            f.attrs.update(_H5AD_ROOT_ATTRS)
            X = f.create_dataset(
                "X", shape=(n_obs, n_vars), dtype=np.float32, chunks=(_chunk_rows(len(block), n_vars), n_vars)
            )
            X.attrs.update(_H5AD_DENSE_ATTRS)
            start = 0
            while block is not None:
                X[start : start + len(block)] = block
                start += len(block)
                block = next(blocks, None)
            if start != n_obs:
                raise RuntimeError(f"The prediction has {start} rows for {n_obs} cells.")
            ad.io.write_elem(f, "obs", pd.DataFrame(index=data.obs_names.copy()))
            ad.io.write_elem(f, "var", pd.DataFrame(index=model.var_names(target).copy()))
            for key in _H5AD_EMPTY_ELEMENTS:
                ad.io.write_elem(f, key, {})
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ad.read_h5ad(path, backed="r")


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
        truth = model._matrix(view, t)
        truth = truth.to_memory() if isinstance(truth, ColumnSelection) else truth  # a backed query's columns
        scores = regression_metrics(truth, pred)
        cross[f"{s}->{t}"] = scores
        r2.loc[t, s] = scores["r2_variance_weighted"]
        pearson.loc[t, s] = scores["pearson_mean"]
    if pairs:
        result["cross_modal"] = cross
        result["r2"] = r2.rename_axis(index="target", columns="source")
        result["pearson"] = pearson.rename_axis(index="target", columns="source")
    _uns(mdata)[key_added] = result
    return result
