"""Fast training path: sparse CSR minibatches, the sparse first layer, the BCE on sparse targets, the loader."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import sparse
from scvi.dataloaders import AnnDataLoader

from unitednet._constants import REGISTRY_KEYS, modality_key
from unitednet.model import UnitedNetModel
from unitednet.module import UnitedNetModule
from unitednet.module._losses import reconstruction_error
from unitednet.nn import MLP, _base
from unitednet.nn._base import is_sparse_batch, sparse_transpose
from unitednet.train import UnitedNetTrainingPlan
from unitednet.train._data import RegisteredCellLoader, rows_tensor, sparse_rows_tensor


def _csr(x: torch.Tensor) -> torch.Tensor:
    return sparse_rows_tensor(sparse.csr_matrix(x.numpy()))


@pytest.fixture
def binary():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(12, 9, generator=g) < 0.3).float()


def test_sparse_transpose(binary):
    xt = sparse_transpose(_csr(binary))
    assert xt.layout == torch.sparse_csr
    torch.testing.assert_close(xt.to_dense(), binary.T)


@pytest.mark.parametrize("columnwise", [True, False], ids=["scipy-columnwise", "torch-csr"])
@pytest.mark.parametrize("standardise", [False, True])
def test_sparse_first_layer_equals_dense(binary, standardise, columnwise, monkeypatch):
    # the CPU path reads the input column by column through scipy; the torch CSR product is the path of other devices
    monkeypatch.setattr(_base, "_columnwise", lambda x: columnwise)
    torch.manual_seed(0)
    mlp = MLP(9, 3, n_hidden=5, n_layers=1, dropout_rate=0.0)
    loc = torch.linspace(-1, 1, 9) if standardise else None
    scale = torch.linspace(0.5, 2, 9) if standardise else None
    grads = []
    outs = []
    for x in (binary, _csr(binary)):
        mlp.zero_grad()
        out = mlp(x, loc, scale)
        (out**2).sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in mlp.parameters()])
    if standardise:  # the dense reference standardises first
        mlp.zero_grad()
        ref = mlp((binary - loc) / scale)
        torch.testing.assert_close(outs[0], ref.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for dense_grad, sparse_grad in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparse_target", [False, True])
def test_bce_equals_torch(binary, sparse_target):
    logits = torch.randn(binary.shape, generator=torch.Generator().manual_seed(4)) * 3
    logits.requires_grad_(True)
    target = _csr(binary) if sparse_target else binary
    loss = reconstruction_error(logits, target, "bernoulli")
    (grad,) = torch.autograd.grad(2 * loss, logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.binary_cross_entropy_with_logits(ref_logits, binary)
    (ref_grad,) = torch.autograd.grad(2 * ref, ref_logits)
    torch.testing.assert_close(loss.detach(), ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_mse_with_sparse_target_equals_dense(binary):
    pred = torch.randn(binary.shape)
    torch.testing.assert_close(
        reconstruction_error(pred, _csr(binary), "gaussian"), reconstruction_error(pred, binary, "gaussian")
    )


def test_module_losses_and_gradients_equal_for_sparse_and_dense_batches():
    torch.manual_seed(0)
    module = UnitedNetModule(
        {"rna": 6, "atac": 7}, {"rna": "gaussian", "atac": "bernoulli"}, n_groups=3, n_latent=4, n_hidden=8, n_layers=1
    )
    module.set_standardization("rna", torch.linspace(0, 1, 6), torch.linspace(1, 2, 6))
    g = torch.Generator().manual_seed(1)
    rna = torch.where(torch.rand(20, 6, generator=g) < 0.5, torch.randn(20, 6, generator=g), 0.0)
    atac = (torch.rand(20, 7, generator=g) < 0.4).float()
    labels = torch.arange(20).remainder(3).view(-1, 1)
    results = []
    for make in (lambda x: x, _csr):
        tensors = {modality_key("rna"): make(rna), modality_key("atac"): make(atac), REGISTRY_KEYS.LABELS_KEY: labels}
        module.zero_grad()
        torch.manual_seed(5)  # the same dropout masks
        inference, generative = module.forward_all(tensors)
        terms = {}
        for objective in ("translation", "classification"):
            out = module.loss(tensors, inference, generative, objective=objective)
            terms.update({k: v.detach() for k, v in out.extra_metrics.items() if k != "head_losses"})
            out.loss.backward(retain_graph=True)
        d_loss = module.discriminator_loss(tensors, generative)
        d_loss.backward()
        terms["discriminator"] = d_loss.detach()
        results.append((terms, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (dense_terms, dense_grads), (sparse_terms, sparse_grads) = results
    assert dense_terms.keys() == sparse_terms.keys()
    for k in dense_terms:
        torch.testing.assert_close(sparse_terms[k], dense_terms[k], rtol=1e-5, atol=1e-6, msg=k)
    assert dense_grads.keys() == sparse_grads.keys()
    for k in dense_grads:
        torch.testing.assert_close(sparse_grads[k], dense_grads[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_gives_the_batches_of_anndataloader(mdata, shuffle):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    indices = np.arange(3, 140, 2)
    torch.manual_seed(11)
    ours = list(RegisteredCellLoader(model.adata_manager, indices, batch_size=16, shuffle=shuffle))
    torch.manual_seed(11)
    reference = list(AnnDataLoader(model.adata_manager, indices=indices, batch_size=16, shuffle=shuffle))
    assert len(ours) == len(reference) == int(np.ceil(len(indices) / 16))
    after = torch.rand(())  # both consumed the global generator in the same way
    torch.manual_seed(11)
    list(AnnDataLoader(model.adata_manager, indices=indices, batch_size=16, shuffle=shuffle))
    assert torch.rand(()) == after
    for a, b in zip(ours, reference, strict=True):
        assert a.keys() == b.keys()
        assert is_sparse_batch(a[modality_key("atac")])
        assert not is_sparse_batch(a[modality_key("rna")])
        for key in a:
            value = a[key].to_dense() if is_sparse_batch(a[key]) else a[key]
            assert value.dtype == b[key].dtype, key
            torch.testing.assert_close(value, b[key])


def test_loader_drop_last(mdata):
    UnitedNetModel.setup_mudata(mdata)
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    loader = RegisteredCellLoader(model.adata_manager, np.arange(50), batch_size=16, shuffle=True, drop_last=True)
    sizes = [b[modality_key("rna")].shape[0] for b in loader]
    assert sizes == [16, 16, 16] and len(loader) == 3


def test_classification_batches_do_not_run_the_decoders(mdata, fit, monkeypatch):
    calls = []
    original = UnitedNetModule.generative

    def recording(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UnitedNetModule, "generative", recording)
    model = fit(mdata, "supervised", train={"max_epochs": 1, "batch_size": 32, "train_size": 1.0})
    n_batches = int(np.ceil(mdata.n_obs / 32))
    assert model.history["classification_loss_train"].notna().all().all()
    assert len(calls) == n_batches  # the translation pass only, not the classification pass


def test_generator_step_computes_no_discriminator_gradient():
    torch.manual_seed(0)
    module = UnitedNetModule({"rna": 6, "atac": 5}, {"rna": "gaussian", "atac": "bernoulli"}, n_latent=4, n_hidden=8)
    plan = UnitedNetTrainingPlan(module, ["translation"])
    plan.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)  # no Trainer attached in a unit test
    g = torch.Generator().manual_seed(2)
    tensors = {
        modality_key("rna"): torch.randn(16, 6, generator=g),
        modality_key("atac"): _csr((torch.rand(16, 5) < 0.3).float()),
    }
    inference, generative = module.forward_all(tensors)
    out = module.loss(tensors, inference, generative, objective="translation")
    assert out.extra_metrics["generator"] > 0
    params = plan._groups["translation"]
    plan._step(torch.optim.SGD(params, lr=0.1), params, out.loss)
    assert all(p.grad is None for p in module.discriminators.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.decoders.parameters())


class _OnDisk:
    """A matrix that, like h5py, accepts only increasing row indices; records every read."""

    def __init__(self, values):
        self.values = values
        self.shape = values.shape
        self.reads = []

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        if (np.diff(rows) <= 0).any():
            raise TypeError("Indexing elements must be in increasing order")
        self.reads.append(rows)
        return self.values[rows]


def test_read_rows_of_an_on_disk_matrix_reads_only_those_rows_in_order():
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    matrix = _OnDisk(values)
    rows = np.array([7, 2, 9, 0])
    out = rows_tensor(matrix, rows)
    np.testing.assert_array_equal(out.numpy(), values[rows])
    assert [r.tolist() for r in matrix.reads] == [[0, 2, 7, 9]]


def test_backed_mudata_trains_and_infers_like_in_memory(tmp_path, make_mudata, model_kwargs):
    import mudata as md

    path = tmp_path / "cells.h5mu"
    make_mudata().write(path)
    results = []
    for backed in (False, True):
        data = md.read_h5mu(path, backed=backed)
        torch.manual_seed(0)
        UnitedNetModel.setup_mudata(data, modalities=["rna", "atac"], labels_key="cell_type")
        model = UnitedNetModel(data, **model_kwargs)
        model.train("supervised", max_epochs=2, batch_size=32, enable_progress_bar=False)
        results.append(
            (
                model.get_latent_representation(batch_size=40),
                model.predict_modality(source="atac", target="rna", batch_size=40),
                model.predict_labels(),
            )
        )
        if backed:  # still on disk: neither matrix was loaded into memory by training or inference
            for m in ("rna", "atac"):
                assert data.mod[m].isbacked
                X = data.mod[m].X
                assert not isinstance(X, np.ndarray) and not sparse.issparse(X), m
    (latent, pred, labels), (latent_b, pred_b, labels_b) = results
    np.testing.assert_allclose(latent_b, latent, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred_b, pred, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels_b, labels)


def test_backed_setup_checks_values_block_by_block(tmp_path, make_mudata, monkeypatch):
    import mudata as md

    from unitednet.model import _validation

    mdata = make_mudata()
    mdata.mod["rna"].X[120, 3] = np.nan
    path = tmp_path / "cells.h5mu"
    mdata.write(path)
    backed = md.read_h5mu(path, backed=True)
    monkeypatch.setattr(_validation.value_chunks, "__defaults__", (1000,))  # several chunks of 1,000 values
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        UnitedNetModel.setup_mudata(backed, modalities=["rna", "atac"])
    rna_chunks = list(_validation.value_chunks(backed.mod["rna"].X))  # 41 rows of 24 genes per chunk
    assert [len(c) for c in rna_chunks] == [41 * 24] * 3 + [27 * 24]
    atac_chunks = list(_validation.value_chunks(backed.mod["atac"].X))  # the stored non-zeros only
    assert sum(len(c) for c in atac_chunks) == mdata.mod["atac"].X.nnz and len(atac_chunks) > 1
    assert _validation.is_binary(backed.mod["atac"].X) and not _validation.is_binary(backed.mod["rna"].X)


def test_sparse_modalities_keep_column_major_first_layers(mdata):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, n_latent=4, n_hidden=8, n_layers=1)
    first = model.module.encoders["atac"].network[0]
    # the parameter is stored transposed and contiguous (inputs x outputs): the layout of the sparse product and of
    # its gradient, which fused Adam updates without copying; ``weight`` is nn.Linear's view of it
    assert first.weight_t.shape == (32, 8) and first.weight_t.is_contiguous()
    assert first.weight.shape == (8, 32) and first.weight.stride() == (1, 8)
    assert [name for name, _ in first.named_parameters()] == ["weight_t", "bias"]
    assert model.module.discriminators["atac"].mlp.network[0].weight_t.is_contiguous()
    assert model.module.encoders["rna"].network[0].weight.is_contiguous()  # dense modality: nn.Linear's layout
    model.train("supervised", max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert first.weight_t.is_contiguous() and first.weight.stride() == (1, 8)


def test_sparse_input_linear_matches_nn_linear():
    from torch import nn

    from unitednet.nn import SparseInputLinear

    torch.manual_seed(0)
    reference = nn.Linear(30, 5)
    torch.manual_seed(0)
    layer = SparseInputLinear(30, 5)
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)  # same init
    x = torch.rand(7, 30) * (torch.rand(7, 30) < 0.2)
    torch.testing.assert_close(layer(x), reference(x))
    torch.testing.assert_close(layer(x.to_sparse_csr()), reference(x))  # the sparse product
    layer(x.to_sparse_csr()).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(layer.weight_t.grad, reference.weight.grad.t())
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)
    assert layer.weight_t.grad.is_contiguous()
    # an nn.Linear state dict (``weight``, outputs x inputs) loads into the transposed parameter
    loaded = SparseInputLinear(30, 5)
    loaded.load_state_dict(reference.state_dict())
    assert torch.equal(loaded.weight, reference.weight)
    assert list(loaded.state_dict()) == ["weight_t", "bias"]


def test_backed_query_with_reordered_and_extra_features_reads_rows_only(tmp_path, make_mudata, model_kwargs):
    import anndata as ad
    import mudata as md

    from unitednet.train import _data

    mdata = make_mudata()
    UnitedNetModel.setup_mudata(mdata, modalities=["rna", "atac"], labels_key="cell_type")
    model = UnitedNetModel(mdata, **model_kwargs)
    model.train("supervised", max_epochs=1, batch_size=32, enable_progress_bar=False)
    # a query whose features are reversed and that has one extra feature per modality, written to disk
    mods = {}
    for m, adata in mdata.mod.items():
        extra = ad.AnnData(np.ones((adata.n_obs, 1), dtype=np.float32), obs=adata.obs[[]], var={"x": [0]})
        extra.var_names = [f"extra_{m}"]
        joined = ad.concat([adata[:, ::-1], extra], axis=1, merge="first")
        joined.X = (
            sparse.csr_matrix(joined.X)
            if m == "atac"
            else np.asarray(joined.X.todense() if sparse.issparse(joined.X) else joined.X)
        )
        mods[m] = joined
    query = md.MuData(mods)
    path = tmp_path / "query.h5mu"
    query.write(path)
    backed = md.read_h5mu(path, backed=True)
    assert isinstance(model._matrix(backed, "rna"), _data.ColumnSelection)
    reads = []
    original = _data.read_rows

    def spy(matrix, rows):
        reads.append(len(rows))
        return original(matrix, rows)

    from unitednet.model import _validation

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_data, "read_rows", spy)
        patch.setattr(_validation.value_chunks, "__defaults__", (1000,))  # the NaN check: 41 rows of 24 genes
        latent = model.get_latent_representation(backed, batch_size=40)
        pred = model.predict_modality(backed, source="atac", target="rna", batch_size=40)
    assert reads and max(reads) <= 41  # minibatches of 40 and check chunks of 1,000 values; the whole matrix: 150
    in_memory = md.read_h5mu(path)
    np.testing.assert_allclose(latent, model.get_latent_representation(in_memory, batch_size=40), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        pred, model.predict_modality(in_memory, source="atac", target="rna"), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(latent, model.get_latent_representation(batch_size=40), rtol=1e-5, atol=1e-6)
    assert backed.mod["rna"].isbacked and backed.mod["atac"].isbacked


@pytest.mark.parametrize("kind", ["mlp", "variational", "residual"])
def test_every_encoder_kind_reads_sparse_input_through_a_sparse_input_linear(kind):
    from unitednet.nn import SparseInputLinear, make_encoder

    torch.manual_seed(0)
    dense_layout = make_encoder(kind, 30, 4, n_hidden=8, n_layers=1, dropout_rate=0.0)
    torch.manual_seed(0)
    sparse_layout = make_encoder(kind, 30, 4, n_hidden=8, n_layers=1, dropout_rate=0.0, sparse_input=True)
    firsts = [m for m in sparse_layout.modules() if isinstance(m, SparseInputLinear)]
    assert len(firsts) == 1 and firsts[0].in_features == 30
    assert not any(isinstance(m, SparseInputLinear) for m in dense_layout.modules())
    # the same initial values (same random draws), so the two layouts compute the same function
    dense_params = dict(dense_layout.named_parameters())
    for name, value in sparse_layout.named_parameters():
        if name.endswith("weight_t"):
            assert torch.equal(value.t(), dense_params[name.removesuffix("_t")])
        else:
            assert torch.equal(value, dense_params[name])
    dense_layout.eval(), sparse_layout.eval()
    x = torch.rand(6, 30) * (torch.rand(6, 30) < 0.2)
    torch.testing.assert_close(sparse_layout(x.to_sparse_csr()), dense_layout(x))
