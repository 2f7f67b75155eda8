from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from mudata import MuData

from unitednet._constants import RESULT_KEYS


def relevance(
    mdata: MuData,
    modality: str,
    *,
    key: str = RESULT_KEYS.RELEVANCE,
    groups: Sequence[str] | None = None,
    n_top: int = 5,
    kind: str = "heatmap",
    standard_scale: bool = True,
    ax: Axes | None = None,
    cmap: str | None = None,
) -> Axes:
    """Top features per group from :func:`unitednet.tl.feature_relevance`, as a heatmap or a dot plot.

    The title names the explained output and reference when the settings written by
    :func:`~unitednet.tl.feature_relevance` are found in ``mdata.uns["unitednet"]``.

    Parameters
    ----------
    mdata
        MuData with ``mdata.mod[modality].varm[key]`` (features x groups).
    modality
        Modality whose features are shown.
    key
        varm key written by :func:`~unitednet.tl.feature_relevance`.
    groups
        Groups (rows) to show; all by default.
    n_top
        Top features per group; the columns are their union, in group order.
    kind
        ``"heatmap"`` or ``"dotplot"`` (dot colour: relevance; dot size: its magnitude, which for the signed relevance
        of ``aggregate="mean"`` is the absolute value).
    standard_scale
        Scale each feature's relevance to [0, 1] across groups (scanpy's ``standard_scale="var"``).
    ax
        Axes to draw into.
    cmap
        Colour map. By default ``"Reds"``; for unscaled relevance with negative values (the signed mean of
        ``aggregate="mean"``, evidence against a group) ``"RdBu_r"``, centred on zero.

    Returns
    -------
    The axes.
    """
    if modality not in mdata.mod or key not in mdata.mod[modality].varm:
        raise KeyError(f"No mdata.mod[{modality!r}].varm[{key!r}]; run unitednet.tl.feature_relevance first.")
    if kind not in ("heatmap", "dotplot"):
        raise ValueError(f"kind must be 'heatmap' or 'dotplot', got {kind!r}.")
    rel = pd.DataFrame(mdata.mod[modality].varm[key], index=mdata.mod[modality].var_names)
    groups = list(groups) if groups is not None else list(rel.columns)
    unknown = [g for g in groups if g not in rel.columns]
    if unknown:
        raise KeyError(f"Groups {unknown} are not in the relevance matrix; it has {list(rel.columns)}.")
    features: list[str] = []
    for g in groups:
        features += [f for f in rel[g].sort_values(ascending=False).index[:n_top] if f not in features]
    mat = rel.loc[features, groups].T.astype(float)
    if standard_scale:
        lo, hi = mat.min(0), mat.max(0)
        mat = (mat - lo) / (hi - lo).replace(0, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.28 * len(features) + 2.5, 0.3 * len(groups) + 1.5))
    values = mat.to_numpy()
    limits = {}
    if values.min() < 0:  # signed and unscaled: a diverging map, symmetric about zero
        cmap = cmap or "RdBu_r"
        bound = float(np.abs(values).max())
        limits = {"vmin": -bound, "vmax": bound}
    cmap = cmap or "Reds"
    if kind == "heatmap":
        im = ax.imshow(values, aspect="auto", cmap=cmap, **limits)
    else:
        yy, xx = np.meshgrid(range(len(groups)), range(len(features)), indexing="ij")
        size = np.abs(values.ravel())
        im = ax.scatter(
            xx.ravel(), yy.ravel(), s=10 + 140 * size / max(size.max(), 1e-12), c=values.ravel(), cmap=cmap, **limits
        )
        ax.set_xlim(-0.5, len(features) - 0.5)
        ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xticks(range(len(features)), features, rotation=90, fontsize=7)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    params = mdata.uns.get(RESULT_KEYS.UNS, {}).get(
        "relevance_params" if key == RESULT_KEYS.RELEVANCE else f"{key}_params", {}
    )
    unscaled = "mean SHAP" if params.get("aggregate") == "mean" else "mean |SHAP|"
    ax.figure.colorbar(im, ax=ax, label="relevance (scaled)" if standard_scale else unscaled, shrink=0.6)
    title = f"{modality}: top {n_top} features per group"
    if "output" in params and "background" in params:
        title += f"\n(output {params['output']}, background {params['background']})"
    ax.set_title(title)
    return ax


def cross_modal_relevance(
    mdata: MuData,
    source: str,
    target: str,
    group: str,
    *,
    n_links: int = 30,
    ax: Axes | None = None,
    cmap: str = "viridis",
) -> Axes:
    """Source -> target feature links of one group from :func:`unitednet.tl.cross_modal_relevance`.

    Source features are drawn on the left, target features on the right; each line is one of the ``n_links``
    strongest links, its width and colour its relevance.

    Parameters
    ----------
    mdata
        MuData with ``mdata.uns["unitednet"]["cross_modal_relevance"][f"{source}->{target}"]``.
    source, target
        Modalities of the translation.
    group
        Group whose links are drawn.
    n_links
        Strongest links drawn.
    ax
        Axes to draw into.
    cmap
        Colour map of the links.

    Returns
    -------
    The axes.
    """
    pair = f"{source}->{target}"
    store = mdata.uns.get(RESULT_KEYS.UNS, {}).get("cross_modal_relevance", {})
    if pair not in store:
        raise KeyError(f"No cross-modal relevance {pair!r}; run unitednet.tl.cross_modal_relevance first.")
    table = pd.DataFrame(store[pair])
    table = table[table["group"].astype(str) == str(group)]
    if table.empty:
        raise KeyError(f"Group {group!r} is not in the {pair} relevance table.")
    links = table.nlargest(n_links, "relevance")
    sources = list(dict.fromkeys(links.sort_values("source_feature")["source_feature"]))
    targets = list(dict.fromkeys(links.sort_values("target_feature")["target_feature"]))
    ys = {f: i / max(len(sources) - 1, 1) for i, f in enumerate(sources)}
    yt = {f: i / max(len(targets) - 1, 1) for i, f in enumerate(targets)}
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.22 * max(len(sources), len(targets)) + 1.5))
    colormap = plt.get_cmap(cmap)
    hi = links["relevance"].max()
    for _, row in links.iterrows():
        w = row["relevance"] / hi if hi > 0 else 1.0
        ax.plot(
            [0, 1],
            [ys[row["source_feature"]], yt[row["target_feature"]]],
            color=colormap(w),
            lw=0.5 + 2.5 * w,
            alpha=0.8,
        )
    for f, y in ys.items():
        ax.text(-0.02, y, f, ha="right", va="center", fontsize=7)
    for f, y in yt.items():
        ax.text(1.02, y, f, ha="left", va="center", fontsize=7)
    ax.set_xlim(-0.6, 1.6)
    ax.set_axis_off()
    ax.set_title(f"{pair}, group {group}: {len(links)} strongest links")
    return ax
