"""Interruption-safe training runs (train.py, train_ssl.py): mid-epoch checkpoints, a last checkpoint on SIGTERM,
and a check that a checkpoint given to ``--resume`` belongs to the run being continued.

* :class:`StepCheckpoint` rewrites ``<checkpoint dir>/last.ckpt`` every N optimiser steps (``--save_every_n_steps``),
  so a job killed mid-epoch (SIGKILL, node failure, out-of-memory killer) loses at most N steps.
* :class:`SigtermCheckpoint`: Lightning turns SIGTERM (``kill``, ``timeout``, a scheduler's pre-emption notice) into
  a ``SIGTERMException`` at the end of the running training batch; this callback then writes ``last.ckpt`` with the
  state after that batch, so ``--resume`` continues at exactly that optimiser step. (SIGKILL cannot be caught; a
  SIGTERM during validation keeps the previous ``last.ckpt``: Lightning cannot restart mid-validation with the
  metric state of the batches already seen.)
* :func:`check_resume_checkpoint` refuses, with one line naming the file, a checkpoint of the other training kind
  (supervised vs pre-training), one without training state, or one built with other model hyper-parameters than
  the flags, before Lightning would fail with a long key listing.

All checkpoints go through the trainer's checkpoint IO (``utils.atomic_checkpoint_io``): a file is complete or absent.
A mid-epoch resume continues the step counter, epoch, optimizer, learning-rate / momentum schedules and the
remaining number of batches of the interrupted epoch; the data loaders are not resumable, so those remaining batches
are drawn from a fresh pass over the data (the total number of optimiser steps equals an uninterrupted run's).
"""
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from utils.checkpoint import CheckpointError, compare_state_dicts, read_checkpoint
from utils.cli import input_errors

LAST_CHECKPOINT = 'last.ckpt'
SIGTERM_EXIT_CODE = 128 + 15  # what a shell reports for a process ended by SIGTERM
PRETRAINING_PREFIX = 'momentum_branch.'
# Hyper-parameters that define the network (its state-dict keys/shapes or what the weights mean).
ARCHITECTURE_HPARAMS = ('model', 'backbone', 'dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head',
                        'num_historical_steps', 'num_future_steps', 'num_modes', 'num_recurrent_steps',
                        'num_freq_bands', 'num_map_layers', 'num_agent_layers', 'num_dec_layers', 'num_heads',
                        'head_dim')


class StepCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimiser steps (mid-epoch); nothing else.

    The run's main ModelCheckpoint keeps writing the top-k files and ``last.ckpt`` after each validation; both
    must be built with ``enable_version_counter=False`` so they overwrite one ``last.ckpt`` instead of adding
    ``last-v1.ckpt``.
    """

    def __init__(self, dirpath: os.PathLike, every_n_train_steps: int) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f'StepCheckpoint: every_n_train_steps must be >= 1, got {every_n_train_steps}')
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
                         enable_version_counter=False)

    # Epoch-end and end-of-training saves belong to the main checkpoint callback (no second write of last.ckpt).
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass


class SigtermCheckpoint(pl.Callback):
    """Saves ``<dirpath>/last.ckpt`` when Lightning stops training because of SIGTERM (see the module docstring)."""

    def __init__(self, dirpath: os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.saved_path: Optional[Path] = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return  # another error (state may be mid-step) or SIGTERM during validation / sanity check
        path = self.dirpath / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        self.saved_path = path


def interrupted_message(script: str, trainer: pl.Trainer, checkpoint_dir: Path,
                        sigterm_checkpoint: SigtermCheckpoint) -> str:
    """One line for a run stopped by SIGTERM: where it stopped and how to continue."""
    last = checkpoint_dir / LAST_CHECKPOINT
    if sigterm_checkpoint.saved_path is not None:
        saved = f'saved {sigterm_checkpoint.saved_path} at this step'
    elif last.is_file():
        saved = f'stopped during validation; {last} holds the state of the last periodic or epoch checkpoint'
    else:
        saved = 'no checkpoint was written yet'
    return (f'{script}: stopped by SIGTERM at epoch {trainer.current_epoch}, optimiser step {trainer.global_step}; '
            f'{saved}; continue with the same flags plus --resume')


def fit_or_exit_on_sigterm(script: str, trainer: pl.Trainer, model: pl.LightningModule, datamodule,
                           resume_path: Optional[str], checkpoint_dir: Path, sigterm_checkpoint: SigtermCheckpoint,
                           input_error_types: Sequence[type]) -> None:
    """``trainer.fit`` of a training script: bad input surfacing inside fit (errors of ``input_error_types``: empty
    split, stale cache, ...) ends the script with its one-line message; SIGTERM ends it with the line of
    ``interrupted_message`` and exit status SIGTERM_EXIT_CODE after the SigtermCheckpoint callback has saved."""
    try:
        with input_errors(*input_error_types):
            trainer.fit(model, datamodule, ckpt_path=resume_path)
    except SIGTERMException:
        if trainer.is_global_zero:
            print(interrupted_message(script, trainer, checkpoint_dir, sigterm_checkpoint), flush=True)
        raise SystemExit(SIGTERM_EXIT_CODE) from None


def checkpoint_kind(state_dict: Mapping[str, Any]) -> str:
    """'pre-training' (SmartPretrain: momentum_branch.* keys) or 'supervised' (a trajectory predictor)."""
    return 'pre-training' if any(k.startswith(PRETRAINING_PREFIX) for k in state_dict) else 'supervised'


def _first(items: Sequence[Any], limit: int = 3) -> str:
    shown = ', '.join(str(item) for item in items[:limit])
    return shown + (', ...' if len(items) > limit else '')


def trained_with_manual_optimisation(checkpoint: Dict[str, Any]) -> bool:
    """Whether ``checkpoint``'s run trained with Lightning's manual optimisation (the CUDA-graph step): older
    checkpoints say so in the hyper-parameter cuda_graphs, newer ones in the progress of the manual loop."""
    stored = checkpoint.get('hyper_parameters') or {}
    if 'cuda_graphs' in stored:
        return bool(stored['cuda_graphs'])
    fit_loop = (checkpoint.get('loops') or {}).get('fit_loop') or {}
    progress = fit_loop.get('epoch_loop.manual_optimization.optim_step_progress') or {}
    return int((progress.get('total') or {}).get('completed') or 0) > 0


def check_resume_checkpoint(path: os.PathLike, model: pl.LightningModule) -> Dict[str, Any]:
    """Checks that ``path`` can continue the training of ``model`` (built from the command-line flags).

    Returns the loaded checkpoint dict. Raises :class:`utils.checkpoint.CheckpointError` with one line naming the
    file, the problem and the fix: an unreadable file, a checkpoint of the other kind (supervised vs pre-training),
    one without optimizer/loop state, architecture hyper-parameters that differ from the flags, or weights that
    do not fit.
    """
    source = os.fspath(path)
    checkpoint = read_checkpoint(source, map_location='cpu')
    state_dict = checkpoint['state_dict']
    expected = model.state_dict()
    found_kind, wanted_kind = checkpoint_kind(state_dict), checkpoint_kind(expected)
    if found_kind != wanted_kind:
        if found_kind == 'pre-training':
            fix = (f'fine-tune from it with train.py --pretrained_ckpt {source}, or continue the pre-training with '
                   f'train_ssl.py --resume {source}')
        else:
            fix = f'continue it with train.py --resume {source}, or start the pre-training without --resume'
        raise CheckpointError(f'{source}: a {found_kind} checkpoint cannot continue a {wanted_kind} run ({fix})')
    if 'optimizer_states' not in checkpoint or 'loops' not in checkpoint:
        raise CheckpointError(f'{source}: holds weights but no optimizer/loop state (e.g. a released checkpoint), so '
                              f'training cannot continue from it (evaluate it with val.py / test.py, or start a new '
                              f'run without --resume)')
    stored = checkpoint.get('hyper_parameters') or {}
    flags = dict(model.hparams)
    differing = [f'{name}={stored[name]!r} in the checkpoint vs {flags[name]!r} from the flags'
                 for name in ARCHITECTURE_HPARAMS if name in stored and name in flags and stored[name] != flags[name]]
    manual = trained_with_manual_optimisation(checkpoint)
    if manual != (not model.automatic_optimization):
        # --cuda_graphs trains with Lightning's manual optimisation, whose loop counts steps in other progress
        # trackers than the automatic one: switching at a resume would restart the step count.
        said = 'with' if manual else 'without'
        raise CheckpointError(f'{source}: trained {said} --cuda_graphs; resume it {said} --cuda_graphs (the step '
                              f'count of the training loop is kept per optimisation mode)')
    if differing:
        raise CheckpointError(f'{source}: built with other model hyper-parameters than this run '
                              f'({"; ".join(differing)}) (resume with the checkpoint\'s values)')
    missing, unexpected, mismatched = compare_state_dicts(expected, state_dict)
    if missing or unexpected or mismatched:
        examples = [f'missing {_first(missing)}'] if missing else []
        examples += [f'unexpected {_first(unexpected)}'] if unexpected else []
        examples += [f'other shape {_first([name for name, _, _ in mismatched])}'] if mismatched else []
        raise CheckpointError(f'{source}: weights do not fit the model built from the flags ({len(missing)} missing, '
                              f'{len(unexpected)} unexpected, {len(mismatched)} with another shape: '
                              f'{"; ".join(examples)}) (resume with the flags the checkpoint was trained with)')
    return checkpoint
