"""Shared fixtures: tiny synthetic paired MuData (gaussian dense ``rna``, binary sparse ``atac``, optional ``adt``)."""

from __future__ import annotations

import copy
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse

# tiny MLPs train much faster on one thread than on torch's default on two shared cores
torch.set_num_threads(1)
md.set_options(pull_on_update=False)

GROUPS = ("alpha", "beta", "gamma")

# small networks and short runs: every training in the tests uses these
MODEL_KWARGS = {"n_latent": 8, "n_hidden": 32, "n_layers": 1}
TRAIN_KWARGS = {"max_epochs": 2, "batch_size": 32, "enable_progress_bar": False}


def _make_mudata(
    n_cells: int = 150,
    n_rna: int = 24,
    n_atac: int = 32,
    n_adt: int = 0,
    seed: int = 0,
    sparse_rna: bool = False,
    rna_shift: float = 0.0,
    group_sizes: tuple[int, ...] | None = None,
    n_batches: int = 2,
) -> md.MuData:
    """Paired cells of three groups: gaussian ``rna`` (dense unless ``sparse_rna``), binary csr ``atac``, gaussian ``adt``."""
    rng = np.random.default_rng(seed)
    if group_sizes is None:
        base = n_cells // len(GROUPS)
        group_sizes = tuple(base + (1 if i < n_cells % len(GROUPS) else 0) for i in range(len(GROUPS)))
    n_cells = int(sum(group_sizes))
    codes = np.repeat(np.arange(len(group_sizes)), group_sizes)
    rng.shuffle(codes)
    labels = np.asarray(GROUPS)[codes]
    obs_names = [f"cell{i}" for i in range(n_cells)]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(labels, categories=list(GROUPS)[: len(group_sizes)]),
            "batch": pd.Categorical(np.asarray([f"b{i % n_batches}" for i in range(n_cells)])),
            "score": rng.normal(size=n_cells),
        },
        index=obs_names,
    )

    centres = rng.normal(scale=2.0, size=(len(group_sizes), n_rna))
    rna = (centres[codes] + rng.normal(size=(n_cells, n_rna)) + rna_shift).astype(np.float32)
    if sparse_rna:
        rna = np.where(rna > np.quantile(rna, 0.6), rna, 0).astype(np.float32)
        rna = sparse.csr_matrix(rna)
    probs = rng.uniform(0.05, 0.7, size=(len(group_sizes), n_atac))
    atac = sparse.csr_matrix((rng.uniform(size=(n_cells, n_atac)) < probs[codes]).astype(np.float32))

    mods = {
        "rna": ad.AnnData(rna, obs=obs.copy(), var=pd.DataFrame(index=[f"gene{i}" for i in range(n_rna)])),
        "atac": ad.AnnData(atac, obs=obs.copy(), var=pd.DataFrame(index=[f"peak{i}" for i in range(n_atac)])),
    }
    mods["rna"].layers["raw"] = mods["rna"].X.copy()
    if n_adt:
        adt_centres = rng.normal(scale=3.0, size=(len(group_sizes), n_adt))
        adt = (adt_centres[codes] + rng.normal(size=(n_cells, n_adt)) + 5.0).astype(np.float32)
        mods["adt"] = ad.AnnData(adt, obs=obs.copy(), var=pd.DataFrame(index=[f"prot{i}" for i in range(n_adt)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData(mods)
    mdata.obs = obs.copy()
    return mdata


@pytest.fixture
def make_mudata():
    """Factory of fresh tiny MuData objects (each call builds new arrays, so tests never share mutated data)."""
    return _make_mudata


@pytest.fixture
def mdata(make_mudata):
    """A fresh two-modality MuData: 150 cells, ``rna`` (24 dense gaussian), ``atac`` (32 binary csr)."""
    return make_mudata()


@pytest.fixture(autouse=True)
def _reset_seed():
    """Give every test the same seed and restore scvi's default afterwards."""
    previous = scvi.settings.seed
    scvi.settings.seed = 0
    yield
    scvi.settings.seed = previous


def _snapshot(mdata: md.MuData) -> dict:
    """Deep copies of the user-visible data of a MuData (obs, uns keys, and X / layers / obs / var of each modality)."""
    snap = {"obs": mdata.obs.copy(deep=True), "uns": set(mdata.uns.keys()), "mod": {}}
    for name, adata in mdata.mod.items():
        snap["mod"][name] = {
            "X": copy.deepcopy(adata.X),
            "X_id": id(adata.X),
            "layers": {k: copy.deepcopy(v) for k, v in adata.layers.items()},
            "obs": adata.obs.copy(deep=True),
            "var": adata.var.copy(deep=True),
            "obsm": set(adata.obsm.keys()),
        }
    return snap


def _same_matrix(a, b) -> bool:
    if sparse.issparse(a) != sparse.issparse(b):
        return False
    if sparse.issparse(a):
        return a.shape == b.shape and a.format == b.format and (a != b).nnz == 0 and a.dtype == b.dtype
    return np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype


def _assert_unchanged(
    mdata: md.MuData, snap: dict, *, added_obs: tuple[str, ...] = (), added_uns: tuple[str, ...] = ()
):
    """Assert that only ``added_obs`` columns (mdata.obs) and ``added_uns`` keys were added since ``snap``."""
    obs = mdata.obs
    assert set(obs.columns) == set(snap["obs"].columns) | set(added_obs)
    pd.testing.assert_frame_equal(obs[list(snap["obs"].columns)], snap["obs"])
    assert set(mdata.uns.keys()) == snap["uns"] | set(added_uns)
    assert list(mdata.mod) == list(snap["mod"])
    for name, before in snap["mod"].items():
        adata = mdata.mod[name]
        assert _same_matrix(adata.X, before["X"]), f"X of {name!r} changed"
        assert id(adata.X) == before["X_id"], f"X of {name!r} was replaced"
        assert set(adata.layers.keys()) == set(before["layers"])
        for key, value in before["layers"].items():
            assert _same_matrix(adata.layers[key], value), f"layer {key!r} of {name!r} changed"
        pd.testing.assert_frame_equal(adata.obs, before["obs"])
        pd.testing.assert_frame_equal(adata.var, before["var"])
        assert set(adata.obsm.keys()) == before["obsm"]


@pytest.fixture
def snapshot():
    """``snapshot(mdata)``: deep copies of a MuData's user data, to compare with :func:`assert_unchanged`."""
    return _snapshot


@pytest.fixture
def assert_unchanged():
    """``assert_unchanged(mdata, snap, added_obs=..., added_uns=...)``: only the listed keys were added."""
    return _assert_unchanged


@pytest.fixture
def model_kwargs():
    """Small networks for fast tests."""
    return dict(MODEL_KWARGS)


@pytest.fixture
def train_kwargs():
    """Short training runs for fast tests."""
    return dict(TRAIN_KWARGS)


@pytest.fixture
def fit(model_kwargs, train_kwargs):
    """``fit(mdata, task, setup=..., model=..., train=...)``: set up, build and train a small UnitedNetModel."""
    from unitednet.model import UnitedNetModel

    def _fit(mdata, task="supervised", *, setup=None, model=None, train=None):
        setup = {"labels_key": "cell_type"} if setup is None else setup
        UnitedNetModel.setup_mudata(mdata, **setup)
        net = UnitedNetModel(mdata, **{**model_kwargs, **(model or {})})
        net.train(task, **{**train_kwargs, **(train or {})})
        return net

    return _fit


def _make_query(mdata: md.MuData, modalities: tuple[str, ...] = ("rna",), obs: tuple[str, ...] = ()) -> md.MuData:
    """A new, unregistered MuData with copies of some modalities of ``mdata`` (and the ``obs`` columns listed)."""
    mods = {
        m: ad.AnnData(
            mdata.mod[m].X.copy(), obs=pd.DataFrame(index=mdata.obs_names.copy()), var=mdata.mod[m].var.copy()
        )
        for m in modalities
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        query = md.MuData(mods)
    for column in obs:
        query.obs[column] = mdata.obs[column].to_numpy()
    return query


@pytest.fixture
def make_query():
    """``make_query(mdata, modalities=("rna",), obs=())``: an unregistered MuData with copies of some modalities."""
    return _make_query


@pytest.fixture
def mpl_agg():
    """Draw with matplotlib's non-interactive Agg backend and close every figure afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _train_shared(task="supervised", *, data=None, setup=None, model=None, train=None):
    """Set up and train a small model on a fresh tiny MuData with seed 0 (for module-scoped fixtures)."""
    from unitednet.model import UnitedNetModel

    previous = scvi.settings.seed
    scvi.settings.seed = 0
    try:
        mdata = _make_mudata(**(data or {}))
        UnitedNetModel.setup_mudata(mdata, **({"labels_key": "cell_type"} if setup is None else setup))
        net = UnitedNetModel(mdata, **{**MODEL_KWARGS, **(model or {})})
        net.train(task, **{**TRAIN_KWARGS, **(train or {})})
    finally:
        scvi.settings.seed = previous
    return net


_SLOTS = ("obsm", "varm", "layers", "uns")


def _annotation_keys(mdata: md.MuData) -> dict:
    """Keys of the slots that unitednet's writers add to (mdata and each modality)."""
    keys = {"obs": set(mdata.obs.columns), "obsm": set(mdata.obsm), "uns": set(mdata.uns), "mods": list(mdata.mod)}
    for name, adata in mdata.mod.items():
        keys[name] = {slot: set(getattr(adata, slot).keys()) for slot in _SLOTS}
    return keys


def _remove_added(mdata: md.MuData, keys: dict) -> None:
    """Delete what was added to ``mdata`` since :func:`_annotation_keys` (so a shared model's MuData can be reused)."""
    assert list(mdata.mod) == keys["mods"], "a test added or removed a modality of a shared MuData"
    for column in set(mdata.obs.columns) - keys["obs"]:
        del mdata.obs[column]
    for slot in ("obsm", "uns"):
        mapping = getattr(mdata, slot)
        for key in set(mapping.keys()) - keys[slot]:
            del mapping[key]
    for name, adata in mdata.mod.items():
        for slot in _SLOTS:
            mapping = getattr(adata, slot)
            for key in set(mapping.keys()) - keys[name][slot]:
                del mapping[key]


@pytest.fixture(scope="module")
def train_shared():
    """``train_shared(task, data=..., setup=..., model=..., train=...)``: train once for a module (seed 0).

    Use it in a module-scoped fixture and hand the model to tests through :func:`reuse_model`, which removes what
    each test wrote.
    """
    return _train_shared


@pytest.fixture
def reuse_model():
    """``reuse_model(model)``: give a test a shared model; what it writes to ``model.adata`` is removed afterwards."""
    pending = []

    def _reuse(model):
        pending.append((model.adata, _annotation_keys(model.adata)))
        return model

    yield _reuse
    for mdata, keys in pending:
        _remove_added(mdata, keys)
