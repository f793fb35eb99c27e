"""Lightning callbacks that run-time speed options need (installed by acceleration.apply through the module's
``configure_callbacks``)."""
from typing import Optional

import pytorch_lightning as pl
import torch


class TF32DuringFit(pl.Callback):
    """TF32 tensor-core matmuls for float32 training on CUDA, restored when ``fit`` ends.

    TF32 rounds matmul inputs to a 10-bit mantissa, changing outputs by ~1e-3 relative, which training does not
    notice. Evaluation outside ``fit`` (val.py / test.py) keeps full float32, so official checkpoints reproduce
    their numbers.
    """

    def __init__(self) -> None:
        self._saved: Optional[str] = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == 'cuda':
            self._saved = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision('high')

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved is not None:
            torch.set_float32_matmul_precision(self._saved)
            self._saved = None


class ManualSchedulerStep(pl.Callback):
    """Under Lightning's manual optimisation (the CUDA-graph step) the module's epoch-interval learning-rate
    schedulers are stepped here, at each training epoch end, as automatic optimisation would."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.automatic_optimization:
            return
        for config in trainer.lr_scheduler_configs:
            if config.interval == 'epoch':
                config.scheduler.step()
