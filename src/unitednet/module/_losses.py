"""Loss functions of UnitedNet (pure torch)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

_F = TypeVar("_F", bound=Callable[..., torch.Tensor])


def full_precision(loss: _F) -> _F:
    """Evaluate a loss in float32, outside autocast.

    Under mixed precision (``precision="bf16-mixed"`` or ``"16-mixed"``) the network's outputs are half-precision;
    a loss of them is computed in float32, so that its value (logged, and compared across epochs to keep the best
    weights) and its reductions keep float32 accuracy. Floating-point tensor arguments are cast to float32 (the
    gradient flows back through the cast); without autocast the function runs unchanged.
    """

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.layout == torch.strided:
            return value.float()
        return value

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.is_autocast_enabled(device):
            return loss(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return loss(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]


cross_entropy = full_precision(F.cross_entropy)
"""``torch.nn.functional.cross_entropy`` evaluated in float32 (see :func:`full_precision`)."""

MAX_LOG_MEAN = 15.0
"""Upper clamp of a negative-binomial decoder's log mean (``exp(15)`` is about 3.3 million counts)."""


def _sparse_entries(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row index, column index and value of each stored entry of a sparse CSR matrix."""
    crow = x.crow_indices()
    rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), crow.diff())
    return rows, x.col_indices(), x.values()


_BLOCK_ELEMENTS = 1 << 18  # elements per block of the chunked softplus (1 MB of float32)


class _BinaryCrossEntropyWithLogits(torch.autograd.Function):
    """Mean binary cross-entropy of logits against a dense or sparse CSR target.

    ``mean(softplus(logits) - target * logits)``; the gradient is ``(sigmoid(logits) - target) / n``. A sparse
    target is read at its stored entries only, and no intermediate tensor beyond the logits' size is made.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # softplus summed a block of rows at a time: no temporary as large as the logits (on CPU such a temporary
        # is fresh memory, slow to touch, each time)
        rows = max(1, _BLOCK_ELEMENTS // max(logits.shape[-1], 1))
        total = sum((F.softplus(block).sum() for block in logits.detach().split(rows)), logits.new_zeros(()))
        if target.layout == torch.sparse_csr:
            entries = _sparse_entries(target)
            total = total - (logits[entries[0], entries[1]] * entries[2]).sum()
            ctx.save_for_backward(logits, *entries)
        else:
            total = total - torch.dot(logits.reshape(-1), target.reshape(-1).to(logits.dtype))
            ctx.save_for_backward(logits, target)
        return total / logits.numel()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, *target = ctx.saved_tensors
        out = torch.sigmoid(logits)
        if len(target) == 3:  # sparse entries
            rows, cols, values = target
            out.index_put_((rows, cols), -values.to(out.dtype), accumulate=True)
        else:
            out.sub_(target[0])
        return out.mul_(grad / logits.numel()), None


@full_precision
def nb_log_likelihood(x: torch.Tensor, log_mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Elementwise log-likelihood of counts under a negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    ``log p(x) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) + theta * (log theta - log(theta + mu))
    + x * (log mu - log(theta + mu))``, computed from ``log mu`` and ``log theta`` (``log(theta + mu)`` as a
    log-sum-exp), so neither a large mean nor a small dispersion overflows. The variance is ``mu + mu^2 / theta``.

    Parameters
    ----------
    x
        Observed counts (cells x features), non-negative.
    log_mu
        Log mean, same shape as ``x``.
    log_theta
        Log inverse dispersion, broadcastable to ``x`` (one value per feature).
    """
    log_mu = log_mu.clamp(max=MAX_LOG_MEAN)
    log_theta = log_theta.expand_as(log_mu)
    theta = log_theta.exp()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (log_theta - log_theta_mu)
        + x * (log_mu - log_theta_mu)
    )


@full_precision
def reconstruction_error(
    x_hat: torch.Tensor, x: torch.Tensor, likelihood: str, log_theta: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean per-entry error of a decoded profile.

    BCE on logits for ``bernoulli`` (``x`` may then be a sparse CSR matrix, read at its non-zeros only); MSE for
    ``gaussian``; for ``nb`` the negative-binomial negative log-likelihood of the counts ``x`` given the log mean
    ``x_hat`` and the per-feature log inverse dispersion ``log_theta``.
    """
    if likelihood == "bernoulli":
        return _BinaryCrossEntropyWithLogits.apply(x_hat, x)
    if x.layout == torch.sparse_csr:
        x = x.to_dense()
    if likelihood == "nb":
        if log_theta is None:
            raise ValueError("The 'nb' reconstruction error needs the log inverse dispersion (log_theta).")
        return -nb_log_likelihood(x, x_hat, log_theta).mean()
    return F.mse_loss(x_hat, x)


@full_precision
def lsgan_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of the discriminator scores to ``target`` (1 real, 0 fake)."""
    return ((scores - target) ** 2).mean()


@full_precision
def contrastive_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, groups: torch.Tensor | None = None, temperature: float = 0.1
) -> torch.Tensor:
    """Cross-modal InfoNCE with cosine similarity.

    The latents of the same cell in two modalities are positives. Negatives are the other cells; when ``groups``
    (predicted group per cell) is given, only cells of another group count as negatives, so cells of the same
    group are not pushed apart.

    Parameters
    ----------
    z_a, z_b
        Latents (cells x dims) of the same cells in two modalities.
    groups
        Optional group id per cell.
    temperature
        Softmax temperature.
    """
    sim = F.normalize(z_a, dim=1) @ F.normalize(z_b, dim=1).T / temperature
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    if groups is not None:
        same = groups.unsqueeze(0) == groups.unsqueeze(1)
        sim = sim.masked_fill(same & ~eye, float("-inf"))
    targets = torch.arange(n, device=sim.device)
    return 0.5 * (F.cross_entropy(sim, targets) + F.cross_entropy(sim.T, targets))


def _kernel_from_distances(d2: torch.Tensor, rel_sigma: float) -> torch.Tensor:
    sigma2 = (rel_sigma * torch.median(d2.detach().clamp_min(0).sqrt())) ** 2
    return torch.exp(-d2.clamp_min(0) / (2 * sigma2.clamp_min(1e-9)))


def _cauchy_schwarz_divergence(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Mean pairwise Cauchy–Schwarz similarity between the columns of ``a`` under ``kernel`` (smaller = more separated)."""
    k = a.shape[1]
    nom = a.T @ kernel @ a
    dnom = torch.sqrt(torch.clamp(torch.outer(torch.diagonal(nom), torch.diagonal(nom)), min=1e-9**2))
    off = torch.triu(nom / dnom, diagonal=1)
    return off.sum() * 2 / (k * (k - 1))


@full_precision
def ddc_loss(hidden: torch.Tensor, probs: torch.Tensor, rel_sigma: float = 0.15) -> torch.Tensor:
    """Deep divergence-based clustering loss (Kampffmeyer et al., 2019).

    Sum of three terms: Cauchy–Schwarz divergence between clusters in the kernel space of ``hidden``; orthogonality
    of the cluster assignment vectors of different cells; and divergence of the assignments to the simplex corners.

    Parameters
    ----------
    hidden
        Projector output (cells x hidden).
    probs
        Group probabilities (cells x groups).
    rel_sigma
        Kernel width relative to the median pairwise distance.
    """
    n, k = probs.shape
    if k < 2:
        raise ValueError("The DDC clustering loss needs at least two groups; set n_groups >= 2.")
    kernel = _kernel_from_distances(torch.cdist(hidden, hidden) ** 2, rel_sigma)
    ddc1 = _cauchy_schwarz_divergence(probs, kernel)
    ddc2 = 2.0 / (n * (n - 1)) * torch.triu(probs @ probs.T, diagonal=1).sum() if n > 1 else probs.new_zeros(())
    corners = torch.eye(k, device=probs.device, dtype=probs.dtype)
    m = torch.exp(-(torch.cdist(probs, corners) ** 2))
    ddc3 = _cauchy_schwarz_divergence(m, kernel)
    return ddc1 + ddc2 + ddc3


@full_precision
def self_entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the mean group probability, shifted so that balanced groups give 0."""
    mean = probs.mean(0).clamp_min(1e-12)
    return (mean * mean.log()).sum() + torch.log(torch.tensor(float(probs.shape[1]), device=probs.device))
