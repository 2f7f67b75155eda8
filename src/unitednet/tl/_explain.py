"""SHAP relevance: which features drive each group, and which source features drive each translated target feature."""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from torch import nn

from unitednet._constants import RESULT_KEYS

from ._writers import _target, _uns

if TYPE_CHECKING:
    from unitednet.model import UnitedNetModel

Method = Literal["deep", "gradient"]
Output = Literal["log_odds", "log_proba", "logit"]
Background = Literal["rest", "group_means", "sample"]
TranslationBackground = Literal["group_means", "sample"]
Aggregate = Literal["mean_abs", "mean"]

_OUTPUTS = ("log_odds", "log_proba", "logit")
_BACKGROUNDS = ("rest", "group_means", "sample")
_AGGREGATE_WORDS = {
    "mean_abs": "mean absolute SHAP value over the group's sampled cells",
    "mean": "mean (signed) SHAP value over the group's sampled cells; ranked from the most positive",
}
_AGGREGATES = tuple(_AGGREGATE_WORDS)
_EXPLAINED_OUTPUT = {
    "log_odds": "log P(group) - log P(not group): log-sum-exp of the logits of the model's groups in the explained "
    "group minus log-sum-exp of the other groups' logits",
    "log_proba": "log P(group): log-sum-exp of the logits of the model's groups in the explained group minus "
    "log-sum-exp of all logits",
    "logit": "logit of the cell's own group",
}


class _Elementwise(nn.Module):
    """Elementwise nonlinearity explained with DeepLIFT's rescale rule (:func:`_rescale_rule`).

    The forward pass keeps its (detached) input and output, which the rule reads.
    """

    def function(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.function(x)
        self.io = (x.detach(), y.detach())
        return y


class _Exp(_Elementwise):
    """Elementwise exponential."""

    def function(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class _Log(_Elementwise):
    """Elementwise natural logarithm."""

    def function(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class _Log1p(_Elementwise):
    """Elementwise ``log(1 + x)``: the input transform of negative-binomial (count) modalities."""

    def function(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x)


def _rescale_rule(module: _Elementwise, grad_input, grad_output):
    """DeepLIFT's rescale rule for an elementwise step, as a shap DeepExplainer backward hook.

    DeepExplainer evaluates each explained cell (first half of the batch) next to the references (second half); the
    multiplier of the step is the secant slope ``(y - y_ref) / (x - x_ref)``, so the attributions through it add up
    to ``y - y_ref`` exactly. Where ``x`` and ``x_ref`` agree to a relative 1e-6 the derivative is used instead.
    shap's own rule for elementwise steps switches to the derivative below an *absolute* difference of 1e-6, which
    breaks additivity for the small sums of exponentials that a log-sum-exp takes the logarithm of.
    """
    x, y = module.io
    half = x.shape[0] // 2
    dx = x[:half] - x[half:]
    near = dx.abs() <= 1e-6 * torch.maximum(x[:half].abs(), x[half:].abs())
    slope = (y[:half] - y[half:]) / torch.where(near, torch.ones_like(dx), dx)
    near, slope = torch.cat([near, near]), torch.cat([slope, slope])
    return (torch.where(near, grad_input[0], grad_output[0] * slope),)


class _EncoderInput(nn.Module):
    """A modality's input transform as the encoder reads it, with ``log1p`` of counts as a :class:`_Log1p` module.

    Standardisation is affine (exact under DeepLIFT's linear rule); the ``log1p`` of an nb modality is explained with
    the rescale rule, so relevance stays additive and is given for the counts themselves.
    """

    def __init__(self, model: UnitedNetModel, modality: str):
        super().__init__()
        self.module = model.module
        self.modality = modality
        self.log1p = _Log1p() if model.likelihoods[modality] == "nb" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log1p is not None:
            return self.log1p(x.float())
        return self.module.standardize(self.modality, x)


class _Classification(nn.Module):
    """Classification path with the modalities as separate inputs: encoders -> fusion -> projector -> group logits."""

    def __init__(self, model: UnitedNetModel, modalities: Sequence[str]):
        super().__init__()
        self.module = model.module
        self.modalities = list(modalities)
        self.inputs = nn.ModuleList([_EncoderInput(model, m) for m in self.modalities])

    def logits(self, *xs: torch.Tensor) -> torch.Tensor:
        z = {m: self.module.encoders[m](inp(x)) for m, inp, x in zip(self.modalities, self.inputs, xs, strict=True)}
        return self.module.group_logits(self.module.fusion(z))


class _GroupScore(_Classification):
    """The logit of one group (not its softmax probability).

    Every operation on the path is one that DeepLIFT propagates exactly, so the attributions add up to the score
    minus its expected value over the reference inputs.
    """

    def __init__(self, model: UnitedNetModel, modalities: Sequence[str], group: int):
        super().__init__(model, modalities)
        self.group = group

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.logits(*xs)[:, self.group : self.group + 1]


class _ClassScore(_Classification):
    """Log-probability (``"log_proba"``) or log-odds (``"log_odds"``) of a set of the model's groups.

    ``log sum_{g in C} exp(l_g) - log sum_{g in D} exp(l_g)`` with ``D`` all groups (log-probability) or the groups
    outside ``C`` (log-odds). The log-sum-exps are written as exp -> sum -> log *modules*: DeepLIFT's rescale rule
    applied to each elementwise step and the exact linear rule to the sums keep the attributions additive. ``shift``
    (a constant, at least the largest logit of the cells explained and of the reference) is subtracted from the logits
    before the exponential; it cancels in the difference and keeps ``exp`` from overflowing.
    """

    def __init__(
        self, model: UnitedNetModel, modalities: Sequence[str], members: Sequence[int], output: Output, shift: float
    ):
        super().__init__(model, modalities)
        n_groups = len(model.group_names)
        inside = torch.zeros(n_groups)
        inside[list(members)] = 1.0
        if output == "log_odds":
            other = 1.0 - inside
        elif output == "log_proba":
            other = torch.ones(n_groups)
        else:
            raise ValueError(f"output must be 'log_odds' or 'log_proba' for a class score, got {output!r}.")
        if inside.sum() == 0 or other.sum() == 0:
            raise ValueError("A class score needs at least one member group and one group in its denominator.")
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.exp = _Exp()
        # a bias-free Linear module with fixed 0/1 weights: row 0 sums the class's groups, row 1 the denominator's
        self.pool = nn.Linear(n_groups, 2, bias=False)
        self.pool.weight = nn.Parameter(torch.stack([inside, other]), requires_grad=False)
        self.log = _Log()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        pooled = self.log(self.pool(self.exp(self.logits(*xs) - self.shift)))
        return pooled[:, :1] - pooled[:, 1:]


class _Translation(nn.Module):
    """Translation path ``source -> target`` restricted to some target features, in the target's units.

    The units are probabilities (bernoulli target), expected counts (nb target) or the registered values (gaussian).
    """

    def __init__(self, model: UnitedNetModel, source: str, target: str, features: np.ndarray):
        super().__init__()
        self.module = model.module
        self.source, self.target = source, target
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.long))
        self.input = _EncoderInput(model, source)
        # Sigmoid and exp as *modules* so that DeepLIFT's rules for them apply (a functional call breaks additivity)
        self.sigmoid = nn.Sigmoid() if model.likelihoods[target] == "bernoulli" else None
        self.exp = _Exp() if model.likelihoods[target] == "nb" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module.decoders[self.target](self.module.encoders[self.source](self.input(x)))
        out = out[:, self.features]
        if self.sigmoid is not None:
            return self.sigmoid(out)
        if self.exp is not None:
            return self.exp(out)
        std = self.module.standardizers[self.target]
        return out * std.scale[self.features] + std.loc[self.features]


@contextlib.contextmanager
def _shap_session():
    """Register the rescale rule of ``_Exp``, ``_Log`` and ``_Log1p`` with shap's DeepExplainer, and silence its notices.

    shap picks the DeepLIFT rule of a module by its class name (``op_handler``); the two entries are removed again on
    exit. ModalityFusion and _Standardizer are linear in their inputs, so passing gradients through them (shap's
    behaviour for modules it does not know) is exact; DeepExplainer's additivity check still runs.
    """
    from shap.explainers._deep import deep_pytorch

    handlers = deep_pytorch.op_handler
    added = [name for name in (_Exp.__name__, _Log.__name__, _Log1p.__name__) if name not in handlers]
    for name in added:
        handlers[name] = _rescale_rule
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="unrecognized nn.Module")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield
    finally:
        for name in added:
            handlers.pop(name, None)


def _check_method(model: UnitedNetModel, method: str, path: Mapping[str, nn.Module | None]) -> None:
    """Refuse unknown methods, and DeepExplainer when a part on the explained path has layer normalisation.

    ``path`` names the network parts the explained output passes through (e.g. ``{"encoders": ..., "heads": ...}``);
    layer normalisation elsewhere in the model (say in the decoders, for group relevance) does not matter.
    """
    if method not in ("deep", "gradient"):
        raise ValueError(f"method must be 'deep' or 'gradient', got {method!r}.")
    if method != "deep":
        return
    layered = [
        name
        for name, part in path.items()
        if part is not None and any(isinstance(m, nn.LayerNorm) for m in part.modules())
    ]
    if layered:
        raise ValueError(
            f"This model uses layer normalisation (norm='layer') in its {' and '.join(layered)}, on the explained path "
            f"({', '.join(path)}): layer normalisation divides each cell's hidden layer by its own standard deviation, "
            "so DeepExplainer has no exact rule for it and its attributions would not add up. Pass method='gradient' "
            "(expected gradients), or explain a model trained without layer normalisation in those parts."
        )


def _explainer(method: Method, wrapper: nn.Module, background: list[torch.Tensor]):
    import shap

    data = background if len(background) > 1 else background[0]
    if method == "deep":
        return shap.DeepExplainer(wrapper, data)
    if method == "gradient":
        return shap.GradientExplainer(wrapper, data)
    raise ValueError(f"method must be 'deep' or 'gradient', got {method!r}.")


def _shap_values(
    explainer, method: Method, inputs: list[torch.Tensor], check_additivity: bool, seed: int | None = 0
) -> list[np.ndarray]:
    """SHAP values per input as arrays cells x features x outputs (``seed``: GradientExplainer's sampling)."""
    data = inputs if len(inputs) > 1 else inputs[0]
    with _shap_session():
        if method == "deep":
            values = explainer.shap_values(data, check_additivity=check_additivity)
        else:
            values = explainer.shap_values(data, rseed=seed)
    values = values if isinstance(values, list) and len(inputs) > 1 else [values]
    out = []
    for v, x in zip(values, inputs, strict=True):
        v = np.stack(v, axis=-1) if isinstance(v, list) else np.asarray(v)
        out.append(v.reshape(x.shape[0], x.shape[1], -1))
    return out


def _tensors(model: UnitedNetModel, mdata: MuData, modalities: Sequence[str], idx: np.ndarray) -> list[torch.Tensor]:
    batches = list(model._batches(mdata, modalities, batch_size=max(len(idx), 1), indices=idx))
    return [batches[0][m] for m in modalities]


def _means(
    model: UnitedNetModel, mdata: MuData, modalities: Sequence[str], idx: np.ndarray, chunk_size: int = 2048
) -> list[torch.Tensor]:
    """Mean profile of the cells ``idx`` per modality, read in chunks (no dense copy of all of them at once)."""
    sums = [torch.zeros(model.n_features(m), dtype=torch.float64) for m in modalities]
    for batch in model._batches(mdata, modalities, batch_size=chunk_size, indices=idx):
        for i, m in enumerate(modalities):
            sums[i] += batch[m].double().sum(0).cpu()
    return [(s / len(idx)).float().to(model.device) for s in sums]


def _training_cells(model: UnitedNetModel) -> np.ndarray:
    """Indices of the model's training cells in its registered MuData."""
    return np.flatnonzero(model.split_ == "train") if model.split_ is not None else np.arange(model.adata.n_obs)


def _background(
    model: UnitedNetModel, modalities: Sequence[str], kind: str, n_background: int, rng: np.random.Generator
) -> list[torch.Tensor]:
    """Reference inputs shared by every group, from the model's training cells (never from the query cells)."""
    ref = model.adata
    train = _training_cells(model)
    if kind == "sample":
        idx = np.sort(rng.choice(train, size=min(n_background, len(train)), replace=False))
        return _tensors(model, ref, modalities, idx)
    if kind != "group_means":
        raise ValueError(f"background must be 'group_means' or 'sample', got {kind!r}.")
    # without trained group heads (translation-only model) the training cells form a single group
    groups = model.predict_labels(ref)[train] if _heads_trained(model) else np.full(len(train), "all")
    means = [_means(model, ref, modalities, train[groups == g]) for g in np.unique(groups)]
    return [torch.stack(m) for m in zip(*means, strict=True)]


def _rest_backgrounds(
    model: UnitedNetModel, modalities: Sequence[str], class_of_group: Mapping[str, str], explained: Sequence[str]
) -> dict[str, list[torch.Tensor]]:
    """One-vs-rest reference of each explained group: one row per *other* class, the mean of its training cells.

    Training cells are assigned to a class through their group of the model: their label for a supervised model, else
    their predicted group. Cells of groups that map to no class are left out.
    """
    ref = model.adata
    train = _training_cells(model)
    groups = _own_groups(model, ref, model.predict_labels(ref))[train]
    cls = np.array([class_of_group.get(g, "") for g in groups], dtype=object)
    present = [c for c in dict.fromkeys(class_of_group.values()) if (cls == c).any()]
    means = {c: _means(model, ref, modalities, train[cls == c]) for c in present}
    out = {}
    for group in explained:
        others = [c for c in present if c != group]
        if not others:
            raise ValueError(
                f"background='rest' needs training cells of a group other than {group!r}, but the model predicts "
                "no training cell outside it; use background='group_means' or 'sample'."
            )
        out[group] = [torch.stack([means[c][i] for c in others]) for i in range(len(modalities))]
    return out


def _heads_trained(model: UnitedNetModel) -> bool:
    """Whether the model can predict groups (it has group heads and they were trained)."""
    return model.module.heads is not None and model.task_ != "translation"


def _obs_labels(mdata: MuData, groupby: str) -> np.ndarray:
    if groupby not in mdata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of mdata.obs.")
    return mdata.obs[groupby].astype(str).to_numpy()


def _groups(model: UnitedNetModel, mdata: MuData, groupby: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Group label of each cell and the model output explained for it (its own group: label or prediction)."""
    query = None if mdata is model.adata else mdata
    predicted = model.predict_labels(query)
    names = model.group_names
    if groupby is None:
        labels = predicted
    else:
        labels = _obs_labels(mdata, groupby)
    own = labels if set(labels) <= set(names) else predicted
    index = {n: i for i, n in enumerate(names)}
    return labels, np.array([index[g] for g in own])


def _own_groups(model: UnitedNetModel, mdata: MuData, predicted: np.ndarray) -> np.ndarray:
    """Each cell's group of the model: its label (supervised model, labels in ``mdata.obs``), else its prediction."""
    names = model.group_names
    key = model.labels_key
    if model.task_ == "supervised" and key is not None and key in mdata.obs:
        labels = mdata.obs[key].astype(str).to_numpy()
        return np.where(np.isin(labels, names), labels, predicted)
    return predicted


def _explained_groups(
    model: UnitedNetModel,
    mdata: MuData,
    groupby: str | None,
    classes: Mapping[str, str] | None,
    predicted: np.ndarray,
) -> tuple[np.ndarray, dict[str, str], str]:
    """Explained group of each cell, the explained group (class) of each of the model's groups, and how it was set."""
    names = model.group_names
    if classes is not None:
        if not isinstance(classes, Mapping):
            raise TypeError(f"classes must map the model's groups to classes (a dict), got {type(classes).__name__}.")
        mapping = {str(g): str(c) for g, c in classes.items()}
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise KeyError(
                f"classes maps {unknown[:5]}, which are not groups of the model; its groups are {names[:10]}"
                f"{' ...' if len(names) > 10 else ''} (model.group_names)."
            )
        missing = [g for g in names if g not in mapping]
        if missing:
            raise ValueError(
                f"classes must map every group of the model to a class; {len(missing)} of {len(names)} are missing, "
                f"e.g. {missing[:5]}."
            )
        if groupby is None:
            return np.array([mapping[g] for g in predicted], dtype=str), mapping, "given"
        labels = _obs_labels(mdata, groupby)
        extra = sorted(set(labels) - set(mapping.values()))
        if extra:
            raise ValueError(
                f"mdata.obs[{groupby!r}] has values {extra[:5]} that are not classes of `classes`; map some of the "
                "model's groups to them, or leave groupby out to group the cells by their predicted class."
            )
        return labels, mapping, "given"
    identity = {g: g for g in names}
    if groupby is None:
        return predicted, identity, "identity"
    labels = _obs_labels(mdata, groupby)
    if set(labels) <= set(names):
        return labels, identity, "identity"
    table = pd.crosstab(_own_groups(model, mdata, predicted), labels)
    return labels, {str(g): str(table.loc[g].idxmax()) for g in names if g in table.index}, "majority"


def _sample(labels: np.ndarray, n_per_group: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        g: np.sort(
            rng.choice(np.flatnonzero(labels == g), size=min(n_per_group, int((labels == g).sum())), replace=False)
        )
        for g in np.unique(labels)
    }


def feature_relevance(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    groupby: str | None = None,
    classes: Mapping[str, str] | None = None,
    modalities: Sequence[str] | None = None,
    n_cells_per_group: int = 100,
    output: Output = "log_odds",
    background: Background = "rest",
    n_background: int = 100,
    method: Method = "deep",
    aggregate: Aggregate = "mean",
    n_top: int = 50,
    key_added: str = RESULT_KEYS.RELEVANCE,
    random_state: int = 0,
    check_additivity: bool = True,
    copy: bool = False,
) -> MuData | None:
    r"""Group-to-feature relevance: mean SHAP value of each feature for the cells of each group.

    SHAP values of the classification path (encoders -> fusion -> projector -> group head) are computed for a
    stratified sample of cells of each explained group. The explained groups are the model's groups (predicted, or the
    values of ``groupby`` when they name the model's groups) or *classes*: sets of the model's groups, such as the
    major classes of fine cell types (``groupby`` a coarser obs column, or ``classes`` a mapping group -> class).

    **Explained output.** For the cells of an explained group :math:`G`, let :math:`C` be the model's groups that
    belong to :math:`G`, :math:`l_g(x)` the group logits and :math:`p_g = \operatorname{softmax}(l)_g`:

    - ``"log_odds"`` (default): the log-odds of :math:`G` against every other group,
      :math:`f_G = \log \sum_{g \in C} p_g - \log \sum_{g \notin C} p_g
      = \operatorname{LSE}_{g \in C} l_g - \operatorname{LSE}_{g \notin C} l_g`. It is the evidence for the whole
      class, so features shared by all of its groups count, and it does not reward features that only separate the
      class's own groups from one another (as the logit of a fine group does);
    - ``"log_proba"``: the class log-probability
      :math:`f_G = \operatorname{LSE}_{g \in C} l_g - \operatorname{LSE}_{g} l_g`. It saturates at 0 for cells the
      model is sure of, where the log-odds keeps growing with the evidence;
    - ``"logit"``: the logit of the cell's own group of the model (its label when ``groupby`` names the model's groups,
      else its predicted group); ``classes`` is then only used by ``background="rest"``.

    With ``method="deep"`` the log-sum-exps are evaluated as exponential -> sum -> logarithm modules; DeepLIFT's
    rescale rule is exact for each elementwise step, so the SHAP values of a cell add up to
    :math:`f_G(x) - \mathbb{E}_{b}[f_G(b)]` over the reference inputs :math:`b`.

    **Reference (background).** The attributions explain the difference between a cell and the reference inputs,
    taken from the model's *training* cells:

    - ``"rest"`` (default): one-vs-rest contrast. One reference per *other* explained group: the mean profile of its
      training cells (cells counted under their label for a supervised model, else their predicted group). Every
      other group weighs the same however many of the model's groups it holds, and the explained group's own profile
      is not part of its reference, so the relevance answers "which features make these cells :math:`G` rather than
      something else";
    - ``"group_means"``: the mean profile of the training cells predicted in each of the model's groups (the explained
      group's own groups included);
    - ``"sample"``: ``n_background`` random training cells.

    **Relevance.** With SHAP values :math:`\phi_j(x_i)` of the sampled cells :math:`S_G` of :math:`G`:

    - ``"mean"`` (default): :math:`r_j = \frac{1}{|S_G|}\sum_{i \in S_G} \phi_j(x_i)`, ranked from the most positive.
      It is the feature's share of the group's mean evidence gap: with ``method="deep"`` the :math:`r_j` of every
      feature of every modality add up to the mean output of the group's cells minus the mean output of the
      reference (a ``modalities`` subset shows part of that sum). A feature that pushes some of the group's cells towards :math:`G` and others away from it (one
      that separates the group's own fine types) cancels out; a negative :math:`r_j` is evidence against :math:`G`;
    - ``"mean_abs"``: :math:`\frac{1}{|S_G|}\sum_{i \in S_G} |\phi_j(x_i)|`, how strongly the feature moves the output
      in either direction (SHAP's usual global importance), not additive.

    On Patch-seq, the signed mean put the class markers (Sst, Pvalb, Vip, Lamp5) of the package-default model in the
    top 10 of their class for 18 of 24 seed-class pairs over six seeds, against 15 with ``"mean_abs"``, and its top
    20 agreed more across seeds (mean Jaccard index 0.35 against 0.33; ``benchmarks/explain.py``).

    **The model explained.** The relevance describes what the trained network reads, which need not be every feature
    that separates the groups in the data. On Patch-seq, a model trained with batch normalisation in every hidden
    layer (``norm="batch"``, the default) often ranks the ``Sst`` and ``Vip`` genes far from the top for their
    classes, although each is one of its class's two most different genes. The decoders are not on the explained
    path, and the same training with batch normalisation in the decoders only (``norm={"encoders": "none",
    "decoders": "batch", "heads": "none"}``, the setting of ``tutorials/explain_patchseq.ipynb``) or with none at all
    (``use_batch_norm=False``) keeps the class markers in the top 10 far more often: 22 of 24 seed-class pairs over six
    seeds for each, against 14 for the default (``benchmarks/explain.py``, ``benchmarks/README.md``).

    Parameters
    ----------
    model
        Trained model with group heads.
    mdata
        MuData whose cells are explained; the registered one by default.
    groupby
        obs column grouping the cells (e.g. the labels, or a coarser cell-type column); by default the predicted
        groups, or their classes when ``classes`` is given. When its values are not the model's groups and
        ``classes`` is not given, each of the model's groups belongs to the value of ``groupby`` held by most of its
        cells in ``mdata`` (cells counted under their label for a supervised model, else their predicted group).
    classes
        Class of each of the model's groups (``model.group_names``), e.g.
        ``{"Sst-MET-1": "Sst", "Pvalb-MET-2": "Pvalb", ...}``; every group must be mapped. The explained groups are
        then the classes: those of ``mdata.obs[groupby]``, or the classes of the predicted groups when ``groupby`` is
        not given.
    modalities
        Modalities to explain; all the model's modalities present in ``mdata`` by default. The others still feed
        the model with their measured values.
    n_cells_per_group
        Cells sampled per explained group (all when a group is smaller).
    output
        ``"log_odds"``, ``"log_proba"`` or ``"logit"`` (see above).
    background
        ``"rest"``, ``"group_means"`` or ``"sample"`` (see above).
    n_background
        Reference cells for ``background="sample"``.
    method
        ``"deep"`` (DeepExplainer: DeepLIFT-based, attributions sum to the output minus its expected value) or
        ``"gradient"`` (GradientExplainer: expected gradients, additive in expectation only). Models with layer
        normalisation in their encoders or heads (``norm="layer"``, or ``"layer"`` for those parts of a ``norm``
        mapping) need ``"gradient"``; layer normalisation in the decoders only is not on this path.
    aggregate
        ``"mean"`` (signed) or ``"mean_abs"`` summary of the SHAP values over the group's cells (see above).
    n_top
        Features per group and modality kept in the tidy table (the largest relevance first).
    key_added
        varm key of the relevance matrices.
    random_state
        Seed of the cell and background sampling (and of GradientExplainer).
    check_additivity
        Let DeepExplainer verify that the attributions add up.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.mod[m].varm[key_added]``: DataFrame features x explained groups of relevance (mean SHAP value, or mean
      absolute SHAP value with ``aggregate="mean_abs"``) for each explained modality;
    - ``mdata.uns["unitednet"]["relevance"]`` (``[key_added]`` when it is not the default): tidy DataFrame with
      columns ``group``, ``modality``, ``feature``, ``relevance``, ``rank`` (the ``n_top`` features of each group
      and modality, ranked within the modality);
    - ``mdata.uns["unitednet"]["relevance_params"]`` (``f"{key_added}_params"``): the settings used, the explained
      output and the relevance in words, and the class of each of the model's groups (``class_groups`` /
      ``class_names``, two aligned lists; ``class_mapping`` says whether it was ``"given"``, ``"identity"`` or derived
      by ``"majority"``).
    """
    model._check_trained()
    if model.module.heads is None:
        raise ValueError("Group relevance needs group heads; this model was built with n_groups=0.")
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {list(_OUTPUTS)}, got {output!r}.")
    if background not in _BACKGROUNDS:
        raise ValueError(f"background must be one of {list(_BACKGROUNDS)}, got {background!r}.")
    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {list(_AGGREGATES)}, got {aggregate!r}.")
    # the explained output: encoders -> fusion (no normalisation) -> group head
    _check_method(model, method, {"encoders": model.module.encoders, "heads": model.module.heads})
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    present = model._available(query)
    explained = list(modalities) if modalities is not None else present
    missing = [m for m in explained if m not in present]
    if missing:
        raise KeyError(f"Modalities {missing} are not in the MuData or not registered; available: {present}.")
    rng = np.random.default_rng(random_state)
    model.module.eval()
    names = model.group_names
    predicted = model.predict_labels(query)
    labels, class_of_group, mapping_source = _explained_groups(model, out, groupby, classes, predicted)
    samples = _sample(labels, n_cells_per_group, rng)
    members = {G: [i for i, g in enumerate(names) if class_of_group.get(g) == G] for G in samples}
    if output != "logit" or background == "rest":
        empty = [G for G, idx in members.items() if not idx]
        if empty:
            raise ValueError(
                f"Explained groups {empty[:5]} of groupby={groupby!r} hold none of the model's groups (each group "
                "belongs to the value held by most of its cells), so they have no class output or class reference; "
                "pass classes={group: class} mapping every model group, or use output='logit' with "
                "background='group_means'."
            )
    if output == "log_odds":
        whole = [G for G, idx in members.items() if len(idx) == len(names)]
        if whole:
            raise ValueError(
                f"Explained group {whole[0]!r} holds all of the model's groups: its log-odds against the other groups "
                "is undefined; use a finer grouping or output='logit'."
            )
    if background == "rest":
        bases = _rest_backgrounds(model, present, class_of_group, list(samples))
    else:
        shared = _background(model, present, background, n_background, rng)
        bases = dict.fromkeys(samples, shared)
    if output == "logit":
        own = labels if set(labels) <= set(names) else predicted
        index = {n: i for i, n in enumerate(names)}
        own_index = np.array([index[g] for g in own])
    else:
        # the largest logit of every input the explainer evaluates: subtracted before exp (it cancels in f)
        scorer = _Classification(model, present)
        everyone = np.concatenate(list(samples.values()))
        with torch.no_grad():
            highs = [
                scorer.logits(*(b[m] for m in present)).max() for b in model._batches(out, present, 1024, everyone)
            ]
            highs += [scorer.logits(*b).max() for b in {id(b): b for b in bases.values()}.values()]
        shift = float(torch.stack(highs).max())
    sums = {m: {} for m in explained}
    explainers: dict[tuple, object] = {}
    for group, idx in samples.items():
        base = bases[group]
        xs_group = _tensors(model, out, present, idx)
        totals = {m: np.zeros(model.n_features(m)) for m in explained}
        if output == "logit":
            parts = [(int(k), own_index[idx] == k) for k in np.unique(own_index[idx])]
        else:
            parts = [(None, np.ones(len(idx), dtype=bool))]
        for k, mask in parts:
            key = (k, group if background == "rest" else None)
            if key not in explainers:
                wrapper = (
                    _GroupScore(model, present, k)
                    if output == "logit"
                    else _ClassScore(model, present, members[group], output, shift)
                )
                explainers[key] = _explainer(method, wrapper, base)
            xs = [x[torch.as_tensor(mask)] for x in xs_group]
            values = _shap_values(explainers[key], method, xs, check_additivity, seed=random_state)
            if not all(np.isfinite(v).all() for v in values):
                raise FloatingPointError(
                    f"Non-finite SHAP values for group {group!r} (output={output!r}): a class probability "
                    "underflowed; use output='logit'."
                )
            for m, v in zip(present, values, strict=True):
                if m in totals:
                    totals[m] += (np.abs(v[..., 0]) if aggregate == "mean_abs" else v[..., 0]).sum(0)
        for m in explained:
            sums[m][group] = totals[m] / len(idx)
    order = sorted(samples, key=lambda G: (min(members[G], default=len(names)), G))
    rows = []
    for m in explained:
        df = pd.DataFrame(sums[m], index=model.var_names(m))[order]
        rel = df.reindex(out.mod[m].var_names)
        out.mod[m].varm[key_added] = rel
        for group in df.columns:
            top = df[group].sort_values(ascending=False).head(n_top)
            rows.append(
                pd.DataFrame(
                    {
                        "group": group,
                        "modality": m,
                        "feature": top.index,
                        "relevance": top.to_numpy(),
                        "rank": np.arange(1, len(top) + 1),
                    }
                )
            )
    table_key = "relevance" if key_added == RESULT_KEYS.RELEVANCE else key_added
    uns = _uns(out)
    uns[table_key] = pd.concat(rows, ignore_index=True)
    mapped = [g for g in names if g in class_of_group]
    uns[f"{table_key}_params"] = {
        "groupby": groupby or ("predicted class" if classes is not None else "predicted"),
        "modalities": explained,
        "n_cells_per_group": n_cells_per_group,
        "output": output,
        "background": background,
        "method": method,
        "aggregate": aggregate,
        "explained_output": _EXPLAINED_OUTPUT[output],
        "relevance": _AGGREGATE_WORDS[aggregate],
        "class_mapping": mapping_source,
        "class_groups": mapped,
        "class_names": [class_of_group[g] for g in mapped],
        "random_state": random_state,
    }
    return out if copy else None


def cross_modal_relevance(
    model: UnitedNetModel,
    mdata: MuData | None = None,
    *,
    source: str,
    target: str,
    groupby: str | None = None,
    target_features: Sequence[str] | None = None,
    n_target_features: int = 20,
    relevance_key: str = RESULT_KEYS.RELEVANCE,
    top_k: int = 20,
    n_cells_per_group: int = 100,
    background: TranslationBackground = "group_means",
    n_background: int = 100,
    method: Method = "deep",
    random_state: int = 0,
    chunk_size: int = 16,
    check_additivity: bool = True,
    copy: bool = False,
) -> MuData | None:
    """Cell-type-specific feature-to-feature relevance of the translation ``source -> target``.

    For each group and each target feature, SHAP values of the translation path (source encoder -> target decoder,
    output in the target's units) over the group's sampled cells give the mean absolute SHAP value of every source
    feature; the ``top_k`` source features per target feature and group are kept. Cells are processed in chunks, so
    no dense groups x target x source tensor is ever built.

    Parameters
    ----------
    model
        Trained model.
    mdata
        MuData with the ``source`` modality; the registered one by default.
    source, target
        Modalities of the translation.
    groupby
        obs column grouping the cells; the predicted groups by default (or one group, ``"all"``, for a model
        without trained group heads).
    target_features
        Target features to explain for every group. By default each group's ``n_target_features`` most relevant
        target features from ``mdata.mod[target].varm[relevance_key]`` (run :func:`feature_relevance` first): the
        largest values, i.e. with the default signed relevance the features with the most evidence *for* the group.
    n_target_features
        Target features per group when ``target_features`` is not given.
    relevance_key
        varm key of the group relevance used to choose the target features.
    top_k
        Source features kept per target feature and group.
    n_cells_per_group
        Cells sampled per group.
    background
        ``"group_means"`` or ``"sample"`` reference inputs from the training cells (see :func:`feature_relevance`);
        for a model without trained group heads, ``"group_means"`` is the mean of all training cells.
    n_background
        Reference cells for ``background="sample"``.
    method
        ``"deep"`` or ``"gradient"`` (``"gradient"`` for models with layer normalisation in their encoders or
        decoders, the parts on the translation path; layer normalisation in the heads only does not matter here).
    random_state
        Seed of the sampling.
    chunk_size
        Cells explained at once (bounds memory: chunk x source features x target features values).
    check_additivity
        Let DeepExplainer verify that the attributions add up.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes
    ``mdata.uns["unitednet"]["cross_modal_relevance"][f"{source}->{target}"]``: tidy DataFrame with columns
    ``group``, ``target_feature``, ``source_feature``, ``relevance`` (mean absolute SHAP value, in target units) and
    ``rank``.
    """
    model._check_trained()
    for m in (source, target):
        if m not in model.modalities:
            raise KeyError(f"Unknown modality {m!r}; registered: {model.modalities}.")
    if source == target:
        raise ValueError("source and target must differ (cross-modal relevance).")
    # the explained output: source encoder -> target decoder (the heads only group the cells)
    path = {"encoders": model.module.encoders[source], "decoders": model.module.decoders[target]}
    _check_method(model, method, path)
    out = _target(model, mdata, copy)
    query = None if out is model.adata else out
    model._resolve_mdata(query, [source])
    rng = np.random.default_rng(random_state)
    model.module.eval()
    if groupby is not None:
        labels = _obs_labels(out, groupby)
    elif _heads_trained(model):
        labels = model.predict_labels(query)
    else:
        labels = np.full(out.n_obs, "all")
    target_names = model.var_names(target)
    per_group_targets = _choose_targets(
        out, target, target_names, labels, target_features, n_target_features, relevance_key
    )
    samples = _sample(labels, n_cells_per_group, rng)
    base = _background(model, [source], background, n_background, rng)
    source_names = model.var_names(source)
    rows = []
    for group, idx in samples.items():
        features = per_group_targets[group]
        wrapper = _Translation(model, source, target, target_names.get_indexer(features))
        explainer = _explainer(method, wrapper, base)
        total = np.zeros((len(source_names), len(features)))
        for start in range(0, len(idx), chunk_size):
            x = _tensors(model, out, [source], idx[start : start + chunk_size])
            total += np.abs(_shap_values(explainer, method, x, check_additivity, seed=random_state)[0]).sum(0)
        total /= len(idx)
        for j, feature in enumerate(features):
            order = np.argsort(-total[:, j])[:top_k]
            rows.append(
                pd.DataFrame(
                    {
                        "group": group,
                        "target_feature": feature,
                        "source_feature": source_names[order],
                        "relevance": total[order, j],
                        "rank": np.arange(1, len(order) + 1),
                    }
                )
            )
    uns = _uns(out)
    store = uns.setdefault("cross_modal_relevance", {})
    store[f"{source}->{target}"] = pd.concat(rows, ignore_index=True)
    return out if copy else None


def _choose_targets(
    mdata: MuData,
    target: str,
    target_names: pd.Index,
    labels: np.ndarray,
    target_features: Sequence[str] | None,
    n_target_features: int,
    relevance_key: str,
) -> dict[str, list[str]]:
    groups = np.unique(labels)
    if target_features is not None:
        unknown = [f for f in target_features if f not in target_names]
        if unknown:
            raise KeyError(f"target_features {unknown[:5]} are not features of the model's {target!r} modality.")
        return dict.fromkeys(groups, list(target_features))
    varm = mdata.mod[target].varm if target in mdata.mod else {}
    if relevance_key not in varm:
        raise KeyError(
            f"No group relevance mdata.mod[{target!r}].varm[{relevance_key!r}] to choose target features from: run "
            f"unitednet.tl.feature_relevance(model, mdata, modalities=[{target!r}]) first, or pass target_features."
        )
    rel = pd.DataFrame(varm[relevance_key], index=mdata.mod[target].var_names)
    missing = [g for g in groups if g not in rel.columns]
    if missing:
        raise KeyError(
            f"The relevance in varm[{relevance_key!r}] has no groups {missing[:5]}; compute it with the same groupby."
        )
    return {g: list(rel[g].sort_values(ascending=False).index[:n_target_features]) for g in groups}


def relevance_stability(relevances: Sequence[pd.DataFrame], *, top_k: int = 20) -> pd.DataFrame:
    """Agreement of the top features per group across several relevance matrices (seeds, folds, models).

    Parameters
    ----------
    relevances
        Two or more DataFrames features x groups (e.g. ``mdata.mod["rna"].varm["unitednet_relevance"]`` from
        models trained with different seeds), sharing group columns.
    top_k
        Number of top features compared.

    Returns
    -------
    DataFrame indexed by group with the mean, minimum and maximum pairwise Jaccard index of the top-``top_k``
    feature sets and the number of pairs.
    """
    if len(relevances) < 2:
        raise ValueError("Give at least two relevance matrices to compare.")
    groups = set(relevances[0].columns)
    for r in relevances[1:]:
        groups &= set(r.columns)
    if not groups:
        raise ValueError("The relevance matrices share no group columns.")
    rows = {}
    for g in sorted(groups):
        tops = [set(pd.Series(r[g]).sort_values(ascending=False).index[:top_k]) for r in relevances]
        jac = [len(a & b) / len(a | b) for a, b in itertools.combinations(tops, 2)]
        rows[g] = {
            "mean_jaccard": float(np.mean(jac)),
            "min_jaccard": min(jac),
            "max_jaccard": max(jac),
            "n_pairs": len(jac),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("group")
