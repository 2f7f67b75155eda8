from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import rich.pretty  # noqa: F401  (scvi's view_anndata_setup needs it imported with rich >= 15)
import torch
from mudata import MuData
from scipy import sparse
from scvi import settings
from scvi.data import AnnDataManager, fields
from scvi.data._constants import _SETUP_ARGS_KEY
from scvi.model.base import BaseModelClass
from scvi.model.base._save_load import _load_saved_files
from scvi.train import TrainRunner

from unitednet._constants import (
    LOSS_NAMES,
    OBJECTIVE_LOSSES,
    REGISTRY_KEYS,
    RESULT_KEYS,
    TASK_OBJECTIVES,
    Likelihood,
    Task,
    modality_key,
)
from unitednet.module import UnitedNetModule
from unitednet.train import (
    AdaptationDataModule,
    CellSource,
    UnitedNetDataModule,
    UnitedNetTrainingPlan,
    stratified_split,
)
from unitednet.train._data import ColumnSelection, rows_tensor

from ._validation import (
    check_finite,
    check_loss_weights,
    check_modalities,
    check_mudata,
    check_positive_int,
    check_query_modalities,
    resolve_likelihood,
)

logger = logging.getLogger(__name__)


def _check_model_file(dir_path, prefix: str | None) -> None:
    """Raise unless ``dir_path`` holds a model saved by :meth:`UnitedNetModel.save` (with ``prefix``)."""
    path = Path(dir_path) / f"{prefix or ''}model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"No saved model at {str(dir_path)!r}: {path.name} is missing. Give the folder passed to "
            "`model.save(dir_path)`."
        )


class UnitedNetModel(BaseModelClass):
    """UnitedNet: explainable multi-task learning on paired multi-modal single-cell data.

    One encoder per modality maps cells into a shared latent space; learnable weights fuse the modality latents;
    group heads on the fused latent classify cells (supervised) or cluster them (unsupervised); one decoder per
    modality decodes every modality's latent, which gives reconstruction and cross-modal translation. Adversarial
    and contrastive losses refine the latents. Objectives alternate each epoch, each with its own optimizer.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    n_latent
        Dimension of the shared latent space.
    n_hidden
        Width of the hidden layers.
    n_layers
        Hidden layers of the encoders and decoders.
    dropout_rate
        Dropout in hidden layers. The default 0.3 suits the small paired data sets this model usually meets: against
        0.1 it lowered the validation loss on BMMC CITE and improved the clustering of Patch-seq training cells.
    use_batch_norm
        Batch normalisation in hidden layers. For a model whose SHAP relevance (:func:`unitednet.tl.feature_relevance`)
        is the point, consider ``False``: on Patch-seq, a model trained with it ranked the major classes' marker
        genes in the top 10 of 1,252 genes in 22 of 24 seed-class pairs (six seeds), against 14 with batch
        normalisation, where ``Sst`` and ``Vip`` often rank beyond 10th (at similar accuracy;
        ``benchmarks/explain.py``).
        Batch normalisation in the decoders only (``norm={"encoders": "none", "decoders": "batch", "heads":
        "none"}``) kept the markers as often (22/24), with Patch-seq validation accuracy like the default's, at a
        slightly (translation) to clearly (supervised) higher BMMC CITE RNA -> ADT validation RMSE than the default
        (``benchmarks/README.md``). Kept as an alias of ``norm`` (used when ``norm`` is not given).
    norm
        Normalisation of the hidden layers of encoders, decoders and head projectors: ``"batch"``, ``"layer"`` or
        ``"none"``; overrides ``use_batch_norm`` (``norm="batch"`` with ``use_batch_norm=False`` is an error).
        Default (``None``): ``"batch"`` if ``use_batch_norm`` else ``"none"``, i.e. unchanged. A mapping sets each
        part on its own: keys ``"encoders"``, ``"decoders"`` and ``"heads"`` (the group heads' projectors), e.g.
        ``{"encoders": "none", "decoders": "batch", "heads": "none"}`` (batch normalisation in the decoders only);
        missing parts follow ``use_batch_norm``, and a part set to ``"batch"`` with ``use_batch_norm=False`` is an
        error too. Discriminators and the latent projector never normalise; the fusion has no hidden layer. Layer
        normalisation is not linear at inference, so SHAP's DeepExplainer (``method="deep"`` of
        :func:`unitednet.tl.feature_relevance` and :func:`unitednet.tl.cross_modal_relevance`) refuses a model with
        layer normalisation in a part on the explained path (group relevance: encoders and heads; cross-modal
        relevance: encoders and decoders); use ``method="gradient"`` for them.
    encoder
        ``"mlp"``: deterministic MLP encoders (default); ``"variational"``: Gaussian posterior per modality with a KL
        term to the standard normal prior in the translation objective (weight ``loss_weights["kl"]``, default
        0.01), a posterior sample in training and the posterior mean for every prediction; ``"residual"``: MLP
        encoders with residual hidden blocks. Decoders stay MLPs.
    fusion
        ``"modality"``: one fusion weight per modality; ``"feature"``: one per modality and latent dimension.
    n_heads
        Group heads trained in parallel; the one with the lowest recent loss predicts.
    n_groups
        Number of groups. Defaults to the number of label categories when ``labels_key`` was registered, else 0
        (translation only). Set it for unsupervised group identification.
    loss_weights
        Weights of the loss terms, keyed by name (``classification``, ``ddc``, ``self_entropy``, ``reconstruction``,
        ``translation``, ``generator``, ``discriminator``, ``contrastive``, ``kl``); omitted terms keep the defaults
        (:data:`unitednet._constants.DEFAULT_LOSS_WEIGHTS`: 1, except 3 for ``translation``, 0.1 for ``ddc``,
        ``self_entropy``, ``generator`` and ``discriminator`` and 0.01 for ``kl``, used by variational encoders only;
        the published model weighs ``translation`` 1). For unsupervised group identification a larger ``ddc`` weight
        can help: on Patch-seq (5 heads) a weight of 1 to 10 clustered the training cells better than 0.1.
    standardize
        Centre and scale each gaussian modality per feature with statistics of the training cells only (stored in
        the model, applied to any data it later reads, undone on predicted profiles). ``True``/``False`` for all
        gaussian modalities or a mapping per modality.
    contrastive_temperature
        Temperature of the contrastive loss.
    use_latent_projector
        Whether the contrastive loss acts on an MLP projection of the latents.
    clustering_updates_encoders
        Let the DDC clustering losses of the unsupervised task update the encoders too, not only fusion and heads
        (the published design). On Patch-seq, with ``n_heads=5``, this clustered the training cells better.
    loss_weighting
        Weighting of the translation objective's ``reconstruction``, ``translation`` and ``contrastive`` terms, on top
        of ``loss_weights``: ``"fixed"`` (``loss_weights`` only, the published behaviour), ``"uncertainty"`` (a
        learned log-variance per term, Kendall et al. 2018) or ``"gradnorm"`` (factors learned by GradNorm, Chen et
        al. 2018, on the gradient norms at the encoders' last layers). Other terms keep their fixed weights. Unless
        ``"fixed"``, the effective weights per epoch are in :attr:`history` (``weight_<term>``) and drawn by
        :func:`unitednet.pl.history`. See :class:`~unitednet.module.LossBalancer`.
    gradnorm_alpha
        GradNorm's asymmetry (``loss_weighting="gradnorm"`` only): 0 equalises the terms' gradient norms, larger
        values give more weight to the terms whose loss has decreased least.

    Examples
    --------
    >>> import unitednet
    >>> mdata = unitednet.datasets.patchseq()
    >>> unitednet.model.UnitedNetModel.setup_mudata(mdata, labels_key="cell_type_TEM")
    >>> model = unitednet.model.UnitedNetModel(mdata)
    >>> model.train("supervised", max_epochs=100)
    >>> mdata.obsm["X_unitednet"] = model.get_latent_representation()
    """

    _module_cls = UnitedNetModule
    _training_plan_cls = UnitedNetTrainingPlan

    def __init__(
        self,
        mdata: MuData,
        n_latent: int = 32,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.3,
        use_batch_norm: bool = True,
        norm: Literal["batch", "layer", "none"] | Mapping[Literal["encoders", "decoders", "heads"], str] | None = None,
        encoder: Literal["mlp", "variational", "residual"] = "mlp",
        fusion: Literal["modality", "feature"] = "modality",
        n_heads: int = 1,
        n_groups: int | None = None,
        loss_weights: Mapping[str, float] | None = None,
        standardize: bool | Mapping[str, bool] = True,
        contrastive_temperature: float = 0.1,
        use_latent_projector: bool = True,
        clustering_updates_encoders: bool = False,
        loss_weighting: Literal["fixed", "uncertainty", "gradnorm"] = "fixed",
        gradnorm_alpha: float = 1.5,
    ):
        super().__init__(mdata)
        for name, value in {"n_latent": n_latent, "n_hidden": n_hidden, "n_heads": n_heads}.items():
            check_positive_int(value, name)
        check_positive_int(n_layers, "n_layers", minimum=0)
        if n_groups is not None:
            check_positive_int(n_groups, "n_groups", minimum=0)
        if not 0 <= dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}.")
        check_loss_weights(loss_weights, LOSS_NAMES)
        if n_groups is None and self.labels_key is not None and self.n_labels == 1:
            raise ValueError(
                f"mdata.obs[{self.labels_key!r}] has a single category ({self.label_categories[0]!r}): there is "
                "nothing to classify. Register labels with at least two categories, or set up without labels_key "
                "(or pass n_groups=0) for translation and embedding only."
            )
        if n_groups is None:
            n_groups = self.n_labels if self.labels_key is not None else 0
        if n_groups == 1:
            raise ValueError("n_groups must be 0 (translation only) or at least 2.")
        self._standardize = self._resolve_per_modality(standardize, "standardize", bool)
        if isinstance(norm, Mapping):
            # a plain dict in the saved init parameters (load rebuilds the model from them)
            norm = dict(norm)

        self.module = self._module_cls(
            n_features={m: self.n_features(m) for m in self.modalities},
            likelihoods=self.likelihoods,
            n_groups=n_groups,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            norm=norm,
            encoder=encoder,
            fusion=fusion,
            n_heads=n_heads,
            loss_weights=loss_weights,
            contrastive_temperature=contrastive_temperature,
            use_latent_projector=use_latent_projector,
            clustering_updates_encoders=clustering_updates_encoders,
            loss_weighting=loss_weighting,
            gradnorm_alpha=gradnorm_alpha,
            sparse_inputs=[m for m in self.modalities if self._is_sparse(m)],
        )
        self.task_: str | None = None
        self.split_: np.ndarray | None = None
        self.adaptation_: dict | None = None
        self._model_summary_string = (
            f"UnitedNetModel over modalities {self.modalities} "
            f"({', '.join(f'{m}: {self.n_features(m)} {self.likelihoods[m]}' for m in self.modalities)}), "
            f"n_latent={n_latent}, n_groups={n_groups}, n_heads={n_heads}, fusion={fusion!r}"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ set-up
    @classmethod
    def setup_anndata(cls, adata, **kwargs):
        """Not supported: UnitedNet works on a MuData; use :meth:`setup_mudata`."""
        raise NotImplementedError(
            "UnitedNetModel needs a MuData with one modality per data type; wrap your AnnData with "
            "`mudata.MuData({'rna': adata})` and call `UnitedNetModel.setup_mudata`."
        )

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        *,
        modalities: Sequence[str] | None = None,
        layers: Mapping[str, str | None] | None = None,
        likelihoods: Mapping[str, Likelihood] | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData for UnitedNet.

        Parameters
        ----------
        mdata
            MuData whose modalities hold the same cells in the same order.
        modalities
            Names of the modalities to use (any number >= 1); all of ``mdata.mod`` by default.
        layers
            Layer to read per modality (``None`` or a missing entry: ``.X``).
        likelihoods
            Per modality: ``"bernoulli"`` (binary data, sigmoid output, BCE loss), ``"gaussian"`` (continuous data
            such as normalised expression, electrophysiology or morphology; identity output, MSE loss on
            standardised values) or ``"nb"`` (raw counts such as RNA or ADT counts; the encoder reads ``log1p`` of
            the counts, the decoder outputs the log expected counts, negative-binomial loss with a learned
            dispersion per feature). Missing entries are inferred: bernoulli when every value is 0 or 1, gaussian
            otherwise. ``"nb"`` is never inferred (it would change how existing count data are modelled); when a
            non-binary modality holds only non-negative integers an INFO message suggests it. A declared ``"nb"``
            needs non-negative integers and a declared ``"bernoulli"`` values in {0, 1}; otherwise a ValueError
            names the modality and the fix.
        labels_key
            Column of ``mdata.obs`` with cell labels (needed for supervised training and to stratify splits).
        batch_key
            Column of ``mdata.obs`` with the batch of each cell; splits are stratified by it.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Returns
        -------
        None. As every scvi-tools model, registration adds ``mdata.obs["_scvi_labels"]``,
        ``mdata.obs["_scvi_batch"]`` (integer codes), ``mdata.uns["_scvi_uuid"]`` and
        ``mdata.uns["_scvi_manager_uuid"]``; nothing else is changed.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_mudata(mdata)
        modalities = list(mdata.mod) if modalities is None else list(modalities)
        if not modalities:
            raise ValueError("Give at least one modality.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"Modalities are listed twice: {modalities}.")
        check_modalities(mdata, modalities)
        layers = dict(layers or {})
        likelihoods = dict(likelihoods or {})
        for arg, mapping in (("layers", layers), ("likelihoods", likelihoods)):
            extra = sorted(set(mapping) - set(modalities))
            if extra:
                raise KeyError(f"`{arg}` names modalities {extra} that are not being set up ({modalities}).")
        resolved: dict[str, str] = {}
        for m in modalities:
            adata = mdata.mod[m]
            layer = layers.get(m)
            if layer is not None and layer not in adata.layers:
                raise KeyError(
                    f"Layer {layer!r} not found in modality {m!r}; available layers: {list(adata.layers)}. "
                    "Pass layers={'" + m + "': None} to use .X."
                )
            X = adata.X if layer is None else adata.layers[layer]
            where = f"Modality {m!r} ({'X' if layer is None else 'layer ' + repr(layer)})"
            resolved[m] = resolve_likelihood(X, likelihoods.get(m), m, where)  # NaN checks included
        for key, name in ((labels_key, "labels_key"), (batch_key, "batch_key")):
            if key is None:
                continue
            if key not in mdata.obs:
                raise KeyError(
                    f"{name}={key!r} is not a column of mdata.obs; available: {list(mdata.obs.columns)}. "
                    "Columns of a modality's obs are pulled to mdata.obs with `mdata.pull_obs()`."
                )
            if mdata.obs[key].isna().any():
                n = int(mdata.obs[key].isna().sum())
                raise ValueError(f"mdata.obs[{key!r}] has {n} missing values; drop those cells or fill the column.")
        setup_method_args[_SETUP_ARGS_KEY].update(
            modalities=modalities, layers={m: layers.get(m) for m in modalities}, likelihoods=resolved
        )
        mudata_fields = [
            fields.MuDataLayerField(modality_key(m), layers.get(m), mod_key=m, is_count_data=False, mod_required=True)
            for m in modalities
        ]
        mudata_fields += [
            fields.MuDataCategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            fields.MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        adata_manager = AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def load(cls, dir_path: str, adata: MuData | None = None, **kwargs):
        """Load a model saved with :meth:`save`, checking that ``adata`` has the features it was trained on.

        Parameters
        ----------
        dir_path
            Folder the model was saved to.
        adata
            MuData to attach the model to (the registered one when saving); ``None`` loads the MuData saved with
            the model (``save(..., save_anndata=True)``). Each registered modality must hold the training features
            in the training order: the weights are matched to features by position. To apply a model to other
            data, load it onto its training data and pass the other MuData to its methods, which match features
            by name.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.load` (``accelerator``, ``device``, ``prefix``, ...).

        Returns
        -------
        The loaded model.
        """
        if adata is None:
            _check_model_file(dir_path, kwargs.get("prefix"))
        else:
            check_mudata(adata)
            # read before scvi registers adata: the weights are positional, so mismatched features must stop here
            cls._check_saved_features(adata, cls.saved_var_names(dir_path, prefix=kwargs.get("prefix")))
        return super().load(dir_path, adata=adata, **kwargs)

    @classmethod
    def saved_var_names(cls, dir_path: str, prefix: str | None = None) -> dict[str, pd.Index]:
        """Training features of each modality of a saved model, in the order its weights expect.

        Parameters
        ----------
        dir_path
            Folder the model was saved to.
        prefix
            File name prefix given to :meth:`save`.

        Returns
        -------
        Feature names per registered modality.
        """
        _check_model_file(dir_path, prefix)
        attr_dict, var_names, _, _ = _load_saved_files(str(dir_path), False, prefix=prefix, map_location="cpu")
        return {m: pd.Index(var_names[m]) for m in attr_dict["registry_"][_SETUP_ARGS_KEY]["modalities"]}

    @staticmethod
    def _check_saved_features(adata: MuData, saved: Mapping[str, pd.Index]) -> None:
        modalities = list(saved)
        missing = [m for m in modalities if m not in adata.mod]
        if missing:
            raise KeyError(
                f"The MuData has no modalities {missing}; the saved model was trained on {list(modalities)} (the "
                f"MuData has {list(adata.mod)}). Load it onto a MuData holding every modality it was trained on."
            )
        for m in modalities:
            names, have = saved[m], adata.mod[m].var_names
            if have.equals(names):
                continue
            if len(have) == len(names) and have.sort_values().equals(names.sort_values()):
                problem = "the training features in another order"
            else:
                n_missing = len(names.difference(have))
                problem = (
                    f"{len(have)} features where the model has {len(names)}; {n_missing} of the model's features "
                    f"are missing (e.g. {list(names.difference(have)[:3])})"
                )
            raise ValueError(
                f"Modality {m!r} of the MuData has {problem}. The weights are matched to features by position, so "
                "load the model onto a MuData with the training features in the training order (e.g. with `names = "
                f"UnitedNetModel.saved_var_names(dir_path)['{m}']`, `mdata.mod['{m}'] = mdata.mod['{m}'][:, names]"
                ".copy()`). To apply the model to other data, load it "
                "onto its training data and pass the other MuData to its methods (`get_latent_representation`, "
                "`predict_labels`, `predict_modality`), which match features by name."
            )

    # ------------------------------------------------------------------ registry views
    @property
    def _setup_args(self) -> dict:
        return self.adata_manager.registry[_SETUP_ARGS_KEY]

    @property
    def modalities(self) -> list[str]:
        """Registered modality names, in model order."""
        return list(self._setup_args["modalities"])

    @property
    def likelihoods(self) -> dict[str, str]:
        """Likelihood of each modality."""
        return dict(self._setup_args["likelihoods"])

    @property
    def labels_key(self) -> str | None:
        """Registered labels column (or ``None``)."""
        return self._setup_args["labels_key"]

    @property
    def n_labels(self) -> int:
        """Number of label categories (1 when no labels were registered)."""
        return len(self.label_categories)

    @property
    def label_categories(self) -> np.ndarray:
        """Label categories in the order of the group heads' outputs (supervised)."""
        return np.asarray(self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY).categorical_mapping)

    @property
    def group_names(self) -> list[str]:
        """Names of the model's groups: label names after supervised training, else ``"0"``, ``"1"``, ..."""
        if self.task_ == "supervised":
            return [str(c) for c in self.label_categories]
        return [str(i) for i in range(self.module.n_groups)]

    def n_features(self, modality: str) -> int:
        """Number of features of a registered modality."""
        return len(self.var_names(modality))

    def var_names(self, modality: str) -> pd.Index:
        """Feature names of a registered modality."""
        return pd.Index(self.adata_manager.get_state_registry(modality_key(modality)).column_names)

    def _resolve_per_modality(self, value, name: str, kind: type) -> dict:
        if isinstance(value, kind):
            return dict.fromkeys(self.modalities, value)
        unknown = sorted(set(value) - set(self.modalities))
        if unknown:
            raise KeyError(f"`{name}` names unknown modalities {unknown}; registered: {self.modalities}.")
        return {m: value.get(m, True) for m in self.modalities}

    # ------------------------------------------------------------------ data access
    def _matrix(self, mdata: MuData, modality: str):
        """The registered layer of one modality of ``mdata``, with its columns in model order."""
        adata = mdata.mod[modality]
        layer = self._setup_args["layers"].get(modality)
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"Modality {modality!r} of the query has no layer {layer!r} (the model reads that layer).")
        X = adata.X if layer is None else adata.layers[layer]
        names = self.var_names(modality)
        if adata.var_names.equals(names):
            return X
        missing = names.difference(adata.var_names)
        if len(missing):
            raise ValueError(
                f"Modality {modality!r} lacks {len(missing)} of the model's features (e.g. {list(missing[:5])}). "
                f"Give it the training features: `mdata.mod['{modality}'][:, model.var_names('{modality}')]`."
            )
        columns = adata.var_names.get_indexer(names)
        if isinstance(X, np.ndarray) or sparse.issparse(X):
            return X[:, columns]
        return ColumnSelection(X, columns)  # backed on disk: the columns are taken from each block of rows read

    def _is_sparse(self, modality: str) -> bool:
        """Whether the registered matrix of a modality is sparse (in memory or backed on disk)."""
        X = self._matrix(self.adata, modality)
        return sparse.issparse(X) or getattr(X, "format", None) in ("csr", "csc")

    def _resolve_mdata(self, mdata: MuData | None, modalities: Sequence[str], check_names: bool = True) -> MuData:
        """The MuData to read (the registered one for ``None``), after the input checks.

        ``check_names=False`` when :meth:`_available` already checked the query's modality names.
        """
        unknown = [m for m in modalities if m not in self.modalities]
        if mdata is None and not unknown:
            return self.adata
        if mdata is not None:
            check_mudata(mdata)
            if check_names:
                check_query_modalities(mdata, self.modalities)
        if unknown:
            raise KeyError(f"Modalities {unknown} are not registered in the model; registered: {self.modalities}.")
        check_modalities(mdata, modalities)
        placeholders = [m for m in modalities if m in mdata.mod and not self._measured(mdata, m)]
        if placeholders:
            raise ValueError(
                f"Modalities {placeholders} of the query hold only predictions (added by unitednet.tl.predict_modality), "
                "not measurements; they cannot be model inputs."
            )
        return mdata

    @staticmethod
    def _measured(mdata: MuData, modality: str) -> bool:
        """Whether a modality of ``mdata`` holds measurements (not a placeholder added by ``tl.predict_modality``)."""
        if modality not in mdata.mod:
            return False
        flags = mdata.mod[modality].uns.get(RESULT_KEYS.UNS, {})
        return not (isinstance(flags, Mapping) and flags.get(RESULT_KEYS.PREDICTED_ONLY, False))

    def _available(self, mdata: MuData | None) -> list[str]:
        if mdata is not None:
            check_mudata(mdata)
            check_query_modalities(mdata, self.modalities)
        present = self.modalities if mdata is None else [m for m in self.modalities if self._measured(mdata, m)]
        if not present:
            raise ValueError(
                f"The query MuData has none of the model's modalities {self.modalities} (it has {list(mdata.mod)})."
            )
        return present

    def _batches(
        self,
        mdata: MuData,
        modalities: Sequence[str],
        batch_size: int | None,
        indices: Sequence[int] | None = None,
        keep_sparse: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Minibatches of float32 tensors, one per modality.

        Sparse matrices give sparse CSR tensors with ``keep_sparse`` (the module's encoders read their non-zeros
        only) and are densified one batch at a time otherwise.
        """
        matrices = {m: self._matrix(mdata, m) for m in modalities}
        if mdata is not self.adata:
            for m, X in matrices.items():
                check_finite(X, f"Query modality {m!r}")
        idx = np.arange(mdata.n_obs) if indices is None else np.asarray(indices)
        batch_size = settings.batch_size if batch_size is None else check_positive_int(batch_size, "batch_size")
        device = self.device
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            out = {}
            for m, X in matrices.items():
                out[m] = rows_tensor(X, rows, keep_sparse=keep_sparse).to(device)
            yield out

    @staticmethod
    def _check_training_sizes(max_epochs, batch_size, lr, weight_decay) -> None:
        check_positive_int(max_epochs, "max_epochs")
        why = " for training (batch normalisation and the contrastive loss compare the cells of a batch)"
        check_positive_int(batch_size, "batch_size", minimum=2, why=why)
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")

    def _check_trained(self) -> None:
        if not self.is_trained_:
            raise RuntimeError("The model is not trained yet; call `model.train(...)` first.")

    # ------------------------------------------------------------------ training
    def train(
        self,
        task: Task = "supervised",
        *,
        objective_order: Sequence[str] | None = None,
        max_epochs: int = 200,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        train_size: float = 0.9,
        validation_size: float | None = None,
        split_key: str | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 30,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train the model, keeping the weights with the best validation loss.

        Parameters
        ----------
        task
            ``"supervised"``: group heads learn the registered labels (translation then classification objective
            each epoch); ``"unsupervised"``: group heads cluster the cells (translation then clustering objective);
            ``"translation"``: cross-modal prediction and joint embedding only.
        objective_order
            Objectives per epoch, in order, overriding the task's default, e.g. ``("classification", "translation")``
            (the published "fine-tuning" order).
        max_epochs
            Epochs; each is one pass over the training cells per objective.
        batch_size
            Minibatch size.
        lr
            Learning rate of every objective's Adam optimizer.
        weight_decay
            L2 weight decay.
        train_size
            Fraction of cells for training.
        validation_size
            Fraction of cells for validation (model selection and best-head choice); default ``1 - train_size``.
            The remaining cells form a test set that training never reads. Splits are stratified by labels
            (supervised) and batch when those are registered.
        split_key
            Column of ``mdata.obs`` with ``"train"``, ``"validation"`` or ``"test"`` per cell, overriding
            ``train_size``. When it has no ``"validation"`` cells, a fraction ``validation_size`` of its
            ``"train"`` cells is drawn for validation (stratified as above).
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience`` epochs.
        early_stopping_patience
            Patience of early stopping, in epochs.
        accelerator, devices
            Lightning accelerator and devices.
        plan_kwargs
            Keyword arguments of :class:`~unitednet.train.UnitedNetTrainingPlan` (e.g. ``gradient_clip_norm``,
            ``head_selection_window``).
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` (e.g. ``enable_progress_bar``). ``strategy="ddp"`` trains with
            several processes, one per device (e.g. ``accelerator="gpu", devices=4`` or ``accelerator="cpu",
            devices=2``): each minibatch of ``batch_size`` cells is shared among the processes and their gradients
            averaged; every process validates on all validation cells. It runs as Lightning's
            ``"ddp_find_unused_parameters_true"`` (each objective updates part of the parameters).
            ``precision="bf16-mixed"`` runs the dense matrix products in bfloat16 (Lightning's mixed precision):
            on a CPU with AMX an epoch of the 10k-cell benchmark in ``benchmarks/scale.py`` (wide sparse and
            dense modalities) took 0.69x (translation) to 0.76x (supervised) the float32 time, while the small
            Patch-seq networks trained 1.2x slower; CPUs without AMX or AVX512-BF16 run bfloat16 products slowly.
            The parameters, the optimizer, the sparse first layers and every loss stay in float32; inference
            (``tl`` functions) always runs in float32.

        Returns
        -------
        None. Writes ``mdata.obs["unitednet_split"]`` (categorical: train / validation / test) on the registered
        MuData and sets :attr:`history` (every loss term per epoch, ``*_train`` and ``*_validation``).
        """
        if task not in TASK_OBJECTIVES:
            raise ValueError(f"task must be one of {list(TASK_OBJECTIVES)}, got {task!r}.")
        objectives = list(objective_order) if objective_order is not None else list(TASK_OBJECTIVES[task])
        bad = [o for o in objectives if o not in OBJECTIVE_LOSSES]
        if bad or not objectives or len(set(objectives)) != len(objectives):
            raise ValueError(
                f"objective_order must list distinct objectives of {list(OBJECTIVE_LOSSES)}; got {objectives}."
            )
        if ("classification" in objectives) != (task == "supervised"):
            # the heads are named after the labels exactly when the task is supervised
            raise ValueError(
                f"objective_order {objectives} does not fit task={task!r}: the 'classification' objective (labels) "
                "belongs to task='supervised', which needs it. Pass task='supervised' to learn labels, or leave "
                "'classification' out."
            )
        needs_heads = {"classification", "clustering"} & set(objectives)
        if needs_heads and self.module.heads is None:
            raise ValueError(
                f"Objectives {sorted(needs_heads)} need group heads, but the model has n_groups=0. Register labels "
                "with setup_mudata(labels_key=...) or create the model with n_groups=K."
            )
        if task == "supervised" or "classification" in objectives:
            if self.labels_key is None:
                raise ValueError("Supervised training needs labels: call setup_mudata(..., labels_key='cell_type').")
            if self.module.n_groups != self.n_labels:
                raise ValueError(
                    f"The model has n_groups={self.module.n_groups} but the labels have {self.n_labels} categories; "
                    "create the model without n_groups for supervised training."
                )
        self._check_training_sizes(max_epochs, batch_size, lr, weight_decay)
        if validation_size is None:
            validation_size = 1.0 - train_size
        train_idx, val_idx, test_idx = self._split(
            train_size, validation_size, split_key, supervised=task == "supervised"
        )
        if len(train_idx) < 2:
            raise ValueError(f"Only {len(train_idx)} training cells; increase train_size.")

        self._fit_standardization(train_idx)
        # contrastive negatives come from the predicted groups only when the heads are being trained
        self.module.contrastive_group_negatives = bool(needs_heads)
        if self.module.heads is not None and self.labels_key is not None:
            self._fit_class_weights(train_idx)

        split = np.full(self.adata.n_obs, "test", dtype=object)
        split[train_idx] = "train"
        split[val_idx] = "validation"
        self.split_ = split.astype(str)
        self.adata.obs[RESULT_KEYS.SPLIT] = pd.Categorical(split, categories=["train", "validation", "test"])

        data_module = UnitedNetDataModule(
            self.adata_manager, train_idx, val_idx, test_idx, n_objectives=len(objectives), batch_size=batch_size
        )
        plan = self._training_plan_cls(self.module, objectives, lr=lr, weight_decay=weight_decay, **(plan_kwargs or {}))
        if len(val_idx):
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        elif early_stopping:
            raise ValueError("early_stopping needs validation cells; set validation_size > 0.")
        trainer_kwargs.setdefault("log_every_n_steps", 1)
        if trainer_kwargs.get("strategy") == "ddp":  # each objective's step leaves the other parameters unused
            trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
        self.module.train()  # Lightning keeps the modes it finds: a trained model's module is in eval mode
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=data_module,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            **trainer_kwargs,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            runner()
        self.task_ = task
        self.best_epoch_ = plan.best_epoch
        self.adaptation_ = None

    # ------------------------------------------------------------------ transductive adaptation
    def adapt(
        self,
        query: MuData,
        *,
        held_out: str | Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        objective_order: Sequence[str] | None = None,
        max_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        validation_size: float = 0.1,
        early_stopping: bool = False,
        early_stopping_patience: int = 30,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Adapt the trained model to new (query) cells with unsupervised objectives: an explicit transductive step.

        Training continues from the current weights on the reference's training cells together with the query
        cells. Query cells enter only through their input modalities: their reconstruction, translation between
        the query modalities, contrastive, adversarial and (for unsupervised models) clustering terms; their labels
        are never read, and the classification loss sees reference cells only. Every loss term is averaged over the
        modalities (or modality pairs) each cell holds, so query cells may lack modalities. The reference's test
        cells are never read; the standardisation statistics and class weights stay those of the reference's
        training cells. Without this call the model is purely inductive: ``get_latent_representation``,
        ``predict_labels`` and ``predict_modality`` accept any query MuData without training on it.

        Parameters
        ----------
        query
            New cells: a MuData holding any subset of the model's modalities, with the registered layers and the
            model's features. It is not registered; only the modalities adapted on are read.
        held_out
            Modalities of the query kept for evaluation (e.g. the target of a cross-modal prediction): never read,
            not even checked, so their values cannot influence the adapted model. Must be registered modalities.
        modalities
            Query modalities to adapt on; default: every registered modality the query measures, minus
            ``held_out``. Naming a held-out modality here is an error.
        objective_order
            Objectives per epoch; default: those of the task the model was trained for. Only that task's
            objectives are allowed (adaptation does not change what the group heads mean).
        max_epochs
            Epochs; each is one pass over the reference training cells and the query training cells per objective.
        batch_size
            Minibatch size; every minibatch mixes reference and query cells in proportion.
        lr
            Learning rate of every objective's Adam optimizer (fresh optimizers).
        weight_decay
            L2 weight decay.
        validation_size
            Fraction of the query cells drawn (seeded by ``scvi.settings.seed``) for validation only: together with
            the reference's validation cells they define the validation loss that selects the kept weights (their
            unsupervised terms only; the classification term comes from reference cells). ``0``: validation on
            the reference's validation cells alone (or none, keeping the last epoch, if the reference has none).
        early_stopping
            Stop when the validation loss has not improved for ``early_stopping_patience`` epochs.
        early_stopping_patience
            Patience of early stopping, in epochs.
        accelerator, devices
            Lightning accelerator and devices.
        plan_kwargs
            Keyword arguments of :class:`~unitednet.train.UnitedNetTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.

        Returns
        -------
        None. Writes ``query.obs["unitednet_split"]`` (categorical): ``"query_train"`` for the query cells the
        unsupervised objectives trained on and ``"query_validation"`` for those used only in the validation loss;
        nothing else is written to the query, and nothing to the reference MuData (its
        ``obs["unitednet_split"]`` keeps the reference split). Appends the adaptation epochs to :attr:`history`,
        sets ``best_epoch_`` (epoch of the kept weights within the adaptation run) and ``adaptation_`` (a dict:
        ``modalities``, ``held_out``, ``objectives``, ``n_reference_train``, ``n_reference_validation``,
        ``n_query_train``, ``n_query_validation``, ``first_epoch`` (first adaptation row of the history),
        ``best_epoch``).
        """
        self._check_trained()
        check_mudata(query)
        self._check_training_sizes(max_epochs, batch_size, lr, weight_decay)
        if query is self.adata:
            raise ValueError(
                "The query is the registered (reference) MuData; adapting on it would train on its test cells. Pass "
                "the new cells as their own MuData, e.g. `mdata[mdata.obs['unitednet_split'] == 'test'].copy()`."
            )
        if self.task_ not in TASK_OBJECTIVES or self.split_ is None:
            raise RuntimeError("adapt needs a model trained with `model.train(...)` (task and reference split).")
        known = {modality_key(m) for m in self.modalities} | {REGISTRY_KEYS.LABELS_KEY, REGISTRY_KEYS.BATCH_KEY}
        extra = sorted(set(self.adata_manager.data_registry) - known)
        if extra:
            raise NotImplementedError(
                f"{type(self).__name__} registers fields {extra} that adaptation cannot supply for query cells; "
                "adapt supports models whose batches hold only the modalities, labels and batch."
            )
        held = [held_out] if isinstance(held_out, str) else list(held_out or [])
        unknown = sorted(set(held) - set(self.modalities))
        if unknown:
            raise KeyError(
                f"held_out names modalities {unknown} that are not registered; registered: {self.modalities}."
            )
        if modalities is None:
            mods = [m for m in self.modalities if m not in held and self._measured(query, m)]
        else:
            mods = [modalities] if isinstance(modalities, str) else list(modalities)
            clash = [m for m in mods if m in held]
            if clash:
                raise ValueError(
                    f"Modalities {clash} are both held out for evaluation and requested for adaptation. A held-out "
                    "modality never enters training: remove it from `modalities`, or from `held_out` if it is not "
                    "an evaluation target."
                )
            if len(set(mods)) != len(mods):
                raise ValueError(f"Modalities are listed twice: {mods}.")
            missing = [m for m in mods if m not in query.mod]
            if missing:
                raise KeyError(f"The query has no modalities {missing}; it has {list(query.mod)}.")
        if not mods:
            raise ValueError(
                f"The query has no modality to adapt on: the model's modalities are {self.modalities}, the query has "
                f"{list(query.mod)}, held out: {held}."
            )
        self._resolve_mdata(query, mods)
        objectives = list(objective_order) if objective_order is not None else list(TASK_OBJECTIVES[self.task_])
        allowed = TASK_OBJECTIVES[self.task_]
        if not objectives or len(set(objectives)) != len(objectives) or not set(objectives) <= set(allowed):
            raise ValueError(
                f"objective_order must list distinct objectives of the trained task {self.task_!r} "
                f"({list(allowed)}); got {objectives}."
            )
        if not 0 <= validation_size < 1:
            raise ValueError(f"validation_size must be in [0, 1), got {validation_size}.")

        split = np.asarray(self.split_)
        ref_train, ref_val, ref_test = (np.flatnonzero(split == s) for s in ("train", "validation", "test"))
        seed = settings.seed if settings.seed is not None else 0
        q_train, q_val, _ = stratified_split(query.n_obs, 1.0 - validation_size, validation_size, None, seed=seed)
        if len(ref_train) + len(q_train) < 2:
            raise ValueError("Adaptation needs at least two training cells.")

        query_matrices = {m: self._matrix(query, m) for m in mods}
        for m, X in query_matrices.items():
            check_finite(X, f"Query modality {m!r}")
        reference_matrices = {m: self._matrix(self.adata, m) for m in self.modalities}
        reference_labels = None
        if self.task_ == "supervised":
            codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            reference_labels = np.asarray(codes).ravel().astype(int)

        def sources(ref_idx, query_idx):
            return [
                CellSource(reference_matrices, ref_idx, reference_labels),
                CellSource(query_matrices, query_idx, None),
            ]

        data_module = AdaptationDataModule(
            sources(ref_train, q_train),
            sources(ref_val, q_val),
            n_features={m: self.n_features(m) for m in self.modalities},
            n_objectives=len(objectives),
            batch_size=batch_size,
            train_idx=ref_train,
            val_idx=ref_val,
            test_idx=ref_test,
        )
        self.module.contrastive_group_negatives = bool({"classification", "clustering"} & set(objectives))
        plan = self._training_plan_cls(self.module, objectives, lr=lr, weight_decay=weight_decay, **(plan_kwargs or {}))
        if data_module.n_val:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        elif early_stopping:
            raise ValueError("early_stopping needs validation cells; set validation_size > 0.")
        trainer_kwargs.setdefault("log_every_n_steps", 1)
        first_epoch = 0
        if isinstance(self.history_, Mapping) and self.history_:
            first_epoch = max(len(v) for v in self.history_.values())
        self.module.train()  # Lightning keeps the modes it finds: a trained model's module is in eval mode
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=data_module,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            **trainer_kwargs,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            runner()

        query_split = np.full(query.n_obs, "query_train", dtype=object)
        query_split[q_val] = "query_validation"
        query.obs[RESULT_KEYS.SPLIT] = pd.Categorical(query_split, categories=["query_train", "query_validation"])
        self.best_epoch_ = plan.best_epoch
        self.adaptation_ = {
            "modalities": mods,
            "held_out": held,
            "objectives": objectives,
            "n_reference_train": len(ref_train),
            "n_reference_validation": len(ref_val),
            "n_query_train": len(q_train),
            "n_query_validation": len(q_val),
            "first_epoch": first_epoch,
            "best_epoch": plan.best_epoch,
        }

    def _split(self, train_size: float, validation_size: float, split_key: str | None, supervised: bool):
        strata = self._strata(supervised)
        seed = settings.seed if settings.seed is not None else 0
        if split_key is None:
            if train_size < 1:
                self._warn_singletons(strata)
            return stratified_split(self.adata.n_obs, train_size, validation_size, strata, seed=seed)
        if split_key not in self.adata.obs:
            raise KeyError(f"split_key={split_key!r} is not a column of mdata.obs.")
        values = self.adata.obs[split_key].astype(str).to_numpy()
        bad = sorted(set(values) - {"train", "validation", "test"})
        if bad:
            raise ValueError(f"mdata.obs[{split_key!r}] must hold 'train', 'validation' or 'test'; found {bad}.")
        train, val, test = (np.flatnonzero(values == s) for s in ("train", "validation", "test"))
        if len(val) == 0 and validation_size > 0:
            # draw the validation cells from the training cells only (a stratum with one cell stays in training)
            sub = None if strata is None else strata[train]
            keep, pick, _ = stratified_split(len(train), 1 - validation_size, validation_size, sub, seed=seed)
            train, val = train[keep], train[pick]
        return train, val, test

    def _strata(self, supervised: bool) -> np.ndarray | None:
        parts = []
        if supervised and self.labels_key is not None:
            parts.append(self.adata.obs[self.labels_key].astype(str).to_numpy())
        batch_key = self._setup_args["batch_key"]
        if batch_key is not None:
            parts.append(self.adata.obs[batch_key].astype(str).to_numpy())
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.char.add(np.char.add(parts[0], "|"), parts[1])

    @staticmethod
    def _warn_singletons(strata: np.ndarray | None) -> None:
        """Warn about strata of one cell: the split keeps each such cell in training (atlases have rare types)."""
        if strata is None:
            return
        values, counts = np.unique(strata, return_counts=True)
        singles = values[counts < 2]
        if len(singles):
            shown = ", ".join(repr(str(v)) for v in singles[:10]) + (" ..." if len(singles) > 10 else "")
            warnings.warn(
                f"{len(singles)} label/batch group(s) have a single cell ({shown}); each such cell stays in training, "
                "so those groups have no validation or test cells and their metrics are not measured. Pass your "
                "own split with split_key to choose otherwise.",
                UserWarning,
                stacklevel=4,
            )

    def _fit_standardization(self, train_idx: np.ndarray, chunk_size: int = 4096) -> None:
        for m in self.modalities:
            if self.likelihoods[m] != "gaussian" or not self._standardize[m]:
                continue
            X = self._matrix(self.adata, m)
            total = np.zeros(X.shape[1])
            total_sq = np.zeros(X.shape[1])
            for start in range(0, len(train_idx), chunk_size):
                block = X[train_idx[start : start + chunk_size]]
                if sparse.issparse(block):
                    # sums in float64 whatever the storage: a CSR copy of dense data must give the same statistics
                    block = block.astype(np.float64)
                    total += np.asarray(block.sum(0)).ravel()
                    total_sq += np.asarray(block.multiply(block).sum(0), dtype=np.float64).ravel()
                else:
                    block = np.asarray(block, dtype=np.float64)
                    total += block.sum(0)
                    total_sq += (block**2).sum(0)
            mean = total / len(train_idx)
            std = np.sqrt(np.clip(total_sq / len(train_idx) - mean**2, 0, None))
            std[std < 1e-6] = 1.0
            self.module.set_standardization(m, torch.as_tensor(mean), torch.as_tensor(std))

    def _fit_class_weights(self, train_idx: np.ndarray) -> None:
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
        codes = np.asarray(codes).ravel()[train_idx].astype(int)
        counts = np.bincount(codes, minlength=self.module.n_groups).astype(float)
        weights = np.where(counts > 0, counts.sum() / (self.module.n_groups * np.maximum(counts, 1)), 0.0)
        self.module.class_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))

    @property
    def history(self) -> dict[str, pd.DataFrame]:
        """Every logged loss term per epoch (``<term>_train``, ``<term>_validation``, ``validation_loss``), as floats."""
        if self.history_ is None:
            return None
        return {k: v.astype(float) for k, v in self.history_.items()}

    # ------------------------------------------------------------------ outputs
    @torch.inference_mode()
    def get_latent_representation(
        self, mdata: MuData | None = None, *, modality: str | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Fused latent of each cell, or one modality's latent.

        Parameters
        ----------
        mdata
            MuData to embed (the registered one by default). It may hold any subset of the model's modalities;
            the fused latent then fuses those present with renormalised weights.
        modality
            Return this modality's latent instead of the fused one.
        batch_size
            Minibatch size.

        Returns
        -------
        Array of shape cells x ``n_latent``.
        """
        self._check_trained()
        mods = [modality] if modality is not None else self._available(mdata)
        mdata = self._resolve_mdata(mdata, mods, check_names=modality is not None)
        self.module.eval()
        out = []
        for x in self._batches(mdata, mods, batch_size, keep_sparse=True):
            inf = self.module.inference(x)
            out.append((inf["z"][modality] if modality is not None else inf["z_fused"]).cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def predict_labels(
        self, mdata: MuData | None = None, *, return_proba: bool = False, batch_size: int | None = None
    ) -> np.ndarray | pd.DataFrame:
        """Predicted group of each cell from the best group head.

        Parameters
        ----------
        mdata
            MuData to predict (the registered one by default); any subset of the model's modalities.
        return_proba
            Return the group probabilities (cells x groups DataFrame) instead of the groups.
        batch_size
            Minibatch size.

        Returns
        -------
        Label names (supervised) or group ids ``"0"``, ``"1"``, ... (unsupervised) per cell; or the probabilities.
        """
        self._check_trained()
        if self.module.heads is None:
            raise ValueError("This model has no group heads (n_groups=0); it predicts modalities and latents only.")
        if self.task_ == "translation":
            raise ValueError(
                "The group heads were not trained (task='translation'); train with task='supervised' or "
                "'unsupervised' to predict groups."
            )
        mods = self._available(mdata)
        mdata = self._resolve_mdata(mdata, mods, check_names=False)
        self.module.eval()
        probs = np.concatenate(
            [
                torch.softmax(self.module.group_logits(self.module.inference(x)["z_fused"]), 1).cpu().numpy()
                for x in self._batches(mdata, mods, batch_size, keep_sparse=True)
            ]
        )
        names = self.group_names
        if return_proba:
            return pd.DataFrame(probs, index=mdata.obs_names.copy(), columns=names)
        return np.asarray(names, dtype=object)[probs.argmax(1)].astype(str)

    @torch.inference_mode()
    def predict_modality(
        self, mdata: MuData | None = None, *, source: str, target: str, batch_size: int | None = None
    ) -> np.ndarray:
        """Translate one modality into another.

        Parameters
        ----------
        mdata
            MuData holding at least the ``source`` modality (the registered one by default).
        source
            Modality read.
        target
            Modality predicted (``target == source`` gives the reconstruction).
        batch_size
            Minibatch size.

        Returns
        -------
        Dense array cells x target features in the target's units: probabilities for bernoulli modalities, values
        on the scale of the registered layer for gaussian ones. The whole array is held in memory; to write a
        prediction too large for memory to disk one minibatch at a time, use
        ``unitednet.tl.predict_modality(model, mdata, source=..., target=..., out="prediction.h5ad")``.
        """
        return np.concatenate(list(self._prediction_blocks(mdata, source=source, target=target, batch_size=batch_size)))

    @torch.inference_mode()
    def _prediction_blocks(
        self, mdata: MuData | None, *, source: str, target: str, batch_size: int | None
    ) -> Iterator[np.ndarray]:
        """The prediction ``source -> target`` one minibatch at a time, in cell order.

        Each block is the dense prediction of at most ``batch_size`` cells (all the model's features of ``target``,
        in model order); only one block is computed at a time. The input checks run when the first block is asked
        for, before any cell is read. :meth:`predict_modality` concatenates the blocks; ``tl.predict_modality``
        with ``out=`` writes each to disk as it comes.
        """
        self._check_trained()
        if target not in self.modalities:
            raise KeyError(f"Unknown target modality {target!r}; registered: {self.modalities}.")
        mdata = self._resolve_mdata(mdata, [source])
        self.module.eval()
        for x in self._batches(mdata, [source], batch_size, keep_sparse=True):
            z = self.module.encode(source, x[source])
            yield self.module.to_data_space(target, self.module.decoders[target](z)).cpu().numpy()

    @torch.inference_mode()
    def get_fusion_weights(self) -> pd.DataFrame:
        """Fusion weight of each modality (rows) per latent dimension (columns; one column for ``fusion="modality"``)."""
        w = self.module.fusion.weights().cpu().numpy()
        return pd.DataFrame(w, index=self.modalities)
