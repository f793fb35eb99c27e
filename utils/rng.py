"""Random-number states of a training process: seeding, and saving / restoring them in checkpoints.

A resumed run continues the Python, NumPy and torch (CPU and CUDA) streams where the checkpoint left them:
shuffling order, view sampling, dropout. States are plain tensors and containers, so checkpoints holding them load
with ``torch.load(weights_only=True)``.
"""
import random
from typing import Any, Dict, List

import numpy as np
import torch


def seed_process(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices) of this process."""
    seed = seed % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> Dict[str, Any]:
    """This process's generator states: 'python', 'numpy', 'torch' and, once CUDA is in use, 'cuda'."""
    # NumPy's key array is stored as a tensor so that checkpoints stay loadable with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: Dict[str, Any] = {'python': random.getstate(),
                              'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
                              'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restores ``rng_states()``; CUDA states only when the device count matches the saving process's."""
    random.setstate(states['python'])
    kind, keys, pos, has_gauss, cached = states['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        cuda_states: List[torch.Tensor] = states['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
