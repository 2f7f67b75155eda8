"""Scaling of :func:`unitednet.pp.niche` with the number of cells: time and peak memory, 10k to 1M synthetic cells.

Protocol:

- Data per size ``n``: cells uniform in a square whose side grows as ``sqrt(n)`` (constant density, so every cell has
  the same expected neighbourhood), ``--genes`` genes of dense ``float32`` log-gamma expression (sparse CSR with
  ``--sparse``, about 30 % non-zero). Generated in chunks, so that generating the data does not set the memory peak.
- Call: ``unitednet.pp.niche(mdata, modality="rna", n_neighbors=k, weighting=...)`` on a MuData holding the one
  modality, in place: the whole public call (neighbour search, weights, averaging, the new modality and mudata's
  update) is timed.
- Each size runs in fresh Python processes, with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MB (arrays of 1 MB
  or more are mapped and unmapped, so memory freed earlier, e.g. while generating the data, is not silently reused
  and the resident set follows the live arrays at every size). Peak memory is the resident-set high-water mark
  during the (first) call minus the resident set just before it (Linux: the mark is reset through
  ``/proc/self/clear_refs`` before the call and read from ``VmHWM`` after it). A second process measures the peak
  of the allocations Python's tracemalloc sees during the call (numpy and pandas arrays; not scipy's k-d tree
  nodes). With ``--repeats``, the time is the fastest call's.
- Linear scaling: time and peak extra memory per cell, and the ratio of each to the previous size, against the ratio
  of the sizes. The graph is checked to hold exactly ``n * k`` entries (no dense ``n x n`` anywhere).
- ``core_seconds``: the same computation through pp.niche's internal steps alone (neighbour search, weights,
  averaging), i.e. without building the new AnnData and mudata's update of the MuData, timed after the public call.

Run from the repository root: ``python benchmarks/niche_scale.py`` (a few minutes, mostly start-up and data; ``--sizes 10000 100000`` for a
quick run). Writes ``benchmarks/results/niche_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    default_json_path,
    machine_info,
    package_versions,
    print_table,
    proc_status_mb,
    reset_peak_rss,
    write_json,
)

NAME = "niche_scale"
SIZES = (10_000, 100_000, 1_000_000)
N_GENES = 20
N_NEIGHBORS = 10
WEIGHTING = "inverse_distance"
CHUNK = 100_000
MMAP_THRESHOLD = 1 << 20  # glibc: serve allocations >= 1 MB by mmap, so freed arrays leave the resident set


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of cells")
    parser.add_argument("--genes", type=int, default=N_GENES, help="genes per cell")
    parser.add_argument("--neighbors", type=int, default=N_NEIGHBORS, help="n_neighbors of pp.niche")
    parser.add_argument("--weighting", default=WEIGHTING, choices=["inverse_distance", "gaussian", "uniform"])
    parser.add_argument("--sparse", action="store_true", help="sparse CSR expression instead of dense")
    parser.add_argument(
        "--repeats", type=int, default=1, help="calls per size: the fastest time and the first call's memory"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "traced"], default="time", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------------
# memory (Linux /proc)
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# one size, in its own process
# ---------------------------------------------------------------------------------------------------------------------
def synthetic(n: int, n_genes: int, sparse_x: bool, seed: int = 0):
    import anndata as ad
    import mudata as md
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    side = np.sqrt(n) * 10.0  # about one cell per 100 square units at every size
    coords = np.empty((n, 2))
    X = np.empty((n, n_genes), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        coords[start:stop] = rng.uniform(0.0, side, size=(stop - start, 2))
        block = np.log1p(rng.gamma(0.5, 4.0, size=(stop - start, n_genes))).astype(np.float32)
        if sparse_x:
            block[block < 1.0] = 0.0
        X[start:stop] = block
    if sparse_x:
        X = sparse.csr_matrix(X)
    rna = ad.AnnData(X, obs=pd.DataFrame(index=pd.Index(np.char.add("c", np.arange(n).astype(str)))))
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna})
    mdata.obsm["spatial"] = coords
    return mdata


def _core_seconds(mdata, args: argparse.Namespace) -> float:
    """Time of the computation alone (neighbour search, weights, average), without the MuData bookkeeping."""
    from scipy import sparse

    from unitednet.pp import _niche

    coords = np.asarray(mdata.obsm["spatial"])
    X = mdata["rna"].X
    n = coords.shape[0]
    start = time.perf_counter()
    rows, cols, dist = _niche._neighbour_pairs(coords, args.neighbors, None, False, 1)
    weights, _ = _niche._weights(rows, dist, n, args.weighting, None)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(cols.dtype)
    W = sparse.csr_matrix((weights.astype(np.float32), cols, indptr), shape=(n, n))
    _niche._average(W, X)
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> dict:
    import tracemalloc
    import warnings

    from threadpoolctl import threadpool_limits

    import unitednet as un

    threadpool_limits(1)
    n = args.worker
    mdata = synthetic(n, args.genes, args.sparse)

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            un.pp.niche(mdata, modality="rna", n_neighbors=args.neighbors, weighting=args.weighting)

    if args.measure == "traced":
        tracemalloc.start()
        tracemalloc.reset_peak()
        call()
        peak = tracemalloc.get_traced_memory()[1] / 1024**2
        tracemalloc.stop()
        return {"n_cells": n, "traced_peak_mb": peak}
    seconds, peaks = [], []
    for _ in range(args.repeats):
        before = proc_status_mb("VmRSS")
        reset = reset_peak_rss()
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
        peaks.append(proc_status_mb("VmHWM") - before if reset else float("nan"))
    graph = mdata["niche"].obsp["spatial_connectivities"]
    return {
        "n_cells": n,
        "seconds": min(seconds),
        "all_seconds": seconds,
        # the first call's peak: later calls start with the previous niche resident
        "peak_extra_mb": peaks[0],
        "all_peak_extra_mb": peaks,
        "core_seconds": _core_seconds(mdata, args),
        "peak_reset_supported": bool(reset),
        "graph_nnz": int(graph.nnz),
        "graph_nnz_is_n_times_k": int(graph.nnz) == n * args.neighbors,
        "graph_index_dtype": str(graph.indices.dtype),
        "niche_shape": list(mdata["niche"].shape),
        "niche_format": "csr" if hasattr(mdata["niche"].X, "tocsr") else "dense",
        "expression_mb": float(
            mdata["rna"].X.data.nbytes + mdata["rna"].X.indices.nbytes
            if args.sparse
            else np.asarray(mdata["rna"].X).nbytes
        )
        / 1024**2,
    }


# ---------------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return None
    total = time.perf_counter()
    runs = []
    for n in sorted(args.sizes):
        run = {}
        for measure in ("time", "traced"):
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), "--measure", measure]
            command += ["--genes", str(args.genes), "--neighbors", str(args.neighbors), "--weighting", args.weighting]
            command += ["--repeats", str(args.repeats)] + (["--sparse"] if args.sparse else [])
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"worker for {n} cells failed:\n{done.stderr[-4000:]}")
            run.update(json.loads(done.stdout.strip().splitlines()[-1]))
        runs.append(run)
        print(
            f"{n:>9,} cells: {run['seconds']:.2f} s, peak RSS +{run['peak_extra_mb']:.0f} MB, "
            f"peak traced allocations {run['traced_peak_mb']:.0f} MB",
            flush=True,
        )

    rows = []
    for i, run in enumerate(runs):
        row = {
            "cells": run["n_cells"],
            "seconds": run["seconds"],
            "us_per_cell": 1e6 * run["seconds"] / run["n_cells"],
            "peak_extra_mb": run["peak_extra_mb"],
            "bytes_per_cell": run["peak_extra_mb"] * 1024**2 / run["n_cells"],
            "traced_peak_mb": run["traced_peak_mb"],
            "nnz_is_n_k": run["graph_nnz_is_n_times_k"],
            "core_seconds": run["core_seconds"],
        }
        if i:
            prev = runs[i - 1]
            row["size_ratio"] = run["n_cells"] / prev["n_cells"]
            row["time_ratio"] = run["seconds"] / prev["seconds"]
            row["memory_ratio"] = run["peak_extra_mb"] / prev["peak_extra_mb"]
            row["traced_ratio"] = run["traced_peak_mb"] / prev["traced_peak_mb"]
        rows.append(row)
    kind = "sparse CSR" if args.sparse else "dense float32"
    print_table(
        f"pp.niche scaling ({args.genes} genes, {kind}, k={args.neighbors}, {args.weighting}; one thread)",
        rows,
        ["cells", "seconds", "us_per_cell", "core_seconds", "peak_extra_mb", "bytes_per_cell", "traced_peak_mb",
         "size_ratio", "time_ratio", "memory_ratio", "traced_ratio", "nnz_is_n_k"],
    )  # fmt: skip
    first, last = runs[0], runs[-1]
    growth = last["n_cells"] / first["n_cells"]
    print(
        f"\n{first['n_cells']:,} -> {last['n_cells']:,} cells (x{growth:g}): time x{last['seconds'] / first['seconds']:.1f}, "
        f"peak memory x{last['peak_extra_mb'] / first['peak_extra_mb']:.1f} (RSS) / "
        f"x{last['traced_peak_mb'] / first['traced_peak_mb']:.1f} (traced allocations); peak at the largest size "
        f"{last['peak_extra_mb']:.0f} MB"
    )
    result = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "runs": runs,
        "table": rows,
        "total_s": time.perf_counter() - total,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scipy", "numpy", "anndata", "mudata"]),
    }
    path = write_json(result, args.out)
    print(f"wrote {path} ({result['total_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
