"""Small helpers shared by the command-line scripts (train.py, val.py, test.py, ...): argparse types, training
strategy, and the one-line error convention (:class:`CliError`, :func:`run_main`)."""
import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Type, Union

from pytorch_lightning.strategies import DDPStrategy, Strategy


def str2bool(value: str) -> bool:
    """argparse type for the official `type=bool` flags, where bool('False') would silently be True."""
    lowered = str(value).strip().lower()
    if lowered in ('1', 'true', 't', 'yes', 'y'):
        return True
    if lowered in ('0', 'false', 'f', 'no', 'n'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (true/false/1/0), got {value!r}')


def training_strategy(devices: int, num_nodes: int = 1) -> Union[str, Strategy]:
    """DDP (as the official scripts) only when more than one process trains; a single device needs none."""
    if devices * num_nodes > 1:
        return DDPStrategy(find_unused_parameters=False, gradient_as_bucket_view=True)
    return 'auto'


def evaluation_strategy(devices: int, num_nodes: int = 1) -> str:
    return 'ddp' if devices * num_nodes > 1 else 'auto'


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f'expected an integer >= 1, got {value!r}')
    return number


def unit_fraction(value: str) -> float:
    """A number in (0, 1]."""
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f'expected a number in (0, 1], got {value!r}')
    return number


def int_or_float(value: str) -> Union[int, float]:
    """Lightning's limit_*_batches convention: an int counts batches, a float is a fraction of the data."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a batch count (int) or a fraction (float), got {value!r}')


class CliError(SystemExit):
    """Bad input or environment that a command-line script reports as ONE line and exit status 2.

    ``str(error)`` is ``error: <file>: <problem> (<fix>)``. It subclasses SystemExit so that an uncaught one ends the
    script without a traceback; :func:`run_main` prints it to stderr first. In-process callers (tests) can catch it.
    """

    def __init__(self, message: str) -> None:
        message = ' '.join(str(message).split())  # one line
        super().__init__(message if message.startswith('error: ') else f'error: {message}')
        self.code = 2

    def __str__(self) -> str:
        return self.args[0]


def one_line(error: BaseException) -> str:
    """First line of an exception's message (multi-line listings are cut to their headline)."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f'{error.filename}: {error.strerror}'  # '[Errno 20] Not a directory: x' -> 'x: Not a directory'
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def input_errors(*error_types: Type[BaseException], fix: str = '') -> Iterator[None]:
    """Turns the given exception types (raised for bad files or flags) into a one-line :class:`CliError`;
    ``fix`` (what the user should do) is appended in parentheses."""
    try:
        yield
    except CliError:
        raise
    except error_types as error:
        message = one_line(error)
        raise CliError(f'{message} ({fix})' if fix else message) from error


def ensure_output_dir(path: Union[str, os.PathLike], flag: str) -> Path:
    """Checks, BEFORE any long work starts, that ``path`` is (or can become) a directory that files can be written in.

    Nothing is created: a file is written and removed in ``path`` or, when ``path`` does not exist yet, in its
    nearest existing parent. Raises :class:`CliError` naming the directory and the flag to change (e.g. a path below
    a regular file, a read-only mount or a full disk)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, 'Not a directory', str(existing))
        with tempfile.NamedTemporaryFile(dir=existing, prefix='.write-test-'):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if error.filename is not None and os.fspath(error.filename) != os.fspath(path):
            reason += f': {error.filename}'
        raise CliError(f'{path}: cannot write the output directory ({reason}) (choose a writable {flag})') from None
    return path


def run_main(main: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> None:
    """``if __name__ == '__main__'`` entry: runs ``main(argv)``; a :class:`CliError` is printed as its one line
    on stderr and the script exits with status 2 (no traceback)."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except CliError as error:
        print(str(error), file=sys.stderr, flush=True)
        sys.exit(error.code)
