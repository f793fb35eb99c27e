"""--cuda_graphs with several processes: the replayed step (on the CPU: the same padded step, not captured) writes its
gradients without DDP's autograd hooks, so the CUDA-graph step averages them itself (acceleration.gradient_averaging).
Two gloo processes through Lightning's DDP on real Argoverse 2 scenes: every rank holds the gradients of eager DDP
training and, after every step, the same parameters."""
import os

import pytest
import pytorch_lightning as pl
import torch

from acceleration.apply import apply
from acceleration.options import SpeedOptions
from predictors import QCNet

from tiny_configs import TINY_QCNET
from sample_data import AV2_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_DIR = str(AV2_DIR)
TRAIN_IDS = ['0a1e6f0a-1817-4a98-b02e-db8c9327d151', '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca']

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(AV2_DIR),
                                 reason=f'real Argoverse 2 samples not found at {AV2_DIR}')]


class SaveEachRank(pl.Callback):
    """Writes each rank's first-step gradients (as the optimiser sees them) and final parameters to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            torch.save(grads, os.path.join(self.out_dir, f'grads_rank{trainer.global_rank}.pt'))

    def on_train_end(self, trainer, module):
        params = {n: p.detach().clone() for n, p in module.named_parameters()}
        torch.save(params, os.path.join(self.out_dir, f'params_rank{trainer.global_rank}.pt'))


def fit_two_processes(scenes, cuda_graphs, out_dir):
    from pytorch_lightning.strategies import DDPStrategy
    from torch_geometric.loader import DataLoader
    os.makedirs(out_dir)
    torch.manual_seed(0)
    model = QCNet(**dict(TINY_QCNET, dropout=0.0, T_max=4))
    apply(model, SpeedOptions(cuda_graphs=cuda_graphs))
    trainer = pl.Trainer(accelerator='cpu', devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
                         strategy=DDPStrategy(start_method='spawn', process_group_backend='gloo',
                                              find_unused_parameters=False, gradient_as_bucket_view=True),
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[SaveEachRank(out_dir)],
                         default_root_dir=out_dir)
    # four scenes, one per step and rank: rank 0 sees A, B and rank 1 B, A (Lightning's distributed sampler)
    trainer.fit(model, DataLoader(scenes, batch_size=1, shuffle=False))
    return [{kind: torch.load(os.path.join(out_dir, f'{kind}_rank{r}.pt')) for kind in ('grads', 'params')}
            for r in range(2)]


def worst_relative(a, b, floor=1e-3):
    """Largest per-tensor difference relative to the tensor's scale; ``floor`` keeps gradients that are zero in
    exact arithmetic (the mixture logits' last bias: softmax ignores a shift) from dividing rounding by rounding."""
    return max(float((a[n] - b[n]).abs().max()) / max(float(b[n].abs().max()), floor) for n in b)


def test_cuda_graphs_ddp_averages_gradients_like_eager_ddp(tmp_path):
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    a, b = [TargetBuilder(50, 60)(process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, 'train', s))))
            for s in TRAIN_IDS]
    scenes = [a, b, b, a]
    graphs = fit_two_processes(scenes, True, str(tmp_path / 'graphs'))
    eager = fit_two_processes(scenes, False, str(tmp_path / 'eager'))

    # the ranks saw different scenes, so equal gradients mean they were averaged
    assert graphs[0]['grads'].keys() == eager[0]['grads'].keys() and len(graphs[0]['grads']) > 0
    assert worst_relative(graphs[0]['grads'], graphs[1]['grads']) == 0.0
    assert worst_relative(eager[0]['grads'], eager[1]['grads']) == 0.0
    # == DDP's average (padding changes only the float rounding, tests/test_cuda_graph_step.py)
    assert worst_relative(graphs[0]['grads'], eager[0]['grads']) < 1e-4
    # after all four steps every rank holds the same parameters
    for name, value in graphs[0]['params'].items():
        assert torch.equal(value, graphs[1]['params'][name]), name
