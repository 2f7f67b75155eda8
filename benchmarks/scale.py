"""Scale: one training epoch of UnitedNet and of scvi-tools' SCVI from 10k to 1M synthetic cells, in memory or on disk.

Protocol:

- Data (seed 0, drawn 250 cells at a time by :func:`synthetic_scale.iter_blocks`): ``--n-cells`` cells in 5 groups;
  modality ``gauss``: ``--n-dense`` (2,000) dense float32 gaussian features; modality ``peaks``: ``--n-sparse``
  (20,000) binary features as a float32 CSR matrix, about ``--density`` (5 %) non-zero. By default each run builds
  the MuData in memory (:func:`synthetic_scale.make_mudata`).
- On disk (``--backed DIR``): the same data in ``DIR/scale_<n_cells>.h5mu``, written block by block by
  :func:`synthetic_scale.write_h5mu` (in a subprocess of its own before the runs of that size; its memory grows by
  only ~20 bytes per cell) and reused while the settings recorded beside it in ``DIR/scale_<n_cells>.json``
  (cells, features, density, seed, block and chunk sizes) match. The file is laid out as ``mudata.write_h5mu`` lays
  out that MuData: a 512-byte MuData header; ``/mod/gauss/X`` a contiguous float32 dataset (cells x dense features);
  ``/mod/peaks/X`` a CSR group (``data`` float32, ``indices`` int32, ``indptr`` int32, or int64 from 2**31 possible
  non-zeros; chunks of 16,384 elements); per modality ``obs`` and ``var`` (names) and empty ``obsm``, ``varm``,
  ``obsp``, ``varp``, ``layers``, ``uns``; at the top ``obs`` (names, categorical ``group``), ``var``, the masks
  ``obsm``/``varm``, the row maps ``obsmap``/``varmap``, empty ``obsp``, ``varp``, ``uns``; ``/mod`` has the
  ``mod-order`` attribute. Size: about ``n_cells * (4 * n_dense + 8 * n_sparse * density)`` bytes, 16 GB for 1M
  cells with the defaults. UnitedNet opens it with ``mudata.read_h5mu(path, backed=True)``: set-up and training read
  the matrices from the file, a batch of cells at a time. SCVI cannot train from a backed file: in this mode it loads
  only the ``peaks`` modality into memory (``mudata.read_h5ad(path, "peaks")``) and is skipped above
  ``--scvi-max-cells`` (100,000) cells.
- UnitedNet: default architecture on both modalities, ``task="translation"`` (``unitednet-supervised`` adds
  ``"supervised"``), every cell a training cell, one epoch, once per ``--precision`` (``32``, ``bf16-mixed``: the
  Lightning trainer's ``precision``). SCVI (scvi-tools defaults: 1 hidden layer of 128, latent 10, ZINB likelihood)
  on the same ``peaks`` matrix (its binary values as counts), one epoch in float32, every cell a training cell. Both
  train on the CPU with ``--batch-size`` (256) and ``--threads`` (1) torch threads. The epoch is timed by a Lightning
  callback from ``on_train_epoch_start`` to ``on_train_epoch_end``; *set-up* (``setup_mudata`` or
  ``setup_anndata`` and the model's construction; with a backed file it reads every value once to check it) is
  timed apart, as is building or opening the data.
- Memory: resident set size once the data are built or opened (*data*: the whole MuData in memory; with a backed
  file only its annotations; for SCVI the ``peaks`` modality), then the peak RSS of set-up and training (the kernel's
  peak counter is reset after the data are ready, through ``/proc/self/clear_refs``); the tables print the peak
  above the data, and the minor page faults of the epoch (``faults_k``, thousands: memory the process touches for the
  first time since the kernel mapped it). Each configuration runs in its own subprocess, one after the other.
- Arithmetic: the FLOPs of UnitedNet's epoch are counted from the layer shapes and the non-zeros of the sparse
  modality (matrix products only, 2 FLOPs per multiply-add; forward, input gradients where a gradient flows and
  weight gradients, as the training step computes them: the first layer of a sparse modality costs its non-zeros,
  the decoders and the discriminators' reads of reconstructions are dense). SCVI's epoch is counted the same way
  (its first layer is dense: scvi-tools densifies each minibatch). Before and after the runs a plain torch matmul of
  the dominant shape (batch x hidden) @ (hidden x sparse features) is timed in float32 and in bfloat16: the better
  rate of each is the *attainable* throughput of that precision (``bf16-mixed`` runs use the bfloat16 rate, the
  others the float32 rate), FLOPs / rate is the run's *arithmetic lower bound*, and achieved / attainable = lower
  bound / epoch time.
- Tables: one row per run (set-up, epoch, µs per cell, FLOPs, bound, memory); the precisions side by side; UnitedNet
  relative to SCVI at each size; growth with the number of cells per method and precision (ratios of cells, epoch
  time, µs per cell, peak above the data and data, between consecutive sizes and from the smallest to the largest).

Run from the repository root: ``python benchmarks/scale.py`` (about 8 minutes on one thread for 10k and 100k cells in
memory). The 1M-cell measurement reads the data from disk:

    python benchmarks/scale.py --backed /tmp/unitednet_scale --n-cells 10000 100000 1000000 \\
        --methods unitednet-translation --precision bf16-mixed

(``--precision 32 bf16-mixed`` compares both precisions; add ``scvi`` to ``--methods`` for SCVI up to
``--scvi-max-cells``). It needs about 18 GB free in the folder (16 GB for the 1M-cell file, written in about 5
minutes and kept for later runs), but little memory: the data RSS is the libraries' (~0.6 GB) and the annotations'
(a few hundred bytes per cell), and the growth table shows whether the peak above it grows with the cells. Without
``--backed``, 1M cells need ~16 GB of RAM for the data (more while the blocks are stacked).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    PRECISIONS,
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
MATMUL_DTYPES = {"32": "float32", "bf16-mixed": "bfloat16"}  # the dtype of each precision's matrix products


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


def matmul_rate(batch_size: int, n_hidden: int, n_out: int, dtype: str = "float32", repeats: int = 20) -> float:
    """FLOP/s of a plain torch matmul (batch x hidden) @ (hidden x n_out) in ``dtype``, best of ``repeats``."""
    import torch

    a = torch.randn(batch_size, n_hidden, dtype=getattr(torch, dtype))
    b = torch.randn(n_hidden, n_out, dtype=getattr(torch, dtype))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * batch_size * n_hidden * n_out / best


def matmul_rates(batch_size: int, n_sparse: int) -> dict[str, float]:
    """The attainable rate of each precision (:func:`matmul_rate` of the dominant shape in its dtype)."""
    return {p: matmul_rate(batch_size, 256, n_sparse, MATMUL_DTYPES[p]) for p in PRECISIONS}


# ---------------------------------------------------------------------------------------------------------------------
# data on disk
# ---------------------------------------------------------------------------------------------------------------------
def h5mu_path(directory: Path, n_cells: int) -> Path:
    """The data file of ``n_cells`` cells in ``directory`` (its settings are in the ``.json`` beside it)."""
    return Path(directory) / f"scale_{n_cells}.h5mu"


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the synthetic data depend on: a file written with other settings is written again."""
    from synthetic_scale import ROW_BLOCK, SPARSE_CHUNK

    return {
        "n_cells": args.n_cells,
        "n_dense": args.n_dense,
        "n_sparse": args.n_sparse,
        "density": args.density,
        "seed": SEED,
        "row_block": ROW_BLOCK,
        "sparse_chunk": SPARSE_CHUNK,
    }


def prepare_h5mu(args: argparse.Namespace) -> dict[str, Any]:
    """Write ``DIR/scale_<n_cells>.h5mu`` unless it is there with the same settings; return what its sidecar records.

    The sidecar (``scale_<n_cells>.json``: settings, file size, write time and the writer's peak RSS above its start)
    is written after the file is complete, so an interrupted write is redone.
    """
    from synthetic_scale import write_h5mu

    path = h5mu_path(args.backed, args.n_cells)
    sidecar = path.with_suffix(".json")
    settings = data_settings(args)
    if path.exists() and sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("settings") == settings and info.get("file_bytes") == path.stat().st_size:
            return {**info, "written_now": False}
    sidecar.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    start_rss = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    with timer() as t_write:
        write_h5mu(path, args.n_cells, args.n_dense, args.n_sparse, args.density, seed=SEED)
    info = {
        "path": str(path),
        "settings": settings,
        "file_bytes": path.stat().st_size,
        "write_s": t_write.seconds,
        "write_peak_above_start_mb": proc_status_mb("VmHWM") - start_rss if reset else float("nan"),
    }
    write_json(info, sidecar)
    return {**info, "written_now": True}


# ---------------------------------------------------------------------------------------------------------------------
# one configuration (runs in a subprocess)
# ---------------------------------------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build or open the data, set up and train one epoch of one method at one precision; return the figures."""
    n_threads = set_threads(args.threads, verbose=False)
    import lightning.pytorch as pl
    import mudata as md
    import scvi
    from synthetic_scale import make_mudata

    from unitednet import UnitedNetModel

    quiet()

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self.faults: list[int] = []
            self.n_batches = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self._faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.n_batches += 1

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._start)
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults)

    method, precision = args.worker_method, args.worker_precision
    path = None if args.backed is None else h5mu_path(args.backed, args.n_cells)
    with timer() as t_data, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if path is None:
            data_mode = "in memory"
            mdata = make_mudata(args.n_cells, args.n_dense, args.n_sparse, args.density, seed=SEED)
            if method == "scvi":
                adata = mdata.mod["peaks"]
                del mdata
        elif method == "scvi":
            data_mode = "peaks in memory"
            adata = md.read_h5ad(path, "peaks")
        else:
            data_mode = "backed"
            mdata = md.read_h5mu(path, backed=True)
    gc.collect()
    if method == "scvi":
        nnz = int(adata.X.nnz)
    elif path is None:
        nnz = int(mdata.mod["peaks"].X.nnz)
    else:
        nnz = int(mdata.mod["peaks"].X.group["indptr"][-1])
    data_rss = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    scvi.settings.seed = SEED
    probe = EpochTimer()
    common = {
        "max_epochs": 1,
        "batch_size": args.batch_size,
        "train_size": 1.0,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "callbacks": [probe],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "scvi":
            with timer() as t_setup:
                scvi.model.SCVI.setup_anndata(adata)
                model = scvi.model.SCVI(adata)
            with timer() as t_train:
                model.train(**common)
            flops = scvi_epoch_flops(args.n_cells, args.n_sparse)
        else:
            task = method.split("-", 1)[1]
            with timer() as t_setup:
                UnitedNetModel.setup_mudata(mdata, modalities=["gauss", "peaks"], labels_key="group")
                model = UnitedNetModel(mdata)
            with timer() as t_train:
                model.train(task, validation_size=0.0, precision=precision, **common)
            nnz_per_cell = {"gauss": float(args.n_dense), "peaks": nnz / args.n_cells}
            flops = unitednet_epoch_flops(
                args.n_cells,
                {"gauss": args.n_dense, "peaks": args.n_sparse},
                nnz_per_cell,
                task,
                batch_size=args.batch_size,
            )
    peak = proc_status_mb("VmHWM") if reset else float("nan")
    still_backed = None if data_mode != "backed" else all(mdata.mod[m].isbacked for m in mdata.mod)
    return {
        "method": method,
        "precision": precision,
        "data_mode": data_mode,
        "n_cells": args.n_cells,
        "threads": n_threads,
        "data_s": t_data.seconds,
        "sparse_nnz": nnz,
        "setup_s": t_setup.seconds,
        "epoch_s": probe.seconds[0] if probe.seconds else float("nan"),
        "n_batches": probe.n_batches,
        "epoch_page_faults": probe.faults[0] if probe.faults else -1,
        "train_call_s": t_train.seconds,
        "data_rss_mb": data_rss,
        "peak_rss_mb": peak,
        "peak_above_data_mb": peak - data_rss,
        "still_backed_after_training": still_backed,
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
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=["32"],
        help="training precisions of the UnitedNet methods (Lightning's trainer argument; SCVI trains in float32)",
    )
    parser.add_argument(
        "--backed",
        type=Path,
        metavar="DIR",
        help="read the data from DIR/scale_<n_cells>.h5mu (written there, or reused) in backed mode",
    )
    parser.add_argument(
        "--scvi-max-cells",
        type=int,
        default=100_000,
        help="with --backed, the largest size SCVI runs at (it loads the sparse modality into memory)",
    )
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    parser.add_argument("--worker-method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 < args.density < 1:
        parser.error("--density must be in (0, 1)")
    if min(args.n_cells) < 1:
        parser.error("--n-cells must be >= 1")
    if args.backed is not None:
        args.backed = args.backed.resolve()
    return args


def worker_command(
    args: argparse.Namespace, n_cells: int, out: Path, method: str | None = None, precision: str | None = None
) -> list[str]:
    """The command line of one subprocess: a run of ``method`` at ``precision``, or (no method) writing the file."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--n-cells", str(n_cells)]
    cmd += ["--n-dense", str(args.n_dense), "--n-sparse", str(args.n_sparse), "--density", str(args.density)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.backed is not None:
        cmd += ["--backed", str(args.backed)]
    if method is None:
        cmd += ["--worker-prepare"]
    else:
        cmd += ["--worker-method", method, "--worker-precision", precision]
    return cmd + ["--worker-out", str(out)]


def run_subprocess(cmd: list[str], out: Path) -> dict[str, Any]:
    """Run one subprocess and return the JSON it wrote."""
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


def growth_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios between sizes per method and precision: consecutive sizes, then the smallest to the largest."""
    rows = []
    keys = dict.fromkeys((r["method"], r["precision"]) for r in runs)
    for method, precision in keys:
        mine = sorted(
            (r for r in runs if (r["method"], r["precision"]) == (method, precision)), key=lambda r: r["n_cells"]
        )
        pairs = list(zip(mine[:-1], mine[1:], strict=True))
        if len(mine) > 2:
            pairs.append((mine[0], mine[-1]))
        for small, large in pairs:
            rows.append(
                {
                    "method": method,
                    "precision": precision,
                    "cells": f"{small['n_cells']} -> {large['n_cells']}",
                    "cells x": large["n_cells"] / small["n_cells"],
                    "time x": large["epoch_s"] / small["epoch_s"],
                    "us/cell from": 1e6 * small["epoch_s"] / small["n_cells"],
                    "us/cell to": 1e6 * large["epoch_s"] / large["n_cells"],
                    "setup x": large["setup_s"] / small["setup_s"],
                    "peak-data x": large["peak_above_data_mb"] / small["peak_above_data_mb"],
                    "data x": large["data_rss_mb"] / small["data_rss_mb"],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (cells, method, precision) configuration in its own subprocess, print the tables, write the JSON."""
    args = parse_args(argv)
    if args.worker_method is not None or args.worker_prepare:
        assert len(args.n_cells) == 1
        args.n_cells = args.n_cells[0]
        result = prepare_h5mu(args) if args.worker_prepare else run_worker(args)
        write_json(result, args.worker_out)
        return result
    set_threads(args.threads)
    rates = matmul_rates(args.batch_size, args.n_sparse)
    shape = f"({args.batch_size} x 256) @ (256 x {args.n_sparse})"
    for p, rate in rates.items():
        print(f"plain torch matmul {shape} in {MATMUL_DTYPES[p]} on {args.threads} thread(s): {rate / 1e9:.1f} GFLOP/s")
    if args.backed is not None:
        print(f"data on disk in {args.backed} (backed mode)", flush=True)
    runs, files, skipped = [], [], []
    tmp = args.out.parent / f".{NAME}_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with timer() as t_total:
        for n_cells in args.n_cells:
            if args.backed is not None:
                out = tmp / f"prepare_{n_cells}.json"
                print(f"-- data file, {n_cells} cells", flush=True)
                info = run_subprocess(worker_command(args, n_cells, out), out)
                files.append({"n_cells": n_cells, **info})
                done = f"written in {info['write_s']:.1f} s" if info["written_now"] else "reused"
                print(f"   {info['path']}: {info['file_bytes'] / 1e6:.1f} MB, {done}", flush=True)
            for method in args.methods:
                if method == "scvi" and args.backed is not None and n_cells > args.scvi_max_cells:
                    print(f"-- scvi skipped at {n_cells} cells (backed data, above --scvi-max-cells)", flush=True)
                    skipped.append({"method": method, "n_cells": n_cells})
                    continue
                for precision in ["32"] if method == "scvi" else args.precision:
                    out = tmp / f"{method}_{precision}_{n_cells}.json"
                    print(f"-- {method}, precision {precision}, {n_cells} cells", flush=True)
                    runs.append(run_subprocess(worker_command(args, n_cells, out, method, precision), out))
    tmp.rmdir()
    rates_after = matmul_rates(args.batch_size, args.n_sparse)
    rates = {p: max(rates[p], rates_after[p]) for p in PRECISIONS}

    if files:
        file_rows = [
            {
                "cells": f["n_cells"],
                "file_MB": f["file_bytes"] / 1e6,
                "written": "now" if f["written_now"] else "before",
                "write_s": f["write_s"],
                "writer peak_MB": f["write_peak_above_start_mb"],
            }
            for f in files
        ]
        print_table(f"Data files in {args.backed} (writer peak: RSS above its start)", file_rows, digits=2)
    rows = []
    for r in runs:
        bound = r["total_flops"] / rates[r["precision"]]
        rows.append(
            {
                "method": r["method"],
                "precision": r["precision"],
                "data": r["data_mode"],
                "cells": r["n_cells"],
                "data_s": r["data_s"],
                "setup_s": r["setup_s"],
                "epoch_s": r["epoch_s"],
                "us/cell": 1e6 * r["epoch_s"] / r["n_cells"],
                "TFLOP": r["total_flops"] / 1e12,
                "achieved_GFLOP/s": r["total_flops"] / r["epoch_s"] / 1e9,
                "lower_bound_s": bound,
                "epoch/bound": r["epoch_s"] / bound,
                "faults_k": r["epoch_page_faults"] / 1e3,
                "data_MB": r["data_rss_mb"],
                "peak-data_MB": r["peak_above_data_mb"],
                "load": r["load_average"][0] if r["load_average"] else None,
            }
        )
    attainable = ", ".join(f"{MATMUL_DTYPES[p]} {rate / 1e9:.1f}" for p, rate in rates.items())
    print_table(
        f"One epoch, batch size {args.batch_size}, {args.threads} thread(s); attainable GFLOP/s: {attainable}",
        rows,
        digits=2,
    )
    print("(attainable: plain matmul, the better of before and after the runs; each lower bound uses its precision's)")
    backed_runs = [r for r in runs if r["data_mode"] == "backed"]
    if backed_runs:
        on_disk = all(r["still_backed_after_training"] for r in backed_runs)
        print(f"backed runs: both matrices still on disk after training: {'yes' if on_disk else 'NO'}")
    if args.backed is not None and any(r["method"] == "scvi" for r in runs):
        print("(scvi: the peaks modality read into memory from the file; SCVI cannot train from a backed file)")
    if skipped:
        print("scvi skipped (backed, above --scvi-max-cells) at: " + ", ".join(str(s["n_cells"]) for s in skipped))

    by_precision = []
    if len(args.precision) > 1:
        for n_cells in args.n_cells:
            for method in args.methods:
                mine = {r["precision"]: r for r in runs if r["method"] == method and r["n_cells"] == n_cells}
                if method == "scvi" or len(mine) < 2:
                    continue
                ref = mine[args.precision[0]]
                for precision, r in mine.items():
                    if precision != args.precision[0]:
                        by_precision.append(
                            {
                                "method": method,
                                "cells": n_cells,
                                "precisions": f"{precision} / {args.precision[0]}",
                                "time x": r["epoch_s"] / ref["epoch_s"],
                                "setup x": r["setup_s"] / ref["setup_s"],
                                "peak-data x": r["peak_above_data_mb"] / ref["peak_above_data_mb"],
                                "attainable x": rates[precision] / rates[args.precision[0]],
                            }
                        )
    if by_precision:
        print_table("Precisions compared (same data, batch size and threads)", by_precision, digits=2)
    ratios = []
    for n_cells in args.n_cells:
        at_size = [r for r in runs if r["n_cells"] == n_cells]
        base = next((r for r in at_size if r["method"] == "scvi"), None)
        if base is None:
            continue
        for r in at_size:
            if r["method"] != "scvi":
                ratios.append(
                    {
                        "cells": n_cells,
                        "method": r["method"],
                        "precision": r["precision"],
                        "time / scvi": r["epoch_s"] / base["epoch_s"],
                        "flops / scvi": r["total_flops"] / base["total_flops"],
                        "peak-data / scvi": r["peak_above_data_mb"] / base["peak_above_data_mb"],
                    }
                )
    if ratios:
        print_table("UnitedNet relative to SCVI (same data, batch size and threads)", ratios, digits=2)
    growth = growth_rows(runs)
    if growth:
        print_table("Growth with the number of cells (us/cell: epoch time per cell at each end)", growth, digits=2)
    for r in runs:
        if r["method"] != "scvi":
            parts = ", ".join(f"{k} {v / r['total_flops']:.0%}" for k, v in r["flops"].items() if v)
            print(f"\n{r['method']} FLOPs by part: {parts}")
            break
    settings = ("n_cells", "n_dense", "n_sparse", "density", "batch_size", "threads", "precision", "backed")
    result = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {k: getattr(args, k) for k in settings} | {"scvi_max_cells": args.scvi_max_cells},
        # glibc allocator settings of the run (they change how often freed batch buffers are faulted in again)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "attainable_flops_per_s": rates,
        "files": files,
        "runs": runs,
        "skipped": skipped,
        "table": rows,
        "precisions": by_precision,
        "ratios_to_scvi": ratios,
        "growth": growth,
        "total_s": t_total.seconds,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch", "lightning", "anndata", "mudata", "h5py"]),
    }
    path = write_json(result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
