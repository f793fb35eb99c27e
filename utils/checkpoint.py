"""Loading Lightning checkpoints (official QCNet / SmartPretrain releases or our own) with strict key checking."""
import os
import pickle
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or has not the Lightning layout."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the model; the message lists every offending key."""

    def __init__(self, source: str, missing: Sequence[str], unexpected: Sequence[str],
                 mismatched: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]) -> None:
        self.source, self.missing, self.unexpected, self.mismatched = source, list(missing), list(unexpected), \
            list(mismatched)
        first = ([f'missing {self.missing[0]}'] if self.missing else []) + \
            ([f'unexpected {self.unexpected[0]}'] if self.unexpected else []) + \
            ([f'other shape {self.mismatched[0][0]}'] if self.mismatched else [])
        # the first line alone (what a command-line script prints) names the file, the problem and the fix
        lines = [f'{source}: state_dict does not match the model ({len(self.missing)} missing, '
                 f'{len(self.unexpected)} unexpected, {len(self.mismatched)} with another shape; first: '
                 f'{", ".join(first)}) (load it with the model class and hyper-parameters it was saved with)']
        if self.missing:
            lines.append('  missing keys (in the model, not in the checkpoint):')
            lines.extend(f'    {k}' for k in self.missing)
        if self.unexpected:
            lines.append('  unexpected keys (in the checkpoint, not in the model):')
            lines.extend(f'    {k}' for k in self.unexpected)
        if self.mismatched:
            lines.append('  shape mismatches (key: checkpoint shape vs model shape):')
            lines.extend(f'    {k}: {tuple(c)} vs {tuple(m)}' for k, c, m in self.mismatched)
        super().__init__('\n'.join(lines))


def read_checkpoint(path: PathLike, map_location: Any = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """Reads a Lightning ``.ckpt`` and checks it has a ``state_dict`` mapping names to tensors.

    ``weights_only`` (default True) restricts unpickling to tensors and plain containers, which is enough for
    official checkpoints; pass False only for files you trust that store other Python objects.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    try:
        checkpoint = torch.load(path, map_location=map_location,
                                weights_only=True if weights_only is None else weights_only)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f'{path}: cannot be read with weights_only=True ({str(error).splitlines()[0]}); '
                              f'if you trust the file, load it with weights_only=False') from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({error})') from error
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        keys = sorted(checkpoint.keys()) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f'{path}: not a Lightning checkpoint (no "state_dict"; found {keys})')
    state_dict = checkpoint['state_dict']
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f'{path}: "state_dict" must map parameter names to tensors')
    return dict(checkpoint)


def compare_state_dicts(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]
                        ) -> Tuple[List[str], List[str], List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]]:
    """(missing, unexpected, mismatched) keys of ``actual`` (checkpoint) against ``expected`` (model)."""
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [(k, tuple(actual[k].shape), tuple(expected[k].shape)) for k in expected
                  if k in actual and tuple(actual[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, mismatched


def aliased_keys(model: torch.nn.Module) -> List[List[str]]:
    """Groups of state-dict names that refer to one tensor (e.g. the shared source/target norm of a
    self-attention layer, saved under both names)."""
    groups: Dict[Tuple[int, int, Tuple[int, ...]], List[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault((tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape)), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                     strict: bool = True) -> None:
    """Raises :class:`CheckpointMismatchError` when ``state_dict`` does not fit ``model``.

    Shape mismatches always fail; missing/unexpected keys fail when ``strict``. Names that the model shares
    between two keys must hold equal values in the checkpoint (else one would silently win).
    """
    missing, unexpected, mismatched = compare_state_dicts(model.state_dict(), state_dict)
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(source, missing if strict else [], unexpected if strict else [], mismatched)
    conflicting = [names for names in aliased_keys(model)
                   if len({k for k in names if k in state_dict}) > 1
                   and not all(torch.equal(state_dict[names[0]], state_dict[k]) for k in names[1:] if k in state_dict)]
    if conflicting:
        listing = '; '.join(' = '.join(names) for names in conflicting)
        raise CheckpointError(f'{source}: entries that share one parameter in the model hold different values: '
                              f'{listing}')


def extract_prefixed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Sub-dict of the entries starting with ``prefix`` (e.g. 'momentum_branch.encoder.'), prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_module_from_checkpoint(cls, checkpoint_path: PathLike, map_location: Any = None, strict: bool = True,
                                weights_only: Optional[bool] = None, **hparam_overrides):
    """Instantiates the LightningModule ``cls`` from the checkpoint's hyper-parameters (``hparam_overrides`` win)
    and loads its weights after :func:`check_state_dict`. The module is returned in training mode, with the tensors
    on ``map_location`` (CPU by default)."""
    source = os.fspath(checkpoint_path)
    checkpoint = read_checkpoint(source, map_location='cpu' if map_location is None else map_location,
                                 weights_only=weights_only)
    hparams = dict(checkpoint.get('hyper_parameters') or {})
    hparams.update(hparam_overrides)
    try:
        model = cls(**hparams)
    except TypeError as error:
        raise CheckpointError(f'{source}: hyper_parameters do not fit {cls.__name__} ({error})') from error
    if hasattr(model, 'on_load_checkpoint'):
        model.on_load_checkpoint(checkpoint)
    check_state_dict(model, checkpoint['state_dict'], source, strict=strict)
    model.load_state_dict(checkpoint['state_dict'], strict=strict)
    return model


def load_submodule_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str,
                           source: str) -> None:
    """Loads the ``prefix``-ed entries of a checkpoint's state_dict into ``module`` (strict, with the listing)."""
    sub = extract_prefixed(state_dict, prefix)
    if not sub:
        raise CheckpointError(f'{source}: no state_dict entries start with {prefix!r}')
    check_state_dict(module, sub, f'{source} [{prefix}*]', strict=True)
    module.load_state_dict(sub, strict=True)


def state_dict_spec(state_dict: Mapping[str, torch.Tensor]) -> List[Tuple[str, Tuple[int, ...]]]:
    """[(name, shape)] in state-dict order, e.g. to compare with tests/data/spec/*.tsv."""
    return [(k, tuple(v.shape)) for k, v in state_dict.items()]


def read_spec_tsv(path: PathLike) -> List[Tuple[str, Tuple[int, ...]]]:
    """Parses a 'name<TAB>(d0, d1, ...)' key listing such as the official checkpoint specs."""
    entries = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                name, shape = line.rstrip('\n').split('\t')
                dims: Iterable[str] = [d for d in shape.strip().strip('()').split(',') if d.strip()]
                entries.append((name, tuple(int(d) for d in dims)))
            except ValueError as error:
                raise ValueError(f'{os.fspath(path)}:{line_no}: expected "name<TAB>(shape)", got {line!r}') from error
    return entries
