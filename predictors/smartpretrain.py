"""SmartPretrain: self-supervised pre-training of a motion-prediction backbone (contrastive + reconstructive).

A batch is ``{'anchor': Batch, 'target': Batch}`` from ``transforms.SSLViews``. The online branch (backbone +
projector) embeds the anchor view; the momentum branch (an EMA copy, no gradients) embeds both views and gives the
keys. Losses: ``losses.ContrastiveLoss`` (keys gathered from every process) and ``losses.ReconstructionLoss`` (the
target window's trajectory predicted from the anchor embedding plus a learnt embedding of the anchor's start step).

Parameter layout = official SmartPretrain checkpoints: ``branch.*``, ``momentum_branch.*``, ``contra_predictor.*``,
``rec_predictor.*``, ``temp_emb``. Schedules (``utils.schedules.SSLSchedule``) are applied per optimizer step,
before the step, on a fractional epoch like the official code; their configuration and the RNG states are stored in
checkpoints so that a resumed run continues the same curves.
"""
import copy
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
import torch
import torch.nn as nn
from torch_geometric.data import HeteroData

from layers.grouped_batch_norm import mlp_with_grouped_norm
from losses.contrastive_loss import (ContrastiveLoss, ContrastiveOutput, all_gather_equal_rows, all_gather_rows,
                                     all_reduce_sum, world_size)
from losses.reconstruction_loss import ReconstructionLoss, gather_segment_displacements, recurrence_segments
from modules.backbone import SSLBranch, build_backbone
from predictors.arguments import add_smartpretrain_args
from predictors.trajectory_predictor import drop_run_time_options
from transforms.ssl_views import ANCHOR, TARGET, VIEW_ORDER, VIEWS
from utils.parameter_groups import weight_decay_groups
from utils.rng import rng_states, seed_process, set_rng_states
from utils.schedules import SSLSchedule
from utils.weight_init import weight_init

SCHEDULE_KEY = 'ssl_schedule'
RNG_KEY = 'ssl_rng_states'


class SmartPretrain(pl.LightningModule):
    """Pre-training Lightning module. Constructor arguments follow the official ``QCNet_ssl`` names (unused ones,
    e.g. ``T_max`` or ``submission_dir``, are accepted and stored so official hyper-parameters load), plus
    ``lambda_rec`` and ``lambda_contra`` (weights of the reconstruction and contrastive losses; 0 pre-trains with
    one pretext task only), ``backbone`` (registry name) and ``seed``."""

    # Run-time speed hooks (set by acceleration.apply; never hyper-parameters, never saved).
    fixed_shape_step = None
    fused_optimizer = False
    speed_callbacks: Tuple[pl.Callback, ...] = ()

    def __init__(self,
                 dataset: str = 'argoverse_v2',
                 input_dim: int = 2,
                 hidden_dim: int = 128,
                 output_dim: int = 2,
                 output_head: bool = False,
                 num_historical_steps: int = 50,
                 num_future_steps: int = 60,
                 num_modes: int = 1,
                 num_recurrent_steps: int = 3,
                 num_freq_bands: int = 64,
                 num_map_layers: int = 1,
                 num_agent_layers: int = 2,
                 num_dec_layers: int = 2,
                 num_heads: int = 8,
                 head_dim: int = 16,
                 dropout: float = 0.1,
                 pl2pl_radius: float = 150.0,
                 time_span: Optional[int] = 10,
                 pl2a_radius: float = 50.0,
                 a2a_radius: float = 50.0,
                 num_t2m_steps: Optional[int] = 30,
                 pl2m_radius: float = 150.0,
                 a2m_radius: float = 150.0,
                 lr: float = 1.5e-3,
                 weight_decay: float = 1e-1,
                 T_max: int = 32,
                 submission_dir: str = './',
                 submission_file_name: str = 'submission',
                 lr_init: float = 1e-4,
                 lr_last: float = 1e-6,
                 weight_decay_init: float = 1e-2,
                 contra_t: float = 0.07,
                 contra_momentum: float = 0.996,
                 warmup: int = 15,
                 lambda_rec: float = 1.0,
                 lambda_contra: float = 1.0,
                 backbone: str = 'qcnet',
                 seed: int = 2025,
                 separate_dataset_negatives: int = 0,
                 **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        drop_run_time_options(self.hparams)
        hp = self.hparams
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_recurrent_steps = num_recurrent_steps
        self.lambda_rec = lambda_rec
        self.lambda_contra = lambda_contra

        online = build_backbone(backbone, **dict(hp))
        if online.num_recurrent_steps != num_recurrent_steps:
            raise ValueError(f'backbone {backbone!r} has {online.num_recurrent_steps} recurrences, '
                             f'expected {num_recurrent_steps}')
        embed_dim = online.embed_dim
        proj_dim = 2 * embed_dim          # official: projector 128 -> 512 -> 256
        head_dim_ssl = 1024               # official hidden width of predictor and reconstruction heads
        num_steps = num_historical_steps + num_future_steps

        self.branch = SSLBranch(online, proj_hidden_dim=4 * embed_dim, proj_dim=proj_dim)
        self.branch.proj.apply(weight_init)
        # Registered right after the online branch: the official state-dict order.
        self.momentum_branch = copy.deepcopy(self.branch)
        self.momentum_branch.requires_grad_(False)
        self.contra_predictor = nn.Sequential(nn.Linear(proj_dim, head_dim_ssl), nn.BatchNorm1d(head_dim_ssl),
                                              nn.ReLU(inplace=True), nn.Linear(head_dim_ssl, proj_dim))
        self.rec_predictor = nn.Sequential(nn.Linear(2 * proj_dim, head_dim_ssl), nn.LayerNorm(head_dim_ssl),
                                           nn.ReLU(inplace=True), nn.Linear(head_dim_ssl, num_steps * 2))
        # One row per start step; the official table has 2 * num_steps rows (only starts 0..T-2H are ever used).
        self.temp_emb = nn.Parameter(torch.zeros(num_steps * 2, proj_dim))
        for head in (self.contra_predictor, self.rec_predictor):
            head.apply(weight_init)

        self.contrastive_loss = ContrastiveLoss(temperature=contra_t)
        self.reconstruction_loss = ReconstructionLoss()
        self.rec_segments = recurrence_segments(num_historical_steps, num_future_steps, num_recurrent_steps)
        self.schedule: Optional[SSLSchedule] = None

    # ------------------------------------------------------------------------------------------------------------
    # losses
    # ------------------------------------------------------------------------------------------------------------
    def forward(self, batch: Dict[str, HeteroData]) -> Dict[str, torch.Tensor]:
        """Losses of one batch of view pairs -> dict of scalars ('loss', 'contra_loss', 'rec_loss', 'contra_acc',
        'num_queries', 'num_keys'). 'loss' is this process's share (see ``losses.contrastive_loss``).

        batch: ``{'anchor', 'target'}`` (plain: the momentum branch runs once per view, in the official order) or
        ``{'anchor', 'views'}`` (``acceleration.view_pair_batch``: one momentum pass over both views; same losses and
        gradients up to float rounding)."""
        anchor = batch[ANCHOR]
        anchor_agent = anchor['agent']
        if VIEWS in batch:
            # Both views in one batch (acceleration.view_pair_batch, blocks of A agents in VIEW_ORDER): the momentum
            # branch runs once over 2A agents; the keys keep that block order.
            views_agent = batch[VIEWS]['agent']
            with torch.no_grad():
                keys = self.momentum_branch(batch[VIEWS], num_views=len(VIEW_ORDER))   # [2A, R, P]
            z_anchor = self.branch(anchor)                                              # [A, R, P]
            num_agents = z_anchor.shape[0]
            agents = torch.arange(num_agents, device=z_anchor.device)
            target_first = VIEW_ORDER.index(TARGET) * num_agents
            key_mask = views_agent['view_mask']
            target_start = views_agent['view_start'][target_first:target_first + num_agents]
            positive_index, self_index = agents + target_first, agents + VIEW_ORDER.index(ANCHOR) * num_agents
        else:
            target_agent = batch[TARGET]['agent']
            with torch.no_grad():
                key_target = self.momentum_branch(batch[TARGET])                        # [A, R, P]
            z_anchor = self.branch(anchor)                                              # [A, R, P]
            with torch.no_grad():
                key_anchor = self.momentum_branch(anchor)
            num_agents = z_anchor.shape[0]
            agents = torch.arange(num_agents, device=z_anchor.device)
            # keys = [anchor-view keys; target-view keys]
            keys = torch.cat([key_anchor, key_target], dim=0)
            key_mask = torch.cat([anchor_agent['view_mask'], target_agent['view_mask']], dim=0)
            target_start = target_agent['view_start']
            positive_index, self_index = agents + num_agents, agents
        num_rec, proj_dim = z_anchor.shape[1:]
        queries = self.contra_predictor(z_anchor.reshape(num_agents * num_rec, proj_dim))
        groups = {}
        if self.hparams.get('separate_dataset_negatives'):  # negatives only from the query's own dataset
            if 'data_set' not in anchor or 'batch' not in anchor_agent:
                raise ValueError('separate_dataset_negatives needs batched samples with a data_set (dataset id) field')
            agent_dataset = torch.as_tensor(anchor['data_set'], device=z_anchor.device).view(-1)[anchor_agent['batch']]
            groups = {'query_group': agent_dataset, 'key_group': torch.cat([agent_dataset, agent_dataset])}
        return self.losses(z_anchor, queries.view(num_agents, num_rec, proj_dim), anchor_agent, keys, key_mask,
                           positive_index, self_index, target_start, **groups)

    def losses(self, z_anchor: torch.Tensor, queries: torch.Tensor, anchor_agent, keys: torch.Tensor,
               key_mask: torch.Tensor, positive_index: torch.Tensor, self_index: torch.Tensor,
               target_start: torch.Tensor, gather=all_gather_rows, **groups: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Both losses from the branches' outputs. z_anchor / queries [A, R, P]: online embeddings and predictor
        outputs of the anchor agents; anchor_agent: the anchor batch's agent store (query_mask, view_start, rec_target,
        rec_mask); keys [M, R, P] with key_mask [M]: momentum embeddings of both views; positive_index / self_index
        [A]: each agent's target-view / anchor-view key row; target_start [A]: start step of each agent's target
        window; gather: how keys are gathered from every process (``losses.contrastive_loss``)."""
        num_agents, num_rec, _ = z_anchor.shape
        contra: ContrastiveOutput = self.contrastive_loss(
            queries, anchor_agent['query_mask'], keys, key_mask, positive_index=positive_index, self_index=self_index,
            gather=gather, **groups)

        # Reconstruction of the target window from the anchor embedding + embedding of the anchor start step.
        temp = self.temp_emb[anchor_agent['view_start']].unsqueeze(1).expand(-1, num_rec, -1)
        displacements = self.rec_predictor(torch.cat([z_anchor, temp], dim=-1))
        displacements = displacements.view(num_agents, num_rec, -1, 2)     # [A, R, T, 2] per absolute step
        window = torch.arange(self.num_historical_steps, device=z_anchor.device)
        target_steps = target_start.unsqueeze(1) + window                   # [A, H]
        pred_positions = torch.cumsum(
            gather_segment_displacements(displacements.float(), target_steps, self.rec_segments), dim=1)
        rec_loss = self.reconstruction_loss(pred_positions, anchor_agent['rec_target'], anchor_agent['rec_mask'])

        return {'loss': self.lambda_contra * contra.loss + self.lambda_rec * rec_loss, 'contra_loss': contra.loss, 'rec_loss': rec_loss,
                'contra_acc': contra.accuracy, 'num_queries': contra.num_queries, 'num_keys': contra.num_keys}

    def padded_step_losses(self, padded) -> Dict[str, torch.Tensor]:
        """Losses of a batch padded to fixed sizes (``acceleration.padded_ssl_batch.PaddedViewPairBatch``): the
        CUDA-graph step's body. The same computation as ``forward`` on the two-view batch; padded agents take no
        part in BatchNorm statistics (agent groups -1) nor in the losses (their masks are False), and keys are
        gathered from every process with equal row counts (capacities agreed across processes)."""
        anchor, views = padded.anchor, padded.views
        with torch.no_grad():
            keys = self.momentum_branch(views.data, num_views=len(VIEW_ORDER), agent_groups=padded.view_of_agent,
                                        **padded.views_inputs)
        z_anchor = self.branch(anchor.data, agent_groups=padded.anchor_groups, **padded.anchor_inputs)
        num_agents, num_rec, proj_dim = z_anchor.shape
        queries = mlp_with_grouped_norm(self.contra_predictor, z_anchor.reshape(num_agents * num_rec, proj_dim),
                                        padded.anchor_groups.repeat_interleave(num_rec), 1)
        views_agent = views.data['agent']
        return self.losses(z_anchor, queries.view(num_agents, num_rec, proj_dim), anchor.data['agent'], keys,
                           views_agent['view_mask'], padded.positive_index, padded.self_index,
                           views_agent['view_start'][padded.positive_index], gather=all_gather_equal_rows)

    def padded_forward(self, padded) -> Dict[str, torch.Tensor]:
        """Evaluation body of the CUDA-graph step: pre-training evaluates its losses."""
        return self.padded_step_losses(padded)

    def _log_losses(self, out: Dict[str, torch.Tensor], prefix: str, on_step: bool) -> None:
        # Loss shares are averaged over processes once here (one all-reduce), then logged unsynchronised.
        shares = torch.stack([out['loss'].detach(), out['contra_loss'].detach(), out['rec_loss'].detach()])
        total, contra, rec = (all_reduce_sum(shares) / world_size()).unbind(0)
        kwargs = dict(on_step=on_step, on_epoch=True, batch_size=1, sync_dist=False)
        self.log(f'{prefix}loss', total, prog_bar=True, **kwargs)
        self.log(f'{prefix}component/contra_loss', contra, **kwargs)
        self.log(f'{prefix}component/rec_loss', rec, **kwargs)
        self.log(f'{prefix}contra_acc', out['contra_acc'], prog_bar=True, **kwargs)
        self.log(f'{prefix}num_neg_sample', out['num_keys'].float(), **kwargs)
        self.log(f'{prefix}num_query', out['num_queries'].float(), **kwargs)

    def training_step(self, batch: Dict[str, HeteroData], batch_idx: int) -> Optional[torch.Tensor]:
        if self.fixed_shape_step is not None:  # forward, backward and optimiser step (manual optimisation)
            out = self.fixed_shape_step.train(batch, self.optimizers())
            self._log_losses(out, prefix='', on_step=True)
            return None
        out = self(batch)
        self._log_losses(out, prefix='', on_step=True)
        return out['loss']

    def validation_step(self, batch: Dict[str, HeteroData], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        self._log_losses(out, prefix='val_', on_step=False)
        return out['loss']

    # ------------------------------------------------------------------------------------------------------------
    # momentum branch and schedules
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_momentum_branch(self, momentum: float) -> None:
        """EMA of the online branch's parameters: p_m <- m * p_m + (1 - m) * p_online (buffers are left alone,
        as in the official code: the momentum branch's BatchNorm statistics come from its own forward passes).
        One fused multi-tensor lerp over all parameters: p_m + (1 - m) * (p_online - p_m)."""
        online = [p.detach() for p in self.branch.parameters()]
        target = list(self.momentum_branch.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def build_schedule(self) -> SSLSchedule:
        trainer = self.trainer
        accumulate = max(int(trainer.accumulate_grad_batches), 1)
        batches = trainer.num_training_batches
        if not np.isfinite(batches) or batches <= 0:
            raise ValueError('SmartPretrain needs a sized training dataloader to lay out its per-step schedules')
        steps_per_epoch = max(int(np.ceil(batches / accumulate)), 1)
        total = int(trainer.estimated_stepping_batches)
        hp = self.hparams
        return SSLSchedule.from_epochs(steps_per_epoch=steps_per_epoch, max_epochs=max(trainer.max_epochs or 1, 1),
                                       warmup_epochs=hp.warmup, total_steps=total, lr_init=hp.lr_init, lr=hp.lr,
                                       lr_last=hp.lr_last, weight_decay_init=hp.weight_decay_init,
                                       weight_decay=hp.weight_decay, momentum=hp.contra_momentum)

    def on_train_start(self) -> None:
        # The schedule is a pure function of (optimizer step, run length); a resumed run recomputes it from its own
        # trainer settings and says so when they changed the curves stored in the checkpoint.
        schedule = self.build_schedule()
        if self.schedule is not None and self.schedule != schedule:
            rank_zero_warn(f'SmartPretrain: resumed with a different schedule than the checkpoint\'s '
                           f'({self.schedule.state_dict()} -> {schedule.state_dict()}); continuing with the new one')
        self.schedule = schedule

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        lr, decay, momentum = self.schedule.at(step)
        for group in self.trainer.optimizers[0].param_groups:
            group['lr'] = lr
            # Only the decayed group follows the weight-decay schedule (the official code also decayed biases/norms).
            group['weight_decay'] = decay if group.get('decayed', False) else 0.0
        if batch_idx % max(int(self.trainer.accumulate_grad_batches), 1) == 0:
            self.update_momentum_branch(momentum)
        kwargs = dict(on_step=True, on_epoch=False, batch_size=1, sync_dist=False)
        self.log('lr', lr, **kwargs)
        self.log('decay', decay, **kwargs)
        self.log('momentum_m', momentum, **kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = dict(self.named_parameters())
        # the momentum branch (no gradients) is updated by EMA only: it stays out of the optimiser
        decayed, not_decayed = ([params[name] for name in names if params[name].requires_grad]
                                for names in weight_decay_groups(self))
        hp = self.hparams
        groups = [{'params': decayed, 'weight_decay': hp.weight_decay_init, 'decayed': True},
                  {'params': not_decayed, 'weight_decay': 0.0, 'decayed': False}]
        fused = self.fused_optimizer and all(p.is_cuda for g in groups for p in g['params'])
        return torch.optim.AdamW(groups, lr=hp.lr_init, weight_decay=hp.weight_decay_init, fused=fused or None)

    def configure_callbacks(self) -> List[pl.Callback]:
        return list(self.speed_callbacks)

    # ------------------------------------------------------------------------------------------------------------
    # seeding and checkpoints
    # ------------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Different dropout streams per process (Lightning seeds every process alike); resumed runs overwrite this.
        if stage == 'fit':
            seed_process(int(self.hparams.seed) + 1_000_003 * self.global_rank)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self.schedule is not None:
            checkpoint[SCHEDULE_KEY] = self.schedule.state_dict()
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if SCHEDULE_KEY in checkpoint:
            self.schedule = SSLSchedule.from_state_dict(checkpoint[SCHEDULE_KEY])
        if RNG_KEY in checkpoint and self._trainer is not None:
            if self.global_rank == 0:
                set_rng_states(checkpoint[RNG_KEY])
            else:  # only rank 0's states are saved; the others get a fresh stream per (seed, rank, step)
                seed_process(int(self.hparams.seed) + 1_000_003 * self.global_rank
                             + 7919 * int(checkpoint.get('global_step', 0)))

    @staticmethod
    def add_model_specific_args(parent_parser):
        """SmartPretrain flags (``predictors.arguments``)."""
        return add_smartpretrain_args(parent_parser)


class ViewEpochCallback(pl.Callback):
    """Tells the training transform (``transforms.SSLViews``) the current epoch so views change every epoch.

    Set at ``on_train_epoch_start`` (before later epochs' loaders start) and by ``sync`` from the datamodule's
    ``train_dataloader`` (before the first loader of a run, also a resumed one, starts prefetching).
    """

    def __init__(self, views: Any) -> None:
        self.views = views

    def sync(self, trainer: pl.Trainer) -> None:
        self.views.set_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync(trainer)
