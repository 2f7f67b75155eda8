"""Mixed-precision training (``precision="bf16-mixed"``): sparse first layers and losses stay in float32."""

import numpy as np
import pytest
import torch
from scipy import sparse

from unitednet.module._losses import (
    contrastive_loss,
    ddc_loss,
    full_precision,
    lsgan_loss,
    reconstruction_error,
    self_entropy_loss,
)
from unitednet.nn import MLP
from unitednet.nn._base import linear
from unitednet.train._data import sparse_rows_tensor

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


@pytest.fixture
def binary():
    g = torch.Generator().manual_seed(5)
    return (torch.rand(16, 40, generator=g) < 0.2).float()


def test_sparse_first_layer_runs_in_float32_under_autocast(binary):
    torch.manual_seed(0)
    mlp = MLP(40, 3, n_hidden=6, n_layers=1, dropout_rate=0.0, sparse_input=True)
    first = mlp.network[0]
    x = sparse_rows_tensor(sparse.csr_matrix(binary.numpy()))
    loc, scale = torch.linspace(-1, 1, 40), torch.linspace(0.5, 2, 40)
    results = []
    for enabled in (False, True):
        mlp.zero_grad()
        with torch.autocast(**BF16, enabled=enabled):
            out = linear(first, x, loc, scale)
            out.square().sum().backward()
        results.append((out.detach(), first.weight_t.grad.clone(), first.bias.grad.clone()))
    (ref, ref_w, ref_b), (out, grad_w, grad_b) = results
    assert out.dtype == torch.float32 and grad_w.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same float32 arithmetic, not a bfloat16 one
    torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=0)
    torch.testing.assert_close(grad_b, ref_b, rtol=0, atol=0)
    # the rest of the network runs in bfloat16 and gives the float32 result to bfloat16 accuracy
    with torch.autocast(**BF16):
        mixed = mlp(x, loc, scale)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), mlp(x, loc, scale), rtol=0.05, atol=0.05)


def _losses(binary):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 40, generator=g)
    z_a, z_b = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    probs = torch.softmax(torch.randn(16, 3, generator=g), 1)
    return {
        "bernoulli": (lambda lg: reconstruction_error(lg, binary, "bernoulli"), logits),
        "gaussian": (lambda lg: reconstruction_error(lg, binary, "gaussian"), logits),
        "nb": (lambda lg: reconstruction_error(lg, binary * 3, "nb", torch.zeros(40)), logits),
        "lsgan": (lambda s: lsgan_loss(s, 1.0), logits[:, :1]),
        "contrastive": (lambda a: contrastive_loss(a, z_b), z_a),
        "ddc": (lambda p: ddc_loss(z_a, p), probs),
        "self_entropy": (self_entropy_loss, probs),
    }


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "nb", "lsgan", "contrastive", "ddc", "self_entropy"])
def test_losses_are_float32_under_autocast(binary, name):
    loss, value = _losses(binary)[name]
    half = value.bfloat16().requires_grad_()
    with torch.autocast(**BF16):
        mixed = loss(half)
        mixed.backward()
    assert mixed.dtype == torch.float32
    assert half.grad is not None and half.grad.dtype == torch.bfloat16
    # exactly the float32 loss of the same (bfloat16-rounded) values
    reference = loss(half.detach().float())
    torch.testing.assert_close(mixed.detach(), reference, rtol=0, atol=0)


def test_full_precision_leaves_float32_calls_unchanged():
    calls = []

    @full_precision
    def record(x, y=None):
        calls.append((x.dtype, None if y is None else y.dtype, torch.is_autocast_enabled("cpu")))
        return x.sum()

    x = torch.ones(3, dtype=torch.bfloat16)
    record(x, y=x)
    with torch.autocast(**BF16):
        record(x, y=x)
    assert calls == [(torch.bfloat16, torch.bfloat16, False), (torch.float32, torch.float32, False)]


def test_training_in_bf16_mixed_precision_matches_float32(make_mudata, fit):
    runs = {}
    for precision in ("32", "bf16-mixed"):
        torch.manual_seed(0)
        data = make_mudata(n_cells=120)
        runs[precision] = fit(data, "supervised", train={"max_epochs": 3, "precision": precision})
    mixed, full = runs["bf16-mixed"], runs["32"]
    assert all(p.dtype == torch.float32 for p in mixed.module.parameters())
    columns = ["reconstruction_train", "translation_train", "classification_loss_train", "validation_loss"]
    first = {c: (float(mixed.history[c].iloc[0, 0]), float(full.history[c].iloc[0, 0])) for c in columns}
    for column, (a, b) in first.items():
        # the same batches and initial weights: the first epoch differs by bfloat16 rounding only
        assert np.isfinite(a) and abs(a - b) <= 0.05 * abs(b), (column, a, b)
    latent = mixed.get_latent_representation()
    assert latent.dtype == np.float32 and np.isfinite(latent).all()
