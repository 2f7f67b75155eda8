from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from unitednet._constants import DEFAULT_LOSS_WEIGHTS, OBJECTIVE_LOSSES, REGISTRY_KEYS, modality_key
from unitednet.nn import MLP, Discriminator, GroupHeads, ModalityFusion, VariationalEncoder, make_encoder
from unitednet.nn._base import Encoder, Norm, NormPart, is_sparse_batch, part_norms, resolve_norm

from ._losses import (
    MAX_LOG_MEAN,
    contrastive_loss,
    cross_entropy,
    ddc_loss,
    lsgan_loss,
    reconstruction_error,
    self_entropy_loss,
)
from ._weighting import LossBalancer, LossWeighting

PRESENCE_PREFIX = "present_"
UNLABELLED = -1
"""Label code of cells without a label (query cells during adaptation): the classification loss skips them."""


def presence_key(modality: str) -> str:
    """Key of the per-cell presence flags of a modality in a minibatch (absent: the modality is not measured).

    Batches of the registered MuData have no presence keys: every cell has every modality. Batches that mix cells
    with different modalities (reference and query cells during :meth:`~unitednet.model.UnitedNetModel.adapt`) hold,
    per modality, a zero-filled matrix where the modality is absent and a boolean vector under this key.
    """
    return f"{PRESENCE_PREFIX}{modality}"


class _Standardizer(nn.Module):
    """Per-feature location and scale of one modality (identity until set from training cells)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.loc) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.loc


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense tensor (a sparse CSR minibatch is densified)."""
    return x.to_dense() if is_sparse_batch(x) else x


class UnitedNetModule(BaseModuleClass):
    """Encoders, decoders, discriminators, fusion and group heads of UnitedNet, with all its losses.

    Parameters
    ----------
    n_features
        Number of features of each modality, keyed by modality name (the order defines the modality order).
    likelihoods
        ``"gaussian"``, ``"bernoulli"`` or ``"nb"`` per modality. A gaussian modality's networks read standardised
        values and its decoder outputs them (MSE loss); a bernoulli decoder outputs logits (BCE loss). An ``"nb"``
        (negative binomial, raw counts) encoder reads ``log1p`` of the counts; its decoder outputs the log of the
        expected counts, ``log mu``, directly (no library-size factor, so a translation needs no measurement of the
        target); the loss is the negative-binomial negative log-likelihood with a learned inverse dispersion per
        feature (:attr:`log_theta`).
    n_groups
        Number of groups of the group heads; 0 builds no heads (translation only).
    n_latent
        Shared latent dimension.
    n_hidden
        Width of hidden layers.
    n_layers
        Hidden layers of encoders and decoders.
    dropout_rate
        Dropout of encoders, decoders and projectors.
    use_batch_norm
        Batch normalisation in hidden layers (when ``norm`` is not given; kept as an alias of ``norm``).
    norm
        Normalisation of the hidden layers of encoders, decoders and head projectors: ``"batch"``, ``"layer"`` or
        ``"none"`` for all three, or a mapping from parts (``"encoders"``, ``"decoders"``, ``"heads"``; the heads
        are the group heads' projectors, and the perturbation-identification head of
        :class:`~unitednet.module.UnitedNetPerturbationModule`) to one of those, e.g.
        ``{"encoders": "none", "decoders": "batch", "heads": "none"}``; parts missing from the mapping follow
        ``use_batch_norm``. Default: ``"batch"`` if ``use_batch_norm`` else ``"none"``. The discriminators and the
        latent projector never normalise their hidden layers, and the fusion has none. Unknown parts or values, and a
        part set to ``"batch"`` with ``use_batch_norm=False``, raise a ``ValueError``.
    encoder
        ``"mlp"`` (deterministic :class:`~unitednet.nn.MLP`), ``"variational"`` (Gaussian posterior,
        :class:`~unitednet.nn.VariationalEncoder`: a sample in training, the mean at inference, plus a ``kl`` term
        in the translation objective) or ``"residual"`` (:class:`~unitednet.nn.ResidualMLP`).
    fusion
        ``"modality"`` (one weight per modality) or ``"feature"`` (one weight per modality and latent dimension).
    n_heads
        Number of parallel group heads; the best one predicts.
    loss_weights
        Weight of each loss term (see :data:`unitednet._constants.DEFAULT_LOSS_WEIGHTS`); missing terms keep the default.
    contrastive_temperature
        Temperature of the contrastive loss.
    ddc_rel_sigma
        Kernel width of the DDC loss relative to the median distance.
    use_latent_projector
        Whether the contrastive loss acts on a projection of the latents rather than the latents themselves.
    clustering_updates_encoders
        Let the DDC clustering losses update the encoders too (by default they update fusion and heads only).
    loss_weighting
        How the translation objective's reconstruction, translation and contrastive terms are weighted (see
        :class:`~unitednet.module.LossBalancer`): ``"fixed"`` (``loss_weights`` only), ``"uncertainty"`` (learned
        log-variances, Kendall et al. 2018) or ``"gradnorm"`` (Chen et al. 2018). The other terms and objectives keep
        their fixed weights.
    gradnorm_alpha
        Asymmetry of GradNorm.
    sparse_inputs
        Modalities whose data come as sparse CSR minibatches: their encoder's and discriminator's first layers keep
        the weight layout of the sparse product (see :class:`~unitednet.nn.MLP`).
    """

    def __init__(
        self,
        n_features: Mapping[str, int],
        likelihoods: Mapping[str, str],
        n_groups: int = 0,
        n_latent: int = 32,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.3,
        use_batch_norm: bool = True,
        norm: Norm | Mapping[NormPart, Norm] | None = None,
        encoder: Encoder = "mlp",
        fusion: Literal["modality", "feature"] = "modality",
        n_heads: int = 1,
        loss_weights: Mapping[str, float] | None = None,
        contrastive_temperature: float = 0.1,
        ddc_rel_sigma: float = 0.15,
        use_latent_projector: bool = True,
        clustering_updates_encoders: bool = False,
        loss_weighting: LossWeighting = "fixed",
        gradnorm_alpha: float = 1.5,
        sparse_inputs: Sequence[str] = (),
    ):
        super().__init__()
        self.modalities = list(n_features)
        self.likelihoods = dict(likelihoods)
        self.n_groups = n_groups
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        self.contrastive_temperature = contrastive_temperature
        self.ddc_rel_sigma = ddc_rel_sigma
        self.clustering_updates_encoders = clustering_updates_encoders
        # set by the model for each training run: whether the heads' predicted groups define contrastive negatives
        self.contrastive_group_negatives = n_groups > 0
        # as given (a string, or a dict over every part), and per part
        self.norm = resolve_norm(norm, use_batch_norm)
        self.part_norms = part_norms(norm, use_batch_norm)
        self.encoder_kind = encoder
        mlp = {"n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout_rate}
        sparse_inputs = set(sparse_inputs)
        self.encoders = nn.ModuleDict(
            {
                m: make_encoder(
                    encoder, n, n_latent, **mlp, norm=self.part_norms["encoders"], sparse_input=m in sparse_inputs
                )
                for m, n in n_features.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {m: MLP(n_latent, n, **mlp, norm=self.part_norms["decoders"]) for m, n in n_features.items()}
        )
        # discriminators and latent projector: no normalisation, whatever norm says
        self.discriminators = nn.ModuleDict(
            {
                m: Discriminator(n, n_hidden=min(n_hidden, 64), sparse_input=m in sparse_inputs)
                for m, n in n_features.items()
            }
        )
        self.standardizers = nn.ModuleDict({m: _Standardizer(n) for m, n in n_features.items()})
        # per-feature log inverse dispersion of each negative-binomial modality (updated with the decoders)
        self.log_theta = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(n)) for m, n in n_features.items() if self.likelihoods[m] == "nb"}
        )
        if self.log_theta:
            # whether the output biases of the nb decoders were set from the training cells' mean counts
            self.register_buffer("count_bias_set", torch.zeros((), dtype=torch.bool))
        self.fusion = ModalityFusion(self.modalities, n_latent, mode=fusion)
        self.latent_projector = (
            MLP(n_latent, n_latent, n_hidden=n_hidden, n_layers=1, dropout_rate=0.0, use_batch_norm=False)
            if use_latent_projector
            else nn.Identity()
        )
        self.heads = (
            GroupHeads(n_latent, n_groups, n_heads, n_hidden, dropout_rate, norm=self.part_norms["heads"])
            if n_groups > 0
            else None
        )
        # the terms balanced by loss_weighting: those of the translation objective that measure a task (not the
        # adversarial generator term); translation and contrastive exist only with two or more modalities
        balanced = ["reconstruction"] + (["translation", "contrastive"] if len(self.modalities) > 1 else [])
        self.loss_balancer = LossBalancer(loss_weighting, balanced, alpha=gradnorm_alpha)
        self.register_buffer("class_weights", torch.ones(max(n_groups, 1)))
        self.register_buffer("best_head", torch.zeros((), dtype=torch.long))

    # parameter groups, one per optimizer (kept as lists: an iterator would be consumed by the first user)
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters updated by each objective's optimizer."""
        enc = list(self.encoders.parameters())
        dec = list(self.decoders.parameters()) + list(self.log_theta.parameters())
        heads = list(self.heads.parameters()) if self.heads is not None else []
        fusion = list(self.fusion.parameters())
        groups = {
            "translation": enc
            + dec
            + list(self.latent_projector.parameters())
            + self.loss_balancer.parameters_for_objective(),
            "discriminator": list(self.discriminators.parameters()),
            "classification": enc + fusion + heads,
            "clustering": enc + dec + fusion + heads,
        }
        balancer = self.loss_balancer.parameters_for_balancer()
        if balancer:
            groups["loss_balancer"] = balancer
        return groups

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by every translation term: the last linear layer of each encoder (GradNorm's ``W``)."""
        out = []
        for encoder in self.encoders.values():
            out += list([m for m in encoder.modules() if isinstance(m, nn.Linear)][-1].parameters())
        return out

    def effective_weights(self) -> dict[str, float]:
        """Effective weight of each balanced term: its fixed weight times the learned factor."""
        factors = self.loss_balancer.factor_values().tolist()
        return {k: self.loss_weights[k] * f for k, f in zip(self.loss_balancer.terms, factors, strict=True)}

    def gradnorm_loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """GradNorm loss of the balancer's factors from the (graph-attached) terms of a translation step."""
        balancer = self.loss_balancer
        weighted = {k: self.loss_weights[k] * terms[k] for k in balancer.terms if k in terms}
        return balancer.gradnorm_loss(weighted, self.shared_parameters())

    @property
    def count_modalities(self) -> list[str]:
        """Modalities with a negative-binomial likelihood."""
        return list(self.log_theta.keys())

    @torch.no_grad()
    def set_count_bias(self, mean_counts: Mapping[str, torch.Tensor]) -> None:
        """Start each nb decoder at the mean counts: its output bias becomes ``log(mean count)`` per feature.

        With the exp link, an untrained decoder predicts about one count per feature; starting from the training
        cells' mean counts spares the first epochs the climb to the data's scale. Called once per model (the
        training plan does it before the first training of a model with nb modalities; see ``count_bias_set``).
        """
        for m, mean in mean_counts.items():
            last = [layer for layer in self.decoders[m].modules() if isinstance(layer, nn.Linear)][-1]
            last.bias.copy_(torch.log(torch.as_tensor(mean, dtype=last.bias.dtype).clamp_min(1e-4)))
        self.count_bias_set.fill_(True)

    def set_standardization(self, modality: str, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the per-feature centring and scaling of a gaussian modality (from training cells only)."""
        self.standardizers[modality].loc.copy_(torch.as_tensor(loc, dtype=torch.float32))
        self.standardizers[modality].scale.copy_(torch.as_tensor(scale, dtype=torch.float32))

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        inputs: dict = {"x": {m: tensors[modality_key(m)] for m in self.modalities if modality_key(m) in tensors}}
        present = {m: tensors[presence_key(m)] for m in inputs["x"] if presence_key(m) in tensors}
        if present:
            inputs["present"] = present
        return inputs

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {"z": inference_outputs["z"]}

    def standardize(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Input of a modality in the space the networks work in.

        Standardised values for gaussian modalities, ``log1p`` of the counts for nb modalities, the data for
        bernoulli modalities. A sparse CSR ``x`` stays sparse for bernoulli and nb modalities (``log1p`` keeps the
        zeros) and is densified (one minibatch) for gaussian ones.
        """
        likelihood = self.likelihoods[modality]
        if likelihood == "gaussian":
            if is_sparse_batch(x):
                x = x.to_dense()
            return self.standardizers[modality](x.float())
        if likelihood == "nb":
            return torch.log1p(x.float())
        return x.float()

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Latent of a modality's cells (the posterior mean of a variational encoder in evaluation mode).

        ``x`` is dense or sparse CSR; a sparse gaussian modality enters an MLP encoder without densifying (the
        standardisation folded into the first layer, see :class:`~unitednet.nn.MLP`).
        """
        encoder = self.encoders[modality]
        if is_sparse_batch(x) and self.likelihoods[modality] == "gaussian" and isinstance(encoder, MLP):
            standardizer = self.standardizers[modality]
            return encoder(x.float(), standardizer.loc, standardizer.scale)
        return encoder(self.standardize(modality, x))

    def to_data_space(self, modality: str, out: torch.Tensor) -> torch.Tensor:
        """Decoder output in the modality's original units.

        Probabilities for bernoulli, expected counts ``exp(out)`` for nb, de-standardised values for gaussian.
        """
        likelihood = self.likelihoods[modality]
        if likelihood == "bernoulli":
            return torch.sigmoid(out)
        if likelihood == "nb":
            return torch.exp(out.clamp(max=MAX_LOG_MEAN))
        return self.standardizers[modality].inverse(out)

    def reconstruction_error(self, modality: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Error of a decoder output of ``modality`` against its loss target (see :meth:`_target`)."""
        return reconstruction_error(out, target, self.likelihoods[modality], self.log_theta.get(modality))

    # ------------------------------------------------------------------ cells with a subset of the modalities
    def presence(self, present: Mapping[str, torch.Tensor], modalities, n_obs: int) -> dict[str, torch.Tensor]:
        """Boolean presence of each given modality per cell, as the networks use it.

        A modality without flags is present in every cell. In training mode a modality present in a single cell of
        the minibatch is treated as absent there (batch normalisation needs two cells); modalities present in no
        cell are left out.
        """
        out = {}
        for m in modalities:
            flags = present.get(m)
            mask = torch.ones(n_obs, dtype=torch.bool) if flags is None else flags.reshape(-1).bool()
            n_present = int(mask.sum())
            if n_present == 0 or (self.training and n_present < 2):
                continue
            out[m] = mask
        return out

    def fuse(self, z: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Fused latent of every cell.

        Without ``present`` every latent holds all cells and the fusion module weighs them. With ``present``, ``z[m]``
        holds only the cells where ``m`` is present (in cell order) and each cell's fusion weights are renormalised
        over its own modalities, as :class:`~unitednet.nn.ModalityFusion` does for a whole query; a cell with no
        modality gets a zero latent.
        """
        if present is None:
            return self.fusion(z)
        mods = [m for m in self.fusion.modalities if m in z]
        n_obs = next(iter(present.values())).shape[0]
        first = z[mods[0]]
        logits = self.fusion.logits[[self.fusion.modalities.index(m) for m in mods]]  # modalities x (1 or n_latent)
        dense = torch.stack(
            [first.new_zeros(n_obs, first.shape[1]).index_copy(0, self._rows(present[m]), z[m]) for m in mods]
        )
        mask = torch.stack([present[m].to(first.device) for m in mods]).unsqueeze(-1)  # modalities x cells x 1
        scores = logits.unsqueeze(1).expand(len(mods), n_obs, logits.shape[1]).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=0).nan_to_num(0.0)  # a cell with no modality: all -inf -> NaN -> 0
        return (weights * dense).sum(0)

    @staticmethod
    def _rows(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask, as_tuple=False).reshape(-1)

    @auto_move_data
    def inference(self, x: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None) -> dict:
        """Encode the modalities given (any non-empty subset) and fuse their latents.

        Parameters
        ----------
        x
            Input per modality, cells x features.
        present
            Optional boolean presence per cell for some modalities (see :func:`presence_key`): each encoder then
            reads only the cells where its modality is present.

        Returns
        -------
        Dict with ``z`` (latent per modality) and ``z_fused`` (every cell). With ``present``, ``z[m]`` holds only the
        cells where ``m`` is present, ``present`` holds the presence used (see :meth:`presence`) and ``cells`` flags
        the cells with at least one modality. With variational encoders, ``kl`` holds per modality the KL divergence
        of each (present) cell's posterior to the prior; ``z`` is a posterior sample in training mode and the
        posterior mean in evaluation mode.
        """
        if not x:
            raise ValueError("At least one registered modality is needed to encode cells.")
        if present is None:
            z, kl = self._encode({m: x[m] for m in self.modalities if m in x})
            return {"z": z, "z_fused": self.fuse(z), **kl}
        n_obs = next(iter(x.values())).shape[0]
        mask = self.presence(present, [m for m in self.modalities if m in x], n_obs)
        mask = {m: v.to(x[m].device) for m, v in mask.items()}
        if not mask:
            raise ValueError("No modality is present in this minibatch.")
        z, kl = self._encode({m: _dense(x[m])[mask[m]] for m in mask})
        cells = torch.stack(list(mask.values())).any(0)
        return {"z": z, "z_fused": self.fuse(z, mask), "present": mask, "cells": cells, **kl}

    def _encode(self, x: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """Latent per modality, and ``{"kl": {modality: KL per cell}}`` for variational encoders (else empty)."""
        z, kl = {}, {}
        for m, xm in x.items():
            encoder = self.encoders[m]
            if isinstance(encoder, VariationalEncoder):
                z[m], _, _, kl[m] = encoder.encode(self.standardize(m, xm))
            else:
                z[m] = self.encode(m, xm)
        return z, ({"kl": kl} if kl else {})

    @auto_move_data
    def generative(self, z: Mapping[str, torch.Tensor]) -> dict:
        """Decode every latent into every modality: ``x_hat[target][source]`` (logits for bernoulli targets)."""
        return {"x_hat": {t: {s: self.decoders[t](zs) for s, zs in z.items()} for t in self.modalities}}

    def discriminator_inputs(self, generative_outputs: dict) -> dict[str, torch.Tensor]:
        """Reconstruction of each modality as its discriminator reads it (probabilities for bernoulli modalities).

        Computed once per batch and kept in ``generative_outputs["x_fake"]``: the generator term reads it with its
        gradient, the discriminator loss detached.
        """
        if "x_fake" not in generative_outputs:
            x_hat = generative_outputs["x_hat"]
            generative_outputs["x_fake"] = {
                m: self._discriminator_input(m, x_hat[m][m]) for m in self.modalities if m in x_hat[m]
            }
        return generative_outputs["x_fake"]

    def group_logits(self, z_fused: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Group logits of one head (the selected best head by default)."""
        if self.heads is None:
            raise ValueError("This model has no group heads: it was trained for translation only.")
        return self.heads.forward_head(z_fused, int(self.best_head) if head is None else head)[1]

    def _observed(self, tensors, modality: str, present: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """Standardised input of a modality for the cells where it is present (all cells without presence flags)."""
        x = self.standardize(modality, tensors[modality_key(modality)])
        return x if present is None else _dense(x)[present[modality]]

    def _target(self, tensors, modality: str, present: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """What the decoders of a modality are scored against: the raw counts for nb, else :meth:`_observed`."""
        if self.likelihoods[modality] != "nb":
            return self._observed(tensors, modality, present)
        x = _dense(tensors[modality_key(modality)]).float()
        return x if present is None else x[present[modality]]

    def _batch_presence(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Presence used by :meth:`inference` for this batch (``None`` when the batch has no presence flags)."""
        inputs = self._get_inference_input(tensors)
        if "present" not in inputs:
            return None
        n_obs = next(iter(inputs["x"].values())).shape[0]
        return self.presence(inputs["present"], list(inputs["x"]), n_obs)

    def discriminator_loss(self, tensors: dict[str, torch.Tensor], generative_outputs: dict) -> torch.Tensor:
        """Least-squares loss of the discriminators on real profiles vs *detached* reconstructions.

        Each discriminator sees the cells where its modality is present; the terms are averaged over those modalities.
        """
        present = self._batch_presence(tensors)
        x_hat = generative_outputs["x_hat"]
        x_fake = self.discriminator_inputs(generative_outputs)
        terms = []
        for m in self.modalities:
            if m not in x_hat[m]:
                continue
            present_m = None if present is None else {m: present[m].to(x_hat[m][m].device)}
            real = self._observed(tensors, m, present_m)
            fake = x_fake[m].detach()
            d = self.discriminators[m]
            terms.append(0.5 * (lsgan_loss(d(real), 1.0) + lsgan_loss(d(fake), 0.0)))
        return torch.stack(terms).mean()

    def _frozen_discriminator(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Discriminator scores with its parameters detached.

        The generator term's gradient then reaches the reconstructions only; the discriminators' own step computes
        their weight gradients.
        """
        d = self.discriminators[modality]
        params = {name: p.detach() for name, p in d.named_parameters()}
        return torch.func.functional_call(d, params, (x,))

    def _discriminator_input(self, modality: str, out: torch.Tensor) -> torch.Tensor:
        """A decoder output in the space of the discriminator's real inputs (:meth:`_observed`)."""
        likelihood = self.likelihoods[modality]
        if likelihood == "bernoulli":
            return torch.sigmoid(out)
        if likelihood == "nb":
            return F.softplus(out.clamp(max=MAX_LOG_MEAN))  # log1p(exp(log mu)) = log1p(mu), as log1p of real counts
        return out

    def _translation_terms(self, tensors, inference_outputs, generative_outputs) -> dict[str, torch.Tensor]:
        """Reconstruction, translation, generator and contrastive terms (and ``kl`` for variational encoders).

        With presence flags each term is computed on the cells holding the modalities it compares: reconstruction
        and generator per present modality, translation ``s -> t`` and the contrastive pair ``(a, b)`` on the cells
        with both; every term is the mean over the modalities or pairs that have such cells.
        """
        z = inference_outputs["z"]
        present = inference_outputs.get("present")
        mods = [m for m in self.modalities if m in z]
        x = {m: self._target(tensors, m, present) for m in mods}
        x_hat = generative_outputs["x_hat"]
        recon = [self.reconstruction_error(m, x_hat[m][m], x[m]) for m in mods]
        trans = []
        for t in mods:
            for s in mods:
                if s == t:
                    continue
                if present is None:
                    trans.append(self.reconstruction_error(t, x_hat[t][s], x[t]))
                    continue
                both = present[s] & present[t]
                if not bool(both.any()):
                    continue
                # rows of the s-cells (x_hat[t][s]) and of the t-cells (x[t]) that hold both modalities
                pred = x_hat[t][s][both[present[s]]]
                trans.append(self.reconstruction_error(t, pred, x[t][both[present[t]]]))
        x_fake = self.discriminator_inputs(generative_outputs)
        gen = [lsgan_loss(self._frozen_discriminator(m, x_fake[m]), 1.0) for m in mods]
        zero = recon[0].new_zeros(())
        contrast = []
        if len(mods) > 1:
            groups = None
            if self.heads is not None and self.contrastive_group_negatives:
                with torch.no_grad():
                    groups = self.group_logits(inference_outputs["z_fused"]).argmax(1)
            proj = {m: self.latent_projector(z[m]) for m in mods}
            for i, a in enumerate(mods):
                for b in mods[i + 1 :]:
                    if present is None:
                        contrast.append(contrastive_loss(proj[a], proj[b], groups, self.contrastive_temperature))
                        continue
                    both = present[a] & present[b]
                    if int(both.sum()) < 2:
                        continue
                    contrast.append(
                        contrastive_loss(
                            proj[a][both[present[a]]],
                            proj[b][both[present[b]]],
                            None if groups is None else groups[both],
                            self.contrastive_temperature,
                        )
                    )
        out = {
            "reconstruction": torch.stack(recon).mean(),
            "translation": torch.stack(trans).mean() if trans else zero,
            "generator": torch.stack(gen).mean(),
            "contrastive": torch.stack(contrast).mean() if contrast else zero,
        }
        if "kl" in inference_outputs:
            # KL of each modality's posterior to the prior: summed over latent dimensions, mean over cells
            out["kl"] = torch.stack([inference_outputs["kl"][m].mean() for m in mods]).mean()
        return out

    def _head_terms(self, tensors, inference_outputs, objective: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms of a head objective and the loss of each head (``None`` when no cell of the batch counts).

        Classification reads only labelled cells (label code >= 0); clustering uses every cell with a modality.
        """
        if self.heads is None:
            raise ValueError(f"The {objective!r} objective needs group heads; build the model with n_groups > 0.")
        cells = inference_outputs.get("cells")
        if objective == "classification":
            labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
            _, logits = self.heads(inference_outputs["z_fused"])
            labelled = labels >= 0
            if cells is not None:
                labelled = labelled & cells.to(labelled.device)
            if not bool(labelled.all()):
                if not bool(labelled.any()):
                    return {}, None  # no labelled cell in this batch: no term, no step, no head comparison
                logits = [lg[labelled] for lg in logits]
                labels = labels[labelled]
            per_head = torch.stack([cross_entropy(lg, labels, weight=self.class_weights) for lg in logits])
            return {"classification": per_head.mean()}, per_head.detach()
        # clustering: by default the DDC terms update fusion and heads only, so the encoders' latents are detached
        z = inference_outputs["z"]
        z_in = z if self.clustering_updates_encoders else {m: zm.detach() for m, zm in z.items()}
        z_fused = self.fuse(z_in, inference_outputs.get("present"))
        if cells is not None and not bool(cells.all()):
            z_fused = z_fused[cells]
        hidden, logits = self.heads(z_fused)
        probs = [torch.softmax(lg, dim=1) for lg in logits]
        ddc = torch.stack([ddc_loss(h, p, self.ddc_rel_sigma) for h, p in zip(hidden, probs, strict=True)])
        ent = torch.stack([self_entropy_loss(p) for p in probs])
        per_head = self.loss_weights["ddc"] * ddc + self.loss_weights["self_entropy"] * ent
        return {"ddc": ddc.mean(), "self_entropy": ent.mean()}, per_head.detach()

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        objective: Literal["translation", "classification", "clustering"] = "translation",
    ) -> LossOutput:
        """Weighted loss of one training objective.

        ``extra_metrics`` holds every unweighted term of the objective and, for head objectives, ``head_losses``
        (one value per head, used to select the best head). A classification batch without labelled cells has no
        terms and a zero loss that does not require a gradient: the training plan then skips the step.
        """
        if objective not in OBJECTIVE_LOSSES:
            raise ValueError(f"Unknown objective {objective!r}; choose one of {sorted(OBJECTIVE_LOSSES)}.")
        terms: dict[str, torch.Tensor] = {}
        head_losses = None
        if objective == "translation":
            terms.update(self._translation_terms(tensors, inference_outputs, generative_outputs))
        else:
            head_terms, head_losses = self._head_terms(tensors, inference_outputs, objective)
            terms.update(head_terms)
            if objective == "clustering":
                x_hat = generative_outputs["x_hat"]
                present = inference_outputs.get("present")
                terms["reconstruction"] = torch.stack(
                    [
                        self.reconstruction_error(m, x_hat[m][m], self._target(tensors, m, present))
                        for m in self.modalities
                        if m in inference_outputs["z"]
                    ]
                ).mean()
        # no term at all (a classification batch without labelled cells): a zero loss without gradient
        balanced = set(self.loss_balancer.terms) if objective == "translation" else set()
        total = sum(
            (self.loss_weights[k] * v for k, v in terms.items() if k not in balanced),
            start=inference_outputs["z_fused"].new_zeros(()),
        )
        if balanced:
            total = total + self.loss_balancer.combine(
                {k: self.loss_weights[k] * v for k, v in terms.items() if k in balanced}
            )
        extra = dict(terms)
        if head_losses is not None:
            extra["head_losses"] = head_losses
        n_obs = inference_outputs["z_fused"].shape[0]
        return LossOutput(loss=total, extra_metrics=extra, n_obs_minibatch=n_obs)

    def forward_all(self, tensors: dict[str, torch.Tensor], decode: bool = True) -> tuple[dict, dict | None]:
        """Inference and generative outputs for a batch (every modality, or presence flags per cell).

        With ``decode=False`` the decoders are not run and the generative outputs are ``None`` (enough for the
        classification objective, whose loss reads the latents only).
        """
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        if not decode:
            return inference_outputs, None
        generative_outputs = self.generative(**self._get_generative_input(tensors, inference_outputs))
        return inference_outputs, generative_outputs

    def sample(self, *args, **kwargs):
        """Not defined: UnitedNet is not a generative model with a sampling distribution."""
        raise NotImplementedError("UnitedNet is not a probabilistic generative model; use predict_modality instead.")
