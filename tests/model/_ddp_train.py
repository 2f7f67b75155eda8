"""Train the DDP test's model: ``python _ddp_train.py OUT.pt DEVICES``; process 0 saves the trained state dict.

Saves ``{"initial": ..., "trained": ..., "rows_read": ...}`` (the module's state dicts, the cells that process 0
read). With ``DEVICES`` > 1 it trains with ``strategy="ddp"`` on that many CPU processes (Lightning starts the others by
running this script again). Run by ``test_distributed.py``.
"""

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scvi
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import _make_mudata

from unitednet.model import UnitedNetModel
from unitednet.train._data import RegisteredCellLoader

# settings shared with the single-process reference: no batch normalisation, dropout or contrastive term, whose
# values depend on which cells share a process
MODEL = {"n_latent": 4, "n_hidden": 16, "n_layers": 1, "use_batch_norm": False, "dropout_rate": 0.0}
LOSS_WEIGHTS = {"contrastive": 0.0}
TRAIN = {"max_epochs": 2, "batch_size": 32, "train_size": 1.0, "validation_size": 0.0, "enable_progress_bar": False}


ROWS_READ = []
_collate = RegisteredCellLoader.collate


def _fixed_order(loader: RegisteredCellLoader) -> np.ndarray:
    return np.random.default_rng(1).permutation(len(loader.indices))


def _counting_collate(loader: RegisteredCellLoader, rows: np.ndarray) -> dict:
    ROWS_READ.append(len(rows))
    return _collate(loader, rows)


def train(devices: int) -> tuple[UnitedNetModel, dict[str, torch.Tensor]]:
    """Train on the tests' synthetic data with ``devices`` CPU processes.

    The cell order of every epoch is fixed: Lightning's start of the processes draws from torch's generator, so the
    orders drawn from it would differ between the single- and multi-process runs.
    """
    torch.set_num_threads(1)
    RegisteredCellLoader._order = _fixed_order
    RegisteredCellLoader.collate = _counting_collate
    scvi.settings.seed = 0
    scvi.settings.logging_dir = tempfile.mkdtemp()
    mdata = _make_mudata()
    UnitedNetModel.setup_mudata(mdata, modalities=["rna", "atac"], labels_key="cell_type")
    model = UnitedNetModel(mdata, loss_weights=LOSS_WEIGHTS, **MODEL)
    initial = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    extra = {"strategy": "ddp", "accelerator": "cpu", "devices": devices} if devices > 1 else {"accelerator": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train("translation", **TRAIN, **extra)
    return model, initial


if __name__ == "__main__":
    out, n_devices = Path(sys.argv[1]), int(sys.argv[2])
    trained, initial = train(n_devices)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        trained_state = {k: v.detach().cpu() for k, v in trained.module.state_dict().items()}
        torch.save({"initial": initial, "trained": trained_state, "rows_read": sum(ROWS_READ)}, out)
