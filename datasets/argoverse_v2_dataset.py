"""Argoverse 2 motion-forecasting dataset: a torch_geometric ``Dataset`` of official QCNet ``HeteroData`` samples.

Layout (official, overridable): raw scenarios in ``<root>/<split>/raw/<scenario_id>/`` and cache files in
``<root>/<split>/processed/<scenario_id>.qcs``. Missing cache files are built on first use, in parallel
(``num_workers`` processes, see ``datasets/preprocess.py``); scenarios that fail to process are logged, listed in
``<processed_dir>/failures.json`` and left out of the dataset (``strict=True`` raises instead). With no raw
directory, an existing processed directory is used as is.

Distributed training: build the dataset first in ``LightningDataModule.prepare_data`` (Lightning runs it in one
process per node, the others wait at a barrier), then again in ``setup`` on every process: by then every cache file
exists and construction only lists the directory. ``ArgoverseV2DataModule`` does exactly this.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Callable, List, Optional

import numpy as np
from torch_geometric.data import Dataset, HeteroData

from datasets.preprocess import (ADAPTERS, ProcessingOptions, check_cache_options, preprocess_scenarios,
                                 processed_file_name, read_failures)
from datasets.processing import to_hetero_data
from datasets.scenario import DATASET_IDS
from datasets.storage import CACHE_SUFFIX, atomic_write_bytes, is_current_cache_file, load_features, read_header

logger = logging.getLogger(__name__)
_SIZES_FILE = '.item_sizes.npz'


def default_split_dirs(root: str, split: str):
    """(raw_dir, processed_dir) of a split when no flag names them.

    The official QCNet layout is ``root/<split>/raw/<id>/`` with ``root/<split>/processed``. The Argoverse 2 download
    (and ``datasets.synthetic``) put scenario folders directly in ``root/<split>/<id>/``; then the cache goes to
    ``root/processed/<split>`` so that it never mixes with scenario folders."""
    official_raw = os.path.join(root, split, 'raw')
    split_dir = os.path.join(root, split)
    if not os.path.isdir(official_raw) and os.path.isdir(split_dir):
        with os.scandir(split_dir) as entries:
            if any(entry.is_dir() and entry.name not in ('raw', 'processed', 'map_files') for entry in entries):
                return split_dir, os.path.join(root, 'processed', split)
    return official_raw, os.path.join(root, split, 'processed')


class ArgoverseV2Dataset(Dataset):
    """QCNet samples of one split (any name, any number of scenarios).

    Args (official QCNet names and order first): root, split, raw_dir (default ``root/split/raw``), processed_dir
    (default ``root/split/processed``), transform, dim, num_historical_steps, num_future_steps,
    predict_unseen_agents, vector_repr; then include_ssl_mask (add SmartPretrain's ``agent.predict_mask_ssl``),
    num_workers (processes used to build missing cache files; default: all cores), strict (raise on the first bad
    scenario instead of skipping it), progress (show a progress bar while processing).
    """

    dataset_name = 'argoverse_v2'

    def __init__(self,
                 root: str,
                 split: str,
                 raw_dir: Optional[str] = None,
                 processed_dir: Optional[str] = None,
                 transform: Optional[Callable] = None,
                 dim: int = 3,
                 num_historical_steps: int = 50,
                 num_future_steps: int = 60,
                 predict_unseen_agents: bool = False,
                 vector_repr: bool = True,
                 include_ssl_mask: bool = True,
                 num_workers: Optional[int] = None,
                 strict: bool = False,
                 progress: bool = True) -> None:
        root = os.path.expanduser(os.path.normpath(root))
        self.split = split
        default_raw, default_processed = default_split_dirs(root, split)
        self._raw_dir = os.path.expanduser(os.path.normpath(raw_dir)) if raw_dir is not None else default_raw
        self._processed_dir = os.path.expanduser(os.path.normpath(processed_dir)) if processed_dir is not None \
            else default_processed
        self.options = ProcessingOptions(dim=dim, num_historical_steps=num_historical_steps,
                                         num_future_steps=num_future_steps,
                                         predict_unseen_agents=predict_unseen_agents, vector_repr=vector_repr,
                                         include_ssl_mask=include_ssl_mask)
        self.dim = dim
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_steps = num_historical_steps + num_future_steps
        self.predict_unseen_agents = predict_unseen_agents
        self.vector_repr = vector_repr
        self.num_workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
        self.strict = strict
        self.progress = progress
        self._raw_file_names: List[str] = ADAPTERS[self.dataset_name].list_scenarios(self._raw_dir)
        self._names: List[str] = []
        self._sizes: Optional[np.ndarray] = None
        super().__init__(root=root, transform=transform, pre_transform=None, pre_filter=None)

    # ------------------------------------------------------------------ PyG plumbing
    @property
    def raw_dir(self) -> str:
        return self._raw_dir

    @property
    def processed_dir(self) -> str:
        return self._processed_dir

    @property
    def raw_file_names(self) -> List[str]:
        return self._raw_file_names

    @property
    def processed_file_names(self) -> List[str]:
        return [processed_file_name(name) for name in self._names]

    @property
    def scenario_names(self) -> List[str]:
        """Scenario (directory) name of every item, in item order."""
        return list(self._names)

    def process(self, names: Optional[List[str]] = None) -> None:
        """Build the cache files of ``names`` (default: every raw scenario without a current cache file)."""
        summary = preprocess_scenarios(self.raw_dir, self.processed_dir, dataset=self.dataset_name,
                                       num_workers=self.num_workers, strict=self.strict, options=self.options,
                                       names=self._raw_file_names if names is None else names,
                                       progress=self.progress)
        if summary.processed or summary.failures:
            logger.info('%s', summary.format())

    def _process(self) -> None:
        meta = self.options.as_meta(self.dataset_name)
        if self._raw_file_names:
            # scenarios that failed before are not retried here (run `python -m datasets.preprocess` to retry)
            known_failures = {failure.scenario for failure in read_failures(self.processed_dir)}
            missing = [name for name in self._raw_file_names if name not in known_failures and
                       not is_current_cache_file(os.path.join(self.processed_dir, processed_file_name(name)))]
            if missing:
                self.process(missing)
            else:
                check_cache_options(self.processed_dir, self._raw_file_names, meta)
            present = [name for name in self._raw_file_names
                       if os.path.isfile(os.path.join(self.processed_dir, processed_file_name(name)))]
            if len(present) < len(self._raw_file_names):
                logger.warning('%s: %d of %d scenarios failed to process and are left out (see %s)', self.raw_dir,
                               len(self._raw_file_names) - len(present), len(self._raw_file_names),
                               os.path.join(self.processed_dir, 'failures.json'))
            self._names = present
        else:
            if os.path.isdir(self.processed_dir):
                with os.scandir(self.processed_dir) as entries:
                    self._names = sorted(entry.name[:-len(CACHE_SUFFIX)] for entry in entries
                                         if entry.name.endswith(CACHE_SUFFIX) and entry.is_file())
            if not self._names:
                raise FileNotFoundError(f'{self.raw_dir}: no scenarios for split {self.split!r} (no scenario '
                                        f'directories there and no *{CACHE_SUFFIX} files in {self.processed_dir}); '
                                        f'put the split\'s scenarios there or point the raw/processed dir of the '
                                        f'split (e.g. --{self.split}_raw_dir) at them')
            # raises CacheVersionError (re-run preprocessing) or ValueError (other options) on a stale cache
            check_cache_options(self.processed_dir, self._names, meta)

    def len(self) -> int:
        return len(self._names)

    def get(self, idx: int) -> HeteroData:
        features = load_features(os.path.join(self.processed_dir, processed_file_name(self._names[idx])))
        # caches written before samples carried a dataset id: the dataset knows it
        features.setdefault('data_set', DATASET_IDS[self.dataset_name])
        return to_hetero_data(features)

    # ------------------------------------------------------------------ sizes for batch capping
    def item_sizes(self) -> np.ndarray:
        """int64 [len(self), 3]: (agents, map polygons, map points) of every item (ignores ``self.indices()``).

        Read from the cache headers once and kept in ``<processed_dir>/.item_sizes.npz``."""
        if self._sizes is not None:
            return self._sizes
        path = os.path.join(self.processed_dir, _SIZES_FILE)
        names = np.array(self._names)
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as cached:
                    if np.array_equal(cached['names'], names):
                        self._sizes = cached['sizes']
                        return self._sizes
            except (OSError, ValueError, KeyError):
                pass  # stale or broken index: rebuild it below
        sizes = np.zeros((len(self._names), 3), dtype=np.int64)
        for i, name in enumerate(self._names):
            scalars = read_header(os.path.join(self.processed_dir, processed_file_name(name)))['scalars']
            sizes[i] = (scalars['agent/num_nodes'], scalars['map_polygon/num_nodes'], scalars['map_point/num_nodes'])
        buffer = io.BytesIO()
        np.savez(buffer, names=names, sizes=sizes)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError:  # read-only processed dir: the in-memory copy is enough
            pass
        self._sizes = sizes
        return sizes

