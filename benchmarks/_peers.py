"""The scvi-tools peers that users compare UnitedNet with, run in the same scripts: scVI, totalVI and MultiVI.

Each reads raw counts with its own likelihood, is trained with the scvi-tools defaults (``max_epochs`` from the
number of cells, no early stopping) after ``scvi.settings.seed = SEED``, and is given the same cells and the same
information as the UnitedNet runs it is compared with:

- clustering references (:func:`scvi_latent`, :func:`totalvi_latent`): trained on every cell without labels, the
  latent of the test cells clustered by Leiden exactly as the other latents of the script;
- cross-modal prediction (:func:`totalvi_predict_protein`): test cells enter training with their proteins held out
  (all-zero in their own batch, which totalVI treats as an unmeasured panel), as in UnitedNet's
  ``adapt(query, held_out=["adt"])``: a transductive setting, labelled so in the tables.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import sparse

SEED = 0


def _seed() -> None:
    import scvi

    scvi.settings.seed = SEED


def _counts(X) -> sparse.csr_matrix:
    X = sparse.csr_matrix(X, dtype=np.float32)
    if X.nnz and (X.data.min() < 0 or not np.array_equal(X.data, np.round(X.data))):
        raise ValueError("The peers need raw counts (non-negative integers).")
    return X


def _fit(model) -> dict[str, Any]:
    """Train with the scvi-tools defaults, quietly; returns the seconds taken and the epochs run."""
    import time

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False)
    return {"fit_s": time.perf_counter() - start, "max_epochs": model.history["elbo_train"].shape[0]}


def _latent(model) -> tuple[np.ndarray, dict[str, Any]]:
    """Train a peer, then the latent mean of every cell and the run information."""
    info = _fit(model)
    return model.get_latent_representation(), info


def cluster_latents(latents: dict[str, tuple[np.ndarray, dict]], test: np.ndarray, truth: np.ndarray, n_groups: int):
    """Leiden clusterings (at K and at resolution 1) of the test cells' latent of each peer, as for every latent.

    Returns the clustering scores keyed ``leiden_<peer>_k`` / ``leiden_<peer>_res1`` and the run information per peer.
    """
    from _baselines import knn_graph, leiden_runs

    scores, runs = {}, {}
    for name, (latent, info) in latents.items():
        runs[name] = info
        graph, _ = knn_graph(latent[test], seed=SEED)
        scores.update(leiden_runs(graph, n_groups, truth, seed=SEED, prefix=f"leiden_{name}"))
    return scores, runs


def scvi_latent(rna_counts, batch: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """scVI on RNA counts of every cell (batch as covariate): the latent mean of each cell and run information."""
    import anndata as ad
    import scvi

    _seed()
    adata = ad.AnnData(_counts(rna_counts))
    adata.obs["batch"] = np.asarray(batch).astype(str)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    return _latent(scvi.model.SCVI(adata))


def _totalvi(rna_counts, protein_counts, batch: np.ndarray):
    import anndata as ad
    import scvi

    _seed()
    adata = ad.AnnData(_counts(rna_counts))
    adata.obs["batch"] = np.asarray(batch).astype(str)
    adata.obsm["protein"] = _counts(protein_counts).toarray()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.TOTALVI.setup_anndata(adata, protein_expression_obsm_key="protein", batch_key="batch")
        model = scvi.model.TOTALVI(adata)
    return model, adata


def totalvi_latent(rna_counts, protein_counts, batch: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """totalVI on RNA and protein counts of every cell (batch as covariate): latent means and run information."""
    return _latent(_totalvi(rna_counts, protein_counts, batch)[0])


def totalvi_predict_protein(
    rna_counts, protein_counts, batch: np.ndarray, test: np.ndarray, reference_batch: str, n_samples: int = 25
) -> tuple[np.ndarray, dict[str, Any]]:
    """Protein counts of the ``test`` cells predicted by totalVI from their RNA, their proteins held out.

    The test cells' protein counts are replaced by zeros and the cells kept in their own batch(es), which totalVI
    treats as batches without a protein panel. The prediction is the expected protein count (foreground and
    background), decoded as in ``reference_batch`` (a batch with measured proteins), averaged over ``n_samples``
    posterior samples. Returns test cells x proteins and run information.
    """
    batch = np.asarray(batch).astype(str)
    held_out = sparse.csr_matrix(protein_counts, dtype=np.float32, copy=True)
    mask = np.zeros(held_out.shape[0], dtype=bool)
    mask[test] = True
    if set(batch[mask]) & set(batch[~mask]):
        raise ValueError("The test cells must form their own batch(es) so that their proteins count as unmeasured.")
    held_out = sparse.diags((~mask).astype(np.float32)) @ held_out
    model, adata = _totalvi(rna_counts, held_out, batch)
    info = _fit(model)
    _, protein = model.get_normalized_expression(
        adata,
        indices=test,
        transform_batch=[reference_batch],
        n_samples=n_samples,
        include_protein_background=True,
        library_size="latent",
        return_numpy=True,
    )
    return np.asarray(protein), info


def clr(counts: np.ndarray) -> np.ndarray:
    """Per-cell centred log ratio, ``log1p(x / exp(mean(log1p(x))))`` over each cell's proteins.

    This reproduces the OpenProblems CITE starter's ADT ``X`` from its ``layers["counts"]`` (Pearson 0.99993 over all
    entries, largest difference 0.096), so counts predicted by a peer can be scored in the units of ``X``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    return np.log1p(counts / np.exp(np.log1p(counts).mean(1, keepdims=True)))


def _multivi(rna_counts, atac_binary, batch: np.ndarray):
    import anndata as ad
    import mudata as md
    import scvi

    _seed()
    rna, atac = _counts(rna_counts), _counts(atac_binary)
    if atac.nnz and not np.isin(atac.data, (0, 1)).all():
        raise ValueError("MultiVI's accessibility input must be binary.")
    names = [f"c{i}" for i in range(rna.shape[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": ad.AnnData(rna), "atac": ad.AnnData(atac)})
        for adata in mdata.mod.values():
            adata.obs_names = names
        mdata.update()
        mdata.obs["batch"] = np.asarray(batch).astype(str)
        scvi.model.MULTIVI.setup_mudata(mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"})
        model = scvi.model.MULTIVI(mdata)
    return model, mdata


def multivi_latent(rna_counts, atac_binary, batch: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """MultiVI on RNA counts and binary accessibility of every cell (batch as covariate): latents and run info."""
    return _latent(_multivi(rna_counts, atac_binary, batch)[0])


def multivi_predict_accessibility(
    rna_counts, atac_binary, batch: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Accessibility probabilities of the ``test`` cells predicted by MultiVI from their RNA, their ATAC held out.

    The test cells' accessibility is replaced by zeros, which MultiVI reads as expression-only cells (it masks a
    modality whose row is all zero). The prediction is ``get_normalized_accessibility`` with its defaults (the
    probability of each region being accessible, without the cell's library factor). Returns test cells x regions and
    run information.
    """
    keep = np.ones(atac_binary.shape[0], dtype=np.float32)
    keep[test] = 0
    held_out = sparse.diags(keep) @ sparse.csr_matrix(atac_binary, dtype=np.float32)
    model, adata = _multivi(rna_counts, held_out, batch)
    info = _fit(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities = model.get_normalized_accessibility(adata, indices=test, return_numpy=True)
    return np.asarray(probabilities), info
