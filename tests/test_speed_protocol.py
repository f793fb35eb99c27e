"""benchmarks/qcnet_speed_protocol.sh and the step benchmark's options: --help, one-line errors, flags reach the model."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'qcnet_speed_protocol.sh')


def test_protocol_help_and_missing_arguments():
    shown = subprocess.run(['bash', SCRIPT, '--help'], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and 'SCENES_FILE OFFICIAL_REPO OUT_DIR' in shown.stdout
    missing = subprocess.run(['bash', SCRIPT], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().count('\n') == 0 and missing.stderr.startswith('error: qcnet_speed_protocol.sh')


def test_step_benchmark_passes_the_speed_options_to_the_model():
    sys.path.insert(0, ROOT)
    from benchmarks.bench_qcnet_step import build_model, parse_args
    from acceleration.kernels.layer_ops import CompiledOps, GRULoopOps
    from acceleration.options import PRESETS
    args = parse_args(['--device', 'cpu', '--hidden_dim', '16', '--compile_embeddings', '--compile_gru'])
    model = build_model(args)
    assert isinstance(model.decoder.ops, GRULoopOps) and isinstance(model.decoder.y_emb.ops, CompiledOps)
    assert not any(k.startswith('compile') for k in model.hparams)
    assert parse_args(['--speed', 'fast', '--compile_inference']).speed_options == PRESETS['fast']
    assert parse_args(['--speed', 'fast', '--no_tf32']).speed_options.tf32 is False
    with pytest.raises(SystemExit, match='--prebuilt_graph is for --impl ours'):
        from benchmarks.bench_qcnet_step import main
        main(['--impl', 'official', '--official_repo', '/nonexistent', '--prebuilt_graph', '--device', 'cpu',
              '--scenes_file', '/nonexistent'])


@pytest.mark.slow
def test_lightning_loop_benchmark_runs_on_cpu_with_graphs_built_in_workers(tmp_path):
    """cuda_graphs_training.py (the protocol's 'lightning' configuration) on a few synthetic AV2 scenes on the CPU:
    the padded step trains through Lightning with the loader workers building the graphs, and its validation gives
    the eager metrics."""
    import json
    sys.path.insert(0, ROOT)
    from benchmarks.cuda_graphs_training import main
    report = tmp_path / 'report.json'
    assert main(['--work_dir', str(tmp_path / 'data'), '--num_train', '4', '--num_val', '2', '--batch_size', '2',
                 '--epochs', '1', '--hidden_dim', '16', '--profile', 'demo', '--accelerator', 'cpu',
                 '--num_workers', '1', '--build_graph_in_workers', '--skip_eager_training',
                 '--report', str(report)]) == 0
    written = json.loads(report.read_text())
    assert written['train_cuda_graphs']['graphs_in_workers'] and written['train_cuda_graphs']['steps'] == 2
    assert written['val_metrics_worst_relative_difference'] < 1e-5
    with pytest.raises(SystemExit, match='needs --num_workers >= 1'):
        main(['--work_dir', str(tmp_path / 'data'), '--num_workers', '0', '--build_graph_in_workers'])
