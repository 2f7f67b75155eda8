"""UnitedNet module with perturbations as learned directions of the shared latent space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unitednet._constants import DEFAULT_PERTURBATION_LOSS_WEIGHTS, PERTURBATION_KEYS, REGISTRY_KEYS
from unitednet.nn import GroupHeads

from ._module import UnitedNetModule


class UnitedNetPerturbationModule(UnitedNetModule):
    """:class:`~unitednet.module.UnitedNetModule` plus perturbation directions and a perturbation-identification head.

    Every perturbation ``p`` is a direction ``delta_p`` of the shared latent space (zero for the control category):
    the latent of a cell under ``p`` is its basal (unperturbed) state plus ``delta_p``, so the counterfactual latent
    of that cell under perturbation ``q`` is ``z - delta_p + delta_q``, decoded by the usual decoders.

    ``delta_p`` is the mean latent shift from control to ``p`` within each label (cell type; all cells form one
    stratum without labels), averaged over the labels that hold both; the model sets it from its training cells
    when training ends (:meth:`shift_estimates`, :meth:`set_shifts`). Two loss terms join the translation
    objective:

    - ``perturbation_alignment``: the spread over labels of each perturbation's mean latent shift from the control
      cells of the same label (in the minibatch), divided by the mean squared size of those shifts, so that shrinking
      every shift does not lower it. It makes the encoders produce latents in which a perturbation is the same shift
      for every label, which is what lets the shift transfer to labels never seen perturbed. It needs labels and
      is zero without them;
    - ``perturbation_identification``: class-balanced cross-entropy of an identification head (a
      :class:`~unitednet.nn.GroupHeads` head: projector MLP and normalised linear layer) that predicts each cell's
      perturbation from its fused latent, on the measured cells and (``counterfactual_identification``) on control
      cells moved along a perturbation's direction.

    Parameters
    ----------
    n_features, likelihoods
        As for :class:`~unitednet.module.UnitedNetModule`.
    n_perturbations
        Number of perturbation categories, control included.
    control_index
        Index of the control category.
    align_within_labels
        Match basal latents within each registered label (cell type) rather than over all cells.
    perturbation_loss_weights
        Weights of ``perturbation_alignment`` and ``perturbation_identification`` (default 1 each).
    n_strata
        Number of strata (registered labels, 1 without labels) of the label-neighbour response
        (:meth:`neighbour_change`).
    counterfactual_identification
        Also train the identification head on counterfactual cells: control cells of the minibatch moved along the
        minibatch's latent shift of a random perturbation, labelled with that perturbation (the two cross-entropies
        are averaged; only the head learns from them). It shows the head perturbed states of every label, including
        labels never seen perturbed. Off by default: on a Kang IFN-beta fold it did not improve identification.
    n_latent, n_hidden, dropout_rate, use_batch_norm
        As for :class:`~unitednet.module.UnitedNetModule`; the identification head uses them too. It also takes the
        normalisation of the ``"heads"`` part of ``norm`` (passed on in ``kwargs``; a string applies to every part).
    **kwargs
        Every other :class:`~unitednet.module.UnitedNetModule` parameter (``n_latent``, ``n_hidden``, ...).
    """

    def __init__(
        self,
        n_features: Mapping[str, int],
        likelihoods: Mapping[str, str],
        n_perturbations: int = 2,
        control_index: int = 0,
        align_within_labels: bool = True,
        perturbation_loss_weights: Mapping[str, float] | None = None,
        n_strata: int = 1,
        counterfactual_identification: bool = False,
        n_latent: int = 32,
        n_hidden: int = 256,
        dropout_rate: float = 0.3,
        use_batch_norm: bool = True,
        **kwargs,
    ):
        super().__init__(
            n_features,
            likelihoods,
            n_latent=n_latent,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            **kwargs,
        )
        if n_perturbations < 2:
            raise ValueError(
                f"n_perturbations must be >= 2 (control and at least one perturbation), got {n_perturbations}."
            )
        if not 0 <= control_index < n_perturbations:
            raise ValueError(f"control_index must be in [0, {n_perturbations}), got {control_index}.")
        self.n_perturbations = n_perturbations
        self.control_index = control_index
        self.align_within_labels = align_within_labels
        self.counterfactual_identification = counterfactual_identification
        self.loss_weights.update({**DEFAULT_PERTURBATION_LOSS_WEIGHTS, **(perturbation_loss_weights or {})})
        self.register_buffer("perturbation_shift", torch.zeros(n_perturbations, n_latent))
        # per modality: [0] observed and [1] decoded mean change from control to each perturbation on the training
        # cells (data units, label-balanced), set by the model when training ends; read by the calibrated prediction
        for m, n in n_features.items():
            self.register_buffer(f"calibration_{m}", torch.zeros(2, n_perturbations, n))
        # label-neighbour response (set by the model when training ends; read by mode="neighbours"): per stratum,
        # the mean fused latent of its training control cells; per perturbation and stratum, the observed mean
        # change from control (data units) and whether the stratum has training cells of it (for the control row:
        # training control cells); per perturbation, the temperature chosen by leave-one-stratum-out and the
        # squared-distance scale of the weights
        if n_strata < 1:
            raise ValueError(f"n_strata must be >= 1, got {n_strata}.")
        self.n_strata = n_strata
        self.register_buffer("stratum_centroid", torch.zeros(n_strata, n_latent))
        for m, n in n_features.items():
            self.register_buffer(f"response_{m}", torch.zeros(n_perturbations, n_strata, n))
        self.register_buffer("response_found", torch.zeros(n_perturbations, n_strata))
        self.register_buffer("neighbour_temperature", torch.full((n_perturbations,), float("inf")))
        self.register_buffer("neighbour_scale", torch.ones(n_perturbations))
        mask = torch.ones(n_perturbations, 1)
        mask[control_index] = 0.0
        self.register_buffer("_shift_mask", mask)
        self.identification_head = GroupHeads(
            n_latent,
            n_perturbations,
            n_heads=1,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            norm=self.part_norms["heads"],
        )
        self.register_buffer("perturbation_weights", torch.ones(n_perturbations))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """As the parent's, with the identification head in the translation group."""
        groups = super().parameter_groups()
        groups["translation"] = groups["translation"] + list(self.identification_head.parameters())
        return groups

    def shifts(self) -> torch.Tensor:
        """Latent direction of every perturbation (perturbations x n_latent; the control row is zero)."""
        return self.perturbation_shift

    @staticmethod
    def shift_estimates(
        z: torch.Tensor, codes: torch.Tensor, strata: torch.Tensor, n_perturbations: int, control_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean latent shift of each perturbation from the control, averaged over the strata holding both.

        Returns the estimates (perturbations x n_latent; zero where there is none) and a boolean vector telling
        which perturbations have one.
        """
        total = z.new_zeros(n_perturbations, z.shape[1])
        count = z.new_zeros(n_perturbations)
        for stratum in torch.unique(strata):
            inside = strata == stratum
            control = inside & (codes == control_index)
            if not control.any():
                continue
            centre = z[control].mean(0)
            for p in torch.unique(codes[inside]):
                p = int(p)
                if p == control_index:
                    continue
                total[p] += z[inside & (codes == p)].mean(0) - centre
                count[p] += 1
        found = count > 0
        return total / count.clamp_min(1).unsqueeze(1), found

    @torch.no_grad()
    def set_shifts(self, shifts: torch.Tensor) -> None:
        """Set the perturbation directions (the control row is kept at zero)."""
        self.perturbation_shift.copy_(torch.as_tensor(shifts, dtype=torch.float32) * self._shift_mask)

    def calibration(self, modality: str) -> torch.Tensor:
        """Observed ([0]) and decoded ([1]) mean change from control to each perturbation on the training cells."""
        return getattr(self, f"calibration_{modality}")

    def response(self, modality: str) -> torch.Tensor:
        """Observed mean change from control of each perturbation in each stratum (perturbations x strata x features)."""
        return getattr(self, f"response_{modality}")

    @staticmethod
    def neighbour_weights(z: torch.Tensor, centroids: torch.Tensor, temperature: float, scale: float) -> torch.Tensor:
        """Weights (cells x strata, rows summing to 1) of the strata for each latent ``z``.

        ``softmax(-(d - min d) / temperature)`` over the strata, with ``d`` the squared distance of ``z`` to each
        stratum's control centroid divided by ``scale``; an infinite temperature weighs every stratum equally.
        """
        if not np.isfinite(temperature):
            return z.new_full((z.shape[0], centroids.shape[0]), 1.0 / centroids.shape[0])
        d = torch.cdist(z, centroids) ** 2 / scale
        return torch.softmax(-(d - d.min(1, keepdim=True).values) / temperature, dim=1)

    @staticmethod
    def select_neighbour_temperature(
        cells: Sequence[torch.Tensor],
        centroids: torch.Tensor,
        responses: Mapping[str, torch.Tensor],
        total_variance: Mapping[str, torch.Tensor | float],
        temperatures: Sequence[float],
    ) -> tuple[float, float]:
        """Temperature and distance scale of :meth:`neighbour_weights`, by leave-one-stratum-out.

        Parameters
        ----------
        cells
            Per stratum, the basal latents of its control cells.
        centroids
            Control centroid of each stratum (strata x latent).
        responses
            Per modality, the observed mean change of each stratum (strata x features, data units).
        total_variance
            Per modality, the summed variance of its features over the training cells.
        temperatures
            Candidates (``inf``: equal weights).

        Returns
        -------
        The candidate whose weights, computed from the *other* strata, best predict each stratum's mean change (the
        situation of a cell type never seen perturbed): squared error over the modality's total variance, summed
        over the modalities and strata; ties go to the higher temperature. With fewer than three strata, ``inf``.
        The scale is the median squared distance between the centroids.
        """
        k = centroids.shape[0]
        scale = (
            float((torch.cdist(centroids, centroids) ** 2)[tuple(torch.triu_indices(k, k, 1))].median())
            if k > 1
            else 1.0
        )
        scale = scale if scale > 0 else 1.0
        if k < 3:
            return float("inf"), scale
        losses = []
        for temperature in temperatures:
            loss = 0.0
            for i in range(k):
                others = [j for j in range(k) if j != i]
                w = UnitedNetPerturbationModule.neighbour_weights(cells[i], centroids[others], temperature, scale)
                w = w.mean(0)
                for m, r in responses.items():
                    loss += float(((w @ r[others] - r[i]) ** 2).sum() / max(float(total_variance[m]), 1e-12))
            losses.append(loss)
        best = min(losses)
        tied = [t for t, loss in zip(temperatures, losses, strict=True) if loss <= best * (1 + 1e-6) + 1e-12]
        return max(tied), scale

    def neighbour_change(self, modality: str, z_fused: torch.Tensor, source: int, target: int) -> torch.Tensor:
        """Change of each cell from perturbation ``source`` to ``target``, from the strata nearest to it (data units).

        The cell's basal fused latent (``z_fused`` moved from ``source`` to the control) is compared with the control
        centroids of the training strata that hold control cells and cells of both ``source`` and ``target``
        (:meth:`neighbour_weights`, with the temperature and scale of the non-control perturbation of the pair,
        ``target`` when both are perturbations); the change is the weighted mean of the strata's observed changes.
        """
        found = self.response_found.bool()
        strata = torch.nonzero(found[source] & found[target] & found[self.control_index]).flatten()
        if len(strata) == 0:
            raise ValueError("No training stratum holds cells of both perturbations; their change is unknown.")
        p = source if target == self.control_index else target
        basal = self.counterfactual(
            z_fused,
            torch.full((z_fused.shape[0],), source, dtype=torch.long, device=z_fused.device),
            torch.full((z_fused.shape[0],), self.control_index, dtype=torch.long, device=z_fused.device),
        )
        weights = self.neighbour_weights(
            basal,
            self.stratum_centroid[strata],
            float(self.neighbour_temperature[p]),
            float(self.neighbour_scale[p]),
        )
        change = self.response(modality)[target, strata] - self.response(modality)[source, strata]
        return weights @ change

    def counterfactual(self, z: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Latent ``z`` of cells under perturbation codes ``source`` moved to perturbation codes ``target``."""
        shifts = self.shifts()
        return z - shifts[source] + shifts[target]

    def perturbation_logits(self, z_fused: torch.Tensor) -> torch.Tensor:
        """Logits of the identification head (cells x perturbations)."""
        return self.identification_head.forward_head(z_fused, 0)[1]

    def _alignment(self, z: torch.Tensor, codes: torch.Tensor, strata: torch.Tensor) -> torch.Tensor | None:
        """Spread of each perturbation's latent shift over the labels, relative to the shifts' size."""
        spread, size = [], []
        for p in torch.unique(codes):
            if int(p) == self.control_index:
                continue
            shifts = []
            for stratum in torch.unique(strata):
                control = (strata == stratum) & (codes == self.control_index)
                perturbed = (strata == stratum) & (codes == p)
                if control.any() and perturbed.any():
                    shifts.append(z[perturbed].mean(0) - z[control].mean(0))
            if len(shifts) < 2:
                continue
            shifts = torch.stack(shifts)
            spread.append(((shifts - shifts.mean(0)) ** 2).sum(1).mean())
            size.append((shifts.detach() ** 2).sum(1).mean())
        if not spread:
            return None
        return torch.stack(spread).mean() / torch.stack(size).mean().clamp_min(1e-8)

    def _translation_terms(self, tensors, inference_outputs, generative_outputs) -> dict[str, torch.Tensor]:
        terms = super()._translation_terms(tensors, inference_outputs, generative_outputs)
        codes = tensors[PERTURBATION_KEYS.REGISTRY_KEY].view(-1).long()
        z = inference_outputs["z"]
        if self.align_within_labels:
            strata = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).long()
        else:
            strata = torch.zeros_like(codes)
        aligned = [
            a for a in (self._alignment(z[m], codes, strata) for m in self.modalities if m in z) if a is not None
        ]
        zero = terms["reconstruction"].new_zeros(())
        terms["perturbation_alignment"] = torch.stack(aligned).mean() if aligned else zero
        z_fused = inference_outputs["z_fused"]
        logits = self.perturbation_logits(z_fused)
        identification = F.cross_entropy(logits, codes, weight=self.perturbation_weights)
        if self.counterfactual_identification:
            counterfactual = self._counterfactual_identification(z_fused, codes, strata)
            if counterfactual is not None:
                identification = 0.5 * (identification + counterfactual)
        terms["perturbation_identification"] = identification
        return terms

    def _counterfactual_identification(
        self, z_fused: torch.Tensor, codes: torch.Tensor, strata: torch.Tensor
    ) -> torch.Tensor | None:
        """Cross-entropy of the identification head on control cells moved along a perturbation's batch shift."""
        control = codes == self.control_index
        shifts, found = self.shift_estimates(z_fused.detach(), codes, strata, self.n_perturbations, self.control_index)
        targets = torch.nonzero(found).flatten()
        if not control.any() or len(targets) == 0:
            return None
        chosen = targets[torch.randint(len(targets), (int(control.sum()),), device=codes.device)]
        logits = self.perturbation_logits(z_fused[control].detach() + shifts[chosen])
        return F.cross_entropy(logits, chosen, weight=self.perturbation_weights)
