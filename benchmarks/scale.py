"""Scale: one training epoch of UnitedNet and of scvi-tools' SCVI from 10k to 100k (or more) synthetic cells.

Protocol:

- Data (seed 0, built by :func:`synthetic_scale.make_mudata`, a block of rows at a time): ``--n-cells`` cells in 5
  groups; modality ``gauss``: ``--n-dense`` (2,000) dense float32 gaussian features; modality ``peaks``:
  ``--n-sparse`` (20,000) binary features as a float32 CSR matrix, about ``--density`` (5 %) non-zero.
- UnitedNet: default architecture on both modalities, ``task="translation"`` (and ``"supervised"`` with
  ``--tasks``), every cell a training cell, one epoch. SCVI (scvi-tools defaults: 1 hidden layer of 128, latent 10,
  ZINB likelihood) on the same ``peaks`` matrix (its binary values as counts), one epoch, every cell a training
  cell. Both use ``--batch-size`` (256) and ``--threads`` (1) torch threads; the epoch is timed by a Lightning
  callback from ``on_train_epoch_start`` to ``on_train_epoch_end``.
- Memory: resident set size after the data are built (*data*), then the peak RSS of the training call (the kernel's
  peak counter is reset after the data are built, through ``/proc/self/clear_refs``); the table prints the peak
  above the data. Each configuration runs in its own subprocess, one after the other.
- Arithmetic: the FLOPs of UnitedNet's epoch are counted from the layer shapes and the non-zeros of the sparse
  modality (matrix products only, 2 FLOPs per multiply-add; forward, input gradients where a gradient flows and
  weight gradients, as the training step computes them: the first layer of a sparse modality costs its non-zeros,
  the decoders and the discriminators' reads of reconstructions are dense). SCVI's epoch is counted the same way
  (its first layer is dense: scvi-tools densifies each minibatch). In the same run a plain torch matmul of the
  dominant shape (batch x hidden) @ (hidden x sparse features) is timed: its rate is the *attainable* throughput,
  FLOPs / rate is the *arithmetic lower bound* of the epoch, and achieved / attainable = lower bound / epoch time.

Run from the repository root: ``python benchmarks/scale.py`` (about 8 minutes on one thread for 10k and 100k cells;
``--n-cells 10000 100000 1000000`` adds 1M cells, which needs ~9 GB of RAM for the data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    default_json_path,
    machine_info,
    package_versions,
    print_table,
    proc_status_mb,
    quiet,
    reset_peak_rss,
    set_threads,
    timer,
    write_json,
)

NAME = "scale"
SEED = 0
METHODS = ("unitednet-translation", "unitednet-supervised", "scvi")


# ---------------------------------------------------------------------------------------------------------------------
# FLOP counts (matrix products, 2 FLOPs per multiply-add)
# ---------------------------------------------------------------------------------------------------------------------
def _mlp_layers(n_in: int, n_out: int, n_hidden: int, n_layers: int) -> list[tuple[int, int]]:
    sizes = [n_in] + [n_hidden] * n_layers + [n_out]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def _pass_flops(layers: list[tuple[int, int]], first_in: float, input_grad: bool, weight_grad: bool = True) -> float:
    """FLOPs per cell of one MLP pass: forward, weight gradients, and input gradients (all layers but the first unless
    ``input_grad``). ``first_in`` is the first layer's effective input width (its non-zeros for a sparse input)."""
    total = 0.0
    for i, (n_in, n_out) in enumerate(layers):
        width = first_in if i == 0 else n_in
        total += 2 * width * n_out  # forward
        if weight_grad:
            total += 2 * width * n_out
        if i > 0 or input_grad:
            total += 2 * n_in * n_out
    return total


def unitednet_epoch_flops(
    n_cells: int,
    n_features: dict[str, int],
    nnz_per_cell: dict[str, float],
    task: str,
    n_hidden: int = 256,
    n_latent: int = 32,
    n_layers: int = 2,
    n_groups: int = 5,
    batch_size: int = 256,
) -> dict[str, float]:
    """FLOPs of one UnitedNet epoch per part, as the training step computes them (see the module docstring)."""
    mods = list(n_features)
    disc_hidden = min(n_hidden, 64)
    parts = dict.fromkeys(["encoders", "decoders", "discriminators", "projector+contrastive", "heads"], 0.0)
    for m in mods:
        enc = _mlp_layers(n_features[m], n_latent, n_hidden, n_layers)
        # translation pass: encoders (no gradient into the data), decoders of every target from this latent
        parts["encoders"] += _pass_flops(enc, nnz_per_cell[m], input_grad=False)
        for t in mods:
            parts["decoders"] += _pass_flops(_mlp_layers(n_latent, n_features[t], n_hidden, n_layers), n_latent, True)
        disc = _mlp_layers(n_features[m], 1, disc_hidden, 1)
        # generator term on the reconstruction (input gradient, no weight gradient), discriminator step on the
        # detached reconstruction and on the data (weight gradients only)
        parts["discriminators"] += _pass_flops(disc, n_features[m], input_grad=True, weight_grad=False)
        parts["discriminators"] += _pass_flops(disc, n_features[m], input_grad=False)
        parts["discriminators"] += _pass_flops(disc, nnz_per_cell[m], input_grad=False)
        parts["projector+contrastive"] += _pass_flops(_mlp_layers(n_latent, n_latent, n_hidden, 1), n_latent, True)
    n_pairs = len(mods) * (len(mods) - 1) / 2
    parts["projector+contrastive"] += n_pairs * 3 * 2 * batch_size * n_latent  # similarity matrix, fwd + 2 grads
    if task == "supervised":  # classification pass: encoders again, projector + group head
        for m in mods:
            enc = _mlp_layers(n_features[m], n_latent, n_hidden, n_layers)
            parts["encoders"] += _pass_flops(enc, nnz_per_cell[m], input_grad=False)
        parts["heads"] += _pass_flops([(n_latent, n_hidden), (n_hidden, n_groups)], n_latent, True)
    return {k: v * n_cells for k, v in parts.items()}


def scvi_epoch_flops(n_cells: int, n_genes: int, n_hidden: int = 128, n_latent: int = 10) -> dict[str, float]:
    """FLOPs of one SCVI epoch (1 hidden layer, ZINB): dense encoder, decoder with scale and dropout heads."""
    encoder = _pass_flops([(n_genes, n_hidden), (n_hidden, 2 * n_latent)], n_genes, input_grad=False)
    decoder = _pass_flops([(n_latent, n_hidden)], n_latent, True) + 2 * _pass_flops(
        [(n_hidden, n_genes)], n_hidden, True
    )
    return {"encoder": encoder * n_cells, "decoder": decoder * n_cells}


def matmul_rate(batch_size: int, n_hidden: int, n_out: int, repeats: int = 20) -> float:
    """FLOP/s of a plain torch matmul (batch x hidden) @ (hidden x n_out), best of ``repeats`` after a warm-up."""
    import torch

    a = torch.randn(batch_size, n_hidden)
    b = torch.randn(n_hidden, n_out)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * batch_size * n_hidden * n_out / best


# ---------------------------------------------------------------------------------------------------------------------
# one configuration (runs in a subprocess)
# ---------------------------------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build the data and train one epoch of one method; return time, memory and counts."""
    n_threads = set_threads(args.threads, verbose=False)
    import lightning.pytorch as pl
    import scvi
    from synthetic_scale import make_mudata

    from unitednet import UnitedNetModel

    quiet()

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self.n_batches = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.n_batches += 1

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._start)

    with timer() as t_data:
        mdata = make_mudata(args.n_cells, args.n_dense, args.n_sparse, args.density)
    peaks = mdata.mod["peaks"].X
    nnz = {"gauss": float(args.n_dense), "peaks": peaks.nnz / peaks.shape[0]}
    data_rss = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    scvi.settings.seed = SEED
    probe = EpochTimer()
    method = args.worker_method
    common = {"max_epochs": 1, "batch_size": args.batch_size, "train_size": 1.0, "enable_progress_bar": False}
    with timer() as t_train, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "scvi":
            adata = mdata.mod["peaks"]
            del mdata
            scvi.model.SCVI.setup_anndata(adata)
            model = scvi.model.SCVI(adata)
            model.train(accelerator="cpu", callbacks=[probe], **common)
            flops = scvi_epoch_flops(args.n_cells, args.n_sparse)
        else:
            task = method.split("-", 1)[1]
            UnitedNetModel.setup_mudata(mdata, modalities=["gauss", "peaks"], labels_key="group")
            model = UnitedNetModel(mdata)
            model.train(task, validation_size=0.0, callbacks=[probe], **common)
            flops = unitednet_epoch_flops(
                args.n_cells, {"gauss": args.n_dense, "peaks": args.n_sparse}, nnz, task, batch_size=args.batch_size
            )
    peak = proc_status_mb("VmHWM") if reset else float("nan")
    return {
        "method": method,
        "n_cells": args.n_cells,
        "threads": n_threads,
        "data_build_s": t_data.seconds,
        "sparse_nnz": int(peaks.nnz),
        "epoch_s": probe.seconds[0] if probe.seconds else float("nan"),
        "n_batches": probe.n_batches,
        "train_call_s": t_train.seconds,
        "data_rss_mb": data_rss,
        "peak_rss_mb": peak,
        "peak_above_data_mb": peak - data_rss,
        "flops": flops,
        "total_flops": sum(flops.values()),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cells", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--n-dense", type=int, default=2_000)
    parser.add_argument("--n-sparse", type=int, default=20_000)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["unitednet-translation", "scvi"])
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    parser.add_argument("--worker-method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (method, cells) configuration in its own subprocess, print the tables and write the JSON."""
    args = parse_args(argv)
    if args.worker_method is not None:
        assert len(args.n_cells) == 1
        args.n_cells = args.n_cells[0]
        result = run_worker(args)
        write_json(result, args.worker_out)
        return result
    set_threads(args.threads)
    rate = matmul_rate(args.batch_size, 256, args.n_sparse)
    print(
        f"plain torch matmul ({args.batch_size} x 256) @ (256 x {args.n_sparse}) on {args.threads} thread(s): "
        f"{rate / 1e9:.1f} GFLOP/s (the attainable rate)",
        flush=True,
    )
    runs = []
    tmp = args.out.parent / f".{NAME}_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with timer() as t_total:
        for n_cells in args.n_cells:
            for method in args.methods:
                out = tmp / f"{method}_{n_cells}.json"
                print(f"-- {method}, {n_cells} cells", flush=True)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--n-cells", str(n_cells)]
                cmd += [
                    "--n-dense",
                    str(args.n_dense),
                    "--n-sparse",
                    str(args.n_sparse),
                    "--density",
                    str(args.density),
                ]
                cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                cmd += ["--worker-method", method, "--worker-out", str(out)]
                subprocess.run(cmd, check=True)
                runs.append(json.loads(out.read_text()))
                out.unlink()
    tmp.rmdir()
    rate_after = matmul_rate(args.batch_size, 256, args.n_sparse)
    rate = max(rate, rate_after)
    rows = []
    for r in runs:
        bound = r["total_flops"] / rate
        rows.append(
            {
                "method": r["method"],
                "cells": r["n_cells"],
                "epoch_s": r["epoch_s"],
                "us_per_cell": 1e6 * r["epoch_s"] / r["n_cells"],
                "TFLOP": r["total_flops"] / 1e12,
                "achieved_GFLOP/s": r["total_flops"] / r["epoch_s"] / 1e9,
                "lower_bound_s": bound,
                "epoch/bound": r["epoch_s"] / bound,
                "data_MB": r["data_rss_mb"],
                "peak-data_MB": r["peak_above_data_mb"],
                "load": r["load_average"][0] if r["load_average"] else None,
            }
        )
    print_table(
        f"One epoch, batch size {args.batch_size}, {args.threads} thread(s); attainable {rate / 1e9:.1f} GFLOP/s "
        "(plain matmul, best of the runs before and after)",
        rows,
        digits=2,
    )
    ratios = []
    for n_cells in args.n_cells:
        by_method = {r["method"]: r for r in runs if r["n_cells"] == n_cells}
        if "scvi" in by_method:
            for method, r in by_method.items():
                if method != "scvi":
                    ratios.append(
                        {
                            "cells": n_cells,
                            "method": method,
                            "time / scvi": r["epoch_s"] / by_method["scvi"]["epoch_s"],
                            "flops / scvi": r["total_flops"] / by_method["scvi"]["total_flops"],
                            "peak-data / scvi": r["peak_above_data_mb"] / by_method["scvi"]["peak_above_data_mb"],
                        }
                    )
    if ratios:
        print_table("UnitedNet relative to SCVI (same data, batch size and threads)", ratios, digits=2)
    growth = []
    for method in args.methods:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["n_cells"])
        for small, large in zip(mine[:-1], mine[1:], strict=True):
            growth.append(
                {
                    "method": method,
                    "cells": f"{small['n_cells']} -> {large['n_cells']}",
                    "cells x": large["n_cells"] / small["n_cells"],
                    "time x": large["epoch_s"] / small["epoch_s"],
                    "peak-data x": large["peak_above_data_mb"] / small["peak_above_data_mb"],
                    "data x": large["data_rss_mb"] / small["data_rss_mb"],
                }
            )
    if growth:
        print_table("Growth with the number of cells", growth, digits=2)
    for r in runs:
        if r["method"] != "scvi":
            parts = ", ".join(f"{k} {v / r['total_flops']:.0%}" for k, v in r["flops"].items() if v)
            print(f"\n{r['method']} FLOPs by part: {parts}")
            break
    result = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {
            k: getattr(args, k) for k in ("n_cells", "n_dense", "n_sparse", "density", "batch_size", "threads")
        },
        "attainable_flops_per_s": rate,
        "runs": runs,
        "table": rows,
        "ratios_to_scvi": ratios,
        "growth": growth,
        "total_s": t_total.seconds,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch", "lightning", "anndata", "mudata"]),
    }
    path = write_json(result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
