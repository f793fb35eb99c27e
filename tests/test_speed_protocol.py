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
    args = parse_args(['--device', 'cpu', '--hidden_dim', '16', '--compile_embeddings', '--compile_gru'])
    model = build_model(args)
    assert model.hparams.compile_embeddings and model.hparams.compile_gru and model.decoder.compile_gru
    with pytest.raises(SystemExit, match='--prebuilt_graph is for --impl ours'):
        from benchmarks.bench_qcnet_step import main
        main(['--impl', 'official', '--official_repo', '/nonexistent', '--prebuilt_graph', '--device', 'cpu',
              '--scenes_file', '/nonexistent'])
