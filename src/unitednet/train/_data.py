from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import sparse
from scvi.data import AnnDataManager

from unitednet._constants import REGISTRY_KEYS, modality_key
from unitednet.module._module import UNLABELLED, presence_key
from unitednet.nn._base import csr_tensor


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


def sparse_rows_tensor(block) -> torch.Tensor:
    """A torch sparse CSR float32 tensor from a scipy sparse matrix (its arrays are shared, not copied, when possible)."""
    block = block.tocsr()
    if not block.has_sorted_indices:
        block = block.sorted_indices()
    return csr_tensor(
        torch.from_numpy(block.indptr.astype(np.int64, copy=False)),
        torch.from_numpy(block.indices.astype(np.int64, copy=False)),
        torch.from_numpy(block.data.astype(np.float32, copy=False)),
        block.shape,
    )


def read_rows(matrix, rows: np.ndarray):
    """Rows of an in-memory (numpy, scipy) or on-disk (h5py, AnnData-backed sparse) matrix, in the order given.

    On-disk matrices are read at increasing row indices (as h5py requires) and the block is put back in order, so a
    backed matrix gives the same rows as the same matrix in memory; only the rows asked for are read.
    """
    if isinstance(matrix, np.ndarray) or sparse.issparse(matrix):
        return matrix[rows]
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    block = matrix[rows[order]]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return block[inverse]


class ColumnSelection:
    """Some columns of an on-disk matrix, in a given order, read one block of rows at a time.

    ``X[:, columns]`` of a backed matrix would read it whole (anndata's sparse datasets) or fail (h5py datasets
    accept increasing indices only); this selection reads only the rows asked for (see :func:`read_rows`) and takes
    the columns from them.

    Parameters
    ----------
    matrix
        On-disk matrix (h5py dataset or anndata backed sparse dataset).
    columns
        Column of ``matrix`` for each column of the selection.
    """

    def __init__(self, matrix, columns: np.ndarray):
        self.matrix = matrix
        self.columns = np.asarray(columns)
        self.shape = (matrix.shape[0], len(self.columns))

    @property
    def format(self) -> str | None:
        """``"csr"`` or ``"csc"`` for a sparse matrix, ``None`` for a dense one."""
        return getattr(self.matrix, "format", None)

    def __getitem__(self, rows) -> np.ndarray | sparse.spmatrix:
        block = read_rows(self.matrix, np.asarray(rows))
        return block[:, self.columns]

    def to_memory(self) -> np.ndarray | sparse.spmatrix:
        """The whole selection in memory."""
        return self[np.arange(self.shape[0])]


def rows_tensor(matrix, rows: np.ndarray, keep_sparse: bool = True) -> torch.Tensor:
    """Rows of a dense or sparse matrix as a float32 tensor: sparse CSR for sparse matrices (``keep_sparse``), else dense.

    ``matrix`` may be backed on disk (see :func:`read_rows`): only the rows are read.
    """
    block = read_rows(matrix, rows)
    if sparse.issparse(block):
        if keep_sparse:
            return sparse_rows_tensor(block)
        block = block.toarray()
    return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))


class RegisteredCellLoader:
    """Minibatches of registered cells, read straight from the matrices and columns the manager registered.

    Each batch is a dict with one entry per registry key: a float32 tensor per modality (a sparse CSR tensor for a
    sparse matrix, so that the first layers read its non-zeros only and nothing wider than the matrix's rows is
    made), and ``(cells, 1)`` int64 (categorical) or float32 columns for the other fields.

    Random orders are drawn from torch's global generator exactly as :class:`scvi.dataloaders.AnnDataLoader` (a
    torch ``DataLoader`` over a ``BatchSampler(RandomSampler)``) drew them, so a seed gives the same batches as
    before this loader replaced it.

    In distributed training (``distributed=True`` and an initialised :mod:`torch.distributed` process group of
    ``W`` processes) every process reads its share of each batch: the order drawn by process 0 is broadcast, each
    batch of ``batch_size`` cells is dealt to the processes in turn (``rows[rank::W]``), and a last batch with fewer
    than two cells per process is left out. The averaged gradients of the processes then stand for those of the
    whole batch.

    Parameters
    ----------
    adata_manager
        Manager of the registered MuData.
    indices
        Cells (rows of the registered data) to iterate over.
    batch_size
        Minibatch size.
    shuffle
        Draw a new order each pass; otherwise the order of ``indices``.
    drop_last
        Leave out the last, incomplete batch.
    distributed
        Share each batch among the processes of an initialised process group (see above).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: Sequence[int],
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed: bool = False,
    ):
        self.data = {key: adata_manager.get_from_registry(key) for key in adata_manager.data_registry}
        self.indices = np.asarray(indices, dtype=int)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.distributed = distributed

    @property
    def _world(self) -> tuple[int, int]:
        """``(rank, number of processes)`` of the process group shared by the batches; ``(0, 1)`` without one."""
        dist = torch.distributed
        if self.distributed and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        n = len(self.indices)
        n_batches = n // self.batch_size if self.drop_last else int(np.ceil(n / self.batch_size))
        world = self._world[1]
        if world > 1 and n_batches and n - (n_batches - 1) * self.batch_size < 2 * world:
            n_batches -= 1  # a last batch too small to give every process two cells
        return n_batches

    def _order(self) -> np.ndarray:
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
        if not self.shuffle:
            return np.arange(len(self.indices))
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # the RandomSampler's seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        return torch.randperm(len(self.indices), generator=generator).numpy()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        rank, world = self._world
        if world > 1:  # every process uses the order of process 0
            nccl = torch.distributed.get_backend() == "nccl"  # NCCL broadcasts GPU tensors only
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            shared = torch.as_tensor(order, dtype=torch.int64, device=device)
            torch.distributed.broadcast(shared, src=0)
            order = shared.cpu().numpy()
        for k in range(len(self)):
            rows = self.indices[order[k * self.batch_size : (k + 1) * self.batch_size]]
            yield self.collate(rows[rank::world])

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of the given rows of the registered data."""
        out = {}
        for key, data in self.data.items():
            if key.startswith(REGISTRY_KEYS.MODALITY_PREFIX):
                out[key] = rows_tensor(data, rows)
                continue
            column = np.asarray(data[rows] if isinstance(data, np.ndarray) else data.iloc[rows])
            column = column.reshape(len(rows), -1)
            integer = np.issubdtype(column.dtype, np.integer) or np.issubdtype(column.dtype, np.bool_)
            out[key] = torch.from_numpy(column.astype(np.int64 if integer else np.float32))
        return out


class _ObjectiveCycle:
    """Iterate over a data loader once per objective, yielding ``(objective_index, batch)``.

    One Lightning epoch is thus one pass over the training cells for each objective, in order: the published
    alternating schedule.
    """

    def __init__(self, loader: Iterable[dict], n_objectives: int):
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
        loader = RegisteredCellLoader(
            self.adata_manager,
            self.train_idx,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=drop_last,
            distributed=True,
        )
        return _ObjectiveCycle(loader, self.n_objectives)

    def val_dataloader(self) -> RegisteredCellLoader | list:
        if self.n_val == 0:
            return []
        return RegisteredCellLoader(self.adata_manager, self.val_idx, batch_size=self.batch_size, shuffle=False)


@dataclass
class CellSource:
    """Cells of one MuData for :class:`MixedCellLoader`.

    Parameters
    ----------
    matrices
        One matrix (dense or sparse, cells x features in model order) per modality this source provides; the
        modalities it lacks are absent in its cells. Only the rows in ``indices`` are ever read.
    indices
        Rows of the matrices that belong to the loader.
    labels
        Label code per row of the matrices, or ``None``: every cell unlabelled (code ``-1``).
    """

    matrices: Mapping[str, Any]
    indices: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=int)


class MixedCellLoader:
    """Minibatches that mix cells of several sources, each source with its own modalities.

    Every batch holds, for each model modality, a float32 matrix (zeros for cells whose source lacks the modality,
    which no loss reads) and boolean presence flags (:func:`~unitednet.module._module.presence_key`), plus the label
    codes (``-1``: unlabelled). The sources are shuffled separately and dealt into the same number of batches, so each
    batch holds every source in proportion. Sparse matrices are densified one batch at a time.

    Parameters
    ----------
    sources
        The cell sources.
    n_features
        Number of features of each model modality (the order is the model's).
    batch_size
        Approximate minibatch size.
    shuffle
        Draw a new random order each epoch (torch's global generator, seeded by ``scvi.settings.seed``).
    """

    def __init__(
        self, sources: Sequence[CellSource], n_features: Mapping[str, int], batch_size: int, shuffle: bool = True
    ):
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch normalisation), got {batch_size}.")
        self.sources = [s for s in sources if len(s.indices)]
        self.n_features = dict(n_features)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.n_obs = sum(len(s.indices) for s in self.sources)

    def __len__(self) -> int:
        return int(np.ceil(self.n_obs / self.batch_size)) if self.n_obs else 0

    def _order(self, source: CellSource) -> np.ndarray:
        if not self.shuffle:
            return source.indices
        return source.indices[torch.randperm(len(source.indices)).numpy()]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n_batches = len(self)
        chunks = [np.array_split(self._order(s), n_batches) for s in self.sources]
        for k in range(n_batches):
            parts = [(s, c[k]) for s, c in zip(self.sources, chunks, strict=True) if len(c[k])]
            if sum(len(rows) for _, rows in parts) < 2:
                continue  # batch normalisation cannot train on a single cell
            yield self._collate(parts)

    def _collate(self, parts: Sequence[tuple[CellSource, np.ndarray]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m, n_features in self.n_features.items():
            blocks, flags = [], []
            for source, rows in parts:
                if m in source.matrices:
                    block = source.matrices[m][rows]
                    blocks.append(block.toarray() if sparse.issparse(block) else np.asarray(block))
                    flags.append(np.ones(len(rows), dtype=bool))
                else:
                    blocks.append(np.zeros((len(rows), n_features), dtype=np.float32))
                    flags.append(np.zeros(len(rows), dtype=bool))
            out[modality_key(m)] = torch.as_tensor(np.concatenate(blocks).astype(np.float32, copy=False))
            out[presence_key(m)] = torch.as_tensor(np.concatenate(flags))
        labels = [
            np.full(len(rows), UNLABELLED) if source.labels is None else np.asarray(source.labels)[rows]
            for source, rows in parts
        ]
        out[REGISTRY_KEYS.LABELS_KEY] = torch.as_tensor(np.concatenate(labels).astype(np.float32)).view(-1, 1)
        return out


class AdaptationDataModule(pl.LightningDataModule):
    """Train and validation loaders of :meth:`~unitednet.model.UnitedNetModel.adapt`: reference and query cells mixed.

    Parameters
    ----------
    train_sources, val_sources
        Cell sources of the training and validation loaders.
    n_features
        Number of features of each model modality.
    n_objectives
        Number of alternating objectives per epoch.
    batch_size
        Minibatch size.
    train_idx, val_idx, test_idx
        Reference cells of each split (reported to scvi-tools as the model's indices; test cells are never loaded).
    """

    def __init__(
        self,
        train_sources: Sequence[CellSource],
        val_sources: Sequence[CellSource],
        n_features: Mapping[str, int],
        n_objectives: int,
        batch_size: int = 128,
        train_idx: Sequence[int] = (),
        val_idx: Sequence[int] = (),
        test_idx: Sequence[int] = (),
    ):
        super().__init__()
        self.train_loader = MixedCellLoader(train_sources, n_features, batch_size, shuffle=True)
        self.val_loader = MixedCellLoader(val_sources, n_features, batch_size, shuffle=False)
        self.n_train = self.train_loader.n_obs
        self.n_val = self.val_loader.n_obs
        self.n_objectives = n_objectives
        self.train_idx = np.asarray(train_idx, dtype=int)
        self.val_idx = np.asarray(val_idx, dtype=int)
        self.test_idx = np.asarray(test_idx, dtype=int)

    def train_dataloader(self) -> _ObjectiveCycle:
        return _ObjectiveCycle(self.train_loader, self.n_objectives)

    def val_dataloader(self) -> MixedCellLoader | list:
        return self.val_loader if self.n_val else []
