"""Atomic file writes: readers see the old file or the complete new one, never a part.

Every writer of the project (processed cache, synthetic scenarios, submissions, plots, metric files, checkpoints,
benchmark results) goes through ``atomic_write``: the bytes go to a hidden temporary file in the target's own
directory, are flushed to disk, and ``os.replace`` (atomic within one file system on POSIX) publishes them.
"""
import contextlib
import os
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


def _fsync_directory(directory: Path) -> None:
    """Persist a rename's directory entry where the platform allows it (not on every file system)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb', sync: bool = True, **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path, 'w') as f: f.write(...)`` publishes ``path`` only when the block ends without an
    exception; on an exception the temporary file is removed and ``path`` is left as it was. Parent directories are
    created. ``mode`` is 'w' or 'wb'. ``sync=False`` skips the flushes to disk (a killed process still leaves the
    old or the new file; only a power loss may not): for many small files that can be rebuilt, e.g. a cache."""
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_write: mode must be "w" or "wb", got {mode!r}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    try:
        with open(temporary, mode, **open_kwargs) as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    if sync:
        _fsync_directory(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes, sync: bool = True) -> None:
    with atomic_write(path, 'wb', sync=sync) as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, sync: bool = True) -> None:
    with atomic_write(path, 'w', sync=sync, encoding='utf-8') as f:
        f.write(text)


@contextlib.contextmanager
def atomic_output_path(path: PathLike) -> Iterator[Path]:
    """For writers that need a file name rather than a file object (``fig.savefig``, ``DataFrame.to_parquet``,
    ``torch.save``): yields a temporary path beside ``path`` that is renamed onto ``path`` when the block succeeds.
    The temporary name keeps ``path``'s suffix so that format detection by extension still works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f'.{path.stem}.tmp-{os.getpid()}{path.suffix}')
    try:
        yield temporary
        with open(temporary, 'rb') as f:  # the writer closed it: flush its bytes to disk before the rename
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)
