"""Final hidden state of a one-layer GRU as an explicit loop over time steps, for torch.compile.

Why: QCNet's refinement stage summarises every proposed trajectory (60 steps, one sequence per query slot and mode)
with a GRU. cuDNN's GRU, its backward element-wise kernel above all, is one of the largest items of a compiled,
replayed training step on an H100/H200 (docs/BENCHMARKS.md, "Training step"). Written as a loop, torch.compile
unrolls it into one small matmul and one fused gate kernel per step, which the CUDA graph replays without launch cost.
Same function as ``torch.nn.GRU`` (PyTorch's gate order r, z, n and its n-gate formula), same parameters.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.split_k_linear import linear

# torch.compile'd gru_final_state_loop, created by the first gru_final_state(..., compiled=True) call.
_compiled_loop = None


def gru_final_state_loop(inputs: torch.Tensor, h0: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
                         bias_ih: torch.Tensor, bias_hh: torch.Tensor) -> torch.Tensor:
    """inputs [T, N, in] (time-major), h0 [N, H], weights/biases of ``nn.GRU`` layer 0 -> final state [N, H].

    h' = (1 - z) * n + z * h with r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise,
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    """
    hidden = h0.size(-1)
    # Gates and state in float32 also under autocast (the matmuls may run in bf16): the state is carried through
    # 60 steps and would otherwise be rounded to bf16 at every one.
    state_dtype = torch.promote_types(h0.dtype, torch.float32)
    input_gates = linear(inputs, weight_ih, bias_ih).to(state_dtype)  # [T, N, 3H]: all steps' input parts at once
    h = h0.to(state_dtype)
    for step in range(inputs.size(0)):
        gates_x = input_gates[step]
        gates_h = F.linear(h, weight_hh, bias_hh).to(state_dtype)
        r = torch.sigmoid(gates_x[:, :hidden] + gates_h[:, :hidden])
        z = torch.sigmoid(gates_x[:, hidden:2 * hidden] + gates_h[:, hidden:2 * hidden])
        n = torch.tanh(gates_x[:, 2 * hidden:] + r * gates_h[:, 2 * hidden:])
        h = n + z * (h - n)
    return h


def gru_final_state(gru: nn.GRU, inputs: torch.Tensor, h0: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Final hidden state [N, H] of the one-layer, unidirectional, time-major ``gru`` over inputs [T, N, in] from
    h0 [N, H]: cuDNN/ATen's GRU, or with ``compiled`` the compiled step loop (same function, float rounding)."""
    if not compiled:
        return gru(inputs, h0.unsqueeze(0).contiguous())[1][0]
    global _compiled_loop
    if _compiled_loop is None:
        _compiled_loop = torch.compile(gru_final_state_loop, dynamic=True)
    return _compiled_loop(inputs, h0, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
