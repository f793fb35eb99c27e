"""benchmarks/kernel_profile.py: kernel events of a profiler trace summed per step and per kernel name."""
from types import SimpleNamespace

import torch

from benchmarks.kernel_profile import kernel_summary

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def test_kernel_summary_sums_per_name_and_step_and_ignores_host_events():
    events = [SimpleNamespace(device_type=CUDA, name='gemm', device_time=300.0),
              SimpleNamespace(device_type=CUDA, name='gemm', device_time=100.0),
              SimpleNamespace(device_type=CUDA, name='softmax', device_time=200.0),
              SimpleNamespace(device_type=CPU, name='aten::mm', device_time=0.0)]
    summary = kernel_summary(SimpleNamespace(events=lambda: events), steps=2, top=1)
    assert summary['gpu_kernel_ms'] == 0.3 and summary['kernels_per_step'] == 2   # 600 us, 3 kernels over 2 steps
    assert summary['top_kernels'] == [{'name': 'gemm', 'ms_per_step': 0.2}]
