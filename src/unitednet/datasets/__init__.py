"""Reference data sets as :class:`mudata.MuData`.

Files are read from ``$UNITEDNET_DATA_DIR`` (laid out like the project's ``shared/data``, e.g.
``$UNITEDNET_DATA_DIR/patchseq/adata_RNA_TEM.h5ad``), their sha256 checked once per process; when the variable
is unset or a file is missing there, the public source (pinned at a commit) is downloaded into
``pooch.os_cache("unitednet")``.
"""

from ._loaders import bmmc_cite, bmmc_multiome, kang_ifnb, osmfish, patchseq, verify

__all__ = ["bmmc_cite", "bmmc_multiome", "kang_ifnb", "osmfish", "patchseq", "verify"]
