from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes


def perturbation(
    metrics: dict | pd.DataFrame,
    *,
    n_degs: int = 100,
    n_labels: int = 10,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Predicted vs observed mean expression of the perturbed cells, one point per gene, top DEGs highlighted.

    Parameters
    ----------
    metrics
        The dict returned by :func:`unitednet.tl.perturbation_metrics` (its ``means`` table is read), or that table:
        a DataFrame indexed by gene with ``observed``, ``predicted`` and ``deg_rank`` columns.
    n_degs
        Highlight the genes with ``deg_rank < n_degs``.
    n_labels
        Write the names of the top ``n_labels`` DEGs.
    ax
        Axes to draw into.
    title
        Axes title; by default the R² on all genes and on the highlighted DEGs (computed from the table).

    Returns
    -------
    The axes.
    """
    means = metrics.get("means") if isinstance(metrics, dict) else metrics
    if not isinstance(means, pd.DataFrame):
        raise KeyError("No 'means' table in the metrics; pass the dict returned by unitednet.tl.perturbation_metrics.")
    missing = sorted({"observed", "predicted", "deg_rank"} - set(means.columns))
    if missing:
        raise KeyError(
            f"The means table lacks columns {missing}; pass the output of unitednet.tl.perturbation_metrics."
        )
    if n_degs < 0 or n_labels < 0:
        raise ValueError("n_degs and n_labels must be >= 0.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    obs = means["observed"].to_numpy(dtype=float)
    pred = means["predicted"].to_numpy(dtype=float)
    rank = means["deg_rank"].to_numpy()
    deg = (rank >= 0) & (rank < n_degs)
    ax.scatter(obs[~deg], pred[~deg], s=6, c="0.7", linewidths=0, label="other genes", rasterized=True)
    ax.scatter(obs[deg], pred[deg], s=12, c="tab:red", linewidths=0, label=f"top {int(deg.sum())} DEGs")
    lo = float(np.nanmin([obs.min(), pred.min()]))
    hi = float(np.nanmax([obs.max(), pred.max()]))
    ax.plot([lo, hi], [lo, hi], ls="--", c="k", lw=0.8)
    for i in np.flatnonzero((rank >= 0) & (rank < min(n_labels, n_degs))):
        ax.annotate(str(means.index[i]), (obs[i], pred[i]), fontsize=7, xytext=(2, 2), textcoords="offset points")
    if title is None:

        def r2(idx: np.ndarray) -> float:
            ss = ((obs[idx] - obs[idx].mean()) ** 2).sum()
            return float(1 - ((obs[idx] - pred[idx]) ** 2).sum() / ss) if ss > 0 else float("nan")

        title = f"R² all genes {r2(np.ones_like(deg)):.2f}"
        if deg.any():
            title += f", top {int(deg.sum())} DEGs {r2(deg):.2f}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("observed mean (perturbed cells)")
    ax.set_ylabel("predicted mean")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return ax
