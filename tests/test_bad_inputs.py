"""What every bad or unusual input gets: the table of ``docs/reliability.md``, one registered case per row.

Each case is a function registered with :func:`case` (area, input, behaviour); ``test_case`` runs them all and
``test_reliability_table_is_current`` checks that the documentation lists exactly these cases with the same words.
Errors must come from unitednet's own checks (the last traceback frame inside the package), never from deep inside
torch, numpy, scipy or anndata. Regenerate the table with ``python tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scvi
import torch
from scipy import sparse

import unitednet
from unitednet.__main__ import main
from unitednet.model import UnitedNetModel

PACKAGE = Path(unitednet.__file__).resolve().parent
DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
TINY = {"n_latent": 4, "n_hidden": 16, "n_layers": 1}
ONE_EPOCH = {"max_epochs": 1, "batch_size": 32, "enable_progress_bar": False}


@dataclass(frozen=True)
class Case:
    area: str
    given: str
    behaviour: str
    run: Callable


CASES: dict[str, Case] = {}


def case(area: str, given: str, behaviour: str):
    """Register a case of the reliability table."""

    def register(fn):
        assert fn.__name__ not in CASES, fn.__name__
        CASES[fn.__name__] = Case(area, given, behaviour, fn)
        return fn

    return register


class Context:
    """What a case needs: fresh tiny data, a shared trained model, a temporary folder."""

    def __init__(self, request):
        self.request = request
        self.make_mudata = request.getfixturevalue("make_mudata")
        self.tmp_path = request.getfixturevalue("tmp_path")

    @property
    def trained(self) -> UnitedNetModel:
        model = self.request.getfixturevalue("shared_model")
        return self.request.getfixturevalue("reuse_model")(model)

    def fit(self, mdata, task="supervised", setup=None, model=None, train=None) -> UnitedNetModel:
        scvi.settings.seed = 0  # every fit starts from the same seed, so fits can be compared
        UnitedNetModel.setup_mudata(mdata, **({"labels_key": "cell_type"} if setup is None else setup))
        net = UnitedNetModel(mdata, **{**TINY, **(model or {})})
        net.train(task, **{**ONE_EPOCH, **(train or {})})
        return net

    def query(self, mdata, modalities=("rna", "atac"), rows=slice(None)) -> md.MuData:
        mods = {m: mdata.mod[m][rows].copy() for m in modalities}
        return _mudata(mods)

    def saved(self, name="saved") -> Path:
        """The shared model saved to a folder (its MuData is a fresh copy of the training data, seed 0)."""
        path = self.tmp_path / name
        self.trained.save(path, overwrite=True)
        return path


def _mudata(mods) -> md.MuData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.MuData(dict(mods))


def refuses(exc: type[BaseException], match: str, fn: Callable, *args, **kwargs):
    """Assert that ``fn`` raises ``exc`` matching ``match``, from a check inside the unitednet package."""
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    last = Path(str(info.traceback[-1].path)).resolve()
    assert PACKAGE in last.parents, f"raised in {last}, not by unitednet's own input checks"
    return info


@pytest.fixture(scope="module")
def shared_model(train_shared):
    return train_shared("supervised")


# =====================================================================================================================
# set-up: the MuData and its modalities
# =====================================================================================================================
@case("Set-up", "an AnnData instead of a MuData", "`TypeError` saying to wrap it with `mudata.MuData({...})`")
def setup_anndata_object(ctx):
    mdata = ctx.make_mudata()
    refuses(TypeError, "Expected a MuData.*mudata.MuData", UnitedNetModel.setup_mudata, mdata.mod["rna"])
    refuses(NotImplementedError, "setup_mudata", UnitedNetModel.setup_anndata, mdata.mod["rna"])


@case("Set-up", "a MuData with 0 cells", "`ValueError`: the MuData has no cells")
def zero_cells(ctx):
    refuses(ValueError, "has no cells", UnitedNetModel.setup_mudata, ctx.make_mudata()[:0].copy())


@case("Set-up", "an unknown modality name", "`KeyError` naming it and listing the MuData's modalities")
def unknown_modality(ctx):
    mdata = ctx.make_mudata()
    refuses(
        KeyError,
        r"\['protein'\] are not in the MuData; available: \['rna', 'atac'\]",
        UnitedNetModel.setup_mudata,
        mdata,
        modalities=["rna", "protein"],
    )


@case(
    "Set-up", "a modality name in the wrong letter case (`RNA` for `rna`)", "`KeyError` saying names are case-sensitive"
)
def modality_letter_case(ctx):
    refuses(
        KeyError,
        "case-sensitive: 'RNA' is not 'rna'",
        UnitedNetModel.setup_mudata,
        ctx.make_mudata(),
        modalities=["RNA"],
    )


@case("Set-up", "a modality listed twice, or an empty list", "`ValueError` naming the problem")
def modalities_twice_or_none(ctx):
    mdata = ctx.make_mudata()
    refuses(ValueError, "listed twice", UnitedNetModel.setup_mudata, mdata, modalities=["rna", "rna"])
    refuses(ValueError, "at least one modality", UnitedNetModel.setup_mudata, mdata, modalities=[])


@case("Set-up", "an unknown layer", "`KeyError` listing the modality's layers and how to use `.X`")
def unknown_layer(ctx):
    refuses(
        KeyError,
        r"Layer 'counts' not found in modality 'rna'; available layers: \['raw'\]",
        UnitedNetModel.setup_mudata,
        ctx.make_mudata(),
        layers={"rna": "counts"},
    )


@case("Set-up", "`layers` or `likelihoods` naming a modality not set up", "`KeyError` naming it")
def settings_for_other_modalities(ctx):
    mdata = ctx.make_mudata()
    refuses(
        KeyError,
        r"`layers` names modalities \['atac'\]",
        UnitedNetModel.setup_mudata,
        mdata,
        modalities=["rna"],
        layers={"atac": None},
    )
    refuses(
        KeyError,
        r"`likelihoods` names modalities \['adt'\]",
        UnitedNetModel.setup_mudata,
        mdata,
        likelihoods={"adt": "gaussian"},
    )


@case("Set-up", "an unknown `labels_key` or `batch_key`", "`KeyError` listing the obs columns and `mdata.pull_obs()`")
def unknown_obs_key(ctx):
    for arg in ("labels_key", "batch_key"):
        refuses(
            KeyError,
            f"{arg}='nope' is not a column of mdata.obs.*pull_obs",
            UnitedNetModel.setup_mudata,
            ctx.make_mudata(),
            **{arg: "nope"},
        )


@case(
    "Set-up",
    "modalities holding different cells",
    "`ValueError` saying the cells must be paired, with `muon.pp.intersect_obs(mdata)`",
)
def cells_differ(ctx):
    full = ctx.make_mudata()
    mdata = _mudata({"rna": full.mod["rna"], "atac": full.mod["atac"][10:].copy()})
    refuses(ValueError, "does not hold exactly the MuData's cells.*intersect_obs", UnitedNetModel.setup_mudata, mdata)


@case(
    "Set-up",
    "a modality holding the same cells in another order",
    "refused, never re-aligned silently: `ValueError` with the command that aligns it",
)
def cells_reordered(ctx):
    full = ctx.make_mudata()
    mdata = _mudata({"rna": full.mod["rna"], "atac": full.mod["atac"][::-1].copy()})
    refuses(
        ValueError,
        r"'atac' holds the MuData's cells in another order.*\[mdata.obs_names\]",
        UnitedNetModel.setup_mudata,
        mdata,
    )


@case("Set-up", "duplicated cell names (obs_names)", "`ValueError` with `obs_names_make_unique()`")
def cells_duplicated(ctx):
    full = ctx.make_mudata()
    names = [f"c{i // 2}" for i in range(full.n_obs)]
    mods = {}
    for m, adata in full.mod.items():
        adata = adata.copy()
        adata.obs_names = names
        mods[m] = adata
    refuses(ValueError, "obs_names.*not unique.*obs_names_make_unique", UnitedNetModel.setup_mudata, _mudata(mods))


@case("Set-up", "duplicated feature names in a modality", "`ValueError` with `var_names_make_unique()`")
def features_duplicated(ctx):
    mdata = ctx.make_mudata()
    mdata.mod["rna"].var_names = ["g"] * 2 + [f"gene{i}" for i in range(22)]
    refuses(
        ValueError,
        "Feature names of modality 'rna' are not unique.*var_names_make_unique",
        UnitedNetModel.setup_mudata,
        mdata,
    )


@case("Set-up", "a modality with 0 cells beside others with cells", "`ValueError`: the cells must be paired")
def modality_without_cells(ctx):
    full = ctx.make_mudata()
    mdata = _mudata({"rna": full.mod["rna"], "atac": full.mod["atac"][:0].copy()})
    refuses(
        ValueError,
        r"Modality 'atac' does not hold exactly the MuData's cells in the same order \(0 of 150 cells\)",
        UnitedNetModel.setup_mudata,
        mdata,
    )


@case("Set-up", "a modality with 0 features", "`ValueError`: leave it out with `modalities=[...]`")
def zero_features(ctx):
    mdata = ctx.make_mudata()
    mdata.mod["adt"] = ad.AnnData(np.zeros((mdata.n_obs, 0), np.float32), obs=mdata.mod["rna"].obs.copy())
    mdata.update()
    refuses(ValueError, "Modality 'adt' has no features", UnitedNetModel.setup_mudata, mdata)


@case("Set-up", "a single modality", "trains; the fused latent is that modality's latent, and it reconstructs itself")
def single_modality(ctx):
    mdata = ctx.make_mudata()
    model = ctx.fit(mdata, setup={"modalities": ["rna"], "labels_key": "cell_type"})
    np.testing.assert_array_equal(model.get_latent_representation(), model.get_latent_representation(modality="rna"))
    assert model.predict_modality(source="rna", target="rna").shape == (150, 24)
    assert set(model.predict_labels()) <= {"alpha", "beta", "gamma"}


@case("Set-up", "NaN or inf values, dense or sparse", "`ValueError` counting them, with the fix (impute or drop)")
def nan_or_inf_values(ctx):
    mdata = ctx.make_mudata()
    mdata.mod["rna"].X[5, 2] = np.nan
    refuses(ValueError, r"Modality 'rna' \(X\) contains 1 NaN or infinite values", UnitedNetModel.setup_mudata, mdata)
    mdata = ctx.make_mudata()
    bad = mdata.mod["atac"].X.copy()
    bad.data[:2] = np.inf
    mdata.mod["atac"].layers["bad"] = bad
    refuses(
        ValueError,
        r"'atac' \(layer 'bad'\) contains 2 NaN or infinite",
        UnitedNetModel.setup_mudata,
        mdata,
        layers={"atac": "bad"},
    )


@case("Set-up", "non-binary data declared `bernoulli`", "`ValueError` with the binarising command")
def non_binary_bernoulli(ctx):
    refuses(
        ValueError,
        r"declared 'bernoulli' but holds values other than 0 and 1.*Binarise",
        UnitedNetModel.setup_mudata,
        ctx.make_mudata(),
        likelihoods={"rna": "bernoulli"},
    )


@case(
    "Set-up",
    "negative or non-integer values declared `nb` (raw counts)",
    "`ValueError` counting them, pointing to the raw-counts layer or `gaussian`",
)
def counts_not_integer(ctx):
    mdata = ctx.make_mudata()
    mdata.mod["rna"].layers["counts"] = np.abs(np.round(mdata.mod["rna"].X * 3))
    mdata.mod["rna"].layers["counts"][0, :2] = [-1.0, 2.5]
    refuses(
        ValueError,
        r"'rna' \(layer 'counts'\) is declared 'nb' .* holds 1 negative values.*layers=",
        UnitedNetModel.setup_mudata,
        mdata,
        layers={"rna": "counts"},
        likelihoods={"rna": "nb"},
    )
    mdata.mod["rna"].layers["counts"][0, 0] = 1.0
    refuses(
        ValueError,
        "holds 1 non-integer values",
        UnitedNetModel.setup_mudata,
        mdata,
        layers={"rna": "counts"},
        likelihoods={"rna": "nb"},
    )


@case("Set-up", "raw counts declared `nb`, dense or CSR", "trains; predictions are expected counts (finite, >= 0)")
def counts_dense_or_sparse(ctx):
    for convert in (np.asarray, sparse.csr_matrix):
        mdata = ctx.make_mudata()
        mdata.mod["rna"].X = convert(np.abs(np.round(mdata.mod["rna"].X * 3)).astype(np.float32))
        model = ctx.fit(mdata, setup={"labels_key": "cell_type", "likelihoods": {"rna": "nb"}})
        counts = model.predict_modality(source="atac", target="rna")
        assert np.isfinite(counts).all() and (counts >= 0).all()
        assert np.isfinite(model.get_latent_representation()).all()


@case("Set-up", "an unknown likelihood", "`ValueError` listing the likelihoods")
def unknown_likelihood(ctx):
    refuses(
        ValueError,
        "Likelihood of 'rna' must be",
        UnitedNetModel.setup_mudata,
        ctx.make_mudata(),
        likelihoods={"rna": "poisson"},
    )


@case(
    "Set-up",
    "the same values stored as float32, float64, integers, CSR or CSC",
    "the same model to float32 rounding: identical statistics, the same losses and latents; one model reads every "
    "format alike",
)
def storage_formats(ctx):
    def fit(convert):
        mdata = ctx.make_mudata()
        mdata.mod["rna"].X = convert(np.round(mdata.mod["rna"].X))
        return ctx.fit(mdata), mdata

    reference, _ = fit(lambda X: X.astype(np.float32))
    for convert in (
        lambda X: X.astype(np.float64),
        lambda X: X.astype(np.int64),
        lambda X: sparse.csr_matrix(X),
        lambda X: sparse.csc_matrix(X),
    ):
        model, mdata = fit(convert)
        for m in model.modalities:
            assert torch.equal(model.module.standardizers[m].loc, reference.module.standardizers[m].loc)
            assert torch.equal(model.module.standardizers[m].scale, reference.module.standardizers[m].scale)
        # a sparse matrix enters the first layer through a sparse product, whose float32 rounding differs from the
        # dense one's; training amplifies that only slightly
        np.testing.assert_allclose(model.history["validation_loss"], reference.history["validation_loss"], rtol=1e-3)
        np.testing.assert_allclose(model.get_latent_representation(), reference.get_latent_representation(), atol=0.02)
        np.testing.assert_allclose(
            reference.get_latent_representation(mdata), reference.get_latent_representation(), rtol=1e-5, atol=1e-5
        )


@case(
    "Set-up",
    "a MuData read in backed mode (`read_h5mu(path, backed=True)`)",
    "trains and infers reading each batch's rows from the file: the same model and outputs as in memory",
)
def backed_mudata(ctx):
    path = ctx.tmp_path / "data.h5mu"
    ctx.make_mudata().write_h5mu(path)
    in_memory = md.read_h5mu(path)
    reference = ctx.fit(in_memory)
    backed = md.read_h5mu(path, backed=True)
    model = ctx.fit(backed)
    assert all(backed.mod[m].isbacked for m in model.modalities)
    np.testing.assert_array_equal(model.split_, reference.split_)
    latent = model.get_latent_representation()
    np.testing.assert_allclose(latent, reference.get_latent_representation(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(latent, model.get_latent_representation(in_memory), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        model.predict_modality(source="atac", target="rna"),
        reference.predict_modality(source="atac", target="rna"),
        rtol=1e-4,
        atol=1e-5,
    )


# =====================================================================================================================
# labels
# =====================================================================================================================
@case(
    "Labels", "labels with a single class", "`ValueError` at model creation: nothing to classify; set up without labels"
)
def labels_one_class(ctx):
    mdata = ctx.make_mudata(group_sizes=(40,))
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    refuses(ValueError, r"single category \('alpha'\): there is nothing to classify", UnitedNetModel, mdata, **TINY)
    assert UnitedNetModel(mdata, n_groups=0, **TINY).module.heads is None


@case(
    "Labels",
    "a class of one cell (rare types in an atlas)",
    "trains; a warning names the class; its cell stays in training",
)
def label_of_one_cell(ctx):
    mdata = ctx.make_mudata(group_sizes=(60, 59, 1))
    with pytest.warns(UserWarning, match=r"1 label/batch group\(s\) have a single cell \('gamma'\)"):
        model = ctx.fit(mdata, train={"train_size": 0.8, "validation_size": 0.1})
    assert model.split_[np.flatnonzero(mdata.obs["cell_type"] == "gamma")].tolist() == ["train"]
    assert {"validation", "test"} <= set(model.split_)


@case("Labels", "missing (NaN) labels", "`ValueError` counting them: drop those cells or fill the column")
def labels_missing(ctx):
    mdata = ctx.make_mudata()
    mdata.obs["cell_type"] = mdata.obs["cell_type"].astype(object)
    mdata.obs.iloc[3, mdata.obs.columns.get_loc("cell_type")] = None
    refuses(
        ValueError,
        r"mdata.obs\['cell_type'\] has 1 missing values; drop",
        UnitedNetModel.setup_mudata,
        mdata,
        labels_key="cell_type",
    )


@case("Labels", "numeric labels", "trains; predicted labels are the numbers as strings")
def labels_numeric(ctx):
    mdata = ctx.make_mudata()
    mdata.obs["code"] = mdata.obs["cell_type"].cat.codes.astype(int) * 10
    model = ctx.fit(mdata, setup={"labels_key": "code"})
    assert model.group_names == ["0", "10", "20"]
    assert set(model.predict_labels()) <= {"0", "10", "20"}


# =====================================================================================================================
# model and training arguments
# =====================================================================================================================
@case("Training", "an unknown loss-weight name", "`KeyError` listing the valid names")
def loss_weight_unknown(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata)
    refuses(
        KeyError, r"Unknown loss weights \['recon'\]; valid names", UnitedNetModel, mdata, loss_weights={"recon": 1.0}
    )


@case("Training", "a NaN, infinite or negative loss weight", "`ValueError`: weights must be finite numbers >= 0")
def loss_weight_not_finite(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata)
    for bad in (float("nan"), float("inf"), -1.0, "high"):
        refuses(
            ValueError, "Loss weights must be finite numbers >= 0", UnitedNetModel, mdata, loss_weights={"ddc": bad}
        )


@case("Training", "`n_groups=1`", "`ValueError`: 0 (translation only) or at least 2")
def n_groups_one(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata)
    refuses(ValueError, r"n_groups must be 0 \(translation only\) or at least 2", UnitedNetModel, mdata, n_groups=1)


@case("Training", "an unknown task", "`ValueError` listing the tasks")
def unknown_task(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata)
    refuses(ValueError, "task must be one of", UnitedNetModel(mdata, **TINY).train, "regression")


@case(
    "Training",
    "`max_epochs` of 0, negative or not an integer",
    "`ValueError`: an integer >= 1 (no untrained 'trained' model)",
)
def max_epochs_invalid(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **TINY)
    for bad in (0, -1, 2.5):
        refuses(ValueError, f"max_epochs must be an integer >= 1; got {bad}", model.train, max_epochs=bad)
    assert not model.is_trained_


@case("Training", "a training batch size of 0 or 1", "`ValueError`: at least 2 cells per batch, and why")
def batch_size_too_small(ctx):
    mdata = ctx.make_mudata()
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, **TINY)
    for bad in (0, 1):
        refuses(ValueError, "batch_size must be an integer >= 2 for training.*batch", model.train, batch_size=bad)


@case("Training", "a batch size larger than the data", "trains with one batch per epoch")
def batch_size_larger_than_data(ctx):
    mdata = ctx.make_mudata()
    model = ctx.fit(mdata, train={"batch_size": 1000, "max_epochs": 2})
    assert len(model.history["validation_loss"]) == 2
    assert np.isfinite(model.get_latent_representation()).all()


@case(
    "Training",
    "a user split (`split_key`) with values other than train / validation / test",
    "`ValueError` naming them",
)
def split_key_values(ctx):
    mdata = ctx.make_mudata()
    mdata.obs["split"] = np.where(np.arange(mdata.n_obs) % 2, "train", "holdout")
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    refuses(
        ValueError,
        r"must hold 'train', 'validation' or 'test'; found \['holdout'\]",
        UnitedNetModel(mdata, **TINY).train,
        split_key="split",
    )


@case("Outputs", "an unknown modality asked of a trained model", "`KeyError` listing the registered modalities")
def outputs_unknown_modality(ctx):
    model = ctx.trained
    registered = r"\['x'\] are not registered in the model; registered: \['rna', 'atac'\]"
    refuses(KeyError, registered, model.get_latent_representation, modality="x")
    refuses(KeyError, registered, model.predict_modality, source="x", target="rna")
    refuses(KeyError, "Unknown target modality 'x'", model.predict_modality, source="rna", target="x")


@case(
    "Outputs",
    "an inference batch size of 0 or negative; 1 is fine",
    "`ValueError`; batch size 1 gives the same latents",
)
def inference_batch_size(ctx):
    model = ctx.trained
    for bad in (0, -1):
        refuses(ValueError, "batch_size must be an integer >= 1", model.get_latent_representation, batch_size=bad)
    np.testing.assert_allclose(
        model.get_latent_representation(batch_size=1), model.get_latent_representation(), rtol=1e-5, atol=1e-6
    )


# =====================================================================================================================
# queries: a MuData that was not registered, given to a trained model
# =====================================================================================================================
@case("Query", "an AnnData instead of a MuData", "`TypeError` saying to wrap it")
def query_anndata(ctx):
    refuses(
        TypeError, "Expected a MuData", ctx.trained.get_latent_representation, ad.AnnData(np.zeros((3, 24), np.float32))
    )


@case("Query", "features in another order, or extra features", "features matched by name: the same results")
def query_features_reordered_or_extra(ctx):
    model, mdata = ctx.trained, ctx.trained.adata
    query = ctx.query(mdata)
    rng = np.random.default_rng(0)
    shuffled = _mudata(
        {
            "rna": query.mod["rna"][:, rng.permutation(24)].copy(),
            "atac": query.mod["atac"][:, rng.permutation(32)].copy(),
        }
    )
    extra = ad.concat(
        [query.mod["rna"], ad.AnnData(np.ones((mdata.n_obs, 2), np.float32), obs=query.mod["rna"].obs)], axis=1
    )
    extra.var_names = [*query.mod["rna"].var_names, "extra1", "extra2"]
    expected = model.get_latent_representation(query)
    np.testing.assert_allclose(model.get_latent_representation(shuffled), expected, rtol=1e-6)
    np.testing.assert_allclose(
        model.predict_modality(shuffled, source="atac", target="rna"),
        model.predict_modality(query, source="atac", target="rna"),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        model.get_latent_representation(_mudata({"rna": extra, "atac": query.mod["atac"]})), expected, rtol=1e-6
    )


@case("Query", "missing features", "`ValueError` counting them, with the subsetting command")
def query_features_missing(ctx):
    query = _mudata({"rna": ctx.trained.adata.mod["rna"][:, 3:].copy()})
    refuses(
        ValueError,
        r"Modality 'rna' lacks 3 of the model's features .*gene0",
        ctx.trained.get_latent_representation,
        query,
    )


@case("Query", "the registered layer missing", "`KeyError` naming the layer the model reads")
def query_layer_missing(ctx):
    mdata = ctx.make_mudata()
    model = ctx.fit(mdata, "translation", setup={"layers": {"rna": "raw"}})
    query = _mudata(
        {"rna": ad.AnnData(mdata.mod["rna"].X.copy(), obs=mdata.mod["rna"].obs[[]], var=mdata.mod["rna"].var)}
    )
    refuses(KeyError, "Modality 'rna' of the query has no layer 'raw'", model.get_latent_representation, query)
    query.mod["rna"].layers["raw"] = query.mod["rna"].X.copy()
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(modality="rna"), rtol=1e-6
    )


@case(
    "Query",
    "a missing modality",
    "the present modalities are fused with renormalised weights; a missing `source` is a `KeyError`",
)
def query_modality_missing(ctx):
    model = ctx.trained
    query = ctx.query(model.adata, ("rna",))
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(modality="rna"), rtol=1e-5, atol=1e-6
    )
    refuses(
        KeyError,
        r"Modalities \['atac'\] are not in the MuData; available: \['rna'\]",
        model.predict_modality,
        query,
        source="atac",
        target="rna",
    )
    refuses(
        KeyError,
        r"Modalities \['protein'\] are not registered",
        model.predict_modality,
        query,
        source="protein",
        target="rna",
    )


@case("Query", "a modality renamed only in letter case (`RNA`)", "`KeyError` with the renaming command")
def query_modality_letter_case(ctx):
    query = ctx.query(ctx.trained.adata)
    query.mod["RNA"] = query.mod.pop("rna")
    refuses(
        KeyError,
        r"'RNA' differ from the model's 'rna' only by letter case.*query.mod\['rna'\] = query.mod.pop\('RNA'\)",
        ctx.trained.get_latent_representation,
        query,
    )


@case(
    "Query",
    "a modality renamed otherwise, while a model modality is missing",
    "a warning names the ignored and the missing modalities",
)
def query_modality_renamed(ctx):
    model = ctx.trained
    query = ctx.query(model.adata)
    query.mod["expression"] = query.mod.pop("rna")
    with pytest.warns(
        UserWarning, match=r"\['expression'\] are not modalities of the model.*\['rna'\] are missing"
    ) as record:
        latent = model.get_latent_representation(query)
    # one warning per call, pointing at the caller's line
    assert [Path(w.filename).name for w in record if "not modalities" in str(w.message)] == [Path(__file__).name]
    np.testing.assert_allclose(latent, model.get_latent_representation(modality="atac"), rtol=1e-5, atol=1e-6)


@case("Query", "none of the model's modalities", "`ValueError` listing both sets")
def query_no_known_modality(ctx):
    query = _mudata({"adt": ad.AnnData(np.zeros((4, 3), np.float32))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refuses(ValueError, "none of the model's modalities", ctx.trained.get_latent_representation, query)


@case("Query", "fewer cells than a batch, down to one cell", "the same latents as for those cells in a larger query")
def query_few_cells(ctx):
    model = ctx.trained
    full = model.get_latent_representation(ctx.query(model.adata))
    for n in (1, 5):
        np.testing.assert_allclose(
            model.get_latent_representation(ctx.query(model.adata, rows=slice(0, n))), full[:n], rtol=1e-5, atol=1e-6
        )


@case("Query", "0 cells", "`ValueError`: the MuData has no cells")
def query_zero_cells(ctx):
    refuses(
        ValueError,
        "has no cells",
        ctx.trained.get_latent_representation,
        ctx.query(ctx.trained.adata, rows=slice(0, 0)),
    )


@case("Query", "NaN values", "`ValueError` counting them")
def query_nan(ctx):
    query = ctx.query(ctx.trained.adata, ("rna",))
    query.mod["rna"].X[0, 0] = np.nan
    refuses(ValueError, "Query modality 'rna' contains 1 NaN or infinite", ctx.trained.predict_labels, query)


@case(
    "Query",
    "an ensemble (`tl.predict_modality([m1, m2, ...])`) whose models predict other target features, or that are "
    "registered on different MuData objects with no `mdata` given",
    "`ValueError` naming the model at fault, or asking for `mdata=...`",
)
def ensemble_mismatch(ctx):
    model = ctx.trained
    reordered = ctx.make_mudata()
    reordered.mod["atac"] = reordered.mod["atac"][:, ::-1].copy()
    reordered.update()
    other = ctx.fit(reordered)
    refuses(
        ValueError,
        "Model 1 of the ensemble predicts other 'atac' features",
        unitednet.tl.predict_modality,
        [model, other],
        model.adata,
        source="rna",
        target="atac",
    )
    elsewhere = ctx.fit(ctx.make_mudata())
    refuses(
        ValueError,
        "registered on different MuData objects; pass the MuData",
        unitednet.tl.predict_modality,
        [model, elsewhere],
        source="rna",
        target="atac",
    )


# =====================================================================================================================
# save / load
# =====================================================================================================================
@case("Save / load", "a folder without a saved model", "`FileNotFoundError` naming the folder")
def load_missing_folder(ctx):
    refuses(
        FileNotFoundError,
        "No saved model at .*model.pt is missing",
        UnitedNetModel.load,
        ctx.tmp_path / "nothing",
        adata=ctx.make_mudata(),
    )


@case(
    "Save / load", "a MuData whose features are in another order", "`ValueError` (weights are positional) with the fix"
)
def load_features_reordered(ctx):
    path = ctx.saved()
    mdata = ctx.make_mudata()
    mdata.mod["rna"] = mdata.mod["rna"][:, ::-1].copy()
    refuses(
        ValueError,
        r"Modality 'rna' of the MuData has the training features in another order.*saved_var_names",
        UnitedNetModel.load,
        path,
        adata=mdata,
    )
    names = UnitedNetModel.saved_var_names(path)["rna"]
    mdata.mod["rna"] = mdata.mod["rna"][:, names].copy()
    np.testing.assert_array_equal(
        UnitedNetModel.load(path, adata=mdata).get_latent_representation(), ctx.trained.get_latent_representation()
    )


@case("Save / load", "a MuData with renamed or fewer features", "`ValueError` counting the missing features")
def load_features_renamed(ctx):
    path = ctx.saved()
    mdata = ctx.make_mudata()
    mdata.mod["rna"].var_names = [f"g{i}" for i in range(24)]
    refuses(ValueError, "24 of the model's features are missing", UnitedNetModel.load, path, adata=mdata)
    mdata = ctx.make_mudata()
    mdata.mod["rna"] = mdata.mod["rna"][:, :20].copy()
    refuses(ValueError, "20 features where the model has 24", UnitedNetModel.load, path, adata=mdata)


@case("Save / load", "a MuData without one of the model's modalities, or an AnnData", "`KeyError` / `TypeError`")
def load_modality_missing(ctx):
    path = ctx.saved()
    mdata = ctx.make_mudata()
    refuses(
        KeyError,
        r"The MuData has no modalities \['atac'\]",
        UnitedNetModel.load,
        path,
        adata=_mudata({"rna": mdata.mod["rna"]}),
    )
    refuses(TypeError, "Expected a MuData", UnitedNetModel.load, path, adata=mdata.mod["rna"])


# =====================================================================================================================
# command line
# =====================================================================================================================
def _cli(capsys, *argv) -> tuple[int | str, str]:
    with pytest.raises(SystemExit) as info:
        main(["fit", *argv])
    return info.value.code, capsys.readouterr().err


@case("Command line", "a missing file", "exits naming the file and the built-in datasets")
def cli_missing_file(ctx):
    code, _ = _cli(ctx.request.getfixturevalue("capsys"), str(ctx.tmp_path / "none.h5mu"))
    assert "is neither an .h5mu file nor a built-in dataset" in str(code)


@case(
    "Command line",
    "an .h5ad file, or a file that is not HDF5",
    "exits saying what the file is and how to make a MuData",
)
def cli_not_h5mu(ctx):
    capsys = ctx.request.getfixturevalue("capsys")
    h5ad = ctx.tmp_path / "data.h5ad"
    ctx.make_mudata().mod["rna"].write_h5ad(h5ad)
    code, _ = _cli(capsys, str(h5ad), "--out", str(ctx.tmp_path / "out"))
    assert "holds a single AnnData (.h5ad), not a MuData" in str(code) and "mudata.MuData" in str(code)
    text = ctx.tmp_path / "notes.h5mu"
    text.write_text("not hdf5")
    code, _ = _cli(capsys, str(text))
    assert "is not an HDF5 file" in str(code)
    assert not (ctx.tmp_path / "out").exists()


@case(
    "Command line",
    "a bad option value (epochs 0, batch 1, train size 1.5, learning rate NaN, weight inf, unknown task)",
    "exit status 2 with argparse's message naming the option",
)
def cli_bad_option_values(ctx):
    capsys = ctx.request.getfixturevalue("capsys")
    for option, value, message in (
        ("--max-epochs", "0", "must be >= 1"),
        ("--batch-size", "1", "must be >= 2"),
        ("--train-size", "1.5", r"must be in \(0, 1\]"),
        ("--lr", "nan", "must be a finite number > 0"),
        ("--loss-weight", "ddc=inf", "must be a finite number >= 0"),
        ("--task", "classify", "invalid choice: 'classify'"),
    ):
        code, err = _cli(capsys, "patchseq", option, value)
        assert code == 2 and re.search(message, err) and option in err, (option, err)


@case(
    "Command line",
    "options the data cannot satisfy (unknown modality, supervised without labels)",
    "exit status 2 with the package's message, no traceback",
)
def cli_data_mismatch(ctx):
    capsys = ctx.request.getfixturevalue("capsys")
    path = ctx.tmp_path / "tiny.h5mu"
    ctx.make_mudata().write_h5mu(path)
    assert main(["fit", str(path), "--labels-key", "cell_type", "--modalities", "rna", "protein"]) == 2
    assert "unitednet fit: Modalities ['protein'] are not in the MuData" in capsys.readouterr().err
    code, _ = _cli(capsys, str(path))
    assert "the supervised task needs --labels-key" in str(code)


# =====================================================================================================================
# the runner and the table
# =====================================================================================================================
@pytest.mark.parametrize("name", list(CASES))
def test_case(name, request):
    CASES[name].run(Context(request))


def render_table() -> str:
    """The table of docs/reliability.md, one row per case."""
    rows = ["| Area | Input | Behaviour | Test case |", "|---|---|---|---|"]
    for name, c in CASES.items():
        rows.append(f"| {c.area} | {c.given} | {c.behaviour} | `{name}` |")
    return "\n".join(rows)


def test_reliability_table_is_current():
    text = DOC.read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    assert table == render_table(), (
        "docs/reliability.md is out of date: regenerate with python tests/test_bad_inputs.py"
    )


if __name__ == "__main__":
    sys.stdout.write(render_table() + "\n")
