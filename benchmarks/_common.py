"""Shared helpers of the benchmark scripts: threads, timing, peak memory, versions, tables and JSON output.

Benchmark scripts run as ``python benchmarks/<name>.py`` (this folder is then first on ``sys.path``) and import
these helpers with ``from _common import ...``. Results go to ``benchmarks/results/<name>.json`` (git-ignored).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import resource
import sys
import time
import tracemalloc
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

BENCHMARK_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARK_DIR.parent
RESULTS_DIR = BENCHMARK_DIR / "results"
DATA_ENV_VAR = "UNITEDNET_DATA_DIR"
PRECISIONS = ("32", "bf16-mixed")  # the training precisions the scripts offer (Lightning's `precision`)
# batch normalisation in some parts of the network only: the model's `norm` as a mapping over its parts
PART_NORMS: dict[str, dict[str, str]] = {
    "decoder_batch_norm": {"encoders": "none", "decoders": "batch", "heads": "none"},
    "no_encoder_norm": {"encoders": "none", "decoders": "batch", "heads": "batch"},
    "no_head_norm": {"encoders": "batch", "decoders": "batch", "heads": "none"},
}


# ---------------------------------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------------------------------
def use_local_data() -> str | None:
    """Point ``$UNITEDNET_DATA_DIR`` at the project's ``../shared/data`` when it is unset and that folder exists.

    Returns the data directory in use (``None``: the loaders will download the published files).
    """
    if not os.environ.get(DATA_ENV_VAR):
        local = REPO_ROOT.parent / "shared" / "data"
        if local.is_dir():
            os.environ[DATA_ENV_VAR] = str(local)
    return os.environ.get(DATA_ENV_VAR)


def set_threads(n_threads: int, verbose: bool = True) -> int:
    """Limit torch's intra-op threads and the BLAS / OpenMP pools already loaded (numpy, scipy, scikit-learn).

    numba's thread pool is started first: its start (on the first parallel numba call, e.g. scanpy's first
    ``sc.pp.neighbors`` or ``sc.tl.umap``) resets the OpenMP thread count, torch's included, to the number of cores.
    Left to happen between trainings, that reset turns a one-thread training into a two-thread one, and two such
    processes on two cores spin-wait on each other's OpenMP barriers (training ten times slower, seen here).
    Call it after importing the numerical libraries: :mod:`threadpoolctl` limits only the pools loaded so far.
    Prints the counts (``verbose``) and returns the count torch reports.
    """
    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    if n_threads < 1:
        raise ValueError(f"--threads must be >= 1, got {n_threads}.")
    numba.get_num_threads()  # starts numba's thread pool now (once per process), before the limits are set
    torch.set_num_threads(n_threads)
    _THREADPOOL_LIMITS.append(threadpool_limits(limits=n_threads))  # kept: the limit holds while it exists
    actual = torch.get_num_threads()
    if verbose:
        pools = ", ".join(sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}))
        print(f"torch threads: {actual} (intra-op); BLAS/OpenMP pools: {pools}; {os.cpu_count()} CPU cores", flush=True)
    return actual


_THREADPOOL_LIMITS: list[Any] = []


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when not installed), plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    """Host facts worth keeping next to timings."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ---------------------------------------------------------------------------------------------------------------------
# time and memory
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Wall-clock seconds of a ``with timer() as t:`` block (``t.seconds`` is set on exit)."""

    seconds: float = float("nan")


@contextmanager
def timer() -> Iterator[Timing]:
    """Measure the wall-clock time of a block with :func:`time.perf_counter`."""
    timing = Timing()
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing.seconds = time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``ru_maxrss``; never decreases)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return peak / (1024**2) if sys.platform == "darwin" else peak / 1024


def proc_status_mb(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; NaN where unavailable."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def current_rss_mb() -> float:
    """Current resident set size of this process in MB (``VmRSS``; NaN where unavailable)."""
    return proc_status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (``VmHWM``); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class TracedPeak:
    """Peak of Python-tracked allocations inside a ``with traced_peak() as p:`` block, in MB (``p.mb``)."""

    mb: float = float("nan")


@contextmanager
def traced_peak(enabled: bool = True) -> Iterator[TracedPeak]:
    """Peak memory allocated through Python's allocators (numpy included, torch tensors not) within the block.

    :mod:`tracemalloc` slows allocation-heavy code down, so callers switch it on explicitly; disabled, the block runs
    untraced and ``mb`` stays NaN.
    """
    result = TracedPeak()
    if not enabled:
        yield result
        return
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield result
    finally:
        result.mb = tracemalloc.get_traced_memory()[1] / 1024**2
        if started_here:
            tracemalloc.stop()


# ---------------------------------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------------------------------
def rmse(y: np.ndarray, p: np.ndarray) -> float:
    """Root mean squared error over all entries (the OpenProblems ``predict_modality`` definition), in float64."""
    return float(np.sqrt(np.mean((np.asarray(y, dtype=np.float64) - p) ** 2)))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for fewer than 2 values), ignoring NaN values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, NaN/None as ``-``, anything else via ``str``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± sd`` of ``values`` (sample sd), or just the value for a single one."""
    mean, sd = mean_sd(values)
    if not math.isfinite(sd):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """Plain-text table: one line per row, columns left-aligned (text) or right-aligned (numbers)."""
    if not rows:
        return "(no rows)"
    columns = list(columns) if columns is not None else list(rows[0])
    cells = [[fmt(row.get(c), digits) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), int | float | np.number) or row.get(c) is None for row in rows) for c in columns
    ]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 3):
    """Print a titled plain-text table."""
    print(f"\n{title}\n{'=' * len(title)}")
    print(format_table(rows, columns, digits), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None  # JSON has no NaN / inf
    if isinstance(obj, Path):
        return str(obj)
    return obj


def default_json_path(name: str) -> Path:
    """``benchmarks/results/<name>.json``."""
    return RESULTS_DIR / f"{name}.json"


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (numpy scalars/arrays converted, NaN/inf as ``null``), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as handle:
        json.dump(_jsonable(obj), handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def quiet() -> None:
    """Silence Lightning banners, mudata FutureWarnings and known harmless small-class warnings.

    Call it after importing unitednet: scvi-tools sets its logger's level when imported.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="mudata")
    warnings.filterwarnings("ignore", message=".*fewer than 3 cells.*")  # scvi: the smallest types have 1-2 cells
    warnings.filterwarnings("ignore", message=".*least populated class.*")  # StratifiedKFold, same reason
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")


def dense(X) -> np.ndarray:
    """Float64 dense copy of a matrix."""
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float64)
