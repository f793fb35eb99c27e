"""The run directory of train.py and train_ssl.py: which checkpoint a start resumes from, and the summary printed
when training ends. Imports no torch (the scripts import this before parsing their flags)."""
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from utils.cli import CliError, check_checkpoint_file


def fresh_run(checkpoint_dir: Path) -> None:
    """None (start from scratch) when ``checkpoint_dir`` holds no checkpoint; a fresh run never mixes into an old one."""
    existing = sorted(Path(checkpoint_dir).glob('*.ckpt'))
    if existing:
        raise CliError(f'{checkpoint_dir}: already holds {len(existing)} checkpoint(s) (e.g. {existing[0].name}) '
                       f'(to continue that run pass --resume, else choose another --exp_name / --log_dir)')
    return None


def resume_checkpoint(resume: Optional[str], checkpoint_dir: Path) -> Optional[Path]:
    """Checkpoint named by ``--resume`` (None: fresh run; 'last': <checkpoint_dir>/last.ckpt; 'auto': last.ckpt when
    it exists, else a fresh run; otherwise a file), or None for a fresh run."""
    if resume is None:
        return fresh_run(checkpoint_dir)
    path = Path(checkpoint_dir) / 'last.ckpt' if resume in ('last', 'auto') else Path(resume)
    if resume == 'auto' and not path.is_file():
        return fresh_run(checkpoint_dir)
    check_checkpoint_file(path, '--resume', fix='check the path, or start without --resume')
    return path


def expect_existing_checkpoints() -> None:
    """A resumed run writes into its own checkpoint folder on purpose: silence Lightning's warning that the folder
    "exists and is not empty" (a fresh run refuses such a folder, :func:`fresh_run`)."""
    warnings.filterwarnings('ignore', message=r'Checkpoint directory .* exists and is not empty')


def print_summary(title: str, trainer: Any, checkpoint: Any, run_dir: Path, loggers: Sequence[Any], monitor: str,
                  metrics: Sequence[Tuple[str, str]], extra: Sequence[str] = ()) -> None:
    """Prints where a finished run left its files and its last logged metrics.

    ``metrics``: (label, logged key) pairs shown when logged; ``extra``: lines appended at the end."""
    logged = trainer.callback_metrics
    lines: List[str] = ['', '=' * 78,
                        f'{title} finished: epoch {trainer.current_epoch}, {trainer.global_step} optimiser steps',
                        f'  run directory : {run_dir}']
    if checkpoint.best_model_path:
        score = checkpoint.best_model_score
        score_text = f' ({monitor} = {score.item():.4f})' if score is not None else ''
        lines.append(f'  best ckpt     : {checkpoint.best_model_path}{score_text}')
    last = Path(checkpoint.dirpath) / 'last.ckpt'
    lines.append(f'  last ckpt     : {last if last.is_file() else "(none written)"}')
    for logger in loggers:
        if type(logger).__name__ == 'CSVLogger':
            lines.append(f'  csv metrics   : {Path(logger.log_dir) / "metrics.csv"}')
        elif type(logger).__name__ == 'TensorBoardLogger':
            lines.append(f'  tensorboard   : tensorboard --logdir {Path(logger.log_dir).parent}  ({logger.log_dir})')
    shown = [(label, logged[key]) for label, key in metrics if key in logged]
    if shown:
        lines.append('  final metrics:')
        width = max(12, max(len(label) for label, _ in shown))
        lines.extend(f'    {label:<{width}} {float(value):.4f}' for label, value in shown)
    else:
        lines.append('  no metrics were logged (validation did not run)')
    lines.extend(extra)
    lines.append('=' * 78)
    print('\n'.join(lines), flush=True)
