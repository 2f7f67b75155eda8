"""SHAP relevance: which features drive each group, and which source features drive each translated target feature."""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Sequence
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
Background = Literal["group_means", "sample"]


class _GroupScore(nn.Module):
    """Classification path with the modalities as separate inputs: encoders -> fusion -> projector -> one group logit.

    The logit of the group (not its softmax probability) is explained: every operation on the path is then one that
    DeepLIFT propagates exactly, so the attributions add up to the score minus its expected value.
    """

    def __init__(self, model: UnitedNetModel, modalities: Sequence[str], group: int):
        super().__init__()
        self.module = model.module
        self.modalities = list(modalities)
        self.group = group

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        z = {
            m: self.module.encoders[m](self.module.standardize(m, x)) for m, x in zip(self.modalities, xs, strict=True)
        }
        return self.module.group_logits(self.module.fusion(z))[:, self.group : self.group + 1]


class _Translation(nn.Module):
    """Translation path ``source -> target`` restricted to some target features, in the target's units."""

    def __init__(self, model: UnitedNetModel, source: str, target: str, features: np.ndarray):
        super().__init__()
        self.module = model.module
        self.source, self.target = source, target
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.long))
        # a Sigmoid *module* so that DeepLIFT's rule for it applies (a functional call would break additivity)
        self.sigmoid = nn.Sigmoid() if model.likelihoods[target] == "bernoulli" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module.decoders[self.target](
            self.module.encoders[self.source](self.module.standardize(self.source, x))
        )
        out = out[:, self.features]
        if self.sigmoid is not None:
            return self.sigmoid(out)
        std = self.module.standardizers[self.target]
        return out * std.scale[self.features] + std.loc[self.features]


@contextlib.contextmanager
def _quiet_shap():
    """Silence shap's notices about modules it does not know.

    ModalityFusion and _Standardizer are linear in their inputs, so passing gradients through them is exact
    (DeepExplainer's additivity check still runs).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="unrecognized nn.Module")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def _explainer(method: Method, wrapper: nn.Module, background: list[torch.Tensor]):
    import shap

    data = background if len(background) > 1 else background[0]
    if method == "deep":
        return shap.DeepExplainer(wrapper, data)
    if method == "gradient":
        return shap.GradientExplainer(wrapper, data)
    raise ValueError(f"method must be 'deep' or 'gradient', got {method!r}.")


def _shap_values(explainer, method: Method, inputs: list[torch.Tensor], check_additivity: bool) -> list[np.ndarray]:
    """SHAP values per input as arrays cells x features x outputs."""
    data = inputs if len(inputs) > 1 else inputs[0]
    with _quiet_shap():
        if method == "deep":
            values = explainer.shap_values(data, check_additivity=check_additivity)
        else:
            values = explainer.shap_values(data)
    values = values if isinstance(values, list) and len(inputs) > 1 else [values]
    out = []
    for v, x in zip(values, inputs, strict=True):
        v = np.stack(v, axis=-1) if isinstance(v, list) else np.asarray(v)
        out.append(v.reshape(x.shape[0], x.shape[1], -1))
    return out


def _tensors(model: UnitedNetModel, mdata: MuData, modalities: Sequence[str], idx: np.ndarray) -> list[torch.Tensor]:
    batches = list(model._batches(mdata, modalities, batch_size=max(len(idx), 1), indices=idx))
    return [batches[0][m] for m in modalities]


def _background(
    model: UnitedNetModel, modalities: Sequence[str], kind: Background, n_background: int, rng: np.random.Generator
) -> list[torch.Tensor]:
    """Reference inputs from the model's training cells (never from the explained query cells)."""
    ref = model.adata
    train = np.flatnonzero(model.split_ == "train") if model.split_ is not None else np.arange(ref.n_obs)
    if kind == "sample":
        idx = np.sort(rng.choice(train, size=min(n_background, len(train)), replace=False))
        return _tensors(model, ref, modalities, idx)
    if kind != "group_means":
        raise ValueError(f"background must be 'group_means' or 'sample', got {kind!r}.")
    # without trained group heads (translation-only model) the training cells form a single group
    groups = model.predict_labels(ref)[train] if _heads_trained(model) else np.full(len(train), "all")
    means: list[list[torch.Tensor]] = [[] for _ in modalities]
    for g in np.unique(groups):
        xs = _tensors(model, ref, modalities, train[groups == g])
        for i, x in enumerate(xs):
            means[i].append(x.mean(0))
    return [torch.stack(m) for m in means]


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
    modalities: Sequence[str] | None = None,
    n_cells_per_group: int = 100,
    background: Background = "group_means",
    n_background: int = 100,
    method: Method = "deep",
    n_top: int = 50,
    key_added: str = RESULT_KEYS.RELEVANCE,
    random_state: int = 0,
    check_additivity: bool = True,
    copy: bool = False,
) -> MuData | None:
    """Group-to-feature relevance: mean absolute SHAP value of each feature for the cells of each group.

    SHAP values of the classification path (encoders -> fusion -> projector -> group head) are computed for a
    stratified sample of cells. The output explained for a cell is the logit of its own group: its label when
    ``groupby`` names the model's groups (e.g. the training labels of a supervised model), else its predicted group.

    Parameters
    ----------
    model
        Trained model with group heads.
    mdata
        MuData whose cells are explained; the registered one by default.
    groupby
        obs column grouping the cells (e.g. a coarser cell-type column); the predicted groups by default.
    modalities
        Modalities to explain; all the model's modalities present in ``mdata`` by default. The others still feed
        the model with their measured values.
    n_cells_per_group
        Cells sampled per group (all when a group is smaller).
    background
        SHAP reference inputs, from the model's training cells: ``"group_means"`` (the mean profile of each
        predicted group) or ``"sample"`` (``n_background`` random training cells).
    n_background
        Reference cells for ``background="sample"``.
    method
        ``"deep"`` (DeepExplainer: DeepLIFT-based, attributions sum to the output minus its expected value) or
        ``"gradient"`` (GradientExplainer: expected gradients).
    n_top
        Features per group and modality kept in the tidy table.
    key_added
        varm key of the relevance matrices.
    random_state
        Seed of the cell and background sampling.
    check_additivity
        Let DeepExplainer verify that the attributions add up.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    The copy when ``copy=True``, else ``None``. Writes:

    - ``mdata.mod[m].varm[key_added]``: DataFrame features x groups of mean absolute SHAP value for each explained modality;
    - ``mdata.uns["unitednet"]["relevance"]`` (``[key_added]`` when it is not the default): tidy DataFrame with
      columns ``group``, ``modality``, ``feature``, ``relevance``, ``rank`` (the ``n_top`` features of each group
      and modality, ranked within the modality);
    - ``mdata.uns["unitednet"]["relevance_params"]`` (``f"{key_added}_params"``): the settings used.
    """
    model._check_trained()
    if model.module.heads is None:
        raise ValueError("Group relevance needs group heads; this model was built with n_groups=0.")
    out = _target(model, mdata, copy)
    present = model._available(None if out is model.adata else out)
    explained = list(modalities) if modalities is not None else present
    missing = [m for m in explained if m not in present]
    if missing:
        raise KeyError(f"Modalities {missing} are not in the MuData or not registered; available: {present}.")
    rng = np.random.default_rng(random_state)
    model.module.eval()
    labels, outputs = _groups(model, out, groupby)
    samples = _sample(labels, n_cells_per_group, rng)
    base = _background(model, present, background, n_background, rng)
    sums = {m: {} for m in explained}
    explainers: dict[int, object] = {}
    for group, idx in samples.items():
        totals = {m: np.zeros(model.n_features(m)) for m in explained}
        for k in np.unique(outputs[idx]):
            cells = idx[outputs[idx] == k]
            if k not in explainers:
                explainers[k] = _explainer(method, _GroupScore(model, present, int(k)), base)
            values = _shap_values(explainers[k], method, _tensors(model, out, present, cells), check_additivity)
            for m, v in zip(present, values, strict=True):
                if m in totals:
                    totals[m] += np.abs(v[..., 0]).sum(0)
        for m in explained:
            sums[m][group] = totals[m] / len(idx)
    rows = []
    names = model.group_names
    order = sorted(samples, key=names.index) if set(samples) <= set(names) else sorted(samples)
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
    uns[f"{table_key}_params"] = {
        "groupby": groupby or "predicted",
        "modalities": explained,
        "n_cells_per_group": n_cells_per_group,
        "background": background,
        "method": method,
        "explained_output": "logit of the cell's own group",
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
    background: Background = "group_means",
    n_background: int = 100,
    method: Method = "deep",
    random_state: int = 0,
    chunk_size: int = 16,
    check_additivity: bool = True,
    copy: bool = False,
) -> MuData | None:
    """Cell-type-specific feature-to-feature relevance of the translation ``source -> target``.

    For each group and each target feature, SHAP values of the translation path (source encoder -> target decoder,
    output in the target's units) over the group's sampled cells give the mean absolute SHAP value of every source feature; the
    ``top_k`` source features per target feature and group are kept. Cells are processed in chunks, so no dense
    groups x target x source tensor is ever built.

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
        target features from ``mdata.mod[target].varm[relevance_key]`` (run :func:`feature_relevance` first).
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
        ``"deep"`` or ``"gradient"``.
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
    ``group``, ``target_feature``, ``source_feature``, ``relevance`` (mean absolute SHAP value, in target units) and ``rank``.
    """
    model._check_trained()
    for m in (source, target):
        if m not in model.modalities:
            raise KeyError(f"Unknown modality {m!r}; registered: {model.modalities}.")
    if source == target:
        raise ValueError("source and target must differ (cross-modal relevance).")
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
            total += np.abs(_shap_values(explainer, method, x, check_additivity)[0]).sum(0)
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
