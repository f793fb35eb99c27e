"""QCNet as a Lightning module: official hyper-parameters and networks; the training objective, metrics, optimiser
and submission writing come from ``predictors.trajectory_predictor.TrajectoryPredictor``."""
from typing import Dict, Optional

import torch
from torch_geometric.data import HeteroData

from layers.attention_layer import AttentionLayer
from layers.fourier_embedding import FourierEmbedding
from modules.qcnet_decoder import QCNetDecoder
from modules.qcnet_encoder import QCNetEncoder
from predictors.arguments import add_qcnet_args
from predictors.trajectory_predictor import EVAL_MAX_GUESSES, FOCAL_CATEGORY, TrajectoryPredictor  # noqa: F401
from utils.gradient_sync import average_gradients
from utils.prebuilt_graph import prebuilt_graph


def check_speed_options(compile_embeddings: bool = False, recompute_embeddings: bool = False,
                        compile_memory_budget: float = 1.0) -> None:
    """ValueError for contradicting speed options (train.py checks them before anything else runs)."""
    if not 0.0 < compile_memory_budget <= 1.0:
        raise ValueError(f'QCNet: compile_memory_budget must be in (0, 1], got {compile_memory_budget}')
    if compile_embeddings and recompute_embeddings:
        raise ValueError('QCNet: --compile_embeddings and --recompute_embeddings exclude each other (the compiled '
                         'embeddings already recompute their cheap activations); pass one of them')


class QCNet(TrajectoryPredictor):
    """QCNet (Zhou et al., CVPR 2023). Constructor arguments and hyper-parameter names are the official ones, so
    official checkpoints load with ``QCNet.load_from_checkpoint(path)``; extra keyword arguments (e.g. the training
    script's flags) are accepted and stored in the hyper-parameters, as officially.
    """

    MODEL_NAME = 'QCNet'
    SSL_BACKBONE = 'qcnet'
    # --copy_refine: the refinement attention layers start from the pre-trained proposal ones.
    PROPOSE_TO_REFINE = (('t2m_propose_attn_layers', 't2m_refine_attn_layers'),
                         ('pl2m_propose_attn_layers', 'pl2m_refine_attn_layers'),
                         ('a2m_propose_attn_layers', 'a2m_refine_attn_layers'),
                         ('m2m_propose_attn_layer', 'm2m_refine_attn_layer'))

    def __init__(self,
                 dataset: str,
                 input_dim: int,
                 hidden_dim: int,
                 output_dim: int,
                 output_head: bool,
                 num_historical_steps: int,
                 num_future_steps: int,
                 num_modes: int,
                 num_recurrent_steps: int,
                 num_freq_bands: int,
                 num_map_layers: int,
                 num_agent_layers: int,
                 num_dec_layers: int,
                 num_heads: int,
                 head_dim: int,
                 dropout: float,
                 pl2pl_radius: float,
                 time_span: Optional[int],
                 pl2a_radius: float,
                 a2a_radius: float,
                 num_t2m_steps: Optional[int],
                 pl2m_radius: float,
                 a2m_radius: float,
                 lr: float,
                 weight_decay: float,
                 T_max: int,
                 submission_dir: str,
                 submission_file_name: str,
                 checkpoint_agent_encoder: bool = False,
                 tf32: bool = True,
                 compile_attention: bool = False,
                 compile_embeddings: bool = False,
                 compile_gru: bool = False,
                 compile_memory_budget: float = 1.0,
                 recompute_embeddings: bool = False,
                 cuda_graphs: bool = False,
                 **kwargs) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset = dataset
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.output_head = output_head
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_modes = num_modes
        self.num_recurrent_steps = num_recurrent_steps
        self.num_freq_bands = num_freq_bands
        self.num_map_layers = num_map_layers
        self.num_agent_layers = num_agent_layers
        self.num_dec_layers = num_dec_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.pl2pl_radius = pl2pl_radius
        self.time_span = time_span
        self.pl2a_radius = pl2a_radius
        self.a2a_radius = a2a_radius
        self.num_t2m_steps = num_t2m_steps
        self.pl2m_radius = pl2m_radius
        self.a2m_radius = a2m_radius
        self.lr = lr
        self.weight_decay = weight_decay
        self.T_max = T_max
        self.submission_dir = submission_dir
        self.submission_file_name = submission_file_name
        self.tf32 = tf32
        self._saved_matmul_precision: Optional[str] = None
        # --cuda_graphs: fixed-shape steps replayed as CUDA graphs (utils.static_graph); the training step then runs
        # its own backward and optimiser step (Lightning's manual optimisation).
        self.cuda_graphs = cuda_graphs
        self.automatic_optimization = not cuda_graphs
        self._static_runners: Dict[str, object] = {}

        self.encoder = QCNetEncoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, num_historical_steps=num_historical_steps,
            pl2pl_radius=pl2pl_radius, time_span=time_span, pl2a_radius=pl2a_radius, a2a_radius=a2a_radius,
            num_freq_bands=num_freq_bands, num_map_layers=num_map_layers, num_agent_layers=num_agent_layers,
            num_heads=num_heads, head_dim=head_dim, dropout=dropout,
            checkpoint_agent_layers=checkpoint_agent_encoder)
        self.decoder = QCNetDecoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim,
            output_head=output_head, num_historical_steps=num_historical_steps, num_future_steps=num_future_steps,
            num_modes=num_modes, num_recurrent_steps=num_recurrent_steps, num_t2m_steps=num_t2m_steps,
            pl2m_radius=pl2m_radius, a2m_radius=a2m_radius, num_freq_bands=num_freq_bands,
            num_layers=num_dec_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout)

        check_speed_options(compile_embeddings, recompute_embeddings, compile_memory_budget)
        if compile_memory_budget < 1.0 and (compile_attention or compile_embeddings or compile_gru):
            # Process-wide setting of the compiled backward's partitioner: below 1 it recomputes more of the
            # forward in the backward pass to keep the saved activations within that fraction.
            import torch._functorch.config
            torch._functorch.config.activation_memory_budget = compile_memory_budget
        for module in self.modules():
            if compile_attention and isinstance(module, AttentionLayer):
                module.compile_for_training()
            if isinstance(module, FourierEmbedding):
                module.recompute = recompute_embeddings
                if compile_embeddings:
                    module.compile_for_training()

        self.decoder.compile_gru = compile_gru
        self.init_objectives()  # losses, metrics, submission store (predictors.trajectory_predictor)

    def compile_for_inference(self) -> None:
        """val.py / test.py --compile: no-grad forward passes run the attention layers and Fourier embeddings through
        torch.compile (fused kernels; the first batches compile for a minute or two)."""
        for module in self.modules():
            if isinstance(module, (AttentionLayer, FourierEmbedding)):
                module.compile_for_inference()

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """Every data-dependent edge set of the model (encoder's and decoder's, by name; see each module's
        ``build_graph``): the part of a forward pass whose sizes depend on the data."""
        return {**self.encoder.build_graph(data), **self.decoder.build_graph(data)}

    def forward(self, data: HeteroData, graph: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Returns the decoder's output dict (see :class:`modules.QCNetDecoder`), in each agent's frame.
        ``graph``: ``build_graph(data)`` computed beforehand (utils.static_graph pads it to fixed sizes); else the
        one a loader worker attached to the batch (utils.prebuilt_graph), else built here."""
        if graph is None:
            graph = prebuilt_graph(data)
        scene_enc = self.encoder(data, graph)
        return self.decoder(data, scene_enc, graph)

    def static_runner(self, mode: str):
        """The ``utils.static_graph.StaticGraphRunner`` of this model for 'train' or 'infer' (made on first use;
        captures CUDA graphs on a CUDA device, runs the padded fixed-shape step eagerly elsewhere)."""
        runner = self._static_runners.get(mode)
        if runner is None:
            from utils.static_graph import StaticGraphRunner
            runner = StaticGraphRunner(self, mode, steps=self.num_historical_steps, modes=self.num_modes,
                                       capture=self.device.type == 'cuda')
            self._static_runners[mode] = runner
        return runner

    def training_step(self, data, batch_idx):
        if self.automatic_optimization:
            return super().training_step(data, batch_idx)
        optimizer = self.optimizers()
        losses = self.static_runner('train')(data)  # forward, loss and backward: gradients are in param.grad
        # The replay bypasses DDP's autograd hooks (Lightning's manual optimisation also turns the reducer off):
        # average the gradients over the processes here, as DDP would, before clipping and stepping.
        average_gradients(p for p in self.parameters() if p.requires_grad)
        clip = float(self.hparams.get('gradient_clip_val') or 0.0)
        if clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm='norm')
        optimizer.step()
        for name in ('reg_loss_propose', 'reg_loss_refine', 'cls_loss'):
            self.log(f'train_{name}', losses[name], prog_bar=False, on_step=True, on_epoch=True, batch_size=1)
        return losses['loss']

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self.automatic_optimization:  # manual optimisation steps its schedulers itself (once per epoch)
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    def predict_batch(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        if self.cuda_graphs:
            return self.static_runner('infer')(data)
        return self(data)

    def on_fit_start(self) -> None:
        """TF32 tensor-core matmuls for float32 training on CUDA (``tf32``, default on; restored after fit).

        The official runs keep PyTorch's default (full float32 matmuls on non-tensor-core units); TF32 rounds matmul
        inputs to a 10-bit mantissa, changing outputs by ~1e-3 relative, which training does not notice. Evaluation
        outside ``fit`` (val.py / test.py) keeps full float32, so official checkpoints reproduce their numbers.
        """
        super().on_fit_start()
        if self.tf32 and self.device.type == 'cuda':
            self._saved_matmul_precision = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision('high')

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self._saved_matmul_precision is not None:
            torch.set_float32_matmul_precision(self._saved_matmul_precision)
            self._saved_matmul_precision = None

    @staticmethod
    def add_model_specific_args(parent_parser):
        """Official QCNet flags (names and defaults) and the speed options (``predictors.arguments``)."""
        return add_qcnet_args(parent_parser)
