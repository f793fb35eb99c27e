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


def test_kernel_summary_attributes_device_time_to_the_launching_operators():
    # eager steps: each operator's own kernels (self device time) summed per name and input shapes
    events = [SimpleNamespace(device_type=CUDA, name='elementwise', device_time=500.0),
              SimpleNamespace(device_type=CUDA, name='gemm', device_time=100.0),
              SimpleNamespace(device_type=CPU, name='aten::copy_', self_device_time_total=300.0,
                              input_shapes=[[4, 8], [4, 8]]),
              SimpleNamespace(device_type=CPU, name='aten::copy_', self_device_time_total=200.0,
                              input_shapes=[[4, 8], [4, 8]]),
              SimpleNamespace(device_type=CPU, name='aten::mm', self_device_time_total=100.0, input_shapes=[]),
              SimpleNamespace(device_type=CPU, name='aten::view', self_device_time_total=0.0, input_shapes=[[4]])]
    summary = kernel_summary(SimpleNamespace(events=lambda: events), steps=1)
    assert summary['top_ops'] == [{'op': 'aten::copy_ [[4, 8], [4, 8]]', 'ms_per_step': 0.5},
                                  {'op': 'aten::mm', 'ms_per_step': 0.1}]


def test_kernel_summary_of_a_graph_replay_has_no_operators():
    events = [SimpleNamespace(device_type=CUDA, name='gemm', device_time=100.0),
              SimpleNamespace(device_type=CPU, name='cudaGraphLaunch', self_device_time_total=0.0, input_shapes=[])]
    assert kernel_summary(SimpleNamespace(events=lambda: events), steps=1)['top_ops'] == []
