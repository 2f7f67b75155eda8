"""Tests of unitednet.datasets on the real reference files in $UNITEDNET_DATA_DIR (never on the network)."""

import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from unitednet import datasets
from unitednet.datasets import _files, _loaders
from unitednet.datasets._registry import DATASETS, FILES

DATA_DIR = os.environ.get("UNITEDNET_DATA_DIR", "")


@pytest.fixture(autouse=True, scope="module")
def reference_data():
    """These tests need the reference files: fail loudly (never skip) when they are not there."""
    missing = [relpath for relpath in FILES if not Path(DATA_DIR, relpath).is_file()]
    if missing:
        pytest.fail(f"UNITEDNET_DATA_DIR={DATA_DIR!r} lacks {missing}; point it at the reference data (make does).")


LOADERS = {
    "patchseq": datasets.patchseq,
    "bmmc_multiome": datasets.bmmc_multiome,
    "bmmc_cite": datasets.bmmc_cite,
    "kang_ifnb": datasets.kang_ifnb,
    "osmfish": datasets.osmfish,
}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test downloads anything or reads a user's download cache."""

    def no_network(entry):
        raise ConnectionError(f"network disabled in tests ({entry.url})")

    monkeypatch.setattr(_files, "_download", no_network)
    monkeypatch.setattr(_files, "_cache_dir", lambda: tmp_path / "cache")


def _read_shared(relpath):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ad.OldFormatWarning)
        return ad.read_h5ad(Path(DATA_DIR, relpath))


def _integer_valued(matrix):
    values = matrix.data if sparse.issparse(matrix) else np.asarray(matrix)
    return bool(np.all(values == np.round(values)) and values.min() >= 0)


def _copy(relpaths, dest):
    for relpath in relpaths:
        (dest / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(DATA_DIR, relpath), dest / relpath)


def test_patchseq():
    mdata = datasets.patchseq()
    assert isinstance(mdata, md.MuData)
    assert list(mdata.mod) == ["rna", "ephys", "morph"]
    assert {name: adata.shape for name, adata in mdata.mod.items()} == {
        "rna": (448, 1252),
        "ephys": (448, 68),
        "morph": (448, 514),
    }
    assert mdata.n_obs == 448
    assert list(mdata.obs.columns) == ["cell_type_TEM", "cell_type_T"]
    assert isinstance(mdata.obs["cell_type_TEM"].dtype, pd.CategoricalDtype)
    assert len(mdata.obs["cell_type_TEM"].cat.categories) == 27
    assert len(mdata.obs["cell_type_T"].cat.categories) == 52
    for adata in mdata.mod.values():
        assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.float32
        assert adata.obs_names.equals(mdata.obs_names)
        assert (adata.obs["cell_type_TEM"].to_numpy() == mdata.obs["cell_type_TEM"].to_numpy()).all()
    assert mdata.obs["cell_type_TEM"].iloc[0] == "Vip-MET-2"


@pytest.mark.parametrize(
    ("name", "mod2", "shapes", "n_types", "n_train", "n_test"),
    [
        ("bmmc_multiome", "atac", (500, 600, 600), 21, 221, 279),
        ("bmmc_cite", "adt", (600, 1000, 134), 41, 311, 289),
    ],
)
def test_bmmc(name, mod2, shapes, n_types, n_train, n_test):
    mdata = LOADERS[name]()
    n_obs, n_rna, n_mod2 = shapes
    assert list(mdata.mod) == ["rna", mod2]
    assert mdata.mod["rna"].shape == (n_obs, n_rna)
    assert mdata.mod[mod2].shape == (n_obs, n_mod2)
    assert list(mdata.obs.columns) == ["cell_type", "batch", "split"]
    for column in mdata.obs.columns:
        assert isinstance(mdata.obs[column].dtype, pd.CategoricalDtype), column
    assert mdata.obs["cell_type"].nunique() == len(mdata.obs["cell_type"].cat.categories) == n_types
    assert list(mdata.obs["split"].cat.categories) == ["train", "test"]
    assert mdata.obs["split"].value_counts().to_dict() == {"train": n_train, "test": n_test}
    assert mdata.obs["batch"].value_counts().to_dict() == {"s1d1": n_train, "s1d2": n_test}
    assert ((mdata.obs["split"] == "train") == (mdata.obs["batch"] == "s1d1")).all()
    assert (mdata.obs["split"] == "train").to_numpy().tolist() == mdata.mod["rna"].obs["is_train"].tolist()
    for adata in mdata.mod.values():
        assert adata.obs_names.equals(mdata.obs_names)
        assert sparse.issparse(adata.X) and adata.X.format == "csr"
        assert adata.layers["counts"].format == "csr"
        assert _integer_valued(adata.layers["counts"])


def test_bmmc_values_as_published():
    mdata = datasets.bmmc_multiome()
    published = _read_shared("bmmc_multiome/atac.h5ad")
    assert (mdata.mod["atac"].X != published.X).nnz == 0
    assert (mdata.mod["atac"].layers["counts"] != published.layers["counts"]).nnz == 0


def test_bmmc_cite_prefixes_colliding_protein_names():
    mdata = datasets.bmmc_cite()
    renamed = sorted(name for name in mdata.mod["adt"].var_names if name.startswith("adt:"))
    assert renamed == ["adt:CD36", "adt:CD69", "adt:HLA-E"]
    assert {"CD36", "CD69", "HLA-E"} <= set(mdata.mod["rna"].var_names)
    assert "CD86" in mdata.mod["adt"].var_names  # names that do not collide are kept


def test_kang_ifnb():
    mdata = datasets.kang_ifnb()
    assert list(mdata.mod) == ["rna"]
    rna = mdata.mod["rna"]
    assert rna.shape == (832, 14053)
    assert list(mdata.obs.columns) == ["cell_type", "condition"]
    assert len(mdata.obs["cell_type"].cat.categories) == 6
    assert list(mdata.obs["condition"].cat.categories) == ["CTRL", "STIM"]
    assert mdata.obs["condition"].value_counts().to_dict() == {"CTRL": 391, "STIM": 441}
    table = pd.crosstab(mdata.obs["cell_type"], mdata.obs["condition"])
    assert table.shape == (6, 2) and (table.to_numpy() > 0).all()
    # X is the raw counts (not normalised), with a copy in layers["counts"]
    assert _integer_valued(rna.X)
    assert (rna.X != rna.layers["counts"]).nnz == 0
    assert rna.layers["counts"] is not rna.X
    np.testing.assert_allclose(np.asarray(rna.X.sum(axis=1)).ravel(), rna.obs["nCount_RNA"].to_numpy())


def test_osmfish_valid_only():
    mdata = datasets.osmfish()
    assert list(mdata.mod) == ["rna"]
    rna = mdata.mod["rna"]
    assert rna.shape == (4839, 33)
    assert list(mdata.obs.columns) == ["Region", "ClusterName", "Valid"]
    assert mdata.obs["Valid"].dtype == bool and mdata.obs["Valid"].all()
    assert isinstance(mdata.obs["Region"].dtype, pd.CategoricalDtype)
    assert len(mdata.obs["Region"].cat.categories) == 11
    assert "Excluded" not in mdata.obs["Region"].cat.categories
    assert mdata.obs["Region"].value_counts()["Layer 6"] == 1015
    assert len(mdata.obs["ClusterName"].cat.categories) == 31
    assert mdata.obsm["spatial"].shape == rna.obsm["spatial"].shape == (4839, 2)
    np.testing.assert_array_equal(mdata.obsm["spatial"], rna.obs[["X", "Y"]].to_numpy())
    assert _integer_valued(rna.X) and _integer_valued(rna.layers["counts"])
    np.testing.assert_array_equal(rna.X, rna.layers["counts"])


def test_osmfish_all_cells():
    mdata = datasets.osmfish(valid_only=False)
    assert mdata.shape == (6471, 33)
    assert mdata.obs["Valid"].sum() == 4839
    assert len(mdata.obs["Region"].cat.categories) == 12
    assert (mdata.obs["Region"] == "Excluded").sum() == 6471 - 4839
    assert len(mdata.obs["ClusterName"].cat.categories) == 32
    assert mdata.obsm["spatial"].shape == mdata.mod["rna"].obsm["spatial"].shape == (6471, 2)


@pytest.mark.parametrize("name", list(LOADERS))
def test_names_unique_and_aligned(name):
    mdata = LOADERS[name]()
    assert mdata.var_names.is_unique
    assert mdata.obs_names.is_unique
    for adata in mdata.mod.values():
        assert adata.obs_names.equals(mdata.obs_names)
    assert not [column for column in mdata.obs.columns if ":" in column]  # no pulled duplicates
    # obsm keys named like a modality are mudata's boolean masks, nothing else
    assert all(mdata.obsm[key].dtype == bool for key in mdata.obsm if key in mdata.mod)


@pytest.mark.parametrize("name", list(LOADERS))
def test_loading_leaves_source_files_untouched(name):
    paths = [Path(DATA_DIR, relpath) for relpath in DATASETS[name]]
    before = [(path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths]
    mdata = LOADERS[name]()
    for adata in mdata.mod.values():  # editing the result must not reach the files either
        adata.obs["scratch"] = 1
    after = [(path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths]
    assert before == after
    assert [digest for _, digest in after] == [FILES[relpath].sha256 for relpath in DATASETS[name]]


def test_corrupted_copy_fails_checksum(tmp_path, monkeypatch):
    _copy(DATASETS["patchseq"], tmp_path)
    damaged = tmp_path / "patchseq/adata_Ephys_TEM.h5ad"
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 8])
    damaged.write_bytes(bytes(raw))
    monkeypatch.setenv("UNITEDNET_DATA_DIR", str(tmp_path))
    expected = FILES["patchseq/adata_Ephys_TEM.h5ad"].sha256
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(ValueError, match="Checksum mismatch") as info:
        datasets.patchseq()
    message = str(info.value)
    assert str(damaged) in message and expected in message and actual in message


def test_checksum_computed_once_per_file_version(tmp_path, monkeypatch):
    _copy(DATASETS["bmmc_cite"], tmp_path)
    monkeypatch.setenv("UNITEDNET_DATA_DIR", str(tmp_path))
    hashed = []
    real_sha256 = _files._sha256
    monkeypatch.setattr(_files, "_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    datasets.bmmc_cite()
    datasets.bmmc_cite()
    assert sorted(hashed) == ["adt.h5ad", "rna.h5ad"]
    adt = tmp_path / "bmmc_cite/adt.h5ad"
    os.utime(adt, ns=(adt.stat().st_atime_ns, adt.stat().st_mtime_ns + 10**9))
    datasets.bmmc_cite()
    assert sorted(hashed) == ["adt.h5ad", "adt.h5ad", "rna.h5ad"]
    paths = datasets.verify("bmmc_cite")  # verify() always hashes afresh
    assert paths == {relpath: tmp_path / relpath for relpath in DATASETS["bmmc_cite"]}
    assert len(hashed) == 5
    with pytest.raises(ValueError, match="Unknown data set"):
        datasets.verify("pbmc")


def test_missing_file_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("UNITEDNET_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        datasets.bmmc_multiome()
    message = str(info.value)
    entry = FILES["bmmc_multiome/rna.h5ad"]
    assert "bmmc_multiome/rna.h5ad" in message and "UNITEDNET_DATA_DIR" in message and entry.url in message
    assert isinstance(info.value.__cause__, ConnectionError)

    monkeypatch.delenv("UNITEDNET_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="UNITEDNET_DATA_DIR is not set"):
        datasets.osmfish()


def test_download_fallback_when_variable_unset(monkeypatch):
    monkeypatch.delenv("UNITEDNET_DATA_DIR")
    fetched = []
    monkeypatch.setattr(
        _files, "_download", lambda entry: fetched.append(entry.relpath) or Path(DATA_DIR, entry.relpath)
    )
    mdata = datasets.bmmc_cite()
    assert fetched == list(DATASETS["bmmc_cite"])
    assert mdata.shape == (600, 1134)


def _write_loom(adata, path):
    """A .loom file (loom spec: genes x cells matrix, fixed-length byte strings) holding ``adata``."""
    with h5py.File(path, "w") as handle:
        handle["matrix"] = np.asarray(adata.X).T
        handle["row_attrs/Gene"] = np.array(adata.var_names, dtype="S")
        handle["col_attrs/CellID"] = np.array(adata.obs_names, dtype="S")
        for column in adata.obs.columns:
            values = adata.obs[column].to_numpy()
            handle[f"col_attrs/{column}"] = values.astype("S") if values.dtype == object else values


def test_osmfish_converted_from_loom(tmp_path, monkeypatch):
    published = _read_shared("osmfish/osmfish_sscortex.h5ad")
    loom = tmp_path / "osmFISH_SScortex_mouse_all_cells.loom"
    _write_loom(published, loom)
    monkeypatch.delenv("UNITEDNET_DATA_DIR")
    monkeypatch.setattr(_files, "_download", lambda entry: loom)
    converted = datasets.osmfish(valid_only=False)
    monkeypatch.setenv("UNITEDNET_DATA_DIR", DATA_DIR)
    from_shared = datasets.osmfish(valid_only=False)
    rna, ref = converted.mod["rna"], from_shared.mod["rna"]
    assert rna.obs_names.equals(ref.obs_names) and rna.var_names.equals(ref.var_names)
    np.testing.assert_array_equal(rna.X, ref.X)
    pd.testing.assert_frame_equal(converted.obs, from_shared.obs)
    pd.testing.assert_frame_equal(rna.obs, ref.obs, check_index_type=False)
    np.testing.assert_array_equal(converted.obsm["spatial"], from_shared.obsm["spatial"])
    assert (tmp_path / "cache/osmfish/osmfish_sscortex.h5ad").is_file()  # converted once, kept in the cache


def test_kang_conversion_needs_rdata(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITEDNET_DATA_DIR")
    rda = tmp_path / "ifnb1k.rda"
    rda.write_bytes(b"RDX3\n")
    monkeypatch.setattr(_files, "_download", lambda entry: rda)
    monkeypatch.setitem(sys.modules, "rdata", None)
    with pytest.raises(ImportError, match="pip install rdata"):
        datasets.kang_ifnb()


def test_seurat_namespace_to_anndata():
    """The converter on the structure rdata gives a Seurat object (S4 slots as attributes), built from the h5ad."""
    published = _read_shared("kang_ifnb/kang_ifnb1k.h5ad")
    genes_by_cells = sparse.csc_matrix(published.X.T)
    counts = SimpleNamespace(
        i=genes_by_cells.indices,
        p=genes_by_cells.indptr,
        x=genes_by_cells.data.astype(np.float64),
        Dim=np.array(genes_by_cells.shape),
        Dimnames=[np.array(published.var_names), np.array(published.obs_names)],
    )
    meta = published.obs.rename(columns={"orig_ident": "orig.ident"})
    meta = meta.assign(**{"orig.ident": meta["orig.ident"].astype(str), "stim": meta["stim"].astype(str)})
    seurat = SimpleNamespace(assays={"RNA": SimpleNamespace(counts=counts)}, **{"meta.data": meta})
    adata = _files._seurat_to_anndata(seurat)
    assert adata.shape == published.shape
    assert (adata.X != published.X).nnz == 0 and adata.X.format == "csr"
    assert list(adata.obs.columns) == list(published.obs.columns)
    assert adata.obs["stim"].dtype == "category"
    assert adata.var_names.equals(published.var_names) and adata.obs_names.equals(published.obs_names)


def test_misaligned_modalities_raise():
    obs = pd.DataFrame({"cell_type_TEM": ["a", "b", "c"]}, index=["0", "1", "2"])
    first = ad.AnnData(np.zeros((3, 2), dtype=np.float32), obs=obs)
    shuffled = ad.AnnData(np.zeros((3, 2), dtype=np.float32), obs=obs.assign(cell_type_TEM=["a", "c", "b"]))
    with pytest.raises(ValueError, match=r"differs between modalities 'rna' and 'ephys' \(first at row 1"):
        _loaders._check_same_cells({"rna": first, "ephys": shuffled}, ["cell_type_TEM"])
    reordered = ad.AnnData(np.zeros((3, 2), dtype=np.float32), obs=obs.iloc[[1, 0, 2]])
    with pytest.raises(ValueError, match="same cells in the same order"):
        _loaders._check_same_cells({"rna": first, "morph": reordered}, ["cell_type_TEM"])
