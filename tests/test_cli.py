"""The command-line conventions shared by every script: --help before torch is imported, one boolean convention,
help texts, aliases, clear errors for a checkpoint directory, quiet module runs and the CPU thread policy."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.cli import CliError, HelpFormatter, bool_flag, check_checkpoint_file, configure_cpu_threads, str2bool

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ['train.py', 'train_ssl.py', 'val.py', 'test.py', 'visualize.py']


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


@pytest.mark.parametrize('argv', [[script, '--help'] for script in SCRIPTS] + [
    ['train.py', '--model', 'ForecastMAE', '--help'], ['datasets.preprocess', '--help']])
def test_help_is_printed_without_importing_torch(argv):
    run = 'run_path' if argv[0].endswith('.py') else 'run_module'
    done = run_python(
        'import runpy, sys\n'
        f'sys.argv = {argv!r}\n'
        'try:\n'
        f'    runpy.{run}({argv[0]!r}, run_name="__main__")\n'
        'except SystemExit as exit:\n'
        '    assert exit.code in (0, None), exit.code\n'
        'heavy = sorted(m for m in ("torch", "torch_geometric", "pytorch_lightning", "av2", "pandas") '
        'if m in sys.modules)\n'
        'print("HEAVY", heavy)\n')
    assert done.returncode == 0, done.stderr
    assert 'usage:' in done.stdout
    assert done.stdout.strip().splitlines()[-1] == 'HEAVY []'
    assert '(default: None)' not in done.stdout and 'default: True' not in done.stdout


def test_help_shows_no_default_for_required_flags_and_booleans_as_0_1():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument('--root', required=True, help='dataset root')
    parser.add_argument('--raw_dir', default=None, help='raw folder')
    parser.add_argument('--shuffle', **bool_flag(True), help='shuffle')
    parser.add_argument('--lr', type=float, default=5e-4, help='100%% of it')
    text = parser.format_help()
    assert 'dataset root\n' in text and 'raw folder\n' in text
    assert 'shuffle (default: 1)' in text and '100% of it (default: 0.0005)' in text


@pytest.mark.parametrize('words,value', [(['--flag'], True), (['--flag', '1'], True), (['--flag', 'true'], True),
                                         (['--flag', 'Yes'], True), (['--flag', '0'], False),
                                         (['--flag', 'false'], False), (['--flag', 'no'], False), ([], False)])
def test_boolean_flags_accept_every_spelling(words, value):
    parser = argparse.ArgumentParser()
    parser.add_argument('--flag', **bool_flag(False))
    assert parser.parse_args(words).flag is value


def test_boolean_flags_refuse_other_words():
    with pytest.raises(argparse.ArgumentTypeError, match="expected a boolean .* got 'maybe'"):
        str2bool('maybe')


def test_every_boolean_flag_of_the_scripts_uses_the_convention():
    """No `store_true`, `{0,1}` choices or `type=int` switches left: each flag that takes no value or 0/1 parses
    '--flag', '--flag 1' and '--flag false'."""
    import train
    import train_ssl
    import val
    import test as test_script
    import visualize
    parsers = [train.build_parser('QCNet'), train.build_parser('ForecastMAE'), train_ssl.build_parser(),
               val.build_parser(), test_script.build_parser(), visualize.build_parser()]
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            assert not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)), action.dest
            assert action.choices not in ([0, 1], [1], (0, 1)), action.dest
            if isinstance(action.default, bool):
                assert action.type is str2bool and action.const is True, action.dest


def test_warmup_flags_are_aliases_in_both_training_scripts():
    import train
    import train_ssl
    qcnet = ['--root', 'r', '--train_batch_size', '1', '--val_batch_size', '1', '--test_batch_size', '1',
             '--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
             '--num_recurrent_steps', '3', '--pl2pl_radius', '1', '--pl2a_radius', '1', '--a2a_radius', '1',
             '--pl2m_radius', '1', '--a2m_radius', '1']
    assert train.parse_args(qcnet + ['--warmup', '3']).warmup_epochs == 3
    assert train.parse_args(qcnet + ['--warmup_epochs', '4']).warmup_epochs == 4
    assert train_ssl.build_parser().parse_args(['--root', 'r', '--warmup_epochs', '5']).warmup == 5
    assert train_ssl.build_parser().parse_args(['--root', 'r', '--warmup', '6']).warmup == 6


def test_tf32_keeps_its_official_switch():
    import train
    parser = train.build_parser('QCNet')
    base = ['--root', 'r', '--train_batch_size', '1', '--val_batch_size', '1', '--test_batch_size', '1',
            '--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
            '--num_recurrent_steps', '3', '--pl2pl_radius', '1', '--pl2a_radius', '1', '--a2a_radius', '1',
            '--pl2m_radius', '1', '--a2m_radius', '1']
    from acceleration.options import speed_options_from_args
    def tf32(extra):
        return speed_options_from_args(parser.parse_args(base + extra)).tf32
    assert tf32([]) is True  # every preset trains with TF32 on CUDA, as the official scripts do
    assert tf32(['--tf32', '0']) is False and tf32(['--no_tf32']) is False and tf32(['--tf32']) is True
    assert tf32(['--speed', 'fast', '--tf32', 'false']) is False


def test_a_directory_given_as_checkpoint_lists_its_checkpoints(tmp_path):
    run = tmp_path / 'run'
    (run / 'checkpoints').mkdir(parents=True)
    for name in ('epoch=0-step=5.ckpt', 'last.ckpt'):
        (run / 'checkpoints' / name).write_bytes(b'x')
    for given in (run / 'checkpoints', run):  # the checkpoints folder or the run directory above it
        with pytest.raises(CliError) as info:
            check_checkpoint_file(given, '--ckpt_path')
        message = str(info.value)
        assert message.startswith(f'error: --ckpt_path: {run / "checkpoints"} is a directory, not a checkpoint file')
        assert 'epoch=0-step=5.ckpt, last.ckpt' in message and str(run / 'checkpoints' / 'last.ckpt') in message
    with pytest.raises(CliError, match='is a directory and holds no .ckpt file'):
        check_checkpoint_file(tmp_path / 'run' / 'checkpoints' / '..' / '..', '--ckpt_path')
    with pytest.raises(CliError, match='--ckpt_path: checkpoint .*missing.ckpt does not exist'):
        check_checkpoint_file(tmp_path / 'missing.ckpt', '--ckpt_path')
    assert check_checkpoint_file(run / 'checkpoints' / 'last.ckpt', '--ckpt_path').is_file()


@pytest.mark.parametrize('script', ['val.py', 'test.py', 'visualize.py'])
def test_scripts_name_a_checkpoint_directory_in_one_line(script, tmp_path):
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'last.ckpt').write_bytes(b'x')
    done = subprocess.run([sys.executable, script, '--root', str(tmp_path), '--ckpt_path',
                           str(tmp_path / 'checkpoints'), '--out_dir' if script == 'visualize.py' else '--devices',
                           str(tmp_path / 'plots') if script == 'visualize.py' else '1'],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'is a directory, not a checkpoint file; it holds last.ckpt' in lines[0]


def test_preprocess_module_runs_without_warnings(tmp_path):
    from sample_data import AV2_TRAIN_DIR  # the real Argoverse 2 samples
    done = subprocess.run([sys.executable, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir',
                           str(AV2_TRAIN_DIR), '--processed_dir', str(tmp_path / 'processed'),
                           '--num_workers', '1', '--no_progress'], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'Warning' not in done.stderr and 'Warning' not in done.stdout, done.stderr
    assert len(list((tmp_path / 'processed').glob('*.qcs'))) == len([p for p in AV2_TRAIN_DIR.iterdir() if p.is_dir()])


def test_cpu_thread_policy_is_passive_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv('OMP_WAIT_POLICY', raising=False)
    configure_cpu_threads()
    assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'
    monkeypatch.setenv('OMP_WAIT_POLICY', 'ACTIVE')
    configure_cpu_threads()
    assert os.environ['OMP_WAIT_POLICY'] == 'ACTIVE'


def test_scripts_set_the_thread_policy_before_torch_is_imported():
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    done = subprocess.run([sys.executable, '-c', 'import os, sys, train\nfrom utils.cli import run_main\n'
                           'def main(argv):\n    assert "torch" not in sys.modules\n'
                           '    print(os.environ["OMP_WAIT_POLICY"])\nrun_main(main, [])\n'],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'PASSIVE'


def test_model_names_match_the_predictor_classes():
    from predictors.arguments import FORECAST_MAE_DEPTHS
    from predictors.names import PREDICTOR_BACKBONES
    from predictors.registry import PREDICTORS
    from modules.forecast_mae_encoder import DEFAULT_NUM_SCENE_LAYERS, DEFAULT_NUM_TEMPORAL_LAYERS
    assert {name: cls.SSL_BACKBONE for name, cls in PREDICTORS.items()} == PREDICTOR_BACKBONES
    assert FORECAST_MAE_DEPTHS == {'num_temporal_layers': DEFAULT_NUM_TEMPORAL_LAYERS,
                                   'num_scene_layers': DEFAULT_NUM_SCENE_LAYERS}
