"""Several datasets mixed for pre-training: a concatenated dataset, a weighted sampler and a Lightning data module.

Every dataset is processed on the same 50 + 60 step canvas with the union vocabularies (``datasets/scenario.py``),
and every sample carries ``data_set`` (AV1 0, AV2 1, Waymo 2) plus ``span_start`` / ``span_end`` (the canvas steps
its recording covers), so items of different datasets batch together and the view sampler
(``transforms/ssl_views.py``) knows which steps of a window each dataset can observe.

Sampling: without weights every item of every dataset is drawn once per epoch (shuffled), so datasets count in
proportion to their sizes. With ``weights`` (one per dataset, any positive scale) an epoch draws ``num_samples``
items (default: the total size): each draw picks a dataset with probability proportional to its weight, then an
item of it uniformly (without replacement until that dataset is exhausted, then again). The draw depends only on
``(seed, epoch)``, so it is reproducible and identical on every process of a DDP run (Lightning shards it).
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Sampler
from torch_geometric.loader import DataLoader

from datasets.argoverse_v1_dataset import ArgoverseV1Dataset
from datasets.argoverse_v2_dataset import ArgoverseV2Dataset, default_split_dirs
from datasets.mix_arguments import add_mix_arguments  # noqa: F401 (re-exported)
from datasets.scenario import DATASET_IDS
from datasets.waymo_dataset import WaymoDataset

DATASET_CLASSES = {'argoverse_v2': ArgoverseV2Dataset, 'waymo': WaymoDataset, 'argoverse_v1': ArgoverseV1Dataset}


class MultiDataset(Dataset):
    """Concatenation of named datasets. ``names[k]`` / ``datasets[k]``; item ``i`` of the concatenation is item
    ``i - offsets[k]`` of dataset ``k``."""

    def __init__(self, datasets: Dict[str, Dataset]) -> None:
        if not datasets:
            raise ValueError('MultiDataset needs at least one dataset')
        self.names = list(datasets)
        self.datasets = list(datasets.values())
        sizes = [len(d) for d in self.datasets]
        for name, size in zip(self.names, sizes):
            if size == 0:
                raise ValueError(f'MultiDataset: dataset {name!r} is empty')
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def sizes(self) -> List[int]:
        return np.diff(self.offsets).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int):
        """(dataset position k, index inside dataset k) of concatenated item ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - int(self.offsets[k])

    def __getitem__(self, index: int) -> Any:
        k, local = self.locate(int(index))
        return self.datasets[k][local]

    def dataset_index(self) -> np.ndarray:
        """int64 [len(self)]: dataset position of every item."""
        return np.repeat(np.arange(len(self.datasets)), self.sizes)


class WeightedDatasetSampler(Sampler):
    """Indices into a :class:`MultiDataset` for one epoch (see module docstring). ``set_epoch`` changes the draw."""

    def __init__(self, dataset: MultiDataset, weights: Optional[Sequence[float]] = None, shuffle: bool = True,
                 num_samples: Optional[int] = None, seed: int = 0,
                 epoch_fn: Optional[Callable[[], int]] = None) -> None:
        self.dataset = dataset
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(dataset.datasets):
                raise ValueError(f'{len(weights)} sampling weights for {len(dataset.datasets)} datasets '
                                 f'({dataset.names})')
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f'sampling weights must be >= 0 with a positive sum, got {weights}')
        self.weights = weights
        self.shuffle = shuffle
        self.num_samples = int(num_samples) if num_samples is not None else len(dataset)
        self.seed = int(seed)
        self.epoch = 0
        # Under DDP Lightning wraps this sampler and calls set_epoch on the wrapper only: epoch_fn (e.g. the
        # trainer's current epoch) keeps the draw changing every epoch anyway.
        self.epoch_fn = epoch_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples if self.weights is not None else len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = int(self.epoch_fn()) if self.epoch_fn is not None else self.epoch
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is None:
            order = rng.permutation(len(self.dataset)) if self.shuffle else np.arange(len(self.dataset))
            return iter(order.tolist())
        probabilities = np.array(self.weights) / sum(self.weights)
        choice = rng.choice(len(probabilities), size=self.num_samples, p=probabilities)
        out = np.empty(self.num_samples, dtype=np.int64)
        for k, size in enumerate(self.dataset.sizes):
            slots = np.flatnonzero(choice == k)
            if not len(slots):
                continue
            rounds = -(-len(slots) // size)
            items = np.concatenate([rng.permutation(size) if self.shuffle else np.arange(size)
                                    for _ in range(rounds)])[:len(slots)]
            out[slots] = items + self.dataset.offsets[k]
        return iter(out.tolist())


@dataclass
class DatasetSource:
    """Where one dataset of the mix lives. ``name``: its format (a key of DATASET_CLASSES); layout as
    :class:`ArgoverseV2Dataset` (``root/<split>/raw`` and ``root/<split>/processed`` unless given); ``weight``:
    sampling weight (None: by size); ``label``: its name in the mix (default ``name``; give distinct labels to mix
    two data sets of one format, e.g. two synthetic Argoverse 2-format profiles)."""
    name: str
    root: Optional[str]
    raw_dirs: Dict[str, Optional[str]] = field(default_factory=dict)
    processed_dirs: Dict[str, Optional[str]] = field(default_factory=dict)
    weight: Optional[float] = None
    label: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name not in DATASET_CLASSES:
            raise ValueError(f'unknown dataset {self.name!r}; known: {sorted(DATASET_CLASSES)}')
        if self.label is None:
            self.label = self.name

    def directories(self, split: str):
        """(raw dir, processed dir) of a split, or None where neither a root nor the directory is given. Without a
        root, the processed dir defaults to ``<raw dir>_processed`` (never a path relative to the working dir)."""
        raw, processed = self.raw_dirs.get(split), self.processed_dirs.get(split)
        if self.root:
            default_raw, default_processed = default_split_dirs(self.root, split)
            raw = raw or default_raw
            processed = processed or default_processed
        elif raw and not processed:
            processed = os.path.normpath(raw) + '_processed'
        return raw, processed

    def split_exists(self, split: str) -> bool:
        raw, processed = self.directories(split)
        return bool(raw and os.path.isdir(raw)) or bool(processed and os.path.isdir(processed))

    def build(self, split: str, transform: Optional[Callable], **kwargs: Any) -> Dataset:
        raw, processed = self.directories(split)
        return DATASET_CLASSES[self.name](self.root or os.path.dirname(processed), split, raw, processed, transform,
                                          **kwargs)


class MultiDatasetDataModule(pl.LightningDataModule):
    """Train / val data mixed from several datasets (each a :class:`DatasetSource`).

    Training draws with :class:`WeightedDatasetSampler` (weights from the sources, all or none given); validation
    concatenates the val splits of the datasets that have one (in order). A training split is required for every
    source. ``dataset_kwargs`` go to every dataset (e.g. ``{'num_workers': 8}`` for processing);
    ``on_train_loader`` is called with the trainer each time the training loader is built (as in
    ``ArgoverseV2DataModule``).
    """

    def __init__(self, sources: Sequence[DatasetSource], train_batch_size: int, val_batch_size: int,
                 shuffle: bool = True, num_workers: int = 0, pin_memory: bool = True, persistent_workers: bool = True,
                 train_transform: Optional[Callable] = None, val_transform: Optional[Callable] = None,
                 num_samples_per_epoch: Optional[int] = None, seed: int = 0,
                 dataset_kwargs: Optional[dict] = None,
                 on_train_loader: Optional[Callable[[pl.Trainer], None]] = None) -> None:
        super().__init__()
        labels = [source.label for source in sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f'each dataset of a mix needs its own label, got {labels}')
        given = [source.weight is not None for source in sources]
        if any(given) and not all(given):
            raise ValueError('give a sampling weight for every dataset of the mix or for none: '
                             + ', '.join(f'{s.label}={s.weight}' for s in sources))
        self.sources = list(sources)
        self.weights = [source.weight for source in sources] if all(given) else None
        self.train_batch_size = train_batch_size
        self.val_batch_size = val_batch_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.num_samples_per_epoch = num_samples_per_epoch
        self.seed = seed
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.on_train_loader = on_train_loader
        self.train_dataset: Optional[MultiDataset] = None
        self.val_dataset: Optional[MultiDataset] = None
        self.train_sampler: Optional[WeightedDatasetSampler] = None

    def _datasets(self, split: str, transform: Optional[Callable], required: bool) -> Dict[str, Dataset]:
        out = {}
        for source in self.sources:
            if source.split_exists(split):
                out[source.label] = source.build(split, transform, **self.dataset_kwargs)
            elif required:
                where = f'under {source.root}' if source.root else 'given'
                raise FileNotFoundError(f'{source.label}: no {split!r} split {where} (give its root, raw or processed '
                                        f'directory)')
        return out

    def prepare_data(self) -> None:
        self._datasets('train', None, required=True)
        self._datasets('val', None, required=False)

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, 'fit'):
            self.train_dataset = MultiDataset(self._datasets('train', self.train_transform, required=True))
        if stage in (None, 'fit', 'validate'):
            val = self._datasets('val', self.val_transform, required=False)
            self.val_dataset = MultiDataset(val) if val else None

    def train_dataloader(self) -> DataLoader:
        if self.on_train_loader is not None:
            self.on_train_loader(self.trainer)
        self.train_sampler = WeightedDatasetSampler(self.train_dataset, self.weights, shuffle=self.shuffle,
                                                    num_samples=self.num_samples_per_epoch, seed=self.seed,
                                                    epoch_fn=self._current_epoch)
        return DataLoader(self.train_dataset, batch_size=self.train_batch_size, sampler=self.train_sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            return []
        return DataLoader(self.val_dataset, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)


def dataset_ids_of_agents(batch: Any) -> torch.Tensor:
    """long [A]: dataset id of every agent of a batch (from the per-sample ``data_set``)."""
    data_set = batch['data_set']
    if not torch.is_tensor(data_set):
        data_set = torch.as_tensor(data_set)
    agent = batch['agent']
    if 'batch' in agent:
        return data_set.view(-1)[agent['batch']]
    return data_set.view(-1).expand(agent['num_nodes'])


__all__ = ['DATASET_CLASSES', 'DATASET_IDS', 'DatasetSource', 'MultiDataset', 'MultiDatasetDataModule',
           'WeightedDatasetSampler', 'dataset_ids_of_agents']


# ----------------------------------------------------------------------------------------------------------------------
# command-line support for pre-training scripts (train_ssl.py)
# ----------------------------------------------------------------------------------------------------------------------

def mix_requested(args: Any) -> bool:
    return bool(getattr(args, 'load_av1', 0) or getattr(args, 'load_waymo', 0))


def check_mix_arguments(args: Any) -> None:
    """Raise SystemExit with a one-line message for inconsistent mix flags."""
    for flag, root, name in (('load_av1', 'av1_root', 'Argoverse 1'), ('load_waymo', 'waymo_root', 'Waymo')):
        if getattr(args, flag, 0) and not getattr(args, root, None) and not getattr(args, root[:-4] + 'train_raw_dir',
                                                                                   None) \
                and not getattr(args, root[:-4] + 'train_processed_dir', None):
            raise SystemExit(f'error: --{flag} 1 needs --{root} (or --{root[:-4]}train_raw_dir / '
                             f'--{root[:-4]}train_processed_dir) for the {name} data')
    if not mix_requested(args):
        if getattr(args, 'dataset_weights', None) is not None:
            raise SystemExit('error: --dataset_weights needs --load_av1 1 and/or --load_waymo 1')
        return
    expected = 1 + int(bool(args.load_av1)) + int(bool(args.load_waymo))
    if args.dataset_weights is not None and len(args.dataset_weights) != expected:
        raise SystemExit(f'error: --dataset_weights needs {expected} values (AV2{", AV1" if args.load_av1 else ""}'
                         f'{", Waymo" if args.load_waymo else ""}), got {len(args.dataset_weights)}')
    if getattr(args, 'max_agents_per_batch', None) is not None or getattr(args, 'max_polygons_per_batch', None):
        raise SystemExit('error: --max_agents_per_batch / --max_polygons_per_batch are not supported with a dataset '
                         'mix yet')


def mix_sources(args: Any) -> List[DatasetSource]:
    """Datasets of the mix from the parsed flags: Argoverse 2 (``--root`` ...) first, then AV1, then Waymo."""
    sources = [DatasetSource('argoverse_v2', args.root,
                             raw_dirs={'train': args.train_raw_dir, 'val': args.val_raw_dir},
                             processed_dirs={'train': args.train_processed_dir, 'val': args.val_processed_dir})]
    for flag, prefix, name in (('load_av1', 'av1', 'argoverse_v1'), ('load_waymo', 'waymo', 'waymo')):
        if getattr(args, flag, 0):
            root = getattr(args, f'{prefix}_root') or None
            sources.append(DatasetSource(name, root,
                                         raw_dirs={s: getattr(args, f'{prefix}_{s}_raw_dir') for s in ('train', 'val')},
                                         processed_dirs={s: getattr(args, f'{prefix}_{s}_processed_dir')
                                                         for s in ('train', 'val')}))
    if args.dataset_weights is not None:
        for source, weight in zip(sources, args.dataset_weights):
            source.weight = weight
    return sources


def union_vocabulary_hparams() -> Dict[str, int]:
    """Embedding-table sizes for models trained on a mix (union vocabularies, Argoverse 2's entries first)."""
    from datasets.scenario import POINT_TYPES, POLYGON_TYPES
    return {'num_point_types': len(POINT_TYPES), 'num_polygon_types': len(POLYGON_TYPES)}
