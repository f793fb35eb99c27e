"""Lightning data module for Argoverse 2 (official QCNet constructor names) + a size-capped batch sampler.

``prepare_data`` builds the three datasets, which processes missing cache files; Lightning calls it on one process
per node while the others wait, so in DDP only one process per node does the processing. ``setup`` then builds the
datasets on every process (cheap: the cache exists).

``on_train_loader`` (here and in ``MultiDatasetDataModule``) is called with the trainer each time the training loader is
built, before its workers copy the transform: pre-training tells its view transform the current epoch there, because
the first loader of a run (resumed or not) is built before any epoch hook runs.

``max_agents_per_batch`` / ``max_polygons_per_batch`` cap a batch by its total number of agents / map polygons
(a dense scene can hold 5-10x the agents of an average one; capping avoids out-of-memory spikes). Batches are then
variable-sized, never larger than the batch size; a single scene above a cap forms a batch of its own.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from torch_geometric.loader import DataLoader

from datasets.argoverse_v2_dataset import ArgoverseV2Dataset, default_split_dirs

_DEFAULT = object()  # "use the official default transform" (None means: no transform)


class SizeCappedBatchSampler(BatchSampler):
    """Batches of at most ``batch_size`` items whose summed sizes stay within the caps.

    sampler: yields dataset indices (its order is kept); sizes: int64 [len(dataset), K] per-item sizes (e.g. agents,
    polygons); max_sizes: K caps (None = no cap on that column). Subclasses ``BatchSampler`` with the ``sampler``
    argument so Lightning can swap in a ``DistributedSampler`` under DDP; then every rank builds the batches of all
    ranks and pads its own list to the longest (repeating its first batches), because DDP ranks must run the same
    number of steps.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False, sizes: Optional[np.ndarray] = None,
                 max_sizes: Optional[List[Optional[int]]] = None) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if sizes is None:
            raise ValueError('SizeCappedBatchSampler needs per-item sizes')
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(len(sizes), -1)
        self.max_sizes = list(max_sizes) if max_sizes is not None else [None] * self.sizes.shape[1]
        if len(self.max_sizes) != self.sizes.shape[1]:
            raise ValueError(f'{len(self.max_sizes)} caps for {self.sizes.shape[1]} size columns')
        self._caps = np.array([cap if cap is not None else np.iinfo(np.int64).max for cap in self.max_sizes],
                              dtype=np.int64)

    def _batches(self, indices: List[int]) -> List[List[int]]:
        batches: List[List[int]] = []
        batch: List[int] = []
        total = np.zeros(self.sizes.shape[1], dtype=np.int64)
        for index in indices:
            size = self.sizes[index]
            if batch and (len(batch) == self.batch_size or (total + size > self._caps).any()):
                batches.append(batch)
                batch, total = [], np.zeros_like(total)
            batch.append(index)
            total += size
        if batch and not (self.drop_last and len(batch) < self.batch_size):
            batches.append(batch)
        return batches

    def _plan(self) -> List[List[int]]:
        sampler = self.sampler
        if isinstance(sampler, DistributedSampler) and sampler.num_replicas > 1:
            per_rank = []
            for rank in range(sampler.num_replicas):  # same seed/epoch on every rank -> same global plan
                shard = DistributedSampler(sampler.dataset, num_replicas=sampler.num_replicas, rank=rank,
                                           shuffle=sampler.shuffle, seed=sampler.seed, drop_last=sampler.drop_last)
                shard.set_epoch(sampler.epoch)
                per_rank.append(self._batches(list(shard)))
            mine = per_rank[sampler.rank]
            longest = max(len(batches) for batches in per_rank)
            return mine + [mine[i % len(mine)] for i in range(longest - len(mine))] if mine else mine
        return self._batches(list(sampler))

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self._plan())

    def __len__(self) -> int:
        return len(self._plan())


class ArgoverseV2DataModule(pl.LightningDataModule):
    """Train/val/test data of Argoverse 2 (splits named 'train', 'val', 'test'); unknown kwargs are ignored so
    ``ArgoverseV2DataModule(**vars(args))`` works. Default train/val transform: ``transforms.TargetBuilder(50, 60)``;
    pass ``None`` for no transform. ``dataset_kwargs`` are passed to every ``ArgoverseV2Dataset`` (e.g.
    ``{'num_workers': 8}`` processes in 8 processes); ``on_train_loader``: see the module docstring."""

    def __init__(self,
                 root: str,
                 train_batch_size: int,
                 val_batch_size: int,
                 test_batch_size: int,
                 shuffle: bool = True,
                 num_workers: int = 0,
                 pin_memory: bool = True,
                 persistent_workers: bool = True,
                 train_raw_dir: Optional[str] = None,
                 val_raw_dir: Optional[str] = None,
                 test_raw_dir: Optional[str] = None,
                 train_processed_dir: Optional[str] = None,
                 val_processed_dir: Optional[str] = None,
                 test_processed_dir: Optional[str] = None,
                 train_transform: Optional[Callable] = _DEFAULT,
                 val_transform: Optional[Callable] = _DEFAULT,
                 test_transform: Optional[Callable] = None,
                 max_agents_per_batch: Optional[int] = None,
                 max_polygons_per_batch: Optional[int] = None,
                 dataset_kwargs: Optional[dict] = None,
                 graph_builder: Optional[torch.nn.Module] = None,
                 on_train_loader: Optional[Callable[[pl.Trainer], None]] = None,
                 **kwargs: Any) -> None:
        super().__init__()
        if train_transform is _DEFAULT or val_transform is _DEFAULT:
            from transforms import TargetBuilder  # transforms/ is another package: import only when needed
            train_transform = TargetBuilder(50, 60) if train_transform is _DEFAULT else train_transform
            val_transform = TargetBuilder(50, 60) if val_transform is _DEFAULT else val_transform
        self.root = root
        self.train_batch_size = train_batch_size
        self.val_batch_size = val_batch_size
        self.test_batch_size = test_batch_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_raw_dir = train_raw_dir
        self.val_raw_dir = val_raw_dir
        self.test_raw_dir = test_raw_dir
        self.train_processed_dir = train_processed_dir
        self.val_processed_dir = val_processed_dir
        self.test_processed_dir = test_processed_dir
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.test_transform = test_transform
        self.max_agents_per_batch = max_agents_per_batch
        self.max_polygons_per_batch = max_polygons_per_batch
        self.dataset_kwargs = dict(dataset_kwargs or {})
        # A CPU model whose build_graph runs in the loader workers (utils.prebuilt_graph); None: the model builds it.
        self.graph_builder = graph_builder
        self.on_train_loader = on_train_loader

    def _dataset(self, split: str) -> ArgoverseV2Dataset:
        return ArgoverseV2Dataset(self.root, split, getattr(self, f'{split}_raw_dir'),
                                  getattr(self, f'{split}_processed_dir'), getattr(self, f'{split}_transform'),
                                  **self.dataset_kwargs)

    def _split_exists(self, split: str) -> bool:
        default_raw, default_processed = default_split_dirs(self.root, split)
        raw = getattr(self, f'{split}_raw_dir') or default_raw
        processed = getattr(self, f'{split}_processed_dir') or default_processed
        return os.path.isdir(raw) or os.path.isdir(processed)

    def prepare_data(self) -> None:
        # a split without any data is skipped here (pre-training needs no test split); setup() fails on it
        # only if the stage uses it
        for split in ('train', 'val', 'test'):
            if self._split_exists(split):
                self._dataset(split)

    def setup(self, stage: Optional[str] = None) -> None:
        splits = {'fit': ('train', 'val'), 'validate': ('val',), 'test': ('test',), 'predict': ('test',)}.get(
            stage, ('train', 'val', 'test'))
        for split in splits:
            setattr(self, f'{split}_dataset', self._dataset(split))

    def _loader(self, dataset: ArgoverseV2Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.persistent_workers)
        if self.max_agents_per_batch is None and self.max_polygons_per_batch is None:
            loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **common)
        else:
            sizes = dataset.item_sizes()[np.asarray(dataset.indices())][:, :2]
            sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            batch_sampler = SizeCappedBatchSampler(sampler, batch_size, drop_last=False, sizes=sizes,
                                                   max_sizes=[self.max_agents_per_batch, self.max_polygons_per_batch])
            loader = DataLoader(dataset, batch_sampler=batch_sampler, **common)
        if self.graph_builder is not None:
            from utils.prebuilt_graph import GraphBuildingCollate
            loader.collate_fn = GraphBuildingCollate(loader.collate_fn, self.graph_builder)
        return loader

    def train_dataloader(self) -> DataLoader:
        if self.on_train_loader is not None:
            self.on_train_loader(self.trainer)
        return self._loader(self.train_dataset, self.train_batch_size, self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.test_batch_size, False)
