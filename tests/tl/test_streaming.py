"""tl.predict_modality(..., out=path): the prediction streamed to an .h5ad file one minibatch at a time."""

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pytest

import unitednet as un
from unitednet.model import UnitedNetModel
from unitednet.tl import _writers

BATCH = 40  # 150 cells: three full batches and one of 30


@pytest.fixture(scope="module")
def _supervised_once(train_shared):
    return train_shared("supervised")


@pytest.fixture
def model(_supervised_once, reuse_model):
    return reuse_model(_supervised_once)


@pytest.fixture
def backed(tmp_path, make_mudata):
    """The model's data (same seed) written to disk and read back with ``backed=True``."""
    path = tmp_path / "cells.h5mu"
    make_mudata().write(path)
    data = md.read_h5mu(path, backed=True)
    yield data
    data.file.close()


def _stream(model, mdata=None, **kwargs):
    kwargs.setdefault("batch_size", BATCH)
    result = un.tl.predict_modality(model, mdata, **kwargs)
    assert isinstance(result, ad.AnnData) and result.isbacked
    return result


def _assert_file_equals(path, result, expected, obs_names, var_names):
    """The backed result and the file read into memory both hold exactly ``expected`` with these names."""
    for adata in (result, ad.read_h5ad(path), ad.read_h5ad(path, backed="r")):
        X = adata.X[:]
        assert X.dtype == np.float32 and expected.dtype == np.float32
        np.testing.assert_array_equal(X, expected)
        assert adata.obs_names.equals(obs_names)
        assert adata.var_names.equals(var_names)
        if adata.isbacked:
            adata.file.close()


# ---------------------------------------------------------------------------------------------------------------------
# values and names
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "target"), [("atac", "rna"), ("rna", "atac")])
def test_streamed_file_equals_the_in_memory_prediction(model, tmp_path, source, target):
    # atac -> rna: a sparse source and a dense gaussian target; rna -> atac: a dense source, bernoulli target
    path = tmp_path / "pred.h5ad"
    result = _stream(model, source=source, target=target, out=path)
    expected = model.predict_modality(source=source, target=target, batch_size=BATCH)
    assert result.shape == expected.shape == (model.adata.n_obs, model.n_features(target))
    _assert_file_equals(path, result, expected, model.adata.obs_names, model.var_names(target))


def test_streamed_file_is_laid_out_as_write_h5ad_writes_it(model, tmp_path):
    path = tmp_path / "pred.h5ad"
    result = _stream(model, source="atac", target="rna", out=path)
    reference = tmp_path / "reference.h5ad"
    result.to_memory().write_h5ad(reference)
    result.file.close()
    with h5py.File(path, "r") as f, h5py.File(reference, "r") as ref:
        assert dict(f.attrs) == dict(ref.attrs)
        assert set(f) == set(ref)
        for key in f:
            assert dict(f[key].attrs).keys() == dict(ref[key].attrs).keys(), key
            assert f[key].attrs["encoding-type"] == ref[key].attrs["encoding-type"], key
            assert f[key].attrs["encoding-version"] == ref[key].attrs["encoding-version"], key
        X = f["X"]
        assert X.shape == (150, 24) and X.dtype == np.float32
        assert X.chunks == (BATCH, 24)  # chunked by rows: each batch fills one chunk


def test_streamed_query_without_the_target_modality(model, tmp_path, make_query):
    query = make_query(model.adata, ("atac",))
    path = tmp_path / "pred.h5ad"
    result = _stream(model, query, source="atac", target="rna", out=path)
    expected = model.predict_modality(query, source="atac", target="rna", batch_size=BATCH)
    _assert_file_equals(path, result, expected, query.obs_names, model.var_names("rna"))
    assert list(query.mod) == ["atac"]  # no placeholder modality is added


def test_default_batch_size_streams_too(model, tmp_path):
    path = tmp_path / "pred.h5ad"
    result = un.tl.predict_modality(model, source="atac", target="rna", out=str(path))
    expected = model.predict_modality(source="atac", target="rna")
    _assert_file_equals(path, result, expected, model.adata.obs_names, model.var_names("rna"))


# ---------------------------------------------------------------------------------------------------------------------
# backed MuData
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "target"), [("atac", "rna"), ("rna", "atac")])
def test_streamed_from_a_backed_query(model, backed, tmp_path, source, target):
    path = tmp_path / "pred.h5ad"
    layers = {m: list(backed.mod[m].layers) for m in ("rna", "atac")}
    result = _stream(model, backed, source=source, target=target, out=path)
    expected = model.predict_modality(backed, source=source, target=target, batch_size=BATCH)
    _assert_file_equals(path, result, expected, backed.obs_names, model.var_names(target))
    # the same cells in memory (the model's registered data) give the same prediction
    np.testing.assert_array_equal(expected, model.predict_modality(source=source, target=target, batch_size=BATCH))
    for m in ("rna", "atac"):  # still on disk, nothing loaded or added
        assert backed.mod[m].isbacked
        assert not isinstance(backed.mod[m].X, np.ndarray)
        assert list(backed.mod[m].layers) == layers[m]


def test_streamed_from_a_model_registered_on_a_backed_mudata(fit, backed, tmp_path):
    model = fit(backed)
    path = tmp_path / "pred.h5ad"
    result = _stream(model, source="atac", target="rna", out=path)
    expected = model.predict_modality(source="atac", target="rna", batch_size=BATCH)
    _assert_file_equals(path, result, expected, backed.obs_names, model.var_names("rna"))
    assert backed.mod["rna"].isbacked and list(backed.mod["rna"].layers) == ["raw"]


# ---------------------------------------------------------------------------------------------------------------------
# memory bounded by the batch
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [16, 150, 1000])
def test_no_array_of_more_rows_than_the_batch_is_made(model, tmp_path, monkeypatch, batch_size):
    writes, concatenated = [], []
    setitem = h5py.Dataset.__setitem__

    def spy_setitem(self, key, value):
        writes.append((self.name, np.shape(value), key))
        return setitem(self, key, value)

    concatenate = np.concatenate

    def spy_concatenate(arrays, *args, **kwargs):
        result = concatenate(arrays, *args, **kwargs)
        concatenated.append(result.shape)
        return result

    def refuse(*args, **kwargs):
        raise AssertionError("the in-memory prediction was computed")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", spy_setitem)
    monkeypatch.setattr(np, "concatenate", spy_concatenate)
    monkeypatch.setattr(UnitedNetModel, "predict_modality", refuse)
    path = tmp_path / "pred.h5ad"
    result = _stream(model, source="atac", target="rna", batch_size=batch_size, out=path)
    monkeypatch.undo()

    n_obs, step = model.adata.n_obs, min(batch_size, model.adata.n_obs)
    blocks = [(shape, key) for name, shape, key in writes if name == "/X"]
    assert [shape for shape, _ in blocks] == [(min(step, n_obs - s), 24) for s in range(0, n_obs, step)]
    assert [key for _, key in blocks] == [slice(s, min(s + step, n_obs)) for s in range(0, n_obs, step)]
    # nothing on the prediction path concatenates blocks (any concatenation is of a batch's rows at most)
    assert all(len(shape) < 2 or shape[0] <= step for shape in concatenated), concatenated
    np.testing.assert_array_equal(result.X[:], model.predict_modality(source="atac", target="rna", batch_size=step))
    result.file.close()


def test_chunks_divide_the_batch_and_fit_the_chunk_cache():
    # 1M cells x 20k features in batches of 128: 8 rows (640 KB) a chunk, 16 chunks a batch
    assert _writers._chunk_rows(128, 20_000) == 8
    for batch, n_vars in [(128, 20_000), (1000, 33_538), (97, 30_000), (40, 24), (1, 300_000)]:
        rows = _writers._chunk_rows(batch, n_vars)
        assert batch % rows == 0
        assert rows == 1 or rows * n_vars * 4 <= _writers._CHUNK_BYTES


# ---------------------------------------------------------------------------------------------------------------------
# the MuData is left alone
# ---------------------------------------------------------------------------------------------------------------------
def test_streamed_call_leaves_the_mudata_unchanged(model, tmp_path, snapshot, assert_unchanged, make_query):
    snap = snapshot(model.adata)
    _stream(model, source="rna", target="atac", out=tmp_path / "a.h5ad").file.close()
    assert_unchanged(model.adata, snap)
    query = make_query(model.adata, ("rna", "atac"))
    snap = snapshot(query)
    _stream(model, query, source="atac", target="rna", out=tmp_path / "b.h5ad").file.close()
    assert_unchanged(query, snap)


# ---------------------------------------------------------------------------------------------------------------------
# refusals and failures
# ---------------------------------------------------------------------------------------------------------------------
def test_existing_file_is_refused_unless_overwrite(model, tmp_path):
    path = tmp_path / "pred.h5ad"
    first = _stream(model, source="rna", target="atac", out=path)
    with pytest.raises(ValueError, match=r"already exists; pass overwrite=True to replace it"):
        un.tl.predict_modality(model, source="atac", target="rna", out=path)
    # replaced while the first result is still open; that one keeps reading the file it opened
    second = _stream(model, source="atac", target="rna", out=path, overwrite=True)
    assert second.shape == (150, 24) and first.shape == (150, 32)
    np.testing.assert_array_equal(second.X[:], model.predict_modality(source="atac", target="rna", batch_size=BATCH))
    np.testing.assert_array_equal(first.X[:], model.predict_modality(source="rna", target="atac", batch_size=BATCH))
    first.file.close()
    second.file.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"out": "pred.h5"}, ValueError, r"must be the path of an \.h5ad file; give a name ending in '\.h5ad'"),
        ({"out": "pred.h5ad", "copy": True}, ValueError, r"copy=True has nothing to copy; drop copy=True"),
        ({"out": "pred.h5ad", "key_added": "p"}, ValueError, r"key_added='p' names a layer .* drop key_added"),
        ({"overwrite": True}, ValueError, r"overwrite=True only applies to a file given as out="),
        ({"out": "missing/pred.h5ad"}, FileNotFoundError, r"does not exist; create it first"),
        ({"out": "folder.h5ad"}, ValueError, r"is a folder; give the path of an \.h5ad file"),
    ],
)
def test_refusals_name_the_fix(model, tmp_path, monkeypatch, snapshot, assert_unchanged, kwargs, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder.h5ad").mkdir()
    snap = snapshot(model.adata)
    with pytest.raises(error, match=message):
        un.tl.predict_modality(model, source="rna", target="atac", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.h5ad"]
    assert_unchanged(model.adata, snap)


def test_bad_inputs_are_refused_before_any_file_is_made(model, tmp_path, make_query):
    path = tmp_path / "pred.h5ad"
    with pytest.raises(KeyError, match="Unknown target modality"):
        un.tl.predict_modality(model, source="rna", target="adt", out=path)
    with pytest.raises(ValueError, match="batch_size"):
        un.tl.predict_modality(model, source="rna", target="atac", batch_size=0, out=path)
    query = make_query(model.adata, ("rna",))
    query.mod["rna"].X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        un.tl.predict_modality(model, query, source="rna", target="atac", out=path)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_streaming_leaves_no_file(model, tmp_path, monkeypatch):
    blocks = UnitedNetModel._prediction_blocks

    def fail_after_one_block(self, *args, **kwargs):
        stream = blocks(self, *args, **kwargs)
        yield next(stream)
        raise RuntimeError("disk full")

    monkeypatch.setattr(UnitedNetModel, "_prediction_blocks", fail_after_one_block)
    path = tmp_path / "pred.h5ad"
    with pytest.raises(RuntimeError, match="disk full"):
        un.tl.predict_modality(model, source="rna", target="atac", batch_size=BATCH, out=path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"an older file")  # an existing file is kept when replacing it fails
    with pytest.raises(RuntimeError, match="disk full"):
        un.tl.predict_modality(model, source="rna", target="atac", batch_size=BATCH, out=path, overwrite=True)
    assert path.read_bytes() == b"an older file" and list(tmp_path.iterdir()) == [path]
