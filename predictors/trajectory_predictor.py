"""What every supervised trajectory predictor of the project shares: QCNet's training objective, the Argoverse 2
validation metrics, the submission path, AdamW with a cosine schedule, and checkpoint loading that refuses another
model's checkpoint.

A subclass builds its networks in ``__init__`` (then calls ``self.init_objectives()``) and implements
``forward(data)`` returning the decoder dict of ``modules.QCNetDecoder``: loc/scale_{propose,refine}_pos
[A, K, F, output_dim], loc_/conc_{propose,refine}_head [A, K, F, 1] and pi [A, K], in each agent's frame at its last
history step (the frame of ``transforms.TargetBuilder``). It needs the attributes ``dataset``, ``output_dim``,
``output_head``, ``num_historical_steps``, ``num_future_steps``, ``lr``, ``weight_decay``, ``T_max``,
``submission_dir`` and ``submission_file_name``. The class attributes name the model in checkpoints
(``MODEL_NAME``, stored as hyper-parameter ``model``), the SmartPretrain backbone whose pre-trained weights it takes
(``SSL_BACKBONE``) and, for ``--copy_refine``, which decoder submodules start from which pre-trained ones
(``PROPOSE_TO_REFINE``).
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.data import Batch, HeteroData

from datasets.scenario import FOCAL_CATEGORY  # the Argoverse 2 track category scored by the benchmark
from losses.mixture_nll_loss import MixtureNLLLoss
from losses.nll_loss import NLLLoss
from utils.checkpoint import CheckpointError, load_module_from_checkpoint
from predictors.names import normalise_model_name
from utils.schedules import warmup_cosine

EVAL_MAX_GUESSES = 6
MODEL_HPARAM = 'model'
DEFAULT_MODEL_NAME = 'QCNet'  # checkpoints that name no model: official QCNet releases and early runs


def use_fused_adamw(on_cuda: bool, gradient_clip_val: float) -> bool:
    """Whether to take the fused AdamW kernel: on CUDA, unless gradients are clipped (Lightning's mixed-precision
    plugin refuses to clip for an optimiser that unscales gradients itself, which fused AdamW declares, and stops
    training with a RuntimeError at the first step) or ``QCNET_FUSED_ADAMW=0``."""
    return on_cuda and gradient_clip_val <= 0 and os.environ.get('QCNET_FUSED_ADAMW', '1') != '0'


def warmup_cosine_factor(epoch: int, warmup_epochs: int, total_epochs: int) -> float:
    """Learning-rate factor of epoch ``epoch``: (epoch + 1) / warmup_epochs during the warm-up (the first epoch
    already trains), then ``utils.schedules.warmup_cosine``'s half-cosine from 1 down to 0 at ``total_epochs``."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return warmup_cosine(epoch, total_epochs, warmup_epochs, 0.0, 1.0, 0.0)


def read_hyper_parameters(path: str) -> Dict[str, Any]:
    """``hyper_parameters`` of a Lightning checkpoint, read without loading its tensors (memory-mapped)."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as error:  # mmap needs the zip format; fall back to a plain read for old pickles
        try:
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        except Exception:
            raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({type(error).__name__}: '
                                  f'{str(error).strip().splitlines()[0] if str(error).strip() else ""})') from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{path}: not a Lightning checkpoint ({type(checkpoint).__name__})')
    hparams = dict(checkpoint.get('hyper_parameters') or {})
    state_dict = checkpoint.get('state_dict')
    if isinstance(state_dict, Mapping) and any(str(k).startswith('momentum_branch.') for k in state_dict):
        hparams['_pretraining'] = True  # marker for checkpoint_model_name (not a real hyper-parameter)
    return hparams


def checkpoint_model_name(path: str, hparams: Optional[Mapping[str, Any]] = None) -> str:
    """Predictor name stored in a supervised checkpoint; a pre-training checkpoint is an error naming the file."""
    hparams = read_hyper_parameters(path) if hparams is None else hparams
    if hparams.get('_pretraining'):
        backbone = hparams.get('backbone', 'qcnet')
        raise CheckpointError(f'{path}: a SmartPretrain pre-training checkpoint (backbone {backbone!r}), not a '
                              f'trained predictor; fine-tune it first (train.py --pretrained_ckpt {path})')
    return str(hparams.get(MODEL_HPARAM) or DEFAULT_MODEL_NAME)


RNG_STATES_KEY = 'rng_states'  # checkpoint entry (plain tensors and containers: loads with weights_only=True)


class TrajectoryPredictor(pl.LightningModule):
    """Base class of the supervised predictors (see the module docstring)."""

    MODEL_NAME = 'TrajectoryPredictor'
    SSL_BACKBONE: Optional[str] = None
    PROPOSE_TO_REFINE: Tuple[Tuple[str, str], ...] = ()

    def init_objectives(self) -> None:
        """Losses, metrics and the test-prediction store; records the model name in the hyper-parameters."""
        self.hparams[MODEL_HPARAM] = self.MODEL_NAME
        distributions = ['laplace'] * self.output_dim + ['von_mises'] * self.output_head
        self.reg_loss = NLLLoss(component_distribution=distributions, reduction='none')
        self.cls_loss = MixtureNLLLoss(component_distribution=distributions, reduction='none')

        # Imported here so that the model (and checkpoint loading) works without the metrics package's extras.
        from metrics import MR, Brier, minADE, minAHE, minFDE, minFHE
        self.Brier = Brier(max_guesses=EVAL_MAX_GUESSES)
        self.minADE = minADE(max_guesses=EVAL_MAX_GUESSES)
        self.minAHE = minAHE(max_guesses=EVAL_MAX_GUESSES)
        self.minFDE = minFDE(max_guesses=EVAL_MAX_GUESSES)
        self.minFHE = minFHE(max_guesses=EVAL_MAX_GUESSES)
        self.MR = MR(max_guesses=EVAL_MAX_GUESSES)

        # scenario_id -> (focal track id, trajectories [K, F, 2] world frame, probabilities [K]); filled by test_step.
        self.test_predictions: Dict[str, Tuple[str, Any, Any]] = {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict: bool = True,
                             weights_only: Optional[bool] = None, **kwargs):
        """Builds the model from an (official or own) Lightning checkpoint.

        Fails with a :class:`utils.checkpoint.CheckpointError` naming the file when it holds another model (stored
        hyper-parameter ``model``; none = QCNet) or a pre-training checkpoint, and with
        :class:`utils.checkpoint.CheckpointMismatchError` listing the missing, unexpected and mis-shaped keys when the
        weights do not fit (``strict=False`` tolerates missing/unexpected keys only). ``kwargs`` override stored
        hyper-parameters. ``hparams_file`` is not supported (checkpoints embed their hyper-parameters).
        """
        if hparams_file is not None:
            raise ValueError(f'{cls.__name__}.load_from_checkpoint: hparams_file is not supported; checkpoints embed '
                             f'their hyper-parameters (pass overrides as keyword arguments)')
        path = os.fspath(checkpoint_path)
        stored = checkpoint_model_name(path)
        if normalise_model_name(stored) != normalise_model_name(cls.MODEL_NAME):
            raise CheckpointError(f'{path}: a {stored} checkpoint cannot be loaded as {cls.MODEL_NAME} '
                                  f'(hyper-parameter model={stored!r}); use --model {stored} (val.py and test.py '
                                  f'detect the model when --model is left at auto)')
        return load_module_from_checkpoint(cls, path, map_location=map_location, strict=strict,
                                           weights_only=weights_only, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------------------------------------------------
    def _trajectories(self, pred: Dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """[A, K, F, 2*(output_dim + output_head)]: locations then scales/concentrations."""
        parts = [pred[f'loc_{stage}_pos'][..., :self.output_dim]]
        if self.output_head:
            parts.append(pred[f'loc_{stage}_head'])
        parts.append(pred[f'scale_{stage}_pos'][..., :self.output_dim])
        if self.output_head:
            parts.append(pred[f'conc_{stage}_head'])
        return torch.cat(parts, dim=-1)

    def compute_losses(self, data: HeteroData, pred: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Official QCNet training objective: winner-takes-all Laplace(/von Mises) NLL for the proposed and refined
        trajectories of the mode closest to the ground truth, plus the mixture NLL of the final positions for pi.

        Needs ``agent.target`` [A, F, 4] (``transforms.TargetBuilder``). Returns the three loss terms, their sum
        ('loss') and the tensors the metrics need ('traj_refine', 'gt', 'reg_mask').
        """
        reg_mask = data['agent']['predict_mask'][:, self.num_historical_steps:]  # [A, F]
        cls_mask = data['agent']['predict_mask'][:, -1]  # [A]
        traj_propose = self._trajectories(pred, 'propose')
        traj_refine = self._trajectories(pred, 'refine')
        target = data['agent']['target']
        gt = torch.cat([target[..., :self.output_dim], target[..., -1:]], dim=-1)  # [A, F, output_dim + 1]
        # Winner mode: smallest summed displacement of the proposal over the valid future steps.
        l2_norm = (torch.linalg.vector_norm(traj_propose[..., :self.output_dim] -
                                            gt[..., :self.output_dim].unsqueeze(1), dim=-1)
                   * reg_mask.unsqueeze(1)).sum(dim=-1)  # [A, K]
        best_mode = l2_norm.argmin(dim=-1)
        agents = torch.arange(traj_propose.size(0), device=traj_propose.device)
        target_reg = gt[..., :self.output_dim + self.output_head]
        # Normalised per future step by the number of agents valid at that step, then averaged over steps.
        valid_per_step = reg_mask.sum(dim=0).clamp(min=1)
        reg_loss_propose = ((self.reg_loss(traj_propose[agents, best_mode], target_reg).sum(dim=-1) * reg_mask)
                            .sum(dim=0) / valid_per_step).mean()
        reg_loss_refine = ((self.reg_loss(traj_refine[agents, best_mode], target_reg).sum(dim=-1) * reg_mask)
                           .sum(dim=0) / valid_per_step).mean()
        cls_loss = self.cls_loss(pred=traj_refine[:, :, -1:].detach(), target=gt[:, -1:, :self.output_dim +
                                 self.output_head], prob=pred['pi'], mask=reg_mask[:, -1:]) * cls_mask
        cls_loss = cls_loss.sum() / cls_mask.sum().clamp(min=1)
        return {'reg_loss_propose': reg_loss_propose, 'reg_loss_refine': reg_loss_refine, 'cls_loss': cls_loss,
                'loss': reg_loss_propose + reg_loss_refine + cls_loss,
                'traj_refine': traj_refine, 'gt': gt, 'reg_mask': reg_mask}

    def training_step(self, data, batch_idx):
        losses = self.compute_losses(data, self(data))
        for name in ('reg_loss_propose', 'reg_loss_refine', 'cls_loss'):
            self.log(f'train_{name}', losses[name], prog_bar=False, on_step=True, on_epoch=True, batch_size=1)
        return losses['loss']

    # ------------------------------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------------------------------
    def _focal_mask(self, data: HeteroData) -> torch.Tensor:
        if self.dataset != 'argoverse_v2':
            raise ValueError(f'{self.dataset} is not a valid dataset')
        return data['agent']['category'] == FOCAL_CATEGORY

    def predict_batch(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """The forward pass of validation and testing (a subclass may run it another way, same outputs)."""
        return self(data)

    def validation_step(self, data, batch_idx):
        pred = self.predict_batch(data)
        losses = self.compute_losses(data, pred)
        for name in ('reg_loss_propose', 'reg_loss_refine', 'cls_loss'):
            self.log(f'val_{name}', losses[name], prog_bar=True, on_step=False, on_epoch=True, batch_size=1,
                     sync_dist=True)
        eval_mask = self._focal_mask(data)
        valid_mask_eval = losses['reg_mask'][eval_mask]
        traj_eval = losses['traj_refine'][eval_mask, :, :, :self.output_dim + self.output_head]
        if not self.output_head:
            # Heading of each predicted step from its displacement (the first from the agent's origin).
            start = traj_eval.new_zeros(traj_eval.shape[:2] + (1, 2))
            path = torch.cat([start, traj_eval[..., :2]], dim=-2)
            motion = path[:, :, 1:] - path[:, :, :-1]
            traj_eval = torch.cat([traj_eval, torch.atan2(motion[..., 1], motion[..., 0]).unsqueeze(-1)], dim=-1)
        pi_eval = F.softmax(pred['pi'][eval_mask], dim=-1)
        gt_eval = losses['gt'][eval_mask]
        pos_pred, pos_gt = traj_eval[..., :self.output_dim], gt_eval[..., :self.output_dim]
        for name in ('Brier', 'minADE', 'minFDE', 'MR'):
            getattr(self, name).update(pred=pos_pred, target=pos_gt, prob=pi_eval, valid_mask=valid_mask_eval)
        for name in ('minAHE', 'minFHE'):
            getattr(self, name).update(pred=traj_eval, target=gt_eval, prob=pi_eval, valid_mask=valid_mask_eval)
        for name in ('Brier', 'minADE', 'minAHE', 'minFDE', 'minFHE', 'MR'):
            self.log(f'val_{name}', getattr(self, name), prog_bar=True, on_step=False, on_epoch=True,
                     batch_size=gt_eval.size(0))

    def test_step(self, data, batch_idx):
        pred = self.predict_batch(data)
        eval_mask = self._focal_mask(data)
        traj = pred['loc_refine_pos'][eval_mask, :, :, :2]  # [N, K, F, 2] in the focal agent's frame
        origin = data['agent']['position'][eval_mask, self.num_historical_steps - 1, :2]
        theta = data['agent']['heading'][eval_mask, self.num_historical_steps - 1]
        cos, sin = theta.cos(), theta.sin()
        # Agent frame -> world frame: p_world = R(theta) p_agent + origin (row vectors times R^T).
        rot_t = torch.stack([torch.stack([cos, sin], dim=-1), torch.stack([-sin, cos], dim=-1)], dim=-2)
        traj_world = torch.matmul(traj, rot_t.unsqueeze(1)) + origin.view(-1, 1, 1, 2)
        prob = F.softmax(pred['pi'][eval_mask], dim=-1)

        if isinstance(data, Batch):
            ids = [track_id for scene_ids in data['agent']['id'] for track_id in scene_ids]
            scene_of_agent = data['agent']['batch'][eval_mask].tolist()
            scenario_ids = [data['scenario_id'][s] for s in scene_of_agent]
        else:
            ids = list(data['agent']['id'])
            scenario_ids = [data['scenario_id']] * int(eval_mask.sum())
        focal_rows = eval_mask.nonzero(as_tuple=True)[0].tolist()
        traj_world, prob = traj_world.detach().cpu().numpy(), prob.detach().cpu().numpy()
        for i, (row, scenario_id) in enumerate(zip(focal_rows, scenario_ids)):
            if scenario_id in self.test_predictions:
                raise ValueError(f'{type(self).__name__}.test_step: scenario {scenario_id} has more than one focal '
                                 f'agent or was seen twice')
            self.test_predictions[scenario_id] = (ids[row], traj_world[i], prob[i])

    def on_test_start(self) -> None:
        self.test_predictions = {}

    def on_test_end(self) -> None:
        predictions = self.test_predictions
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Optional[dict]] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = {k: v for part in gathered for k, v in part.items()}
        if self.global_rank != 0:
            return
        from utils.submission import write_submission
        path = Path(self.submission_dir) / f'{self.submission_file_name}.parquet'
        write_submission(predictions, path)

    # ------------------------------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------------------------------
    def parameter_groups(self) -> Tuple[List[str], List[str]]:
        """(names with weight decay, names without): weights of linear/conv/attention/recurrent layers decay;
        biases, norms, embeddings and free parameters (e.g. traj_emb_h0) do not."""
        decay_modules = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, nn.LSTM, nn.LSTMCell,
                         nn.GRU, nn.GRUCell)
        no_decay_modules = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.Embedding)
        decay, no_decay = set(), set()
        for module_name, module in self.named_modules():
            for param_name, _ in module.named_parameters(recurse=False):
                full_name = f'{module_name}.{param_name}' if module_name else param_name
                if 'bias' in param_name:
                    no_decay.add(full_name)
                elif 'weight' in param_name and isinstance(module, decay_modules):
                    decay.add(full_name)
                elif 'weight' in param_name and isinstance(module, no_decay_modules):
                    no_decay.add(full_name)
                elif 'weight' not in param_name:
                    no_decay.add(full_name)
        names = {name for name, _ in self.named_parameters()}
        unassigned = names - decay - no_decay
        if decay & no_decay or unassigned:
            raise RuntimeError(f'{type(self).__name__}: parameters in both groups {sorted(decay & no_decay)}, '
                               f'in none {sorted(unassigned)}')
        return sorted(decay), sorted(no_decay)

    def configure_optimizers(self):
        """AdamW (decay / no-decay groups) with a cosine schedule over T_max epochs, as officially; the fused
        AdamW kernel is used on CUDA (same update rule, fewer kernel launches)."""
        params = dict(self.named_parameters())
        decay, no_decay = self.parameter_groups()
        # frozen parameters (train.py --freeze_encoder) stay out of the optimiser: no weight decay moves them
        groups = [{'params': [params[n] for n in decay if params[n].requires_grad], 'weight_decay': self.weight_decay},
                  {'params': [params[n] for n in no_decay if params[n].requires_grad], 'weight_decay': 0.0}]
        fused = use_fused_adamw(all(p.is_cuda for p in params.values()),
                                float(self.hparams.get('gradient_clip_val') or 0.0))
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, fused=fused or None)
        warmup = int(self.hparams.get('warmup_epochs') or 0)
        if warmup <= 0:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer=optimizer, T_max=self.T_max, eta_min=0.0)
        else:  # linear warm-up over `warmup` epochs, then cosine to 0 at T_max (Forecast-MAE's recipe)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: warmup_cosine_factor(
                epoch, warmup, self.T_max))
        return [optimizer], [scheduler]

    # Python / NumPy / torch RNG states travel with training checkpoints, so `train.py --resume` continues the random
    # streams (shuffling order of the next epoch, dropout) instead of restarting them from the seed.
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        from predictors.smartpretrain import rng_states  # lazy: the pre-training module imports the backbones
        checkpoint[RNG_STATES_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if RNG_STATES_KEY in checkpoint and self._trainer is not None:  # resuming training, not evaluation
            from predictors.smartpretrain import set_rng_states
            set_rng_states(checkpoint[RNG_STATES_KEY])
