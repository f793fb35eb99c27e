"""The bad-input matrix (docs/RELIABILITY.md): one test per row not already covered elsewhere.

Every command-line failure must be ONE line `error: <file>: <problem> (<fix>)` with exit status 2 (scripts raise
utils.cli.CliError; run as a program it is printed without a traceback), raised BEFORE long work starts, and must
not touch what earlier runs wrote. Batch jobs (preprocessing) list a bad scenario and go on.
Data: small synthetic scenarios in the genuine AV2 file format (datasets.synthetic), tiny models, in-process calls.
"""
import importlib.util
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from datasets import ArgoverseV2Dataset, ScenarioError, load_argoverse_v2_scenario
from datasets.preprocess import FAILURES_FILE
from datasets.preprocess import main as preprocess_main
from datasets.storage import CACHE_SUFFIX, FORMAT_VERSION, MAGIC, is_current_cache_file
from datasets.synthetic import generate_split
from datasets.synthetic import main as synthetic_main
from utils.cli import CliError

from tiny_configs import AV2_STEPS, TINY_QCNET, TINY_QCNET_SYNTHETIC, as_flags

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# '--dataset' comes first: ssl_args drops it
TINY_FLAGS = as_flags({'dataset': 'argoverse_v2', **AV2_STEPS, **TINY_QCNET_SYNTHETIC})
RUN_FLAGS = ['--num_workers', '0', '--pin_memory', 'false', '--accelerator', 'cpu', '--devices', '1',
             '--max_epochs', '1', '--num_sanity_val_steps', '0']


def load_script(name):
    """Imports <project>/<name>.py under a private module name (a plain `import test` could hit the stdlib)."""
    spec = importlib.util.spec_from_file_location(f'_bad_inputs_script_{name}', PROJECT_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_line_error(error, culprit, *words):
    """A CliError: exit status 2, one line starting with 'error: <culprit>: ', containing `words`."""
    message = str(error)
    assert isinstance(error, CliError) and error.code == 2, repr(error)
    assert '\n' not in message and message.startswith(f'error: {culprit}: '), message
    for word in words:
        assert word in message, (word, message)
    return message


def file_tree(root):
    """{relative path: (size, mtime_ns)} of every file below root: to show that nothing was touched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(root).rglob('*') if p.is_file()}


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread. Two threads cost ~4x the CPU time here
    (OpenMP workers spin while waiting), especially when other processes compete for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='module')
def raw_root(tmp_path_factory):
    """Synthetic AV2-format scenarios: train (3), val (2), test (1, history only)."""
    root = tmp_path_factory.mktemp('bad_inputs_raw')
    generate_split(str(root), 'train', 3, seed=21)
    generate_split(str(root), 'val', 2, seed=22)
    generate_split(str(root), 'test', 1, seed=23)
    return root


def tiny_qcnet():
    from predictors import QCNet
    return QCNet(**{**TINY_QCNET, **TINY_QCNET_SYNTHETIC, 'num_modes': 6, 'T_max': 1})


def tiny_smartpretrain():
    from predictors.smartpretrain import SmartPretrain
    return SmartPretrain(**TINY_QCNET_SYNTHETIC)


def save_lightning_checkpoint(model, path):
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams),
                'pytorch-lightning_version': '2.6.0', 'epoch': 0, 'global_step': 0}, path)
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """(QCNet checkpoint, SmartPretrain checkpoint, garbage file) of the tiny model."""
    directory = tmp_path_factory.mktemp('bad_inputs_ckpt')
    torch.manual_seed(0)
    qcnet = save_lightning_checkpoint(tiny_qcnet(), directory / 'qcnet.ckpt')
    pretraining = save_lightning_checkpoint(tiny_smartpretrain(), directory / 'pretrain.ckpt')
    garbage = directory / 'garbage.ckpt'
    garbage.write_bytes(b'this is not a checkpoint' * 10)
    return qcnet, pretraining, garbage


def copy_raw_split(raw_root, split, target):
    """Copies of the split's scenario folders (tests modify their copy only)."""
    import shutil
    shutil.copytree(raw_root / split, target)
    return target


def train_args(root, raw_root, log_dir, *extra):
    return ['--root', str(root), '--train_raw_dir', str(raw_root / 'train'), '--val_raw_dir', str(raw_root / 'val'),
            '--train_batch_size', '2', '--val_batch_size', '2', '--test_batch_size', '2', '--log_dir', str(log_dir),
            '--exp_name', 'run', *RUN_FLAGS, *TINY_FLAGS, *extra]


def ssl_args(root, raw_root, log_dir, *extra):
    return ['--root', str(root), '--train_raw_dir', str(raw_root / 'train'), '--val_raw_dir', str(raw_root / 'val'),
            '--train_batch_size', '2', '--val_batch_size', '2', '--log_dir', str(log_dir), '--exp_name', 'ssl',
            *RUN_FLAGS[:-2], *TINY_FLAGS[2:], *extra]


# ---------------------------------------------------------------------------------------------------------------------
# raw scenarios
# ---------------------------------------------------------------------------------------------------------------------
def test_corrupt_parquet_is_listed_by_the_preprocess_cli_which_goes_on_and_keeps_finished_work(raw_root, tmp_path,
                                                                                                capsys):
    raw = copy_raw_split(raw_root, 'train', tmp_path / 'raw')
    processed = tmp_path / 'processed'
    args = ['--raw_dir', str(raw), '--processed_dir', str(processed), '--num_workers', '1', '--no_progress']
    assert preprocess_main(args) == 0
    finished = file_tree(processed)
    bad = sorted(raw.iterdir())[1]
    parquet = bad / f'scenario_{bad.name}.parquet'
    parquet.write_bytes(b'PAR1' + os.urandom(512) + b'PAR1')  # garbage with valid magic bytes
    (processed / f'{bad.name}{CACHE_SUFFIX}').unlink()  # as if this scenario had never been processed
    capsys.readouterr()
    assert preprocess_main(args) == 2  # partial success
    out = capsys.readouterr().out
    assert f'  {parquet}: cannot read parquet file' in out and 'fix or remove them and re-run' in out
    assert '2 already done (skipped), 1 failed' in out
    kept = {name: stat for name, stat in finished.items() if name.endswith(CACHE_SUFFIX) and
            not name.startswith(bad.name)}
    assert len(kept) == 2
    assert {name: file_tree(processed)[name] for name in kept} == kept  # finished cache files untouched
    assert (processed / FAILURES_FILE).is_file()
    assert len(ArgoverseV2Dataset(str(tmp_path), 'train', raw_dir=str(raw), processed_dir=str(processed),
                                  progress=False)) == 2  # the bad scenario is left out


def test_infinite_coordinate_names_the_parquet_file(raw_root, tmp_path):
    scenario = copy_raw_split(raw_root, 'val', tmp_path / 'raw') / sorted(os.listdir(raw_root / 'val'))[0]
    parquet = scenario / f'scenario_{scenario.name}.parquet'
    table = pq.read_table(parquet)
    values = table.column('position_y').to_numpy().copy()
    values[3] = np.inf
    index = table.schema.get_field_index('position_y')
    pq.write_table(table.set_column(index, 'position_y', pa.array(values)), parquet)
    with pytest.raises(ScenarioError) as info:
        load_argoverse_v2_scenario(scenario)
    message = str(info.value)
    assert message.startswith(f'{parquet}: ') and "'position_y'" in message and 'infinite' in message
    assert '\n' not in message


# ---------------------------------------------------------------------------------------------------------------------
# zero-length split
# ---------------------------------------------------------------------------------------------------------------------
def test_empty_split_fails_clearly_in_dataset_preprocess_and_train(raw_root, tmp_path, capsys):
    empty = tmp_path / 'empty_raw'
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        ArgoverseV2Dataset(str(tmp_path), 'train', raw_dir=str(empty), processed_dir=str(tmp_path / 'p'))
    message = str(info.value)
    assert message.startswith(f'{empty}: no scenarios for split') and '--train_raw_dir' in message

    assert preprocess_main(['--raw_dir', str(empty), '--processed_dir', str(tmp_path / 'p')]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'error: {empty}: no argoverse_v2 scenarios found (check --raw_dir and --dataset)'

    args = train_args(tmp_path / 'root', raw_root, tmp_path / 'logs')
    args[args.index('--train_raw_dir') + 1] = str(empty)
    with pytest.raises(CliError) as info:
        load_script('train').main(args)
    assert_one_line_error(info.value, empty, 'no scenarios', '--train_raw_dir')


# ---------------------------------------------------------------------------------------------------------------------
# processed cache of an older format version
# ---------------------------------------------------------------------------------------------------------------------
def age_cache_files(processed):
    """Rewrites the format version of every cache file as an older release would have written it."""
    aged = []
    for path in sorted(Path(processed).glob(f'*{CACHE_SUFFIX}')):
        blob = bytearray(path.read_bytes())
        blob[len(MAGIC):len(MAGIC) + 4] = (FORMAT_VERSION + 7).to_bytes(4, 'little')
        path.write_bytes(bytes(blob))
        aged.append(path)
    return aged


def test_old_cache_is_rebuilt_from_raw_and_named_when_there_is_no_raw(raw_root, tmp_path, checkpoints):
    processed = tmp_path / 'val' / 'processed'
    ArgoverseV2Dataset(str(tmp_path), 'val', raw_dir=str(raw_root / 'val'), progress=False)
    aged = age_cache_files(processed)
    assert aged and not any(is_current_cache_file(p) for p in aged)
    # raw scenarios at hand: the old files are rebuilt and the dataset works
    dataset = ArgoverseV2Dataset(str(tmp_path), 'val', raw_dir=str(raw_root / 'val'), progress=False)
    assert len(dataset) == len(aged) and all(is_current_cache_file(p) for p in aged)
    assert dataset[0]['agent']['num_nodes'] > 0
    # no raw scenarios: one line naming the file and how to rebuild it, before any model runs
    age_cache_files(processed)
    qcnet, _, _ = checkpoints
    with pytest.raises(CliError) as info:
        load_script('val').main(['--root', str(tmp_path), '--val_raw_dir', str(tmp_path / 'no_raw'),
                                 '--ckpt_path', str(qcnet), '--num_workers', '0', '--accelerator', 'cpu'])
    assert_one_line_error(info.value, aged[0], f'cache format version {FORMAT_VERSION + 7}', 're-run preprocessing')


# ---------------------------------------------------------------------------------------------------------------------
# wrong checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def test_qcnet_checkpoint_given_to_pretraining_resume(raw_root, tmp_path, checkpoints):
    qcnet, _, _ = checkpoints
    import train_ssl
    with pytest.raises(CliError) as info:
        train_ssl.main(ssl_args(tmp_path / 'root', raw_root, tmp_path / 'logs', '--resume', str(qcnet)))
    assert_one_line_error(info.value, qcnet, 'a supervised checkpoint cannot continue a pre-training run',
                          f'train.py --resume {qcnet}')
    assert not (tmp_path / 'root').exists()  # failed before any data was processed


@pytest.mark.parametrize('script', ['val', 'test'])
def test_pretraining_checkpoint_given_to_val_and_test(raw_root, tmp_path, checkpoints, script):
    _, pretraining, _ = checkpoints
    with pytest.raises(CliError) as info:
        load_script(script).main(['--root', str(tmp_path), f'--{script}_raw_dir', str(raw_root / script),
                                  '--ckpt_path', str(pretraining), '--num_workers', '0', '--accelerator', 'cpu',
                                  *(['--submission_dir', str(tmp_path / 'sub')] if script == 'test' else [])])
    assert_one_line_error(info.value, pretraining, 'pre-training checkpoint', '--pretrained_ckpt')
    assert not (tmp_path / script).exists() and not (tmp_path / 'sub').exists()  # failed before any work


def test_garbage_checkpoint_file(raw_root, tmp_path, checkpoints):
    _, _, garbage = checkpoints
    with pytest.raises(CliError) as info:
        load_script('val').main(['--root', str(tmp_path), '--val_raw_dir', str(raw_root / 'val'),
                                 '--ckpt_path', str(garbage), '--num_workers', '0', '--accelerator', 'cpu'])
    assert_one_line_error(info.value, garbage, 'not a readable PyTorch checkpoint')
    train = load_script('train')
    for flag in ('--pretrained_ckpt', '--resume'):
        with pytest.raises(CliError) as info:
            train.main(train_args(tmp_path / 'root', raw_root, tmp_path / 'logs', flag, str(garbage)))
        assert_one_line_error(info.value, garbage, 'not a readable PyTorch checkpoint')


def test_cli_prints_one_line_and_exits_2_without_a_traceback(raw_root, tmp_path, checkpoints, monkeypatch, capsys):
    """The same failure as above through the script's `__main__` entry (what a shell user sees)."""
    _, _, garbage = checkpoints
    monkeypatch.setattr(sys, 'argv', ['val.py', '--root', str(tmp_path), '--val_raw_dir', str(raw_root / 'val'),
                                      '--ckpt_path', str(garbage), '--accelerator', 'cpu'])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(PROJECT_ROOT / 'val.py'), run_name='__main__')
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith(f'error: {garbage}: ') and 'Traceback' not in err


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints with other hyper-parameters or missing weights
# ---------------------------------------------------------------------------------------------------------------------
def test_finetuning_from_a_pretraining_checkpoint_of_another_width(raw_root, tmp_path, checkpoints):
    _, pretraining, _ = checkpoints  # hidden_dim 16
    args = train_args(tmp_path / 'root', raw_root, tmp_path / 'logs', '--pretrained_ckpt', str(pretraining))
    args += ['--hidden_dim', '32', '--head_dim', '16']
    with pytest.raises(CliError) as info:
        load_script('train').main(args)
    assert_one_line_error(info.value, pretraining, 'do not fit', 'hyper-parameters')
    assert not (tmp_path / 'logs' / 'run' / 'checkpoints').exists()


def test_checkpoint_with_missing_weights_given_to_val(raw_root, tmp_path, checkpoints):
    qcnet, _, _ = checkpoints
    checkpoint = torch.load(qcnet, map_location='cpu', weights_only=True)
    dropped = [key for key in checkpoint['state_dict'] if key.startswith('decoder.to_pi')]
    for key in dropped:
        del checkpoint['state_dict'][key]
    partial = tmp_path / 'partial.ckpt'
    torch.save(checkpoint, partial)
    with pytest.raises(CliError) as info:
        load_script('val').main(['--root', str(tmp_path), '--val_raw_dir', str(raw_root / 'val'),
                                 '--ckpt_path', str(partial), '--num_workers', '0', '--accelerator', 'cpu'])
    assert_one_line_error(info.value, partial, f'{len(dropped)} missing')


# ---------------------------------------------------------------------------------------------------------------------
# unwritable output directories (a path below a regular FILE: root in CI ignores permission bits)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def blocked(tmp_path):
    """A directory path that cannot be created: its parent is a regular file."""
    afile = tmp_path / 'afile'
    afile.write_text('a regular file, not a directory')
    return afile / 'sub'


def test_unwritable_submission_dir_fails_before_inference(raw_root, tmp_path, checkpoints, blocked):
    qcnet, _, _ = checkpoints
    with pytest.raises(CliError) as info:
        load_script('test').main(['--root', str(tmp_path), '--test_raw_dir', str(raw_root / 'test'),
                                  '--ckpt_path', str(qcnet), '--num_workers', '0', '--accelerator', 'cpu',
                                  '--submission_dir', str(blocked)])
    assert_one_line_error(info.value, blocked, 'cannot write', '--submission_dir')
    assert not (tmp_path / 'test').exists()  # failed before the split was even processed


def test_unwritable_log_dirs_fail_before_training(raw_root, tmp_path, blocked):
    with pytest.raises(CliError) as info:
        load_script('train').main(train_args(tmp_path / 'root', raw_root, blocked))
    assert_one_line_error(info.value, blocked / 'run', 'cannot write', '--log_dir')
    import train_ssl
    with pytest.raises(CliError) as info:
        train_ssl.main(ssl_args(tmp_path / 'root', raw_root, blocked))
    assert_one_line_error(info.value, blocked / 'ssl', 'cannot write', '--log_dir')
    assert not (tmp_path / 'root').exists()


def test_unwritable_processed_dirs(raw_root, tmp_path, blocked, capsys):
    assert preprocess_main(['--raw_dir', str(raw_root / 'val'), '--processed_dir', str(blocked)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {blocked}: cannot write the processed directory') and '\n' not in err
    with pytest.raises(CliError) as info:
        load_script('train').main(train_args(tmp_path / 'root', raw_root, tmp_path / 'logs',
                                             '--train_processed_dir', str(blocked)))
    assert_one_line_error(info.value, blocked, 'cannot write the processed directory')


def test_unwritable_outputs_of_val_visualize_and_synthetic(raw_root, tmp_path, checkpoints, blocked, capsys):
    qcnet, _, _ = checkpoints
    with pytest.raises(CliError) as info:
        load_script('val').main(['--root', str(tmp_path), '--val_raw_dir', str(raw_root / 'val'),
                                 '--ckpt_path', str(qcnet), '--num_workers', '0', '--accelerator', 'cpu',
                                 '--output_json', str(blocked / 'metrics.json')])
    assert_one_line_error(info.value, blocked, 'cannot write', '--output_json')
    assert not (tmp_path / 'val').exists()
    with pytest.raises(CliError) as info:
        load_script('visualize').main(['--root', str(tmp_path), '--split', 'val', '--raw_dir', str(raw_root / 'val'),
                                       '--out_dir', str(blocked), '--num_scenarios', '1'])
    assert_one_line_error(info.value, blocked, 'cannot write', '--out_dir')
    assert synthetic_main(['--out', str(blocked), '--split', 'val', '--num', '1']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {blocked / "val"}: cannot write the output directory') and '--out' in err
