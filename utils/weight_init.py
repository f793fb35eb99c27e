"""Parameter initialisation used by every QCNet module (``module.apply(weight_init)``)."""
import torch.nn as nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _init_recurrent(module: nn.Module, num_gates: int, forget_gate_bias: bool) -> None:
    # Each gate block is initialised on its own so that Xavier/orthogonal see square-ish matrices.
    for name, param in module.named_parameters():
        if 'weight_ih' in name:
            for block in param.chunk(num_gates, 0):
                nn.init.xavier_uniform_(block)
        elif 'weight_hh' in name:
            for block in param.chunk(num_gates, 0):
                nn.init.orthogonal_(block)
        elif 'weight_hr' in name:
            nn.init.xavier_uniform_(param)
        elif 'bias_ih' in name:
            nn.init.zeros_(param)
        elif 'bias_hh' in name:
            nn.init.zeros_(param)
            if forget_gate_bias:
                # LSTM gate order is (input, forget, cell, output): open the forget gate at start.
                nn.init.ones_(param.chunk(num_gates, 0)[1])


def weight_init(m: nn.Module) -> None:
    """Xavier for linear/conv/attention weights, N(0, 0.02) for embeddings, identity for norms, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, _CONVS):
        fan_in = m.in_channels / m.groups
        fan_out = m.out_channels / m.groups
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        nn.init.uniform_(m.weight, -bound, bound)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    elif isinstance(m, _BATCH_NORMS + (nn.LayerNorm,)):
        if m.weight is not None:
            nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.MultiheadAttention):
        if m.in_proj_weight is not None:
            bound = (6.0 / (2 * m.embed_dim)) ** 0.5
            nn.init.uniform_(m.in_proj_weight, -bound, bound)
        else:
            for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if m.in_proj_bias is not None:
            nn.init.zeros_(m.in_proj_bias)
        nn.init.xavier_uniform_(m.out_proj.weight)
        if m.out_proj.bias is not None:
            nn.init.zeros_(m.out_proj.bias)
        for extra_bias in (m.bias_k, m.bias_v):
            if extra_bias is not None:
                nn.init.normal_(extra_bias, mean=0.0, std=0.02)
    elif isinstance(m, (nn.LSTM, nn.LSTMCell)):
        _init_recurrent(m, num_gates=4, forget_gate_bias=True)
    elif isinstance(m, (nn.GRU, nn.GRUCell)):
        _init_recurrent(m, num_gates=3, forget_gate_bias=False)
