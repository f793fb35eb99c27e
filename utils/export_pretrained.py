"""Slim SmartPretrain checkpoints: only what fine-tuning reads, so pre-training and fine-tuning can run apart.

A pre-training checkpoint (ours from ``train_ssl.py`` with either backbone, or the official SmartPretrain release)
holds the online and the momentum branch, the projectors, both prediction heads and the AdamW state: ~101 MiB for
the full-size QCNet backbone (12.6 M weights + AdamW moments of the 7.0 M trained ones). Fine-tuning
(``utils.pretrained.load_pretrained``, i.e. ``train.py --pretrained_ckpt``) reads only the
``momentum_branch.encoder.*`` / ``momentum_branch.decoder.*`` tensors and the ``hyper_parameters`` (for the backbone
name). This writes exactly those, under the same key names, optionally cast to a half-precision dtype (floating
tensors only; integer buffers keep theirs): full-size QCNet 5.4 M parameters (encoder + propose-only decoder) ->
10.6 MiB in float16, 20.9 MiB in float32. ``load_pretrained`` copies them into the model's float32 parameters.
``--branch online`` exports the online branch (``branch.encoder.*`` / ``branch.decoder.*``) instead, for
``train.py --pretrained_branch online``; ``--branch supervised`` the ``encoder.*`` / ``decoder.*`` of a supervised
``train.py`` checkpoint (the oracle of docs/LOW_LABEL.md), for ``train.py --pretrained_branch supervised``.

Usage:
  python -m utils.export_pretrained IN.ckpt OUT.ckpt [--dtype float32|float16|bfloat16]
      [--branch momentum|online|supervised]
"""
import argparse
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from utils.atomic_checkpoint_io import AtomicCheckpointIO
from utils.cli import input_errors, run_main
from utils.pretrained import _check_pretraining_layout, branch_prefix, read_pretraining_checkpoint

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
# Extra top-level entry of a slim file: where it came from (plain strings / ints, so weights_only loading works).
EXPORT_INFO_KEY = 'smartpretrain_export'


@dataclass
class ExportSummary:
    """What ``export_pretrained`` wrote."""
    source: str
    output: str
    dtype: str
    branch: str
    num_tensors: int
    num_parameters: int        # elements of the exported floating tensors
    source_num_tensors: int
    source_bytes: int
    output_bytes: int

    def summary(self) -> str:
        return (f'exported {self.num_tensors} of {self.source_num_tensors} tensors ({self.branch} encoder + decoder, '
                f'{self.num_parameters:,} parameters) as {self.dtype}: {self.output} '
                f'{self.output_bytes / 2 ** 20:.2f} MiB (from {self.source}, {self.source_bytes / 2 ** 20:.2f} MiB)')


def exported_prefixes(branch: str = 'momentum') -> Tuple[str, str]:
    """Key prefixes of what fine-tuning reads (utils/pretrained.py) of ``branch``: its encoder and decoder; the
    projectors, the other branch and the heads are left out."""
    return branch_prefix(branch) + 'encoder.', branch_prefix(branch) + 'decoder.'


def exported_keys(keys: Iterable[str], branch: str = 'momentum') -> List[str]:
    """The keys of a pre-training ``state_dict`` that a slim checkpoint of ``branch`` keeps, in their order."""
    return [k for k in keys if k.startswith(exported_prefixes(branch))]


def _cast(ckpt_path: str, key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as ``dtype`` (floating tensors only), in its own compact storage: torch.save writes a view's whole
    storage, so a tensor sharing one with others would carry them along."""
    if not value.is_floating_point():
        return value.detach().clone().contiguous()
    if not torch.isfinite(value).all():
        raise ValueError(f'{ckpt_path}: {key} holds NaN or infinite values (did the pre-training diverge?); '
                         f'nothing exported')
    cast = value.detach().to(dtype=dtype, copy=True).contiguous()
    if not torch.isfinite(cast).all():
        raise ValueError(f'{ckpt_path}: {key} has values beyond the range of {str(dtype).replace("torch.", "")} '
                         f'(max |x| = {value.abs().max().item():.4g}); export with --dtype bfloat16 or float32')
    return cast


def slim_checkpoint(ckpt_path: str, state_dict: Mapping[str, torch.Tensor], hparams: Mapping[str, Any],
                    dtype: str = 'float16', branch: str = 'momentum') -> Dict[str, Any]:
    """The slim checkpoint (a dict for ``torch.save``) of a pre-training ``state_dict`` / ``hyper_parameters``;
    raises ``ValueError`` naming ``ckpt_path`` when it is not a pre-training checkpoint."""
    if dtype not in DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; known: {", ".join(DTYPES)}')
    # supervised / unrelated checkpoints, a slim file of the other branch: same messages as fine-tuning gives
    _check_pretraining_layout(ckpt_path, state_dict, hparams, branch)
    slim = {key: _cast(ckpt_path, key, state_dict[key], DTYPES[dtype]) for key in exported_keys(state_dict, branch)}
    return {'state_dict': slim, 'hyper_parameters': dict(hparams),
            EXPORT_INFO_KEY: {'source': os.path.basename(ckpt_path), 'dtype': dtype, 'branch': branch,
                              'source_num_tensors': len(state_dict)}}


def export_pretrained(ckpt_path: str, out_path: str, dtype: str = 'float16',
                      branch: str = 'momentum') -> ExportSummary:
    """Writes the slim checkpoint of pre-training checkpoint ``ckpt_path`` to ``out_path`` (atomically).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file for a missing or unreadable file, a supervised
    checkpoint or one without the momentum branch, and ``ValueError`` when ``out_path`` is the input itself.
    """
    ckpt_path, out_path = os.fspath(ckpt_path), os.fspath(out_path)
    if os.path.exists(out_path) and os.path.exists(ckpt_path) and os.path.samefile(ckpt_path, out_path):
        raise ValueError(f'{out_path}: the output is the input checkpoint itself; write the slim file elsewhere')
    state_dict, hparams = read_pretraining_checkpoint(ckpt_path)
    checkpoint = slim_checkpoint(ckpt_path, state_dict, hparams, dtype, branch)
    try:
        AtomicCheckpointIO().save_checkpoint(checkpoint, out_path)  # a killed export leaves no truncated file
    except OSError as error:
        raise OSError(f'{out_path}: cannot write the slim checkpoint ({error.strerror or error})') from None
    slim = checkpoint['state_dict']
    return ExportSummary(source=ckpt_path, output=out_path, dtype=dtype, branch=branch, num_tensors=len(slim),
                         num_parameters=sum(v.numel() for v in slim.values() if v.is_floating_point()),
                         source_num_tensors=len(state_dict), source_bytes=os.path.getsize(ckpt_path),
                         output_bytes=os.path.getsize(out_path))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m utils.export_pretrained', description=__doc__.split('\n\n')[0],
        epilog='The output loads with `train.py --pretrained_ckpt OUT.ckpt` like the full checkpoint.')
    parser.add_argument('ckpt_path', help='pre-training checkpoint (train_ssl.py or the official SmartPretrain '
                                          'release)')
    parser.add_argument('out_path', help='slim checkpoint to write (one branch\'s encoder + decoder + hyper-parameters)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float16',
                        help='dtype of the exported floating tensors (default: float16)')
    parser.add_argument('--branch', choices=['momentum', 'online', 'supervised'], default='momentum',
                        help='which branch to export (default: momentum, what the method fine-tunes from; online: '
                             'for train.py --pretrained_branch online; supervised: the encoder + decoder of a '
                             'train.py checkpoint, for train.py --pretrained_branch supervised)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> ExportSummary:
    args = parse_args(argv)
    with input_errors(OSError, ValueError):  # the messages name the file and the problem: one line, exit status 2
        summary = export_pretrained(args.ckpt_path, args.out_path, args.dtype, args.branch)
    print(summary.summary(), flush=True)
    return summary


if __name__ == '__main__':
    run_main(main)
