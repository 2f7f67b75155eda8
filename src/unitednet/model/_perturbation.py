from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi.data import AnnDataManager, fields
from scvi.data._constants import _SETUP_ARGS_KEY

from unitednet._constants import (
    LOSS_NAMES,
    PERTURBATION_KEYS,
    PERTURBATION_LOSS_NAMES,
    REGISTRY_KEYS,
    RESULT_KEYS,
    Likelihood,
    Task,
)
from unitednet.module._perturbation import UnitedNetPerturbationModule

from ._model import UnitedNetModel
from ._validation import check_mudata

PredictionMode = Literal["neighbours", "calibrated", "shift", "decode"]

NEIGHBOUR_TEMPERATURES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, float("inf"))
"""Temperatures of the label-neighbour response compared by leave-one-label-out (infinite: equal weights)."""


def _cell_mask(cells, n_obs: int, obs_names: pd.Index, name: str) -> np.ndarray:
    """Boolean mask over ``n_obs`` cells from a mask, integer positions or obs names."""
    if isinstance(cells, pd.Series):
        if cells.dtype == bool:
            cells = cells.reindex(obs_names)
            if cells.isna().any():
                raise ValueError(f"`{name}` (a boolean Series) must be indexed by the MuData's obs_names.")
            return cells.to_numpy(dtype=bool)
        cells = cells.to_numpy()
    arr = np.asarray(cells)
    if arr.dtype == bool:
        if arr.shape != (n_obs,):
            raise ValueError(f"`{name}` as a boolean mask must have one entry per cell ({n_obs}), got {arr.shape}.")
        return arr.copy()
    mask = np.zeros(n_obs, dtype=bool)
    if arr.size == 0:
        return mask
    if arr.dtype.kind in "iu":
        if arr.min() < -n_obs or arr.max() >= n_obs:
            raise IndexError(f"`{name}` holds positions outside [0, {n_obs}).")
        mask[arr] = True
        return mask
    positions = obs_names.get_indexer(arr.astype(str))
    if (positions < 0).any():
        missing = list(arr[positions < 0][:5])
        raise KeyError(f"`{name}` names cells that are not in the MuData, e.g. {missing}.")
    mask[positions] = True
    return mask


class UnitedNetPerturbationModel(UnitedNetModel):
    """UnitedNet with perturbations as learned directions of the shared latent space.

    A subclass of :class:`~unitednet.model.UnitedNetModel`: the encoders, decoders, fusion, group heads,
    discriminators, contrastive projector, the training plan with its alternating objectives, the split and the
    standardisation are the parent's, so cell-type classification or clustering, cross-modal prediction, latents,
    relevance and save / load work exactly as there, on perturbed data with one or more modalities. Subclassing
    (rather than a separate model) keeps one code path for the shared tasks; the perturbation parts are added by
    :class:`~unitednet.module.UnitedNetPerturbationModule`:

    - a latent direction ``delta_p`` per perturbation (zero for the control), so that a cell's latent is its basal
      state plus the direction of its perturbation. ``delta_p`` is the mean latent shift between cells under ``p``
      and control cells of the same label (cell type), averaged over labels and set from the training cells when
      training ends. Predicting a control cell under perturbation ``p`` decodes its latent plus ``delta_p``
      (:meth:`predict_perturbation`, ``mode="shift"``, ``"calibrated"`` or ``"decode"``), which also works for cell
      types never seen perturbed;
    - the label-neighbour response, the default prediction (``mode="neighbours"``): per label, the control centroid
      in the fused latent space and the mean change observed under each perturbation, set from the training cells
      when training ends. A cell is given the changes of the labels nearest to it in the latent space, with a
      temperature chosen by leave-one-label-out on the training labels. On Kang IFN-beta (leave one cell type out,
      ``benchmarks/kang_perturbation.py``) it predicted the held-out types' responses better than the decoded
      latent shift, which shrank large changes;
    - an alignment loss that trains the encoders to make each perturbation's latent shift the same for every label
      (relative to the size of the shifts, so that it never rewards erasing the perturbation);
    - a perturbation-identification head on the fused latent (:meth:`identify_perturbation`).

    Both terms join the translation objective, so they are trained together with reconstruction, translation, the
    adversarial and contrastive losses and, in the supervised task, with cell-type classification. A dedicated model
    class that reused the module parts would have had to duplicate set-up, splitting, training and every output
    method; the subclass only adds the perturbation column, the held-out cells and the perturbation outputs.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    align_within_labels
        Compute the directions within each registered label and align the labels' shifts (needs ``labels_key``;
        recommended when cell types are registered). ``False``, or no labels: the directions compare all perturbed
        with all control cells, and the alignment term is zero.
    counterfactual_identification
        Also train the identification head on control cells moved along each perturbation's direction (labelled
        with that perturbation), meant to help it recognise perturbed states of cell types never seen perturbed (off by
        default: on a Kang IFN-beta fold it did not improve identification).
    loss_weights
        Weights of the parent's loss terms and of ``perturbation_alignment`` and ``perturbation_identification``
        (default 1 each).
    **kwargs
        Every other :class:`~unitednet.model.UnitedNetModel` parameter (``n_latent``, ``n_hidden``, ``n_layers``,
        ``dropout_rate``, ``standardize``, ``norm``, ...). The identification head takes the ``"heads"``
        normalisation of ``norm``.

    Examples
    --------
    >>> mdata = unitednet.datasets.kang_ifnb()  # then normalise and log1p the counts, select genes
    >>> UnitedNetPerturbationModel.setup_mudata(
    ...     mdata, perturbation_key="condition", control_category="CTRL", labels_key="cell_type"
    ... )
    >>> model = UnitedNetPerturbationModel(mdata)
    >>> model.train(held_out=(mdata.obs.cell_type == "B") & (mdata.obs.condition == "STIM"))
    >>> b_ctrl = (mdata.obs.cell_type == "B") & (mdata.obs.condition == "CTRL")
    >>> stim_b = model.predict_perturbation(source="CTRL", target="STIM", indices=b_ctrl.to_numpy())
    """

    def __init__(
        self,
        mdata: MuData,
        align_within_labels: bool = True,
        counterfactual_identification: bool = False,
        loss_weights: Mapping[str, float] | None = None,
        **kwargs,
    ):
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(LOSS_NAMES) - set(PERTURBATION_LOSS_NAMES))
        if unknown:
            raise KeyError(
                f"Unknown loss weights {unknown}; valid names are {list(LOSS_NAMES) + list(PERTURBATION_LOSS_NAMES)}."
            )
        perturbation_weights = {k: loss_weights.pop(k) for k in PERTURBATION_LOSS_NAMES if k in loss_weights}
        if any(w < 0 for w in perturbation_weights.values()):
            raise ValueError("Loss weights must be non-negative.")
        manager = self._get_most_recent_anndata_manager(mdata)
        args = {} if manager is None else manager.registry[_SETUP_ARGS_KEY]
        if "perturbation_key" not in args:
            raise ValueError(
                "The MuData was not set up for perturbations; call "
                "`UnitedNetPerturbationModel.setup_mudata(mdata, perturbation_key=..., control_category=...)`."
            )
        categories = [str(c) for c in manager.get_state_registry(PERTURBATION_KEYS.REGISTRY_KEY).categorical_mapping]
        has_labels = args.get("labels_key") is not None
        n_strata = len(manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping) if has_labels else 1
        # the parent builds the module with its own arguments; the perturbation ones are bound here
        self._module_cls = functools.partial(
            UnitedNetPerturbationModule,
            n_perturbations=len(categories),
            control_index=categories.index(str(args["control_category"])),
            align_within_labels=bool(align_within_labels and has_labels),
            n_strata=n_strata if align_within_labels else 1,
            counterfactual_identification=counterfactual_identification,
            perturbation_loss_weights=perturbation_weights,
        )
        self._held_out: np.ndarray | None = None
        if isinstance(kwargs.get("norm"), Mapping):
            kwargs["norm"] = dict(kwargs["norm"])  # a plain dict in the saved init parameters
        super().__init__(mdata, loss_weights=loss_weights or None, **kwargs)
        self._model_summary_string = (
            self._model_summary_string.replace("UnitedNetModel", "UnitedNetPerturbationModel", 1)
            + f", perturbations {self.perturbation_categories} (control {self.control_category!r})"
        )
        loss_weights = {**loss_weights, **perturbation_weights} or None
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        perturbation_key: str,
        control_category: str,
        modalities: Sequence[str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        likelihoods: Mapping[str, Likelihood] | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData with a perturbation column for the perturbation model.

        Parameters
        ----------
        mdata
            MuData whose modalities hold the same cells in the same order.
        perturbation_key
            Column of ``mdata.obs`` with each cell's perturbation (condition), e.g. ``"condition"``.
        control_category
            The value of ``perturbation_key`` of unperturbed (control) cells, e.g. ``"CTRL"``.
        modalities, layers, likelihoods, labels_key, batch_key
            As in :meth:`unitednet.model.UnitedNetModel.setup_mudata`. ``labels_key`` (cell type) is the
            classification target of the supervised task and the strata within which perturbed and control cells
            are aligned.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Returns
        -------
        None. Adds ``mdata.obs["_scvi_perturbation"]`` (integer codes) to what
        :meth:`unitednet.model.UnitedNetModel.setup_mudata` adds; nothing else is changed.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_mudata(mdata)
        if perturbation_key not in mdata.obs:
            raise KeyError(
                f"perturbation_key={perturbation_key!r} is not a column of mdata.obs; available: "
                f"{list(mdata.obs.columns)}. Columns of a modality's obs are pulled with `mdata.pull_obs()`."
            )
        column = mdata.obs[perturbation_key]
        if column.isna().any():
            raise ValueError(
                f"mdata.obs[{perturbation_key!r}] has {int(column.isna().sum())} missing values; drop those cells or "
                "fill the column (e.g. with the control category)."
            )
        values = sorted(set(column.astype(str)))
        if str(control_category) not in values:
            raise ValueError(
                f"control_category={control_category!r} is not a value of mdata.obs[{perturbation_key!r}]; values: "
                f"{values}."
            )
        if len(values) < 2:
            raise ValueError(
                f"mdata.obs[{perturbation_key!r}] holds only {values}; the perturbation model needs control cells and "
                "cells of at least one perturbation."
            )
        # the parent validates the modalities and registers its fields; the perturbation field is then added to a
        # manager that records this method's own arguments (so that `load` calls it with them again)
        super().setup_mudata(
            mdata,
            modalities=modalities,
            layers=layers,
            likelihoods=likelihoods,
            labels_key=labels_key,
            batch_key=batch_key,
            **kwargs,
        )
        base = cls._get_most_recent_anndata_manager(mdata, required=True)
        resolved = base.registry[_SETUP_ARGS_KEY]
        setup_method_args[_SETUP_ARGS_KEY].update(
            modalities=resolved["modalities"],
            layers=resolved["layers"],
            likelihoods=resolved["likelihoods"],
            control_category=str(control_category),
        )
        mudata_fields = list(base.fields) + [
            fields.MuDataCategoricalObsField(PERTURBATION_KEYS.REGISTRY_KEY, perturbation_key)
        ]
        adata_manager = AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ registry views
    @property
    def perturbation_key(self) -> str:
        """Registered perturbation column of ``mdata.obs``."""
        return self._setup_args["perturbation_key"]

    @property
    def control_category(self) -> str:
        """The control (unperturbed) category."""
        return str(self._setup_args["control_category"])

    @property
    def perturbation_categories(self) -> list[str]:
        """Perturbation categories, in the order of the identification head's outputs."""
        mapping = self.adata_manager.get_state_registry(PERTURBATION_KEYS.REGISTRY_KEY).categorical_mapping
        return [str(c) for c in mapping]

    def _perturbation_code(self, category: str, name: str) -> int:
        categories = self.perturbation_categories
        if str(category) not in categories:
            raise KeyError(f"{name}={category!r} is not a registered perturbation; registered: {categories}.")
        return categories.index(str(category))

    # ------------------------------------------------------------------ training
    def train(self, task: Task | None = None, *, held_out=None, **kwargs) -> None:
        """Train the model; cells in ``held_out`` never enter training or validation.

        Parameters
        ----------
        task
            As in :meth:`unitednet.model.UnitedNetModel.train`; default ``"supervised"`` when labels (cell types)
            were registered, else ``"translation"``. The perturbation terms are part of the translation objective,
            which every task's default objective order includes.
        held_out
            Cells kept out of training and validation: a boolean mask (array, or Series indexed by obs_names),
            integer positions or obs names. For out-of-distribution prediction, hold out the perturbed cells of one
            cell type: the model then learns the perturbation from the other cell types only and is asked for it on
            that type's control cells. Held-out cells are marked ``"test"`` in ``mdata.obs["unitednet_split"]``;
            neither the standardisation statistics, the class weights nor any loss sees them.
        **kwargs
            Every other argument of :meth:`unitednet.model.UnitedNetModel.train` (``max_epochs``, ``split_key``,
            ``train_size``, ``validation_size``, ...). With ``held_out``, validation cells are still drawn among the
            cells that are not held out, stratified by label, batch and perturbation.

        Returns
        -------
        None. Writes ``mdata.obs["unitednet_split"]`` and sets :attr:`history` as the parent does; then sets the
        perturbation directions (:meth:`get_perturbation_shifts`), the calibration of ``mode="calibrated"`` and the
        label-neighbour response of ``mode="neighbours"`` from the training cells.
        """
        if task is None:
            task = "supervised" if self.labels_key is not None else "translation"
        self._held_out = (
            None if held_out is None else _cell_mask(held_out, self.adata.n_obs, self.adata.obs_names, "held_out")
        )
        try:
            super().train(task, **kwargs)
        finally:
            self._held_out = None
        self._fit_perturbation_statistics(np.flatnonzero(self.split_ == "train"))

    @torch.inference_mode()
    def _fit_perturbation_statistics(self, idx: np.ndarray) -> None:
        """Set the perturbation directions and the calibration from the cells ``idx`` (the training cells).

        Directions: label-balanced mean latent shift from control, averaged over modalities. Calibration, per
        modality: the label-balanced mean observed change from control to each perturbation (data units), and the
        mean decoded change ``decode(z + delta_p) - decode(z)`` of the control cells, balanced over the same labels.
        Label-neighbour response: :meth:`_fit_neighbours`.
        """
        module = self.module
        module.eval()
        n, control = module.n_perturbations, module.control_index
        codes_np = self._perturbation_codes()[idx]
        codes = torch.as_tensor(codes_np, device=self.device)
        if module.align_within_labels:
            labels = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()[idx].astype(int)
        else:
            labels = np.zeros(len(idx), dtype=int)
        strata = torch.as_tensor(labels, device=self.device)
        latents = {}
        estimates = []
        for m in self.modalities:
            z = torch.cat([module.inference(x)["z"][m] for x in self._batches(self.adata, [m], None, indices=idx)])
            latents[m] = z
            estimates.append(module.shift_estimates(z, codes, strata, n, control))
        found = estimates[0][1]
        mean = torch.stack([e[0] for e in estimates]).mean(0)
        module.set_shifts(torch.where(found.unsqueeze(1), mean, module.perturbation_shift))
        shifts = module.shifts()
        # the label-neighbour response; its strata's changes also give the calibration's observed change
        observed = self._fit_neighbours(idx, codes_np, labels, module.fuse(latents))
        is_control = codes_np == control
        for m in self.modalities:
            decoded = torch.zeros_like(observed[m])
            if is_control.any():
                zc = torch.stack([latents[s][torch.as_tensor(is_control)] for s in self.modalities])
                base = module.to_data_space(m, torch.stack([module.decoders[m](z) for z in zc]).mean(0))
                ctrl_labels = strata[torch.as_tensor(is_control)]
                for p in np.flatnonzero(found.cpu().numpy()):
                    moved = torch.stack([module.decoders[m](z + shifts[p]) for z in zc]).mean(0)
                    change = module.to_data_space(m, moved) - base
                    # balanced over the labels that gave the direction (those with control and perturbed cells)
                    with_both = [
                        t
                        for t in torch.unique(strata)
                        if ((strata == t) & (codes == p)).any() and ((strata == t) & (codes == control)).any()
                    ]
                    decoded[p] = torch.stack([change[ctrl_labels == t].mean(0) for t in with_both]).mean(0)
            getattr(module, f"calibration_{m}").copy_(torch.stack([observed[m], decoded]))

    @torch.inference_mode()
    def _fit_neighbours(
        self, idx: np.ndarray, codes: np.ndarray, strata: np.ndarray, z_fused: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Set the label-neighbour response of ``mode="neighbours"`` from the training cells ``idx``.

        Per stratum (label): the mean fused latent of its control cells, and per perturbation the observed change of
        its mean profile from control. Per perturbation, the temperature of the weights is the one of
        :data:`NEIGHBOUR_TEMPERATURES` that best predicts each stratum's mean change from the *other* strata
        (leave one stratum out: the situation of a cell type never seen perturbed), by the squared error of the
        mean change over the modality's total variance across the training cells, summed over the modalities and
        strata (:meth:`~unitednet.module.UnitedNetPerturbationModule.select_neighbour_temperature`).

        ``z_fused`` holds the fused latents of the cells ``idx``. Returns, per modality, the label-balanced mean
        change of each perturbation from control (perturbations x features; the mean of the strata's changes over
        the strata that hold both, zero where none does).
        """
        module = self.module
        n, control, k = module.n_perturbations, module.control_index, module.n_strata
        c = torch.as_tensor(codes, device=z_fused.device)
        basal = module.counterfactual(z_fused, c, torch.full_like(c, control))
        # one pass over the data in minibatches: per modality, sums per (perturbation, stratum) and sums of squares,
        # so no modality is held densely in full
        groups = torch.as_tensor(codes * k + strata, device=self.device)
        counts = torch.bincount(groups, minlength=n * k).float().view(n, k)
        sums = {m: torch.zeros(n * k, module.response(m).shape[2], device=self.device) for m in self.modalities}
        squares = dict.fromkeys(self.modalities, 0.0)
        start = 0
        for batch in self._batches(self.adata, self.modalities, None, indices=idx):
            rows = slice(start, start + batch[self.modalities[0]].shape[0])
            start = rows.stop
            for m in self.modalities:
                sums[m].index_add_(0, groups[rows], batch[m].float())
                squares[m] = squares[m] + (batch[m].float() ** 2).sum(0)
        found = (counts > 0).float()
        is_control = codes == control
        centroids = torch.zeros_like(module.stratum_centroid)
        # basal latents of each stratum's control cells: their mean is the centroid, and the temperature selection
        # of every perturbation reads them
        control_basal = {
            int(s): basal[torch.as_tensor(is_control & (strata == s), device=basal.device)]
            for s in np.flatnonzero(found[control].cpu().numpy())
        }
        for s, cells in control_basal.items():
            centroids[s] = cells.mean(0)
        means = {m: (sums[m] / counts.view(-1, 1).clamp_min(1)).view(n, k, -1) for m in self.modalities}
        response = {m: (means[m] - means[m][control]) * (found * found[control]).unsqueeze(2) for m in self.modalities}
        module.stratum_centroid.copy_(centroids)
        module.response_found.copy_(found)
        for m in self.modalities:
            module.response(m).copy_(response[m])
        total = counts.sum()
        total_variance = {
            m: (squares[m] / total - (sums[m].sum(0) / total) ** 2).sum() * total / (total - 1).clamp_min(1)
            for m in self.modalities
        }
        for p in range(n):
            with_both = torch.nonzero(found[p].bool() & found[control].bool()).flatten()
            if p == control or len(with_both) < 2:
                continue
            temperature, scale = UnitedNetPerturbationModule.select_neighbour_temperature(
                [control_basal[s] for s in with_both.tolist()],
                centroids[with_both],
                {m: response[m][p, with_both] for m in self.modalities},
                total_variance,
                NEIGHBOUR_TEMPERATURES,
            )
            module.neighbour_temperature[p] = temperature
            module.neighbour_scale[p] = scale
        n_both = (found * found[control]).sum(1).clamp_min(1).view(n, 1)
        return {m: response[m].sum(1) / n_both for m in self.modalities}

    def _split(self, train_size: float, validation_size: float, split_key: str | None, supervised: bool):
        train, val, test = super()._split(train_size, validation_size, split_key, supervised)
        if self._held_out is not None and self._held_out.any():
            held = self._held_out
            train, val = train[~held[train]], val[~held[val]]
            test = np.union1d(test, np.flatnonzero(held)).astype(int)
        codes = self._perturbation_codes()[train]
        categories = self.perturbation_categories
        missing = [categories[i] for i in range(len(categories)) if not (codes == i).any()]
        if self.control_category in missing:
            raise ValueError("No control cells are left for training; hold out fewer cells.")
        if missing:
            warnings.warn(
                f"No training cells under perturbations {missing}: their latent directions stay at zero.",
                UserWarning,
                stacklevel=3,
            )
        return train, val, test

    def _strata(self, supervised: bool) -> np.ndarray | None:
        parts = super()._strata(supervised)
        perturbation = self.adata.obs[self.perturbation_key].astype(str).to_numpy()
        return perturbation if parts is None else np.char.add(np.char.add(parts.astype(str), "|"), perturbation)

    def _perturbation_codes(self) -> np.ndarray:
        return np.asarray(self.adata_manager.get_from_registry(PERTURBATION_KEYS.REGISTRY_KEY)).ravel().astype(int)

    def _fit_standardization(self, train_idx: np.ndarray, chunk_size: int = 4096) -> None:
        """Fit the parent's standardisation and the balanced perturbation class weights on the training cells."""
        super()._fit_standardization(train_idx, chunk_size)
        n = self.module.n_perturbations
        counts = np.bincount(self._perturbation_codes()[train_idx], minlength=n).astype(float)
        weights = np.where(counts > 0, counts.sum() / (n * np.maximum(counts, 1)), 0.0)
        self.module.perturbation_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def get_perturbation_shifts(self) -> pd.DataFrame:
        """Latent direction of each perturbation (rows; the control row is zero) over the latent dimensions."""
        return pd.DataFrame(self.module.shifts().cpu().numpy(), index=self.perturbation_categories)

    @torch.inference_mode()
    def identify_perturbation(
        self, mdata: MuData | None = None, *, return_proba: bool = False, batch_size: int | None = None
    ) -> np.ndarray | pd.DataFrame:
        """Perturbation of each cell predicted by the identification head from its fused latent.

        Parameters
        ----------
        mdata
            MuData to classify (the registered one by default); any subset of the model's modalities.
        return_proba
            Return the probabilities (cells x perturbations DataFrame) instead of the categories.
        batch_size
            Minibatch size.

        Returns
        -------
        Perturbation category per cell, or the probabilities.
        """
        self._check_trained()
        mods = self._available(mdata)
        mdata = self._resolve_mdata(mdata, mods, check_names=False)
        self.module.eval()
        probs = np.concatenate(
            [
                torch.softmax(self.module.perturbation_logits(self.module.inference(x)["z_fused"]), 1).cpu().numpy()
                for x in self._batches(mdata, mods, batch_size)
            ]
        )
        names = self.perturbation_categories
        if return_proba:
            return pd.DataFrame(probs, index=mdata.obs_names.copy(), columns=names)
        return np.asarray(names, dtype=object)[probs.argmax(1)].astype(str)

    @torch.inference_mode()
    def predict_perturbation(
        self,
        mdata: MuData | None = None,
        *,
        source: str | None = None,
        target: str | None = None,
        indices=None,
        modality: str | None = None,
        mode: PredictionMode = "neighbours",
        batch_size: int | None = None,
    ) -> ad.AnnData:
        """Predict the profiles of ``source`` cells (control by default) under perturbation ``target``.

        Each chosen cell's latent in every measured modality is moved along the latent directions
        (``z - delta_source + delta_target``) and decoded into ``modality``; the decodes of the measured modalities
        are averaged. The cells may belong to a cell type never seen under ``target``.

        Parameters
        ----------
        mdata
            MuData with the cells (the registered one by default); any subset of the model's modalities.
        source
            Perturbation the chosen cells are under; the control category by default.
        target
            Perturbation to predict; by default the only non-control category (required when there are several).
        indices
            Cells to predict (boolean mask, integer positions or obs names). By default every cell whose
            ``obs[perturbation_key]`` equals ``source``; when ``mdata`` has no such column, every cell, all taken to be
            under ``source``. Chosen cells must be under ``source`` when the column is present.
        modality
            Modality predicted; the first registered modality by default.
        mode
            ``"neighbours"`` (default): the cell's measured profile plus the mean change observed, on the training
            cells, in the labels (cell types) nearest to it in the fused latent space: the labels' changes weighted
            by a softmax of minus the squared distance of the cell's basal latent to each label's control centroid
            (:meth:`~unitednet.module.UnitedNetPerturbationModule.neighbour_change`). The temperature is chosen when
            training ends, per perturbation, by how well each training label's change is predicted from the other
            labels; with an infinite temperature (chosen when the labels' changes are alike, and always with fewer
            than three labels) this is the label-balanced mean change. A label never seen perturbed thus takes the
            response of the labels it resembles. ``"shift"``: the cell's measured profile plus its decoded change,
            ``x + decode(z - delta_source + delta_target) - decode(z)``; it keeps each cell's own detail and cancels
            the decoder's reconstruction error. ``"calibrated"``: as ``"shift"``, plus the mean change observed on the
            training cells minus the mean decoded change of the training control cells (both label-balanced, from
            ``source`` to ``target``), so that the decoders' shrinkage of large changes is corrected: the prediction is
            the observed average response plus the model's cell-specific deviation from it. ``"decode"``: the decoded
            counterfactual itself (the only mode for a query that lacks ``modality``). Probabilities are clipped to
            [0, 1] for bernoulli modalities and expected counts at 0 for nb modalities.
        batch_size
            Minibatch size.

        Returns
        -------
        AnnData of the chosen cells (same obs_names, a copy of ``mdata.obs`` with ``obs[perturbation_key]`` set to
        ``target``) x the model's features of ``modality`` (``var`` copied), with the predicted profiles, dense, in
        the modality's units as ``X``, and ``uns["unitednet"]["perturbation"]`` = ``{"source", "target",
        "modality", "mode"}``.
        """
        self._check_trained()
        if mode not in ("neighbours", "calibrated", "shift", "decode"):
            raise ValueError(f"mode must be 'neighbours', 'calibrated', 'shift' or 'decode', got {mode!r}.")
        modality = self.modalities[0] if modality is None else modality
        if modality not in self.modalities:
            raise KeyError(f"Unknown modality {modality!r}; registered: {self.modalities}.")
        source = self.control_category if source is None else str(source)
        if target is None:
            others = [c for c in self.perturbation_categories if c != self.control_category]
            if len(others) != 1:
                raise ValueError(f"Give the target perturbation: one of {others}.")
            target = others[0]
        src, tgt = self._perturbation_code(source, "source"), self._perturbation_code(str(target), "target")
        view = self.adata if mdata is None else mdata
        mods = self._available(mdata)
        resolved = self._resolve_mdata(mdata, mods, check_names=False)
        if mode != "decode" and modality not in mods:
            raise ValueError(
                f"mode={mode!r} adds a change to the measured {modality!r} profiles, which the query lacks; "
                "use mode='decode'."
            )
        column = view.obs[self.perturbation_key].astype(str).to_numpy() if self.perturbation_key in view.obs else None
        if indices is None:
            mask = np.ones(view.n_obs, dtype=bool) if column is None else column == source
        else:
            mask = _cell_mask(indices, view.n_obs, view.obs_names, "indices")
            if column is not None and (column[mask] != source).any():
                wrong = sorted(set(column[mask]) - {source})
                raise ValueError(
                    f"Some chosen cells are under {wrong}, not source={source!r}; choose cells of one perturbation."
                )
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            raise ValueError(f"No cells to predict: none is under source={source!r}.")
        self.module.eval()
        out = []
        for x in self._batches(resolved, mods, batch_size, indices=idx):
            inference = self.module.inference(x)
            if mode == "neighbours":
                pred = x[modality] + self.module.neighbour_change(modality, inference["z_fused"], src, tgt)
            else:
                z = inference["z"]
                n = next(iter(z.values())).shape[0]
                s = torch.full((n,), src, dtype=torch.long, device=self.device)
                t = torch.full((n,), tgt, dtype=torch.long, device=self.device)
                moved = torch.stack(
                    [self.module.decoders[modality](self.module.counterfactual(zm, s, t)) for zm in z.values()]
                ).mean(0)
                pred = self.module.to_data_space(modality, moved)
            if mode in ("shift", "calibrated"):
                same = torch.stack([self.module.decoders[modality](zm) for zm in z.values()]).mean(0)
                pred = x[modality] + pred - self.module.to_data_space(modality, same)
                if mode == "calibrated":
                    observed, decoded = self.module.calibration(modality)
                    pred = pred + (observed[tgt] - observed[src]) - (decoded[tgt] - decoded[src])
            if mode != "decode" and self.likelihoods[modality] == "bernoulli":
                pred = pred.clamp(0.0, 1.0)
            elif mode != "decode" and self.likelihoods[modality] == "nb":
                pred = pred.clamp(min=0.0)  # expected counts cannot be negative
            out.append(pred.cpu().numpy())
        obs = view.obs.iloc[idx].copy()
        if self.perturbation_key in obs:
            obs[self.perturbation_key] = pd.Categorical(
                [str(target)] * len(idx), categories=self.perturbation_categories
            )
        var = pd.DataFrame(index=self.var_names(modality).copy())
        if modality in view.mod:
            var = view.mod[modality].var.reindex(self.var_names(modality)).copy()
        info = {"source": source, "target": str(target), "modality": modality, "mode": mode}
        return ad.AnnData(
            X=np.concatenate(out).astype(np.float32),
            obs=obs,
            var=var,
            uns={RESULT_KEYS.UNS: {PERTURBATION_KEYS.UNS: info}},
        )
