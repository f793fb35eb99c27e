"""Small helpers shared by the command-line scripts (train.py, val.py, test.py, ...): argparse types and help
format, the boolean flag convention, CPU thread settings, training strategy, and the one-line error convention
(:class:`CliError`, :func:`run_main`).

This module imports no torch: the scripts build their parsers (and answer ``--help``) before torch, PyG and
Lightning are imported.
"""
import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Type, Union

TRUE_WORDS = ('1', 'true', 't', 'yes', 'y', 'on')
FALSE_WORDS = ('0', 'false', 'f', 'no', 'n', 'off')


def str2bool(value: Union[str, bool, int]) -> bool:
    """argparse type of every boolean flag: 0/1, true/false, yes/no, on/off (any case). The official scripts'
    ``type=bool`` would turn 'False' into True."""
    lowered = str(value).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (1/0, true/false, yes/no), got {value!r}')


def bool_flag(default: bool) -> Dict[str, Any]:
    """``add_argument`` keywords of a boolean flag: ``--flag`` alone means true, ``--flag 0|1|true|false|yes|no``
    sets it, e.g. ``parser.add_argument('--shuffle', **bool_flag(True), help=...)``."""
    return dict(type=str2bool, nargs='?', const=True, default=default, metavar='0|1')


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to optional flags that have a default; required flags and flags without a default
    (None) show none, booleans show 0/1 (as they are passed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        default = action.default
        if (action.required or not action.option_strings or default is None or default is argparse.SUPPRESS
                or '%(default)' in text or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = str(int(default)) if isinstance(default, bool) else str(default)
        return f'{text} (default: {shown.replace("%", "%%")})'.lstrip()


def configure_cpu_threads() -> None:
    """Keeps CPU work fast when other processes compete for the cores; call before torch is imported.

    OpenMP's intra-op threads spin while they wait for work by default: with another busy process on the same
    cores, each parallel region then waits for a thread that is descheduled behind a spinning one, and a step can
    take several times longer. Passive waiting (threads sleep) costs little on an idle machine. A value exported by
    the user is kept.
    """
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


def training_strategy(devices: int, num_nodes: int = 1) -> Any:
    """DDP (as the official scripts) only when more than one process trains; a single device needs none."""
    if devices * num_nodes > 1:
        from pytorch_lightning.strategies import DDPStrategy
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


def check_checkpoint_file(path: Union[str, os.PathLike], flag: str, fix: str = 'check the path') -> Path:
    """``path`` when it is a file; otherwise a one-line :class:`CliError` naming ``flag`` and the problem. For a
    directory the message lists the checkpoints in it (e.g. a run's checkpoints/ folder: pass its last.ckpt)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(p.name for p in path.glob('*.ckpt'))
        if not found and (path / 'checkpoints').is_dir():  # a run directory: <log_dir>/<exp_name>/
            path, found = path / 'checkpoints', sorted(p.name for p in (path / 'checkpoints').glob('*.ckpt'))
        if found:
            first = 'last.ckpt' if 'last.ckpt' in found else found[0]
            listed = ', '.join(found[:6]) + (f' and {len(found) - 6} more' if len(found) > 6 else '')
            raise CliError(f'{flag}: {path} is a directory, not a checkpoint file; it holds {listed} '
                           f'(pass one of them, e.g. {flag} {path / first})')
        raise CliError(f'{flag}: {path} is a directory and holds no .ckpt file (pass a checkpoint file)')
    raise CliError(f'{flag}: checkpoint {path} does not exist ({fix})')


def run_main(main: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> None:
    """``if __name__ == '__main__'`` entry: sets the CPU thread policy (:func:`configure_cpu_threads`), runs
    ``main(argv)``; a :class:`CliError` is printed as its one line on stderr and the script exits with status 2 (no
    traceback)."""
    configure_cpu_threads()
    try:
        main(sys.argv[1:] if argv is None else argv)
    except CliError as error:
        print(str(error), file=sys.stderr, flush=True)
        sys.exit(error.code)
