"""Checks shared by the fixed-shape (CUDA-graph) step tests of both backbones: the padded step run eagerly
(``capture=False``) against the plain step."""
from typing import Sequence

from acceleration.cuda_graph_step import CudaGraphStep

SUPERVISED_LOSSES = ('loss', 'reg_loss_propose', 'reg_loss_refine', 'cls_loss')


def assert_close(actual, expected, what, tol=1e-5):
    scale = expected.abs().max().clamp(min=1.0)
    error = float((actual - expected).abs().max() / scale)
    assert error < tol, f'{what}: scale-relative error {error:.2e}'


def check_padded_training_step(model, padding, batch, padded_sizes: Sequence[str], min_gradients: int = 1) -> None:
    """The padded training step of ``model`` (train mode, no dropout) gives the plain step's losses and gradients
    on ``batch``; every size in ``padded_sizes`` was really padded; a second step replaces the gradients, as a
    replayed graph does (no accumulation across steps)."""
    losses = model.compute_losses(batch, model(batch))
    losses['loss'].backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    runner = CudaGraphStep(model, padding, capture=False).training_runner
    padded_losses = runner(batch)
    for name in padded_sizes:
        assert runner.last_capacities[name] > runner.last_sizes[name], name
    for name in SUPERVISED_LOSSES:
        assert_close(padded_losses[name], losses[name].detach(), name)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and len(grads) >= min_gradients
    for name, grad in grads.items():
        assert_close(grad, expected[name], f'gradient of {name}', tol=1e-4)
    runner(batch)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close(p.grad, expected[name], f'gradient of {name} after a second step', tol=1e-4)


def fit_two_epochs(model, scenes, tmp_path, cuda_graphs: bool):
    """Two CPU epochs of Lightning over ``scenes`` (batches of 2, in order) with ``SpeedOptions(cuda_graphs=...)``
    applied (the padded step runs without capture on CPU). Returns (model, [(loss, learning rate) per step],
    number of parameters that moved, trainer)."""
    import pytorch_lightning as pl
    import torch
    from torch_geometric.loader import DataLoader

    from acceleration.apply import apply
    from acceleration.options import SpeedOptions

    apply(model, SpeedOptions(cuda_graphs=cuda_graphs))
    before = [p.detach().clone() for p in model.parameters()]
    recorded = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, data, batch_idx):
            loss = outputs['loss'] if isinstance(outputs, dict) else outputs
            recorded.append((float(loss), trainer.optimizers[0].param_groups[0]['lr']))

    trainer = pl.Trainer(accelerator='cpu', devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                         default_root_dir=str(tmp_path))
    trainer.fit(model, DataLoader(scenes, batch_size=2, shuffle=False))
    moved = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    return model, recorded, moved, trainer
