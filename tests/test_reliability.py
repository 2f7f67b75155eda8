"""The contract beyond single bad inputs: nothing the user owns is mutated, save/load is exact, properties over inputs.

See ``docs/reliability.md``; the table of single inputs is ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import copy
import random
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import unitednet as un
from unitednet.model import UnitedNetModel

PACKAGE = Path(un.__file__).resolve().parent

# every key that setup, training and the tl writers may add (DESIGN.md, the writers' docstrings)
DOCUMENTED = {
    "obs": {"_scvi_labels", "_scvi_batch", "unitednet_split", "unitednet_group"},
    "obsm": {"X_unitednet", "unitednet_group_proba", "X_unitednet_umap"},
    "uns": {"_scvi_uuid", "_scvi_manager_uuid", "unitednet"},
    "uns.unitednet": {"metrics", "relevance", "relevance_params", "cross_modal_relevance"},
    "rna": {"obsm": {"X_unitednet"}, "varm": {"unitednet_relevance"}, "layers": {"unitednet_from_atac"}},
    "atac": {"obsm": {"X_unitednet"}, "varm": {"unitednet_relevance"}, "layers": {"unitednet_from_rna"}},
}
_MOD_SLOTS = ("obsm", "varm", "layers", "uns", "obsp")


def _state(mdata: md.MuData) -> dict:
    """Deep copies of everything user-visible, and the identity of each data matrix."""
    state = {"obs": mdata.obs.copy(deep=True), "obsm": copy.deepcopy(dict(mdata.obsm)), "uns": set(mdata.uns)}
    for name, adata in mdata.mod.items():
        state[name] = {
            "X": copy.deepcopy(adata.X),
            "X_id": id(adata.X),
            "layer_ids": {k: id(v) for k, v in adata.layers.items()},
            "obs": adata.obs.copy(deep=True),
            "var": adata.var.copy(deep=True),
            **{slot: copy.deepcopy(dict(getattr(adata, slot))) for slot in _MOD_SLOTS},
        }
    return state


def _equal(a, b) -> bool:
    if sparse.issparse(a) or sparse.issparse(b):
        return sparse.issparse(a) and sparse.issparse(b) and a.dtype == b.dtype and (a != b).nnz == 0
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_setup_train_and_every_writer_add_only_documented_keys(make_mudata):
    mdata = make_mudata()
    before = _state(mdata)

    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type", batch_key="batch")
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=16, n_layers=1)
    model.train(
        "supervised", max_epochs=1, batch_size=32, train_size=0.8, validation_size=0.1, enable_progress_bar=False
    )
    un.tl.latent(model)
    un.tl.predict_groups(model)
    un.tl.predict_modality(model, source="rna", target="atac")
    un.tl.predict_modality(model, source="atac", target="rna")
    un.tl.evaluate(model, split="test")
    un.tl.feature_relevance(model, n_background=20)
    un.tl.cross_modal_relevance(model, source="rna", target="atac", top_k=3, n_background=20)
    un.tl.umap(mdata)

    # added keys: exactly the documented ones
    assert set(mdata.obs.columns) - set(before["obs"].columns) == DOCUMENTED["obs"]
    assert set(mdata.obsm) - set(before["obsm"]) == DOCUMENTED["obsm"]
    assert set(mdata.uns) - before["uns"] == DOCUMENTED["uns"]
    assert set(mdata.uns["unitednet"]) == DOCUMENTED["uns.unitednet"]
    assert list(mdata.mod) == ["rna", "atac"]
    # what was there is untouched: the user's columns, and each modality's data, never modified in place
    pd.testing.assert_frame_equal(mdata.obs[before["obs"].columns], before["obs"])
    for name in mdata.mod:
        adata, old = mdata.mod[name], before[name]
        assert id(adata.X) == old["X_id"] and _equal(adata.X, old["X"]), f"X of {name!r} changed"
        pd.testing.assert_frame_equal(adata.obs, old["obs"])
        pd.testing.assert_frame_equal(adata.var, old["var"])
        for slot in _MOD_SLOTS:
            now = getattr(adata, slot)
            added = set(now) - set(old[slot])
            assert added == DOCUMENTED[name].get(slot, set()), (name, slot, added)
            for key, value in old[slot].items():
                assert _equal(now[key], value), f"{name}.{slot}[{key!r}] changed"
        assert all(id(adata.layers[k]) == i for k, i in old["layer_ids"].items()), f"a layer of {name!r} replaced"


def test_save_load_is_exact(make_mudata, tmp_path):
    mdata = make_mudata(group_sizes=(70, 50, 30), n_adt=5)
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, n_latent=6, n_hidden=16, n_layers=2, n_heads=2, fusion="feature")
    model.train("supervised", max_epochs=2, batch_size=32, enable_progress_bar=False)
    model.save(tmp_path / "model")

    loaded = UnitedNetModel.load(tmp_path / "model", adata=make_mudata(group_sizes=(70, 50, 30), n_adt=5))
    state, loaded_state = model.module.state_dict(), loaded.module.state_dict()
    assert list(state) == list(loaded_state)
    for key, value in state.items():
        assert torch.equal(value, loaded_state[key]), key
    assert loaded.init_params_ == model.init_params_
    np.testing.assert_array_equal(loaded.split_, model.split_)
    for name, frame in model.history.items():
        pd.testing.assert_frame_equal(loaded.history[name], frame)
    for kwargs in ({}, {"modality": "adt"}):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(**kwargs), model.get_latent_representation(**kwargs)
        )
    np.testing.assert_array_equal(loaded.predict_labels(), model.predict_labels())
    pd.testing.assert_frame_equal(loaded.predict_labels(return_proba=True), model.predict_labels(return_proba=True))
    for source in model.modalities:
        for target in model.modalities:
            np.testing.assert_array_equal(
                loaded.predict_modality(source=source, target=target),
                model.predict_modality(source=source, target=target),
            )


# ---------------------------------------------------------------------------------------------------------------------
# properties over generated inputs
# ---------------------------------------------------------------------------------------------------------------------
@st.composite
def mudatas(draw):
    """A paired MuData of varied shape, dtype, storage and label pattern, with an obs column ``label``."""
    n_cells = draw(st.integers(0, 40))
    n_mods = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    names = pd.Index([f"c{i}" for i in range(n_cells)])
    mods = {}
    for m in ("rna", "atac")[:n_mods]:
        n_features = draw(st.integers(0, 6))
        kind = draw(st.sampled_from(["gaussian", "binary", "counts"]))
        if kind == "gaussian":
            X = rng.normal(size=(n_cells, n_features))
        elif kind == "binary":
            X = (rng.uniform(size=(n_cells, n_features)) < 0.4).astype(float)
        else:
            X = rng.poisson(2.0, size=(n_cells, n_features)).astype(float)
        if n_cells and n_features and draw(st.booleans()):
            X[draw(st.integers(0, n_cells - 1)), draw(st.integers(0, n_features - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
        X = X.astype(draw(st.sampled_from([np.float32, np.float64])))
        X = draw(st.sampled_from([np.asarray, sparse.csr_matrix, sparse.csc_matrix]))(X)
        var = pd.DataFrame(index=[f"{m}{j}" for j in range(n_features)])
        mods[m] = ad.AnnData(X, obs=pd.DataFrame(index=names.copy()), var=var)
    state = random.getstate()  # MuData's constructor draws from the global random module; a strategy must not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
    random.setstate(state)
    pattern = draw(st.sampled_from(["one class", "two classes", "singletons", "numeric", "with NaN"]))
    codes = {
        "one class": np.zeros(n_cells, int),
        "two classes": np.arange(n_cells) % 2,
        "singletons": np.arange(n_cells),
        "numeric": (np.arange(n_cells) % 3) * 7,
        "with NaN": np.arange(n_cells) % 2,
    }[pattern]
    labels = pd.Series(codes, index=names).astype(object if pattern == "with NaN" else int)
    if pattern == "with NaN" and n_cells:
        labels.iloc[0] = None
    mdata.obs["label"] = labels.to_numpy() if pattern == "numeric" else labels.astype(str).where(labels.notna())
    return mdata


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mdata=mudatas(), use_labels=st.booleans(), likelihood=st.sampled_from([None, "gaussian", "bernoulli", "nb"]))
def test_setup_accepts_or_refuses_clearly_and_accepted_data_train(mdata, use_labels, likelihood):
    """Every generated MuData is either refused by the package's own checks or trains to finite latents."""
    labels_key = "label" if use_labels else None
    try:
        likelihoods = {"rna": likelihood} if likelihood is not None else None
        UnitedNetModel.setup_mudata(mdata, labels_key=labels_key, likelihoods=likelihoods)
        model = UnitedNetModel(mdata, n_latent=2, n_hidden=8, n_layers=1)
        task = "supervised" if use_labels else "translation"
        if mdata.n_obs < 2:
            with pytest.raises(ValueError, match="training cells"):
                model.train(task, max_epochs=1, batch_size=16, train_size=1.0, enable_progress_bar=False)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scvi.settings.seed = 0
            model.train(task, max_epochs=1, batch_size=16, train_size=1.0, enable_progress_bar=False)
    except (ValueError, KeyError, TypeError) as error:
        tb = error.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        frame = Path(tb.tb_frame.f_code.co_filename).resolve()
        assert PACKAGE in frame.parents, f"{type(error).__name__} from {frame}: {error}"
        return
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, 2)
    assert np.isfinite(latent).all()
