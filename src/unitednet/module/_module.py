from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from unitednet._constants import DEFAULT_LOSS_WEIGHTS, OBJECTIVE_LOSSES, REGISTRY_KEYS, modality_key
from unitednet.nn import MLP, Discriminator, GroupHeads, ModalityFusion

from ._losses import contrastive_loss, ddc_loss, lsgan_loss, reconstruction_error, self_entropy_loss


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


class UnitedNetModule(BaseModuleClass):
    """Encoders, decoders, discriminators, fusion and group heads of UnitedNet, with all its losses.

    Parameters
    ----------
    n_features
        Number of features of each modality, keyed by modality name (the order defines the modality order).
    likelihoods
        ``"gaussian"`` or ``"bernoulli"`` per modality.
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
        Batch normalisation in hidden layers.
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
    """

    def __init__(
        self,
        n_features: Mapping[str, int],
        likelihoods: Mapping[str, str],
        n_groups: int = 0,
        n_latent: int = 32,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        fusion: Literal["modality", "feature"] = "modality",
        n_heads: int = 1,
        loss_weights: Mapping[str, float] | None = None,
        contrastive_temperature: float = 0.1,
        ddc_rel_sigma: float = 0.15,
        use_latent_projector: bool = True,
        clustering_updates_encoders: bool = False,
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
        mlp = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "use_batch_norm": use_batch_norm,
        }
        self.encoders = nn.ModuleDict({m: MLP(n, n_latent, **mlp) for m, n in n_features.items()})
        self.decoders = nn.ModuleDict({m: MLP(n_latent, n, **mlp) for m, n in n_features.items()})
        self.discriminators = nn.ModuleDict(
            {m: Discriminator(n, n_hidden=min(n_hidden, 64)) for m, n in n_features.items()}
        )
        self.standardizers = nn.ModuleDict({m: _Standardizer(n) for m, n in n_features.items()})
        self.fusion = ModalityFusion(self.modalities, n_latent, mode=fusion)
        self.latent_projector = (
            MLP(n_latent, n_latent, n_hidden=n_hidden, n_layers=1, dropout_rate=0.0, use_batch_norm=False)
            if use_latent_projector
            else nn.Identity()
        )
        self.heads = (
            GroupHeads(n_latent, n_groups, n_heads, n_hidden, dropout_rate, use_batch_norm) if n_groups > 0 else None
        )
        self.register_buffer("class_weights", torch.ones(max(n_groups, 1)))
        self.register_buffer("best_head", torch.zeros((), dtype=torch.long))

    # parameter groups, one per optimizer (kept as lists: an iterator would be consumed by the first user)
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters updated by each objective's optimizer."""
        enc = list(self.encoders.parameters())
        dec = list(self.decoders.parameters())
        heads = list(self.heads.parameters()) if self.heads is not None else []
        fusion = list(self.fusion.parameters())
        return {
            "translation": enc + dec + list(self.latent_projector.parameters()),
            "discriminator": list(self.discriminators.parameters()),
            "classification": enc + fusion + heads,
            "clustering": enc + dec + fusion + heads,
        }

    def set_standardization(self, modality: str, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the per-feature centring and scaling of a gaussian modality (from training cells only)."""
        self.standardizers[modality].loc.copy_(torch.as_tensor(loc, dtype=torch.float32))
        self.standardizers[modality].scale.copy_(torch.as_tensor(scale, dtype=torch.float32))

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {"x": {m: tensors[modality_key(m)] for m in self.modalities if modality_key(m) in tensors}}

    def _get_generative_input(self, tensors: dict[str, torch.Tensor], inference_outputs: dict) -> dict:
        return {"z": inference_outputs["z"]}

    def standardize(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Input of a modality in the space the networks work in (standardised for gaussian modalities)."""
        return self.standardizers[modality](x.float()) if self.likelihoods[modality] == "gaussian" else x.float()

    def to_data_space(self, modality: str, out: torch.Tensor) -> torch.Tensor:
        """Decoder output in the modality's original units: probabilities for bernoulli, de-standardised values else."""
        if self.likelihoods[modality] == "bernoulli":
            return torch.sigmoid(out)
        return self.standardizers[modality].inverse(out)

    @auto_move_data
    def inference(self, x: Mapping[str, torch.Tensor]) -> dict:
        """Encode the modalities given (any non-empty subset) and fuse their latents.

        Returns a dict with ``z`` (latent per modality) and ``z_fused``.
        """
        if not x:
            raise ValueError("At least one registered modality is needed to encode cells.")
        z = {m: self.encoders[m](self.standardize(m, x[m])) for m in self.modalities if m in x}
        return {"z": z, "z_fused": self.fusion(z)}

    @auto_move_data
    def generative(self, z: Mapping[str, torch.Tensor]) -> dict:
        """Decode every latent into every modality: ``x_hat[target][source]`` (logits for bernoulli targets)."""
        return {"x_hat": {t: {s: self.decoders[t](zs) for s, zs in z.items()} for t in self.modalities}}

    def group_logits(self, z_fused: torch.Tensor, head: int | None = None) -> torch.Tensor:
        """Group logits of one head (the selected best head by default)."""
        if self.heads is None:
            raise ValueError("This model has no group heads: it was trained for translation only.")
        return self.heads.forward_head(z_fused, int(self.best_head) if head is None else head)[1]

    def discriminator_loss(self, tensors: dict[str, torch.Tensor], generative_outputs: dict) -> torch.Tensor:
        """Least-squares loss of the discriminators on real profiles vs *detached* reconstructions."""
        terms = []
        for m in self.modalities:
            real = self.standardize(m, tensors[modality_key(m)])
            fake = self._discriminator_input(m, generative_outputs["x_hat"][m][m].detach())
            d = self.discriminators[m]
            terms.append(0.5 * (lsgan_loss(d(real), 1.0) + lsgan_loss(d(fake), 0.0)))
        return torch.stack(terms).mean()

    def _discriminator_input(self, modality: str, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.likelihoods[modality] == "bernoulli" else out

    def _translation_terms(self, tensors, inference_outputs, generative_outputs) -> dict[str, torch.Tensor]:
        x = {m: self.standardize(m, tensors[modality_key(m)]) for m in self.modalities}
        x_hat = generative_outputs["x_hat"]
        recon = [reconstruction_error(x_hat[m][m], x[m], self.likelihoods[m]) for m in self.modalities]
        trans = [
            reconstruction_error(x_hat[t][s], x[t], self.likelihoods[t])
            for t in self.modalities
            for s in self.modalities
            if s != t
        ]
        gen = [
            lsgan_loss(self.discriminators[m](self._discriminator_input(m, x_hat[m][m])), 1.0) for m in self.modalities
        ]
        z = inference_outputs["z"]
        zero = recon[0].new_zeros(())
        contrast = []
        if len(self.modalities) > 1:
            groups = None
            if self.heads is not None and self.contrastive_group_negatives:
                with torch.no_grad():
                    groups = self.group_logits(inference_outputs["z_fused"]).argmax(1)
            proj = {m: self.latent_projector(z[m]) for m in self.modalities}
            contrast = [
                contrastive_loss(proj[a], proj[b], groups, self.contrastive_temperature)
                for i, a in enumerate(self.modalities)
                for b in self.modalities[i + 1 :]
            ]
        return {
            "reconstruction": torch.stack(recon).mean(),
            "translation": torch.stack(trans).mean() if trans else zero,
            "generator": torch.stack(gen).mean(),
            "contrastive": torch.stack(contrast).mean() if contrast else zero,
        }

    def _head_terms(self, tensors, inference_outputs, objective: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.heads is None:
            raise ValueError(f"The {objective!r} objective needs group heads; build the model with n_groups > 0.")
        if objective == "classification":
            labels = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
            _, logits = self.heads(inference_outputs["z_fused"])
            per_head = torch.stack([F.cross_entropy(lg, labels, weight=self.class_weights) for lg in logits])
            return {"classification": per_head.mean()}, per_head.detach()
        # clustering: by default the DDC terms update fusion and heads only, so the encoders' latents are detached
        z = inference_outputs["z"]
        z_fused = self.fusion(z if self.clustering_updates_encoders else {m: zm.detach() for m, zm in z.items()})
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
        (one value per head, used to select the best head).
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
                terms["reconstruction"] = torch.stack(
                    [
                        reconstruction_error(
                            x_hat[m][m], self.standardize(m, tensors[modality_key(m)]), self.likelihoods[m]
                        )
                        for m in self.modalities
                    ]
                ).mean()
        total = sum(self.loss_weights[k] * v for k, v in terms.items())
        extra = dict(terms)
        if head_losses is not None:
            extra["head_losses"] = head_losses
        n_obs = next(iter(inference_outputs["z"].values())).shape[0]
        return LossOutput(loss=total, extra_metrics=extra, n_obs_minibatch=n_obs)

    def forward_all(self, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """Inference and generative outputs for a batch holding every modality."""
        inference_outputs = self.inference(**self._get_inference_input(tensors))
        generative_outputs = self.generative(**self._get_generative_input(tensors, inference_outputs))
        return inference_outputs, generative_outputs

    def sample(self, *args, **kwargs):
        """Not defined: UnitedNet is not a generative model with a sampling distribution."""
        raise NotImplementedError("UnitedNet is not a probabilistic generative model; use predict_modality instead.")
