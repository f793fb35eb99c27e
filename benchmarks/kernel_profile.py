"""Where a step's GPU time goes: a torch.profiler trace summed into kernel time per step, the largest kernels and,
where the kernels were launched by eager operators (not replayed from a CUDA graph), the operators that launched them.

Shared by bench_qcnet_step.py (--profile) and bench_ssl_step.py (--profile_steps)."""
from typing import Dict

import torch


def kernel_summary(prof, steps: int, top: int = 15) -> Dict[str, object]:
    """GPU kernel time per step (ms), kernels per step, the ``top`` kernels by GPU time (kernels of the same name
    summed) and the ``top`` operators by the GPU time of the kernels they launched themselves (``top_ops``: name and
    input shapes where the profiler recorded them; empty when every kernel came from a CUDA-graph replay, which
    launches no operator), from a finished torch.profiler ``prof`` that covered ``steps`` steps. No CUDA activity
    recorded (a CPU run) gives zeros."""
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    per_name: Dict[str, float] = {}
    for e in kernels:
        per_name[e.name] = per_name.get(e.name, 0.0) + e.device_time
    largest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    per_op: Dict[str, float] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU and getattr(e, 'self_device_time_total', 0) > 0:
            shapes = getattr(e, 'input_shapes', None)
            key = f'{e.name} {shapes}' if shapes else e.name
            per_op[key] = per_op.get(key, 0.0) + e.self_device_time_total
    largest_ops = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {'gpu_kernel_ms': sum(per_name.values()) / 1000.0 / steps, 'kernels_per_step': round(len(kernels) / steps),
            'top_kernels': [{'name': name[:90], 'ms_per_step': us / 1000.0 / steps} for name, us in largest],
            'top_ops': [{'op': key[:200], 'ms_per_step': us / 1000.0 / steps} for key, us in largest_ops]}
