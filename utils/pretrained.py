"""Transfer of SmartPretrain pre-trained weights into a supervised predictor for fine-tuning.

Works for every predictor of ``predictors`` (QCNet, ForecastMAE, ...): their SSL backbone (``SSL_BACKBONE``) has
submodules ``encoder`` and ``decoder`` named as the predictor's, so the same rule applies to all. Taken from a
pre-training checkpoint (ours or the official release; same layout): the MOMENTUM branch's
``momentum_branch.encoder.*`` -> ``model.encoder`` (every key must fit: strict) and ``momentum_branch.decoder.*`` ->
``model.decoder`` (only the proposal part exists in pre-training: non-strict). The single pre-training mode embedding
is repeated to the model's number of modes; with ``copy_refine`` the proposal layers are also copied into the
refinement layers (the model's ``PROPOSE_TO_REFINE`` pairs). Everything else (trajectory heads, refinement layers
without ``copy_refine``, ...) keeps its fresh initialisation and nothing is frozen. A checkpoint pre-trained with
another backbone (hyper-parameter ``backbone``; official checkpoints: 'qcnet') is refused with an error naming the
file and both backbones. The returned ``TransferReport`` lists what was loaded.

``branch='online'`` takes the online branch (``branch.encoder.*`` / ``branch.decoder.*``) instead. The method transfers
the momentum branch, an EMA whose momentum starts at 0.996: after K optimiser steps about exp(-0.002 K) of its random
initialisation is still in it (61 % after 250 steps, 2 % after 2,000), so short pre-training runs hand fine-tuning a
mostly random encoder; the online branch holds what was learnt at every step count.

``branch='supervised'`` takes the weights of a trained predictor of the same model class (keys ``encoder.*`` /
``decoder.*`` of a ``train.py`` checkpoint): every encoder and decoder tensor must fit, the refinement layers and heads
come trained (so ``copy_refine`` is refused). It starts a fine-tune from supervised pre-training on a larger labelled
pool: the "oracle" of the low-label study (docs/LOW_LABEL.md), which shows how much an unlabelled pool could give.

``mode_noise_std`` > 0 is a deviation from the method, off by default: the one pre-training mode embedding repeated
to the model's K modes makes the K mode queries identical when fine-tuning starts (only dropout breaks the tie), so
each copy gets its own Gaussian noise of that standard deviation (fresh embeddings are initialised with std 0.02,
``utils/weight_init.py``). It draws from torch's global generator: seed first for a reproducible transfer.
"""
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

SOURCE_PREFIX = 'momentum_branch.'
# which pre-training branch fine-tuning starts from: its key prefix in the checkpoint
BRANCH_PREFIXES = {'momentum': SOURCE_PREFIX, 'online': 'branch.'}
SUPERVISED = 'supervised'  # the branch name of a trained predictor's checkpoint (no prefix)
# Vocabulary tables whose pre-training version may be longer (official multi-dataset pre-training adds AV1/Waymo
# categories after the Argoverse 2 ones): only these may be cut to the model's vocabulary.
_VOCABULARY_TABLES = ('type_pt_emb', 'side_pt_emb', 'type_pl_emb', 'type_a_emb')
# QCNet's pairs, for models that declare none (PROPOSE_TO_REFINE of the predictors)
_PROPOSE_TO_REFINE = (('t2m_propose_attn_layers', 't2m_refine_attn_layers'),
                      ('pl2m_propose_attn_layers', 'pl2m_refine_attn_layers'),
                      ('a2m_propose_attn_layers', 'a2m_refine_attn_layers'),
                      ('m2m_propose_attn_layer', 'm2m_refine_attn_layer'))


@dataclass
class TransferReport:
    """What ``load_pretrained`` did; keys are the model's state-dict names (``encoder.*``, ...)."""
    checkpoint: str
    branch: str = 'momentum'
    loaded: List[str] = field(default_factory=list)
    copied_to_refine: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)       # human-readable notes (mode repeat, vocabulary cut)
    not_loaded: List[str] = field(default_factory=list)    # model keys left at their fresh initialisation
    unused: List[str] = field(default_factory=list)        # checkpoint keys not used

    def summary(self) -> str:
        def groups(keys: List[str]) -> str:
            counts: Dict[str, int] = {}
            for key in keys:
                parts = key.split('.')
                head = '.'.join(parts[:2])
                counts[head] = counts.get(head, 0) + 1
            return ', '.join(f'{name} ({n})' for name, n in counts.items()) or '-'
        lines = [f'pre-trained weights ({self.branch} branch) from {self.checkpoint}:',
                 f'  loaded      {len(self.loaded):4d} tensors: {groups(self.loaded)}',
                 f'  of which    {len(self.copied_to_refine):4d} copied from proposal into refinement layers',
                 f'  fresh init  {len(self.not_loaded):4d} tensors: {groups(self.not_loaded)}',
                 f'  unused      {len(self.unused):4d} checkpoint tensors: {groups(self.unused)}']
        lines.extend(f'  adapted: {note}' for note in self.adapted)
        return '\n'.join(lines)


def read_pretraining_checkpoint(ckpt_path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(``state_dict``, ``hyper_parameters`` or {}) of a Lightning checkpoint (or a bare state dict), loaded on CPU
    without unpickling code."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f'{ckpt_path}: no such checkpoint file')
    with open(ckpt_path, 'rb') as f:
        head = f.read(2)
    if not zipfile.is_zipfile(ckpt_path) and head[:1] != b'\x80':  # torch.save writes a zip (or, long ago, a pickle)
        raise ValueError(f'{ckpt_path}: not a readable PyTorch checkpoint file (neither a torch.save zip archive nor '
                         f'a pickle)')
    try:
        checkpoint = torch.load(ckpt_path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f'{ckpt_path}: refused to load: the checkpoint holds Python objects other than tensors and '
                         f'plain containers ({str(error).strip().splitlines()[-1][:200]})') from None
    except Exception as error:  # truncated file, not a zip/pickle at all, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise ValueError(f'{ckpt_path}: not a readable PyTorch checkpoint file (torch.load failed: '
                         f'{type(error).__name__} {detail})') from None
    hparams: Dict[str, Any] = {}
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('state_dict'), Mapping):
        state_dict = checkpoint['state_dict']
        hparams = dict(checkpoint.get('hyper_parameters') or {})
    elif isinstance(checkpoint, Mapping) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        state_dict = checkpoint
    else:
        raise ValueError(f'{ckpt_path}: checkpoint has no state_dict (top-level keys: '
                         f'{sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__})')
    return dict(state_dict), hparams


def branch_prefix(branch: str) -> str:
    """Key prefix of pre-training ``branch`` ('momentum' or 'online'; 'supervised': none)."""
    if branch == SUPERVISED:
        return ''
    if branch not in BRANCH_PREFIXES:
        raise ValueError(f'unknown pre-training branch {branch!r}; known: {", ".join(BRANCH_PREFIXES)}, '
                         f'{SUPERVISED}')
    return BRANCH_PREFIXES[branch]


def _check_supervised_layout(ckpt_path: str, state_dict: Mapping[str, torch.Tensor], hparams: Mapping[str, Any],
                             model: nn.Module) -> None:
    """A supervised checkpoint of ``model``'s class: keys encoder.* and decoder.*, hyper-parameter 'model' (when
    there are hyper-parameters) naming the same predictor."""
    if any(k.startswith((SOURCE_PREFIX + 'encoder.', 'branch.encoder.')) for k in state_dict):
        raise ValueError(f'{ckpt_path}: a SmartPretrain pre-training checkpoint, not a supervised one; transfer it '
                         f'with the momentum or online branch')
    if not (any(k.startswith('encoder.') for k in state_dict) and any(k.startswith('decoder.') for k in state_dict)):
        raise ValueError(f'{ckpt_path}: not a supervised predictor checkpoint: no encoder.* / decoder.* keys '
                         f'(first keys: {list(state_dict)[:4]})')
    if hparams:
        found = str(hparams.get('model') or 'QCNet')
        wanted = getattr(model, 'MODEL_NAME', type(model).__name__)
        norm = lambda name: str(name).replace('_', '').replace('-', '').lower()  # noqa: E731
        if norm(found) != norm(wanted):
            raise ValueError(f'{ckpt_path}: a supervised {found} checkpoint, but the model is {wanted}; train the '
                             f'oracle with the same --model')


def _check_pretraining_layout(ckpt_path: str, state_dict: Mapping[str, torch.Tensor],
                              hparams: Mapping[str, Any], branch: str = 'momentum') -> None:
    prefix = branch_prefix(branch)
    if any(k.startswith(prefix + 'encoder.') for k in state_dict):
        return
    other = [name for name, p in BRANCH_PREFIXES.items() if name != branch
             and any(k.startswith(p + 'encoder.') for k in state_dict)]
    if other:
        raise ValueError(f'{ckpt_path}: holds only the {other[0]} branch ({BRANCH_PREFIXES[other[0]]}encoder.*), '
                         f'not the {branch} one ({prefix}encoder.*): a slim export keeps one branch; use the full '
                         f'pre-training checkpoint (or its export with --branch {branch}), or --pretrained_branch '
                         f'{other[0]}')
    if any(k.startswith('encoder.') for k in state_dict) and any(k.startswith('decoder.') for k in state_dict):
        model = hparams.get('model') or 'QCNet'
        raise ValueError(f'{ckpt_path}: this is a {model} (supervised / fine-tuned) checkpoint (keys encoder.*, '
                         f'decoder.*), not a SmartPretrain pre-training checkpoint; resume or evaluate it directly '
                         f'instead of using it as --pretrained_ckpt')
    raise ValueError(f'{ckpt_path}: not a SmartPretrain pre-training checkpoint: no {prefix}encoder.* keys '
                     f'(first keys: {list(state_dict)[:4]})')


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _fit_vocabulary(name: str, value: torch.Tensor, wanted: torch.Size, notes: List[str]) -> torch.Tensor:
    table = name.split('.')[-2] if '.' in name else name
    if (table in _VOCABULARY_TABLES and value.dim() == 2 and value.shape[1:] == wanted[1:]
            and value.shape[0] > wanted[0]):
        notes.append(f'{name}: vocabulary table cut from {value.shape[0]} to {wanted[0]} rows')
        return value[:wanted[0]]
    return value


def _check_backbone(ckpt_path: str, hparams: Mapping[str, Any], model: nn.Module, expected: str,
                    encoder_keys: Sequence[str]) -> None:
    """The checkpoint's backbone must be the model's: by its hyper-parameter ``backbone`` (pre-training checkpoints
    without one are the official QCNet ones), or, for a bare state dict, by its encoder keys."""
    hint = (f'pre-train with `train_ssl.py --backbone {expected}`, or fine-tune a model of the checkpoint\'s '
            f'backbone (train.py --model)')
    if hparams:
        found = str(hparams.get('backbone') or 'qcnet')
        if found != expected:
            raise ValueError(f'{ckpt_path}: pre-trained with backbone {found!r}, but {type(model).__name__} takes '
                             f'{expected!r} weights; {hint}')
    elif encoder_keys and not set(encoder_keys) & set(model.encoder.state_dict()):
        raise ValueError(f'{ckpt_path}: its encoder ({encoder_keys[0]}, ...) shares no weight name with the '
                         f'{type(model).__name__} encoder: pre-trained with another backbone than {expected!r}; '
                         f'{hint}')


def _mismatches(ckpt_path: str, module_name: str, weights: Mapping[str, torch.Tensor],
                expected: Mapping[str, torch.Tensor], strict: bool) -> None:
    missing = [k for k in expected if k not in weights] if strict else []
    unexpected = [k for k in weights if k not in expected] if strict else []
    shapes = [f'{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}' for k, v in weights.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f'missing {missing[:6]}{" ..." if len(missing) > 6 else ""} ({len(missing)})')
        if unexpected:
            problems.append(f'unexpected {unexpected[:6]}{" ..." if len(unexpected) > 6 else ""} ({len(unexpected)})')
        if shapes:
            problems.append(f'shape mismatch {shapes[:4]}{" ..." if len(shapes) > 4 else ""} ({len(shapes)})')
        raise ValueError(f'{ckpt_path}: pre-trained {module_name} weights do not fit the model ({"; ".join(problems)}); '
                         f'were both built with the same hyper-parameters?')


def load_pretrained(model: nn.Module, ckpt_path: str, copy_refine: bool, verbose: bool = True,
                    branch: str = 'momentum', mode_noise_std: float = 0.0) -> TransferReport:
    """Loads the momentum (default) or online ``branch`` of a SmartPretrain checkpoint into ``model.encoder`` /
    ``model.decoder``.

    Args:
        model: a predictor with ``encoder`` and ``decoder`` submodules; its class attributes ``SSL_BACKBONE``
            (default 'qcnet') and ``PROPOSE_TO_REFINE`` (default QCNet's pairs) say which pre-training backbone
            fits and which decoder layers ``copy_refine`` initialises from which.
        ckpt_path: pre-training checkpoint (``.ckpt`` of ``train_ssl.py`` or of the official release).
        copy_refine: also initialise the refinement layers from the proposal ones.
        verbose: print ``report.summary()``.
        branch: 'momentum' (the method), 'online', or 'supervised' (a trained predictor of the same class).
        mode_noise_std: > 0 adds independent Gaussian noise of this std to each of the K copies of a repeated
            one-mode embedding (a deviation, see the module docstring); an error when no embedding is repeated.
    Returns a ``TransferReport``; raises ``ValueError`` naming the file on a checkpoint of the wrong kind, backbone
    or shape.
    """
    if mode_noise_std < 0:
        raise ValueError(f'mode_noise_std must be >= 0, got {mode_noise_std}')
    state_dict, hparams = read_pretraining_checkpoint(ckpt_path)
    prefix = branch_prefix(branch)
    supervised = branch == SUPERVISED
    if supervised:
        _check_supervised_layout(ckpt_path, state_dict, hparams, model)
        if copy_refine:
            raise ValueError(f'{ckpt_path}: copy_refine with a supervised checkpoint would overwrite its trained '
                             f'refinement layers with the proposal ones; transfer it with copy_refine off')
    else:
        _check_pretraining_layout(ckpt_path, state_dict, hparams, branch)
        _check_backbone(ckpt_path, hparams, model, getattr(model, 'SSL_BACKBONE', None) or 'qcnet',
                        list(_strip(state_dict, prefix + 'encoder.')))
    propose_to_refine = getattr(model, 'PROPOSE_TO_REFINE', None) or _PROPOSE_TO_REFINE
    report = TransferReport(checkpoint=str(ckpt_path), branch=branch)

    # Encoder: every tensor must be there and fit.
    encoder_expected = model.encoder.state_dict()
    encoder_weights = {k: _fit_vocabulary(k, v, encoder_expected[k].shape, report.adapted) if k in encoder_expected
                       else v for k, v in _strip(state_dict, prefix + 'encoder.').items()}
    _mismatches(ckpt_path, 'encoder', encoder_weights, encoder_expected, strict=True)
    model.encoder.load_state_dict(encoder_weights, strict=True)
    report.loaded.extend(f'encoder.{k}' for k in encoder_weights)

    # Decoder: only the proposal stage exists in pre-training.
    decoder_expected = model.decoder.state_dict()
    decoder_weights: Dict[str, torch.Tensor] = {}
    unused_decoder: List[str] = []
    for key, value in _strip(state_dict, prefix + 'decoder.').items():
        if key.startswith('mode_emb.') and key in decoder_expected:
            num_modes = decoder_expected[key].shape[0]
            if value.shape[0] == 1 and num_modes > 1:
                value = value.repeat(num_modes, *([1] * (value.dim() - 1)))
                report.adapted.append(f'decoder.{key}: pre-training mode embedding repeated to {num_modes} modes')
                if mode_noise_std > 0:
                    value = value + mode_noise_std * torch.randn(value.shape, dtype=torch.float32).to(value.dtype)
                    report.adapted.append(f'decoder.{key}: Gaussian noise of std {mode_noise_std:g} added to each '
                                          f'of the {num_modes} copies (mode symmetry broken; a deviation)')
        if key not in decoder_expected:
            unused_decoder.append(key)
            continue
        decoder_weights[key] = value
        if copy_refine:
            for propose, refine in propose_to_refine:
                if key.startswith(propose + '.') or key == propose:
                    refine_key = refine + key[len(propose):]
                    if refine_key in decoder_expected:
                        decoder_weights[refine_key] = value.clone()
                        report.copied_to_refine.append(f'decoder.{refine_key}')
    if mode_noise_std > 0 and not any('mode symmetry broken' in note for note in report.adapted):
        raise ValueError(f'{ckpt_path}: mode_noise_std {mode_noise_std:g} given, but no one-mode embedding was '
                         f'repeated (the checkpoint\'s decoder already has the model\'s modes): nothing to break')
    _mismatches(ckpt_path, 'decoder', decoder_weights, decoder_expected, strict=supervised)
    result = model.decoder.load_state_dict(decoder_weights, strict=False)
    if result.unexpected_keys:  # cannot happen after the filtering above; guard against silent partial loads
        raise ValueError(f'{ckpt_path}: unexpected decoder keys {result.unexpected_keys[:6]}')
    report.loaded.extend(f'decoder.{k}' for k in decoder_weights)

    loaded = set(report.loaded)
    report.not_loaded = [k for k in model.state_dict() if k not in loaded]
    report.unused = ([k for k in state_dict if not k.startswith((prefix + 'encoder.',
                                                                 prefix + 'decoder.'))]
                     + [prefix + 'decoder.' + k for k in unused_decoder])
    if verbose:
        print(report.summary(), flush=True)
    return report


def load_pretrained_into_qcnet(model: nn.Module, ckpt_path: str, copy_refine: bool,
                               verbose: bool = True) -> TransferReport:
    """``load_pretrained`` (kept under its first name; works for every predictor)."""
    return load_pretrained(model, ckpt_path, copy_refine, verbose=verbose)
