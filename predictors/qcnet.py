"""QCNet as a Lightning module: official hyper-parameters and networks; the training objective, metrics, optimiser
and submission writing come from ``predictors.trajectory_predictor.TrajectoryPredictor``."""
from typing import Dict, Optional

import torch
from torch_geometric.data import HeteroData

from modules.qcnet_decoder import QCNetDecoder
from modules.qcnet_encoder import QCNetEncoder
from predictors.arguments import add_qcnet_args
from predictors.trajectory_predictor import EVAL_MAX_GUESSES, FOCAL_CATEGORY, TrajectoryPredictor  # noqa: F401
from acceleration.edge_lists_in_workers import attached_edge_lists


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

        self.encoder = QCNetEncoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, num_historical_steps=num_historical_steps,
            pl2pl_radius=pl2pl_radius, time_span=time_span, pl2a_radius=pl2a_radius, a2a_radius=a2a_radius,
            num_freq_bands=num_freq_bands, num_map_layers=num_map_layers, num_agent_layers=num_agent_layers,
            num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.decoder = QCNetDecoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim,
            output_head=output_head, num_historical_steps=num_historical_steps, num_future_steps=num_future_steps,
            num_modes=num_modes, num_recurrent_steps=num_recurrent_steps, num_t2m_steps=num_t2m_steps,
            pl2m_radius=pl2m_radius, a2m_radius=a2m_radius, num_freq_bands=num_freq_bands,
            num_layers=num_dec_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout)

        self.init_objectives()  # losses, metrics, submission store (predictors.trajectory_predictor)

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """Every data-dependent edge set of the model (encoder's and decoder's, by name; see each module's
        ``build_graph``): the part of a forward pass whose sizes depend on the data."""
        return {**self.encoder.build_graph(data), **self.decoder.build_graph(data)}

    def forward(self, data: HeteroData, graph: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """Returns the decoder's output dict (see :class:`modules.QCNetDecoder`), in each agent's frame.
        ``graph``: the edge lists ``build_graph(data)`` computed beforehand (the CUDA-graph step pads them to fixed
        sizes); else those a loader worker attached to the batch (acceleration.edge_lists_in_workers), else built
        here."""
        if graph is None:
            graph = attached_edge_lists(data)
        scene_enc = self.encoder(data, graph)
        return self.decoder(data, scene_enc, graph)

    def padded_step_losses(self, padded) -> Dict[str, torch.Tensor]:
        """Losses of a batch padded to fixed sizes (acceleration.padded_qcnet_batch): the CUDA-graph step's body."""
        return self.compute_losses(padded.data, self(padded.data, padded.edge_lists))

    def padded_forward(self, padded) -> Dict[str, torch.Tensor]:
        """Forward outputs of a padded batch (the CUDA-graph evaluation step's body)."""
        return self(padded.data, padded.edge_lists)

    @staticmethod
    def add_model_specific_args(parent_parser):
        """Official QCNet flags (names and defaults) (``predictors.arguments``)."""
        return add_qcnet_args(parent_parser)
