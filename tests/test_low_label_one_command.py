"""benchmarks/low_label_in_one_command.sh: which fine-tunes share the card with the pre-trainings.

The script's Python calls are replaced by a stand-in `python` on PATH that records each call's start and end, so
the order the script imposes is checked without a GPU.
"""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'low_label_in_one_command.sh'

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "start $*" >> "$CALLS"
case " $* " in *" pretrain "*) echo "data ready in 0 s: stand-in"; sleep 5 ;; esac
# like the real study, leave a results file in --out
out=$(echo " $* " | sed -n 's/.* --out \([^ ]*\) .*/\1/p'); [ -n "$out" ] && touch "$out/runs.csv"
echo "end $*" >> "$CALLS"
"""


def run_script(tmp_path: Path, arms: str):
    """Runs the script with ``ARMS=arms``; returns the recorded calls, in order, as (event, subcommand, arms)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake = bin_dir / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / 'calls.log'
    env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'CALLS': str(calls),
           'ARMS': arms, 'LABELLED': '50', 'WORK_DIR': str(tmp_path / 'work')}
    done = subprocess.run(['bash', str(SCRIPT), str(tmp_path / 'out'), 'QCNet', '300'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = []
    for line in calls.read_text().splitlines():
        event, _, words = line.partition(' ')
        words = words.split()
        command = words[1] if len(words) > 1 else ''
        picked = []
        if '--arms' in words:
            for word in words[words.index('--arms') + 1:]:
                if word.startswith('--'):
                    break
                picked.append(word)
        events.append((event, command, tuple(picked)))
    return events


@pytest.mark.skipif(os.name != 'posix', reason='bash script')
def test_scratch_waits_for_two_pretrainings(tmp_path):
    # two pre-trainings (target pool and oracle) fill an 80 GB card: the scratch arm must not start beside them
    events = run_script(tmp_path, 'scratch pretrained oracle')
    pretrain_end = events.index(('end', 'pretrain', ()))
    finetunes = [(i, e) for i, e in enumerate(events) if e[0] == 'start' and e[1] == 'finetune']
    assert len(finetunes) == 1, events
    index, (_, _, arms) = finetunes[0]
    assert index > pretrain_end
    assert sorted(arms) == ['oracle', 'pretrained', 'scratch']


@pytest.mark.skipif(os.name != 'posix', reason='bash script')
def test_scratch_runs_beside_a_single_pretraining(tmp_path):
    events = run_script(tmp_path, 'scratch pretrained')
    pretrain_end = events.index(('end', 'pretrain', ()))
    scratch_start = events.index(('start', 'finetune', ('scratch',)))
    assert scratch_start < pretrain_end, events
    later = [e for e in events[pretrain_end:] if e[0] == 'start' and e[1] == 'finetune']
    assert [e[2] for e in later] == [('pretrained',)]
