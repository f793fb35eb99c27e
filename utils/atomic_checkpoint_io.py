"""Checkpoint writing that never leaves a truncated .ckpt behind."""
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
        try:
            with open(tmp_path, 'wb') as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()
        # Persist the rename itself (directory entry) where the platform allows it.
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
