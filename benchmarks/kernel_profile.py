"""Where a step's GPU time goes: a torch.profiler trace summed into kernel time per step and the largest kernels.

Shared by bench_qcnet_step.py (--profile) and bench_ssl_step.py (--profile_steps)."""
from typing import Dict

import torch


def kernel_summary(prof, steps: int, top: int = 15) -> Dict[str, object]:
    """GPU kernel time per step (ms), kernels per step and the ``top`` kernels by GPU time, from a finished
    torch.profiler ``prof`` that covered ``steps`` steps (kernels of the same name summed). No CUDA activity
    recorded (a CPU run) gives zeros."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_name: Dict[str, float] = {}
    for e in kernels:
        per_name[e.name] = per_name.get(e.name, 0.0) + e.device_time
    largest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return {'gpu_kernel_ms': sum(per_name.values()) / 1000.0 / steps, 'kernels_per_step': round(len(kernels) / steps),
            'top_kernels': [{'name': name[:90], 'ms_per_step': us / 1000.0 / steps} for name, us in largest]}
