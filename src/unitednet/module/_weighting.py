"""Weighting of the translation objective's loss terms: fixed, learned uncertainty (Kendall) or GradNorm (Chen)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

LossWeighting = Literal["fixed", "uncertainty", "gradnorm"]
LOSS_WEIGHTINGS: tuple[str, ...] = ("fixed", "uncertainty", "gradnorm")

LOG_VARIANCE_BOUND = 6.0
"""Learned log-variances are clamped to +-6 (effective factors between exp(-6) and exp(6))."""


class LossBalancer(nn.Module):
    """Per-term factors on top of the fixed loss weights of some loss terms.

    The balanced term ``k`` contributes ``f_k * c_k * L_k`` (plus a regulariser for ``"uncertainty"``) to its
    objective's loss, where ``c_k`` is the term's fixed weight (``loss_weights``) and ``f_k`` the learned factor; the
    *effective weight* is ``f_k * c_k``.

    - ``"fixed"``: ``f_k = 1``; no parameter.
    - ``"uncertainty"`` (Kendall, Gal & Cipolla, 2018): one learned log-variance ``s_k`` per term, ``f_k = exp(-s_k)``
      and the loss gains ``+ s_k``, so each term is weighted by its inverse (learned) scale. ``s_k`` is a parameter of
      the objective's optimizer; it gets gradients from its own term only. It is clamped to ``[-6, 6]``.
    - ``"gradnorm"`` (Chen et al., 2018): learned positive factors ``f_k`` (:attr:`factors`), renormalised to sum to
      the number of terms after each update. The objective's loss uses them as constants; they are updated by
      their own optimizer from :meth:`gradnorm_loss`, which pulls the gradient norm of each weighted term on the
      shared parameters towards the mean gradient norm times ``r_k ** alpha``, where ``r_k`` is the term's loss
      relative to its first value, over the mean of those ratios: terms that have trained less get more weight.

    Parameters
    ----------
    mode
        ``"fixed"``, ``"uncertainty"`` or ``"gradnorm"``.
    terms
        Names of the balanced terms.
    alpha
        GradNorm's asymmetry: 0 equalises the gradient norms; larger values favour the slower terms more.
    """

    def __init__(self, mode: LossWeighting, terms: Sequence[str], alpha: float = 1.5):
        super().__init__()
        if mode not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)}, got {mode!r}.")
        if alpha < 0:
            raise ValueError(f"gradnorm_alpha must be >= 0, got {alpha}.")
        self.mode = mode
        self.terms = list(terms)
        self.alpha = float(alpha)
        n = len(self.terms)
        if mode == "uncertainty":
            self.log_variances = nn.Parameter(torch.zeros(n))
        elif mode == "gradnorm":
            self.factors = nn.Parameter(torch.ones(n))
            # loss of each term at the first GradNorm update (NaN until then)
            self.register_buffer("initial_losses", torch.full((n,), float("nan")))

    def parameters_for_objective(self) -> list[nn.Parameter]:
        """Parameters trained with the balanced objective's loss (the log-variances of ``"uncertainty"``)."""
        return [self.log_variances] if self.mode == "uncertainty" else []

    def parameters_for_balancer(self) -> list[nn.Parameter]:
        """Parameters trained by their own optimizer on :meth:`gradnorm_loss` (the factors of ``"gradnorm"``)."""
        return [self.factors] if self.mode == "gradnorm" else []

    def _log_variances(self) -> torch.Tensor:
        return self.log_variances.clamp(-LOG_VARIANCE_BOUND, LOG_VARIANCE_BOUND)

    def factor_values(self) -> torch.Tensor:
        """Current factor ``f_k`` of each balanced term (detached)."""
        if self.mode == "uncertainty":
            return torch.exp(-self._log_variances()).detach()
        if self.mode == "gradnorm":
            return self.factors.detach().clone()
        return torch.ones(len(self.terms))

    def combine(self, weighted: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the balanced terms given, each already multiplied by its fixed weight ``c_k``."""
        total = None
        for i, name in enumerate(self.terms):
            if name not in weighted:
                continue
            value = weighted[name]
            if self.mode == "uncertainty":
                s = self._log_variances()[i]
                value = torch.exp(-s) * value + s
            elif self.mode == "gradnorm":
                value = self.factors[i].detach() * value
            total = value if total is None else total + value
        return total

    def gradnorm_loss(self, weighted: Mapping[str, torch.Tensor], shared: Sequence[nn.Parameter]) -> torch.Tensor:
        """GradNorm loss of the factors for one minibatch; its gradient reaches :attr:`factors` only.

        Parameters
        ----------
        weighted
            Balanced terms (each times its fixed weight), still attached to the graph of the objective's loss.
        shared
            Shared parameters on which gradient norms are measured (the last layers of the encoders).
        """
        if self.mode != "gradnorm":
            raise ValueError("gradnorm_loss needs loss_weighting='gradnorm'.")
        idx = [i for i, name in enumerate(self.terms) if name in weighted and weighted[name].requires_grad]
        if len(idx) < 2:
            return self.factors.sum() * 0.0
        norms = []
        for i in idx:
            grads = torch.autograd.grad(weighted[self.terms[i]], shared, retain_graph=True, allow_unused=True)
            sq = sum((g.detach() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.sqrt(torch.as_tensor(sq, dtype=torch.float32)))
        grad_norms = self.factors[idx] * torch.stack(norms).to(self.factors.device)
        losses = torch.stack([weighted[self.terms[i]].detach() for i in idx]).to(self.factors.device)
        initial = self.initial_losses[idx]
        if torch.isnan(initial).any():
            with torch.no_grad():
                self.initial_losses[idx] = torch.where(torch.isnan(initial), losses, initial)
            initial = self.initial_losses[idx]
        ratios = losses / initial.clamp_min(1e-8)
        target = grad_norms.mean().detach() * (ratios / ratios.mean().clamp_min(1e-8)) ** self.alpha
        return (grad_norms - target).abs().sum()

    @torch.no_grad()
    def renormalise(self) -> None:
        """Keep the GradNorm factors positive and summing to the number of balanced terms."""
        if self.mode == "gradnorm":
            self.factors.clamp_(min=1e-3)
            self.factors.mul_(len(self.terms) / self.factors.sum())
