#!/usr/bin/env python
"""How much of its random initialisation is still in the momentum branch of a SmartPretrain pre-training run.

Fine-tuning starts from the momentum branch, an EMA of the online branch whose momentum rises from 0.996 to 1: after
K optimiser steps about exp(-0.002 K) of the initial weights remain in it, which matters for short pre-training runs.
This measures it on a checkpoint of ``train_ssl.py``: the initial weights are rebuilt from the run's own
hyper-parameters and seed (``train_ssl.py`` seeds before it builds the model), then, over all weight tensors of the
encoder and decoder (>= 1,000 values each),

  * a least-squares fit  momentum ~ a * init + b * online  (``a``: share of the initialisation, with its standard
    error; a rebuilt initialisation that is not the run's own gives a ~ 0 within a few standard errors, which the
    script reports as a failure to rebuild it);
  * the distance ratio |momentum - init| / |online - init| (how far the momentum branch moved, relative to the online
    one);
  * the per-tensor ``a`` (median, range).

Input: a full pre-training checkpoint (both branches), or two slim exports (``--online`` for the one written with
``utils.export_pretrained --branch online``). Official SmartPretrain checkpoints carry no seed: their initialisation
cannot be rebuilt.

Example:
  python benchmarks/momentum_init_share.py logs_pretrain/pretrain/checkpoints/last.ckpt
  python benchmarks/momentum_init_share.py pretrained_slim.ckpt --online pretrained_online_slim.ckpt --json share.json
"""
import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import atomic_write_json  # noqa: E402
from utils.cli import CliError, input_errors, run_main  # noqa: E402
from utils.pretrained import BRANCH_PREFIXES, read_pretraining_checkpoint  # noqa: E402

MIN_VALUES = 1000           # tensors smaller than this (biases, norms) say little and are left out
# A rebuilt initialisation counts as the run's own when its fitted share is this many standard errors above zero: an
# uncorrelated rebuild gives a ~ 0 +- 1 standard error, while runs long enough for the < 10 % criterion of
# docs/LOW_LABEL.md legitimately keep only a few per cent (an absolute threshold would refuse them).
REBUILT_MIN_STANDARD_ERRORS = 10.0


def branch_weights(state_dict: Dict[str, torch.Tensor], branch: str) -> Dict[str, torch.Tensor]:
    """The encoder + decoder floating tensors of ``branch`` ('momentum' / 'online'), keyed without the prefix."""
    prefix = BRANCH_PREFIXES[branch]
    return {k[len(prefix):]: v.float() for k, v in state_dict.items()
            if k.startswith((prefix + 'encoder.', prefix + 'decoder.')) and v.is_floating_point()}


def rebuilt_initial_weights(hparams: dict, seed: int) -> Dict[str, torch.Tensor]:
    """The online branch of a fresh SmartPretrain module built as ``train_ssl.py`` builds it (seed first)."""
    import pytorch_lightning as pl
    from predictors.smartpretrain import SmartPretrain
    pl.seed_everything(seed, workers=True, verbose=False)
    module = SmartPretrain(**hparams)
    return branch_weights(module.state_dict(), 'online')


def init_share(momentum: Dict[str, torch.Tensor], online: Dict[str, torch.Tensor],
               init: Dict[str, torch.Tensor]) -> dict:
    """The fits described in the module docstring; keys: 'init_share', 'online_share', 'distance_ratio',
    'per_tensor' {median, min, max}, 'num_tensors', 'num_values'."""
    columns, targets, per_tensor = [], [], []
    for key, m in momentum.items():
        if m.numel() < MIN_VALUES or key not in online or key not in init:
            continue
        if init[key].shape != m.shape or online[key].shape != m.shape:
            raise ValueError(f'{key}: shapes differ (momentum {tuple(m.shape)}, online {tuple(online[key].shape)}, '
                             f'rebuilt {tuple(init[key].shape)})')
        x = torch.stack([init[key].flatten(), online[key].flatten()], dim=1).double()
        y = m.flatten().double()
        per_tensor.append(torch.linalg.lstsq(x, y.unsqueeze(1)).solution[0, 0].item())
        columns.append(x)
        targets.append(y)
    if not columns:
        raise ValueError(f'no weight tensor with >= {MIN_VALUES} values is in both branches')
    x, y = torch.cat(columns), torch.cat(targets)
    a, b = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1).tolist()
    residual = y - x @ torch.tensor([a, b], dtype=x.dtype)
    variance = residual.square().sum() / max(1, y.numel() - 2)
    standard_error = (variance * torch.linalg.inv(x.T @ x)[0, 0]).sqrt().item()
    return {'init_share': a, 'online_share': b, 'init_share_standard_error': standard_error,
            'distance_ratio': ((y - x[:, 0]).norm() / (x[:, 1] - x[:, 0]).norm()).item(),
            'per_tensor': {'median': statistics.median(per_tensor), 'min': min(per_tensor), 'max': max(per_tensor)},
            'num_tensors': len(per_tensor), 'num_values': y.numel()}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('ckpt_path', help='pre-training checkpoint of train_ssl.py (both branches), or a slim export '
                                          'of its momentum branch (then also --online)')
    parser.add_argument('--online', default=None, help='slim export of the online branch (export_pretrained '
                                                       '--branch online), when ckpt_path is a slim momentum export')
    parser.add_argument('--seed', type=int, default=None, help='seed of the pre-training run (default: its '
                                                               'hyper-parameter seed)')
    parser.add_argument('--json', default=None, help='also write the numbers to this JSON file')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    with input_errors(OSError, ValueError):
        state_dict, hparams = read_pretraining_checkpoint(args.ckpt_path)
        momentum = branch_weights(state_dict, 'momentum')
        online = branch_weights(read_pretraining_checkpoint(args.online)[0] if args.online else state_dict, 'online')
    source = args.online or args.ckpt_path
    if not momentum:
        raise CliError(f'{args.ckpt_path}: no momentum_branch.encoder/decoder weights (not a pre-training checkpoint '
                       f'of both branches or of the momentum one)')
    if not online:
        raise CliError(f'{source}: no branch.encoder/decoder (online) weights; pass --online with the slim export of '
                       f'the online branch')
    seed = args.seed if args.seed is not None else hparams.get('seed')
    if not hparams or seed is None:
        raise CliError(f'{args.ckpt_path}: no hyper-parameters with a seed (an official checkpoint?): the initial '
                       f'weights cannot be rebuilt; give --seed if you know it')
    with input_errors(ValueError, TypeError):
        result = init_share(momentum, online, rebuilt_initial_weights(dict(hparams), int(seed)))
    result.update(checkpoint=args.ckpt_path, online_checkpoint=source, seed=int(seed))
    if result['init_share'] < REBUILT_MIN_STANDARD_ERRORS * result['init_share_standard_error']:
        raise CliError(f'{args.ckpt_path}: the momentum branch shares {result["init_share"]:.4f} '
                       f'(standard error {result["init_share_standard_error"]:.4f}) with the rebuilt initialisation, '
                       f'i.e. it is not this run\'s (other seed or code version?), or none of it is left; no '
                       f'measurement')
    per = result['per_tensor']
    print(f'momentum branch ~ {result["init_share"]:.3f} x initialisation + {result["online_share"]:.3f} x online '
          f'branch over {result["num_tensors"]} weight tensors ({result["num_values"]:,} values); per tensor the '
          f'initialisation share is {per["median"]:.2f} (median, range {per["min"]:.2f}-{per["max"]:.2f}); the '
          f'momentum branch moved {result["distance_ratio"]:.2f} of the online branch\'s distance from the '
          f'initialisation', flush=True)
    if args.json:
        with input_errors(OSError):
            atomic_write_json(args.json, result)
    return result


if __name__ == '__main__':
    run_main(main)
