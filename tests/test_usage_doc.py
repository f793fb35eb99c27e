"""docs/USAGE.md follows the commands' own --help (scripts/write_usage.py), and the help parser reads argparse's
groups, options and wrapped help texts correctly."""
import argparse
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_writer():
    spec = importlib.util.spec_from_file_location('write_usage', os.path.join(REPO, 'scripts', 'write_usage.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_usage = _load_writer()


def test_parse_help_reads_groups_options_and_wrapped_text(monkeypatch):
    parser = argparse.ArgumentParser(prog='x.py', description='A description that is not a flag.')
    parser.add_argument('--model', default='QCNet', help='predictor (default: %(default)s)')
    data = parser.add_argument_group('data', 'where the scenarios are')
    data.add_argument('--root', required=True, help='dataset root')
    data.add_argument('--a_rather_long_flag_name', type=int, metavar='A_RATHER_LONG_VALUE',
                      help='help text long enough to be wrapped over several lines ' * 3)
    data.add_argument('--no_help')
    data.add_argument('--switch', choices=['0', '1'], default='0', help='a choice')
    monkeypatch.setenv('COLUMNS', '60')       # force argparse to wrap: the parser must join the lines again
    groups = write_usage.parse_help(parser.format_help())
    assert [g.title for g in groups] == ['options', 'data']
    assert groups[0].options == [('--model MODEL', 'predictor (default: QCNet)')]
    assert groups[1].description == 'where the scenarios are'
    options = dict(groups[1].options)
    assert list(options) == ['--root ROOT', '--a_rather_long_flag_name A_RATHER_LONG_VALUE', '--no_help NO_HELP',
                             '--switch {0,1}']
    assert options['--a_rather_long_flag_name A_RATHER_LONG_VALUE'] == \
        ' '.join(['help text long enough to be wrapped over several lines'] * 3)
    assert options['--no_help NO_HELP'] == ''


def test_launcher_variables_lists_the_defaults_of_train_sh():
    variables = dict(write_usage.launcher_variables(os.path.join(REPO, 'train.sh')))
    assert variables['ROOT'] == 'data/synthetic'
    assert variables['PRETRAINED_CKPT'] == 'auto'
    ssl_variables = dict(write_usage.launcher_variables(os.path.join(REPO, 'train_ssl.sh')))
    assert ssl_variables['EXP_NAME'] == 'smartpretrain_bz${BATCH}_epoch${MAX_EPOCHS}'   # nested ${...} kept whole
    assert 'PYTHON' not in variables            # set in scripts/common.sh, not in the launcher


@pytest.mark.timeout(900)
def test_usage_doc_is_up_to_date():
    """Runs every command's --help (the slowest test of this file: one Python start-up per command)."""
    with open(os.path.join(REPO, 'docs', 'USAGE.md')) as f:
        current = f.read()
    expected = write_usage.render()
    if current != expected:
        import difflib
        diff = ''.join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                 'docs/USAGE.md', 'from --help'))[:60])
        pytest.fail('docs/USAGE.md is out of date with the commands\' --help; run `python scripts/write_usage.py`\n'
                    + diff)
