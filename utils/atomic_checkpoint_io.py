"""Checkpoint writing that never leaves a truncated .ckpt behind."""
from typing import Any, Dict, Optional

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from utils.atomic_io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a hidden temporary file in the target directory, fsyncs it, then renames it.

    Lightning's own save goes through fsspec's local "transaction", which stages the bytes in the system temp
    directory and moves them afterwards; across file systems that move is a copy into the final name, so a job
    killed mid-copy (or a full /tmp) can leave a broken `last.ckpt` that `--resume` would then trip over.
    os.replace within one directory is atomic on POSIX: readers see the old file or the new one, never a part.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f'{type(self).__name__}.save_checkpoint does not take storage_options, got '
                            f'{storage_options!r}')
        with atomic_write(path, 'wb') as f:
            torch.save(checkpoint, f)
