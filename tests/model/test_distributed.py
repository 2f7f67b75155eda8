"""Distributed data-parallel training (Lightning's DDP) on two CPU processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unitednet

SCRIPT = Path(__file__).with_name("_ddp_train.py")


def _train(out: Path, devices: int, cwd: Path) -> dict:
    src = str(Path(unitednet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices)], check=True, cwd=cwd, env=env, timeout=600)
    return torch.load(out)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs torch's gloo"
)
def test_ddp_on_two_cpu_processes_matches_single_process_training(tmp_path):
    single = _train(tmp_path / "single.pt", 1, tmp_path)
    ddp = _train(tmp_path / "ddp.pt", 2, tmp_path)
    for key, value in single["initial"].items():
        torch.testing.assert_close(ddp["initial"][key], value)  # the same start
    assert single["rows_read"] == 2 * 150  # two epochs of the 150 cells
    assert ddp["rows_read"] == single["rows_read"] // 2  # process 0 read half of every batch
    moved = max((single["trained"][k].float() - v.float()).abs().max().item() for k, v in single["initial"].items())
    assert moved > 1e-3  # training changed the weights
    # each process holds half of every batch; the averaged gradients are those of the whole batch
    for key, value in single["trained"].items():
        torch.testing.assert_close(ddp["trained"][key], value, rtol=1e-4, atol=1e-5, msg=key)
