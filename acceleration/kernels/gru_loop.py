"""Final hidden state of a one-layer GRU as an explicit loop over time steps, for torch.compile.

Why: QCNet's refinement stage summarises every proposed trajectory (60 steps, one sequence per query slot and mode)
with a GRU. cuDNN's GRU, its backward element-wise kernel above all, is one of the largest items of a compiled,
replayed training step on an H100/H200 (docs/BENCHMARKS.md, "Training step"). Written as a loop, torch.compile
unrolls it into one small matmul and one fused gate kernel per step, which the CUDA graph replays without launch cost.
Same function as ``torch.nn.GRU`` (PyTorch's gate order r, z, n and its n-gate formula), same parameters.
"""
import torch
import torch.nn.functional as F

from acceleration.kernels.split_k_linear import linear


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
