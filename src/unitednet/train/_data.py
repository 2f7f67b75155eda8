from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
from scvi.data import AnnDataManager
from scvi.dataloaders import AnnDataLoader


def stratified_split(
    n_obs: int,
    train_size: float,
    validation_size: float,
    labels: np.ndarray | None = None,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split cell indices into train / validation / test, stratified by ``labels`` when given.

    Parameters
    ----------
    n_obs
        Number of cells.
    train_size
        Fraction of cells for training.
    validation_size
        Fraction of cells for validation; the rest (``1 - train_size - validation_size``) is the test set.
    labels
        Optional label per cell; each label is split in the same proportions (at least one training cell each).
    seed
        Seed of the random permutation.

    Returns
    -------
    Sorted index arrays ``(train, validation, test)``.
    """
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    if validation_size < 0 or train_size + validation_size > 1 + 1e-9:
        raise ValueError(
            f"validation_size must be >= 0 and train_size + validation_size <= 1; got {train_size} + {validation_size}."
        )
    rng = np.random.default_rng(seed)
    groups = [np.arange(n_obs)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    train, val, test = [], [], []
    for idx in groups:
        idx = rng.permutation(idx)
        n = len(idx)
        n_val = int(np.floor(validation_size * n + 0.5)) if n > 1 else 0
        n_test = int(np.floor((1 - train_size - validation_size) * n + 0.5)) if n > 1 else 0
        n_test = min(n_test, n - n_val - 1)
        val.append(idx[:n_val])
        test.append(idx[n_val : n_val + n_test])
        train.append(idx[n_val + n_test :])
    return tuple(np.sort(np.concatenate(part)).astype(int) for part in (train, val, test))


class _ObjectiveCycle:
    """Iterate over a data loader once per objective, yielding ``(objective_index, batch)``.

    One Lightning epoch is thus one pass over the training cells for each objective, in order: the published
    alternating schedule.
    """

    def __init__(self, loader: AnnDataLoader, n_objectives: int):
        self.loader = loader
        self.n_objectives = n_objectives

    def __len__(self) -> int:
        return self.n_objectives * len(self.loader)

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        for k in range(self.n_objectives):
            for batch in self.loader:
                yield k, batch


class UnitedNetDataModule(pl.LightningDataModule):
    """Train and validation loaders over a registered MuData, the training loader cycling through the objectives.

    Parameters
    ----------
    adata_manager
        Manager of the registered MuData.
    train_idx, val_idx, test_idx
        Cell indices of each split; test cells are never loaded.
    n_objectives
        Number of alternating objectives per epoch.
    batch_size
        Minibatch size.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        test_idx: Sequence[int],
        n_objectives: int,
        batch_size: int = 128,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.train_idx = np.asarray(train_idx, dtype=int)
        self.val_idx = np.asarray(val_idx, dtype=int)
        self.test_idx = np.asarray(test_idx, dtype=int)
        self.n_train = len(self.train_idx)
        self.n_val = len(self.val_idx)
        self.n_objectives = n_objectives
        self.batch_size = batch_size

    def train_dataloader(self) -> _ObjectiveCycle:
        # batch norm needs >= 2 cells: drop a last batch of a single cell
        drop_last = self.n_train % self.batch_size == 1
        loader = AnnDataLoader(
            self.adata_manager, indices=self.train_idx, batch_size=self.batch_size, shuffle=True, drop_last=drop_last
        )
        return _ObjectiveCycle(loader, self.n_objectives)

    def val_dataloader(self) -> AnnDataLoader | list:
        if self.n_val == 0:
            return []
        return AnnDataLoader(self.adata_manager, indices=self.val_idx, batch_size=self.batch_size, shuffle=False)
