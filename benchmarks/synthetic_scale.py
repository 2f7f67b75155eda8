"""Scale check: one UnitedNet training epoch on 10k synthetic cells with a dense and a large sparse modality.

Protocol:

- Data (seed 0): ``--n-cells`` cells (10,000) in 5 groups; modality ``gauss``: ``--n-dense`` (2,000) dense float32
  gaussian features (group mean + unit noise); modality ``peaks``: ``--n-sparse`` (20,000) binary features stored as
  a float32 CSR matrix, about ``--density`` (5 %) nonzero, with group-specific peak probabilities. Both matrices are
  drawn 250 cells at a time from one random generator (:func:`iter_blocks`), so the sparse one never exists densely
  in this script either; :func:`make_mudata` stacks the blocks in memory and :func:`write_h5mu` streams the same data
  into a ``.h5mu`` file (``benchmarks/scale.py --backed`` trains from such a file).
- UnitedNet: ``setup_mudata`` (labels ``group``), default architecture, ``batch_size=256``, ``max_epochs=1``, every
  cell a training cell (``train_size=1``, no validation), ``task="translation"`` and ``task="supervised"``.
- Timing: *set-up* is ``setup_mudata`` + model construction; the *epoch* is measured by a Lightning callback from
  ``on_train_epoch_start`` to ``on_train_epoch_end`` (one pass per objective: 1 for translation, 2 for supervised);
  ``train_call`` is the whole ``model.train`` call (split, standardisation statistics, trainer start-up, epoch).
- Memory: resident set size (RSS) right after the data are built (*baseline*), then the peak RSS of each phase:
  set-up, train preamble and epoch loop (on Linux the kernel's peak counter is reset between phases through
  ``/proc/self/clear_refs``; ``ru_maxrss``, the peak over the whole process, is reported too). The peak of
  Python-tracked allocations (numpy/scipy, not torch) of each phase is traced with :mod:`tracemalloc`
  (``--no-tracemalloc`` to skip). One dense float32 copy of the sparse modality needs ``n_cells * n_sparse * 4``
  bytes (763 MiB). The "never densified" check asks that (a) no phase's RSS peak exceeds the baseline by one such
  copy, (b) no numpy/scipy peak reaches half of it, (c) the matrix is still CSR after training, and (d) the epoch
  loop's peak grows by less than a quarter copy from a control run on a quarter of the cells (same features) to the
  full run (a whole-matrix copy in the loop would add three quarters).
- Each configuration runs in its own subprocess (fresh peak-memory counters, fresh torch): every task with the first
  ``--threads`` count (1), the ``--compare-tasks`` (translation) also with the others (2), plus the memory control.
  The thread ratio is the epoch time with 2 threads / with 1 thread; the 1-minute load average at the start of each
  run is printed, since other processes share the cores.

Run from the repository root: ``python benchmarks/synthetic_scale.py`` (about 4-5 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    default_json_path,
    machine_info,
    package_versions,
    peak_rss_mb,
    print_table,
    proc_status_mb,
    quiet,
    reset_peak_rss,
    set_threads,
    timer,
    write_json,
)
from scipy import sparse

NAME = "synthetic_scale"
SEED = 0
N_GROUPS = 5
TASKS = ("translation", "supervised")
# elements per HDF5 chunk of the CSR arrays written by write_h5mu: batches of random rows read as fast as with
# h5py's choice for a 250-row block (~4,000), and the writer's memory (the HDF5 chunk index) stays flat
SPARSE_CHUNK = 2**14
ROW_BLOCK = 250  # cells generated at once (the sparse draw: 250 x 20,000 float32 = 20 MB); changing it changes the data


# ---------------------------------------------------------------------------------------------------------------------
# memory helpers (Linux /proc; NaN elsewhere)
# ---------------------------------------------------------------------------------------------------------------------
def _traced_peak_mb() -> float:
    """Peak of Python-tracked allocations since the last reset, in MB (NaN when tracemalloc is off)."""
    return tracemalloc.get_traced_memory()[1] / 1024**2 if tracemalloc.is_tracing() else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def iter_blocks(n_cells: int, n_dense: int, n_sparse: int, density: float, seed: int = SEED):
    """Synthetic paired data, ``ROW_BLOCK`` cells at a time, all drawn from one :class:`numpy.random.Generator`.

    The draws depend only on the arguments (the block size is fixed), so the data are the same whether the blocks go
    to memory (:func:`make_mudata`) or to a file (:func:`write_h5mu`).

    Parameters
    ----------
    n_cells
        Number of cells (rows) over all blocks.
    n_dense
        Features of the dense modality: group centre (standard normal per group and feature) + unit gaussian noise.
    n_sparse
        Features of the sparse modality: binary, with group-specific probabilities of mean ``density`` (log-normal
        spread, capped at 0.9).
    density
        Mean fraction of non-zeros of the sparse modality.
    seed
        Seed of the generator.

    Yields
    ------
    groups : numpy.ndarray
        ``(rows,)`` int64 group of each cell of the block, in ``0 .. N_GROUPS - 1``.
    dense : numpy.ndarray
        ``(rows, n_dense)`` float32 block of the dense modality.
    peaks : scipy.sparse.csr_matrix
        ``(rows, n_sparse)`` float32 binary CSR block of the sparse modality (never dense as a whole matrix).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(N_GROUPS, n_dense)).astype(np.float32)
    probs = density * rng.lognormal(0.0, 0.5, size=(N_GROUPS, n_sparse)) / np.exp(0.125)
    probs = np.clip(probs, 0.0, 0.9).astype(np.float32)
    for start in range(0, n_cells, ROW_BLOCK):
        n_rows = min(ROW_BLOCK, n_cells - start)
        groups = rng.integers(N_GROUPS, size=n_rows)
        dense_x = rng.standard_normal((n_rows, n_dense), dtype=np.float32)
        dense_x += centres[groups]
        hit = rng.random((n_rows, n_sparse), dtype=np.float32) < probs[groups]
        yield groups, dense_x, sparse.csr_matrix(hit, dtype=np.float32)


def group_labels(groups: np.ndarray):
    """Categorical labels ``g0`` .. ``g4`` of group indices (categories: the groups present, in order)."""
    import pandas as pd

    return pd.Categorical.from_codes(groups, categories=[f"g{k}" for k in range(N_GROUPS)]).remove_unused_categories()


def _var_names(n_dense: int, n_sparse: int) -> dict[str, list[str]]:
    """Feature names per modality: ``gene{j}`` (dense ``gauss``) and ``peak{j}`` (sparse ``peaks``)."""
    return {"gauss": [f"gene{j}" for j in range(n_dense)], "peaks": [f"peak{j}" for j in range(n_sparse)]}


def _write_cells_frame(parent, key: str, n_cells: int, labels=None) -> None:
    """Write a cells dataframe (index ``cell{i}``, optional categorical ``group`` column) in anndata's encoding.

    The index is written ``ROW_BLOCK * 100`` names at a time, so that the names of all cells are never in memory.
    """
    import h5py
    from anndata.io import write_elem

    frame = parent.create_group(key)
    names = frame.create_dataset("_index", shape=(n_cells,), dtype=h5py.string_dtype())
    step = ROW_BLOCK * 100
    for start in range(0, n_cells, step):
        stop = min(start + step, n_cells)
        names[start:stop] = np.array([f"cell{i}" for i in range(start, stop)], dtype=object)
    names.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    if labels is not None:
        write_elem(frame, "group", labels)
    frame.attrs.update(
        {
            "_index": "_index",
            "column-order": [] if labels is None else ["group"],
            "encoding-type": "dataframe",
            "encoding-version": "0.2.0",
        }
    )


def make_mudata(n_cells: int, n_dense: int, n_sparse: int, density: float, seed: int = SEED):
    """Synthetic paired MuData in memory: ``gauss`` (dense float32) and ``peaks`` (binary float32 CSR).

    Built from :func:`iter_blocks`; the labels are in ``mdata.obs["group"]`` (categorical ``g0`` .. ``g4``).
    """
    import anndata as ad
    import mudata as md
    import pandas as pd

    groups = np.empty(n_cells, dtype=np.int64)
    dense_x = np.empty((n_cells, n_dense), dtype=np.float32)
    blocks = []
    start = 0
    for block_groups, block_dense, block_peaks in iter_blocks(n_cells, n_dense, n_sparse, density, seed):
        stop = start + len(block_groups)
        groups[start:stop] = block_groups
        dense_x[start:stop] = block_dense
        blocks.append(block_peaks)
        start = stop
    sparse_x = sparse.vstack(blocks, format="csr", dtype=np.float32)
    del blocks

    obs_names = pd.Index([f"cell{i}" for i in range(n_cells)])
    mods = {
        "gauss": ad.AnnData(dense_x, obs=pd.DataFrame(index=obs_names)),
        "peaks": ad.AnnData(sparse_x, obs=pd.DataFrame(index=obs_names)),
    }
    for m, names in _var_names(n_dense, n_sparse).items():
        mods[m].var_names = names
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        mdata = md.MuData(mods)
    mdata.obs["group"] = group_labels(groups)
    return mdata


def write_h5mu(
    path: str | Path,
    n_cells: int,
    n_dense: int = 2_000,
    n_sparse: int = 20_000,
    density: float = 0.05,
    seed: int = SEED,
) -> Path:
    """Write the data of :func:`make_mudata` to a ``.h5mu`` file, a block of cells at a time.

    Neither matrix is ever whole in memory: the dense ``gauss`` matrix is a contiguous HDF5 dataset filled block by
    block, the ``peaks`` CSR matrix is written from its first block and then appended to (anndata's on-disk sparse
    dataset, its arrays in chunks of ``SPARSE_CHUNK`` elements, where ``mudata.write_h5mu`` lets h5py choose from
    the whole array). Otherwise the file is laid out as ``mudata.write_h5mu`` writes the MuData of
    :func:`make_mudata` (same groups, datasets, data types, encoding attributes, ``mod-order`` and 512-byte MuData
    header), so ``mudata.read_h5mu(path)`` equals :func:`make_mudata` and ``mudata.read_h5mu(path, backed=True)``
    reads both matrices from disk. The cell names are written in blocks too; what grows with the number of cells in
    memory is about 20 bytes per cell (labels, masks, row maps). The file is written as ``<path>.partial`` and
    renamed when complete.

    Parameters
    ----------
    path
        Output file (replaced if present).
    n_cells, n_dense, n_sparse, density, seed
        As for :func:`iter_blocks`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import h5py
    import mudata as md
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    # scipy gives in-memory CSR matrices 32-bit index arrays unless they could hold 2**31 non-zeros
    indptr_dtype = np.int64 if n_cells * n_sparse > np.iinfo(np.int32).max else np.int32
    sparse_kwargs = {"indptr_dtype": indptr_dtype, "chunks": (SPARSE_CHUNK,)}
    groups = np.empty(n_cells, dtype=np.int8)
    with h5py.File(partial, "w", userblock_size=512) as f:
        mods = {m: f.require_group(f"mod/{m}") for m in ("gauss", "peaks")}
        dense_x = mods["gauss"].create_dataset("X", shape=(n_cells, n_dense), dtype=np.float32)
        dense_x.attrs["encoding-type"] = "array"
        dense_x.attrs["encoding-version"] = "0.2.0"
        peaks_x = None
        start = 0
        for block_groups, block_dense, block_peaks in iter_blocks(n_cells, n_dense, n_sparse, density, seed):
            stop = start + len(block_groups)
            groups[start:stop] = block_groups
            dense_x[start:stop] = block_dense
            if peaks_x is None:
                write_elem(mods["peaks"], "X", block_peaks, dataset_kwargs=sparse_kwargs)
                peaks_x = sparse_dataset(mods["peaks"]["X"])
            else:
                peaks_x.append(block_peaks)
            start = stop

        # annotations, as mudata.write_h5mu writes them (MuData's own obs/var, masks and 1-based row maps)
        var_names = _var_names(n_dense, n_sparse)
        _write_cells_frame(f, "obs", n_cells, group_labels(groups))
        write_elem(f, "var", pd.DataFrame(index=var_names["gauss"] + var_names["peaks"]))
        varmap = {
            "gauss": np.r_[np.arange(1, n_dense + 1), np.zeros(n_sparse)].astype(np.uint32),
            "peaks": np.r_[np.zeros(n_dense), np.arange(1, n_sparse + 1)].astype(np.uint32),
        }
        write_elem(f, "obsm", {m: np.ones((n_cells, 1), dtype=bool) for m in mods})
        write_elem(f, "varm", {m: (varmap[m] > 0)[:, None] for m in mods})
        for key in ("obsp", "varp", "uns"):
            write_elem(f, key, {})
        write_elem(f, "obsmap", {m: np.arange(1, n_cells + 1, dtype=np.uint32) for m in mods})
        write_elem(f, "varmap", varmap)
        f.attrs["axis"] = 0
        for m, group in mods.items():
            _write_cells_frame(group, "obs", n_cells)
            write_elem(group, "var", pd.DataFrame(index=var_names[m]))
            for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
                write_elem(group, key, {})
            group.attrs.update(
                {
                    "encoding-type": "anndata",
                    "encoding-version": md.__anndataversion__,
                    "encoder": "mudata",
                    "encoder-version": md.__version__,
                }
            )
        f["mod"].attrs["mod-order"] = list(mods)
        f.attrs.update(
            {
                "encoding-type": "MuData",
                "encoding-version": md.__mudataversion__,
                "encoder": "mudata",
                "encoder-version": md.__version__,
            }
        )
    header = f"MuData (format-version={md.__mudataversion__};creator=muon;creator-version={md.__version__})"
    with open(partial, "r+b") as handle:  # the user block that mudata.read_h5mu checks for
        handle.write(header.encode().ljust(512, b"\0"))
    os.replace(partial, path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# one configuration (runs in a subprocess)
# ---------------------------------------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Build the data, set up and train one epoch for one (task, threads) configuration; return the figures."""
    n_threads = set_threads(args.worker_threads)
    import lightning.pytorch as pl
    import scvi
    import torch

    from unitednet import UnitedNetModel

    quiet()

    class EpochProbe(pl.Callback):
        """Wall-clock time of each training epoch (all objectives' passes) and the memory peaks around the fit.

        ``on_train_start`` closes the *preamble* (``model.train`` before the first epoch: split, standardisation
        statistics, trainer start-up): its peaks are read, then the counters are reset so that the *epoch loop*
        peaks are measured on their own.
        """

        def __init__(self):
            self.seconds: list[float] = []
            self._start = 0.0
            self.n_batches = 0
            self.preamble: dict[str, float] = {}
            self.loop: dict[str, float] = {}

        def on_train_start(self, trainer, pl_module):
            self.preamble = {"peak_rss_mb": proc_status_mb("VmHWM"), "traced_peak_mb": _traced_peak_mb()}
            self.loop = {"start_rss_mb": proc_status_mb("VmRSS")}
            reset_peak_rss()
            if tracemalloc.is_tracing():
                tracemalloc.reset_peak()

        def on_train_epoch_start(self, trainer, pl_module):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.n_batches += 1

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self._start)

        def on_train_end(self, trainer, pl_module):
            self.loop.update(peak_rss_mb=proc_status_mb("VmHWM"), traced_peak_mb=_traced_peak_mb())

    task = args.worker_task
    with timer() as t_data:
        mdata = make_mudata(args.n_cells, args.n_dense, args.n_sparse, args.density)
    peaks = mdata.mod["peaks"].X
    data = {
        "n_cells": mdata.n_obs,
        "n_dense": mdata.mod["gauss"].n_vars,
        "n_sparse": mdata.mod["peaks"].n_vars,
        "sparse_format": peaks.format,
        "sparse_nnz": int(peaks.nnz),
        "sparse_density": peaks.nnz / (peaks.shape[0] * peaks.shape[1]),
        "sparse_stored_mb": (peaks.data.nbytes + peaks.indices.nbytes + peaks.indptr.nbytes) / 1024**2,
        "sparse_dense_equivalent_mb": peaks.shape[0] * peaks.shape[1] * 4 / 1024**2,
        "dense_mb": mdata.mod["gauss"].X.nbytes / 1024**2,
        "build_s": t_data.seconds,
    }
    gc.collect()
    baseline_rss = proc_status_mb("VmRSS")
    peak_reset = reset_peak_rss()
    if args.tracemalloc:
        tracemalloc.start()

    scvi.settings.seed = SEED
    probe = EpochProbe()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with timer() as t_setup:
        UnitedNetModel.setup_mudata(mdata, modalities=["gauss", "peaks"], labels_key="group")
        model = UnitedNetModel(mdata)
    setup = {
        "peak_rss_mb": proc_status_mb("VmHWM"),
        "traced_peak_mb": _traced_peak_mb(),
        "end_rss_mb": proc_status_mb("VmRSS"),
    }
    reset_peak_rss()
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    with timer() as t_train:
        model.train(
            task,
            max_epochs=1,
            batch_size=args.batch_size,
            train_size=1.0,
            validation_size=0.0,
            enable_progress_bar=False,
            callbacks=[probe],
        )
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    phases = {"setup": setup, "train_preamble": probe.preamble, "epoch_loop": probe.loop}
    if not peak_reset:  # peaks are cumulative: only the process-wide peak is meaningful
        for phase in phases.values():
            phase["peak_rss_mb"] = float("nan")
    peak_rss = max(p["peak_rss_mb"] for p in phases.values()) if peak_reset else peak_rss_mb()
    still_sparse = sparse.issparse(mdata.mod["peaks"].X) and mdata.mod["peaks"].X.format == "csr"
    n_params = sum(p.numel() for p in model.module.parameters())
    return {
        "task": task,
        "threads": n_threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "batch_size": args.batch_size,
        "data": data,
        "n_parameters": int(n_params),
        "setup_s": t_setup.seconds,
        "epoch_s": probe.seconds[0] if probe.seconds else float("nan"),
        "n_train_batches": probe.n_batches,
        "train_call_s": t_train.seconds,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "baseline_rss_mb": baseline_rss,
        "peak_reset_supported": peak_reset,
        "phases": phases,
        "peak_rss_mb": peak_rss,
        "peak_above_baseline_mb": peak_rss - baseline_rss,
        "epoch_loop_peak_above_its_start_mb": probe.loop.get("peak_rss_mb", float("nan"))
        - probe.loop.get("start_rss_mb", float("nan")),
        "ru_maxrss_mb": peak_rss_mb(),
        "tracemalloc_peak_mb": max(p["traced_peak_mb"] for p in phases.values()) if args.tracemalloc else None,
        "sparse_still_csr_after_training": bool(still_sparse),
    }


# ---------------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cells", type=int, default=10_000)
    parser.add_argument("--n-dense", type=int, default=2_000)
    parser.add_argument("--n-sparse", type=int, default=20_000)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts; the first runs every task"
    )
    parser.add_argument(
        "--compare-tasks",
        nargs="+",
        choices=TASKS,
        default=["translation"],
        help="tasks also run with the other --threads counts (a 2-thread epoch can be several times slower)",
    )
    parser.add_argument(
        "--no-tracemalloc",
        dest="tracemalloc",
        action="store_false",
        help="do not trace Python-tracked allocations (tracing costs little here: the epoch is spent in torch)",
    )
    parser.add_argument(
        "--no-memory-control",
        dest="memory_control",
        action="store_false",
        help="skip the control run (translation on a quarter of the cells) of the densification check",
    )
    parser.add_argument("--out", type=Path, default=default_json_path(NAME), help="JSON output path")
    parser.add_argument("--worker-task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    if not 0 < args.density < 1:
        parser.error("--density must be in (0, 1)")
    return args


def worker_command(args: argparse.Namespace, task: str, threads: int, n_cells: int, out: Path) -> list[str]:
    """The command line of one configuration's subprocess."""
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += ["--n-cells", str(n_cells), "--n-dense", str(args.n_dense), "--n-sparse", str(args.n_sparse)]
    cmd += ["--density", str(args.density), "--batch-size", str(args.batch_size)]
    cmd += ["--worker-task", task, "--worker-threads", str(threads), "--worker-out", str(out)]
    if not args.tracemalloc:
        cmd.append("--no-tracemalloc")
    return cmd


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (task, threads) configuration in its own subprocess, print the table and write the JSON."""
    args = parse_args(argv)
    if args.worker_task is not None:
        result = run_worker(args)
        write_json(result, args.worker_out)
        return result

    print(
        f"synthetic: {args.n_cells} cells x ({args.n_dense} dense gaussian + {args.n_sparse} sparse binary, "
        f"~{args.density:.0%} nonzero, csr), batch_size {args.batch_size}",
        flush=True,
    )
    runs = []
    tmp_dir = args.out.parent / f".{NAME}_tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    configs = [
        (task, threads, args.n_cells)
        for i, threads in enumerate(args.threads)
        for task in args.tasks
        if i == 0 or task in args.compare_tasks
    ]
    control_cells = args.n_cells // 4
    if args.memory_control:
        # same features, a quarter of the cells: memory that scales with the dataset would shrink here
        configs.append(("translation", args.threads[0], control_cells))
    with timer() as t_total:
        for task, threads, n_cells in configs:
            out = tmp_dir / f"{task}_{threads}_{n_cells}.json"
            print(f"-- {task}, {threads} torch thread(s), {n_cells} cells", flush=True)
            subprocess.run(worker_command(args, task, threads, n_cells, out), check=True)
            runs.append(json.loads(out.read_text()))
            out.unlink()
    tmp_dir.rmdir()
    main_runs = [r for r in runs if r["data"]["n_cells"] == args.n_cells]

    rows = [
        {
            "task": r["task"],
            "cells": r["data"]["n_cells"],
            "threads": r["threads"],
            "setup_s": r["setup_s"],
            "epoch_s": r["epoch_s"],
            "batches": r["n_train_batches"],
            "train_call_s": r["train_call_s"],
            "load": r["load_average_before"][0] if r["load_average_before"] else None,
            "base_MB": r["baseline_rss_mb"],
            "peak_MB": r["peak_rss_mb"],
            "peak-base": r["peak_above_baseline_mb"],
            "setup+": r["phases"]["setup"]["peak_rss_mb"] - r["baseline_rss_mb"],
            "preamble+": r["phases"]["train_preamble"]["peak_rss_mb"] - r["baseline_rss_mb"],
            "loop+": r["epoch_loop_peak_above_its_start_mb"],
            "ru_maxrss": r["ru_maxrss_mb"],
        }
        for r in runs
    ]
    print_table(
        "One training epoch on synthetic cells (memory in MB; '+': peak above baseline / loop start)", rows, digits=1
    )
    if args.tracemalloc:
        traced = [
            {
                "task": r["task"],
                "cells": r["data"]["n_cells"],
                "threads": r["threads"],
                **{p: v["traced_peak_mb"] for p, v in r["phases"].items()},
            }
            for r in runs
        ]
        print_table("tracemalloc peak per phase (MB; numpy/scipy allocations, torch not tracked)", traced, digits=1)

    ratios = {}
    for task in args.tasks:
        by_threads = {r["threads"]: r["epoch_s"] for r in main_runs if r["task"] == task}
        if 1 in by_threads and 2 in by_threads:
            ratios[task] = by_threads[2] / by_threads[1]
    if ratios:
        print("\nepoch time with 2 threads / with 1 thread: " + ", ".join(f"{t}: {v:.2f}" for t, v in ratios.items()))

    # densification check
    data = main_runs[0]["data"]
    dense_equivalent = data["sparse_dense_equivalent_mb"]
    worst_rss = max(r["peak_above_baseline_mb"] for r in main_runs)
    worst_traced = max(r["tracemalloc_peak_mb"] for r in main_runs) if args.tracemalloc else None
    checks: dict[str, Any] = {
        "dense_float32_copy_of_sparse_mb": dense_equivalent,
        "max_peak_rss_above_baseline_mb": worst_rss,
        "rss_below_one_dense_copy": worst_rss < dense_equivalent,
        "max_tracemalloc_peak_mb": worst_traced,
        "tracemalloc_below_half_dense_copy": None if worst_traced is None else worst_traced < dense_equivalent / 2,
        "still_csr_after_training": all(r["sparse_still_csr_after_training"] for r in runs),
    }
    control = [r for r in runs if r["data"]["n_cells"] == control_cells and r["task"] == "translation"]
    reference = [r for r in main_runs if r["task"] == "translation" and r["threads"] == args.threads[0]]
    if control and reference:
        grow = reference[0]["epoch_loop_peak_above_its_start_mb"] - control[0]["epoch_loop_peak_above_its_start_mb"]
        checks["epoch_loop_growth_4x_cells_mb"] = grow
        # densifying the whole sparse modality in the loop would add 3/4 of a dense copy going from 1/4 to all cells
        checks["epoch_loop_growth_below_quarter_dense_copy"] = grow < dense_equivalent / 4
    never_densified = all(v for k, v in checks.items() if isinstance(v, bool))
    checks["never_densified"] = never_densified
    print(
        f"\nsparse modality: {data['sparse_nnz']} nonzeros ({data['sparse_density']:.3%}), {data['sparse_stored_mb']:.0f} MB "
        f"as CSR, {dense_equivalent:.0f} MB as one dense float32 copy"
    )
    print(f"  largest peak RSS above baseline: {worst_rss:.0f} MB (set-up + train preamble + epoch, any run)")
    if worst_traced is not None:
        print(
            f"  largest numpy/scipy (tracemalloc) peak: {worst_traced:.0f} MB; the dense modality is "
            f"{data['dense_mb']:.0f} MB as float32"
        )
    if "epoch_loop_growth_4x_cells_mb" in checks:
        print(
            f"  epoch-loop peak grows by {checks['epoch_loop_growth_4x_cells_mb']:.0f} MB from {control_cells} to "
            f"{args.n_cells} cells (a whole-matrix copy in the loop would add ~{0.75 * dense_equivalent:.0f} MB)"
        )
    print(f"  -> {'never densified as a whole' if never_densified else 'CHECK FAILED: see ' + str(checks)}", flush=True)

    result = {
        "benchmark": NAME,
        "protocol": __doc__,
        "settings": {
            k: getattr(args, k) for k in ("n_cells", "n_dense", "n_sparse", "density", "batch_size", "tracemalloc")
        },
        "data": data,
        "runs": runs,
        "epoch_time_ratio_2_threads_over_1": ratios,
        "densification_checks": checks,
        "sparse_never_densified": never_densified,
        "total_s": t_total.seconds,
        "machine": machine_info(),
        "versions": package_versions(["unitednet", "scvi-tools", "torch", "lightning", "anndata", "mudata"]),
        "cpu_count_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    path = write_json(result, args.out)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
