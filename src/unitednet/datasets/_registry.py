"""Table of the reference data files: where they live locally, where they come from, their sha256."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

_RAW = "https://raw.githubusercontent.com"

_UNITEDNET = f"{_RAW}/LiuLab-Bioelectronics-Harvard/UnitedNet/7e9ad2b4b4e29f853e9a42519a9b2159730a9b48/data/patchseq"
_MULTIOME = (
    f"{_RAW}/openproblems-bio/neurips2021_multimodal_viash/8aab86d85905e06f9aba40aa04815c7ebdf88f18"
    "/resources_test/common/openproblems_bmmc_multiome_starter/openproblems_bmmc_multiome_starter"
)
_CITE = (
    f"{_RAW}/openproblems-bio/neurips2021_multimodal_viash/75281c039ab98b459edbf52058a18597e710ed4d"
    "/resources_test/common/openproblems_bmmc_cite_starter/openproblems_bmmc_cite_starter"
)
_KANG = f"{_RAW}/hjames1/seuratTools/43d0893cfd743194b6913a946563a8d42e22c2bb/data/ifnb1k.rda"
_OSMFISH = (
    f"{_RAW}/RubD/spatial-datasets/daa35aafcbf3bec828eb83f33228183ed38b30a3"
    "/data/2018_osmFISH_SScortex/raw_data/osmFISH_SScortex_mouse_all_cells.loom"
)


@dataclass(frozen=True)
class DataFile:
    """One reference data file.

    Attributes
    ----------
    relpath
        Path relative to ``$UNITEDNET_DATA_DIR`` (the layout of the project's ``shared/data``).
    sha256
        Checksum of the file found at ``relpath``.
    url
        Public source, pinned at a commit.
    convert
        ``None`` when ``url`` serves the file at ``relpath`` byte for byte (``sha256`` then also checks the
        download). Otherwise the source format (``"rda"`` or ``"loom"``) that is converted to ``.h5ad`` after the
        download; such sources have no published checksum, the commit pin fixes their content.
    shape
        ``(n_obs, n_vars)`` of the AnnData stored in the file, checked after reading (guards the conversions).
    """

    relpath: str
    sha256: str
    url: str
    shape: tuple[int, int]
    convert: Literal["rda", "loom"] | None = None


FILES: dict[str, DataFile] = {
    f.relpath: f
    for f in (
        DataFile(
            "patchseq/adata_RNA_TEM.h5ad",
            "3a13710273c41c6609d3604398aa936969a10e864563d49529bd49e3500d7cee",
            f"{_UNITEDNET}/adata_RNA_TEM.h5ad",
            (448, 1252),
        ),
        DataFile(
            "patchseq/adata_Ephys_TEM.h5ad",
            "c7f3da2912f54861746b6bd30dd1824e65739ede64bfddb4df3d51c90ac6dae3",
            f"{_UNITEDNET}/adata_Ephys_TEM.h5ad",
            (448, 68),
        ),
        DataFile(
            "patchseq/adata_Morph_TEM.h5ad",
            "14e54310a9f55bbb4b860d30681c060557346a305b9728f8b5400cd60cbfae22",
            f"{_UNITEDNET}/adata_Morph_TEM.h5ad",
            (448, 514),
        ),
        DataFile(
            "bmmc_multiome/rna.h5ad",
            "53efc0c9c9fb205587d18087e9010846c7532d8de23daea26ff5a410b029cea6",
            f"{_MULTIOME}.output_rna.h5ad",
            (500, 600),
        ),
        DataFile(
            "bmmc_multiome/atac.h5ad",
            "f6d6368518a7e5ed0e19eb67f87370b017a1d98d735b9aedbad78dd93c84a068",
            f"{_MULTIOME}.output_mod2.h5ad",
            (500, 600),
        ),
        DataFile(
            "bmmc_cite/rna.h5ad",
            "e111b6ad48f7236b9291dab56d0aa2ebcc1a5f8d1d402fa232d9bfe3d1af6f61",
            f"{_CITE}.output_rna.h5ad",
            (600, 1000),
        ),
        DataFile(
            "bmmc_cite/adt.h5ad",
            "ad4df05778c27c930bdb9764452af0fa381cbd9b3fb8de669420148f20fb1fed",
            f"{_CITE}.output_mod2.h5ad",
            (600, 134),
        ),
        DataFile(
            "kang_ifnb/kang_ifnb1k.h5ad",
            "db14c49e531ee4ce8432ee7915223259b07d0eaff8d020a857186afca0f86806",
            _KANG,
            (832, 14053),
            convert="rda",
        ),
        DataFile(
            "osmfish/osmfish_sscortex.h5ad",
            "2dd4f50a5b3c3140f5924a95c89ec02442495cb4f2078e27e16216b4f329424c",
            _OSMFISH,
            (6471, 33),
            convert="loom",
        ),
    )
}

#: Files read by each loader (the loader's name is the dataset's name).
DATASETS: dict[str, tuple[str, ...]] = {
    "patchseq": (
        "patchseq/adata_RNA_TEM.h5ad",
        "patchseq/adata_Ephys_TEM.h5ad",
        "patchseq/adata_Morph_TEM.h5ad",
    ),
    "bmmc_multiome": ("bmmc_multiome/rna.h5ad", "bmmc_multiome/atac.h5ad"),
    "bmmc_cite": ("bmmc_cite/rna.h5ad", "bmmc_cite/adt.h5ad"),
    "kang_ifnb": ("kang_ifnb/kang_ifnb1k.h5ad",),
    "osmfish": ("osmfish/osmfish_sscortex.h5ad",),
}
