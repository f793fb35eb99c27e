"""demo.sh: argument handling, the small 'demo' synthetic profile it uses on a CPU, and one tiny end-to-end run.

The end-to-end run goes through the real pipeline (synthetic data -> preprocessing -> pre-training -> fine-tuning
-> val -> test -> plots) with a handful of scenarios and one epoch per training stage, then checks every artefact
the summary points to and recomputes the summary's constant-velocity baseline independently with av2's loader.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from av2.datasets.motion_forecasting.data_schema import TrackCategory
from av2.datasets.motion_forecasting.eval.submission import ChallengeSubmission
from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet

from datasets import process_scenario
from datasets.argoverse_v2 import load_argoverse_v2_scenario
from datasets.synthetic import generate_split
from datasets.synthetic.profiles import PROFILES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO = PROJECT_ROOT / 'demo.sh'


def run_demo(*args, env=None, timeout=60):
    # the python running the suite (scripts/setup_env.sh uses a virtual environment that has torch as it is)
    env = dict(os.environ if env is None else env, PYTHON=sys.executable)
    return subprocess.run(['bash', str(DEMO), *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_help_lists_the_options():
    result = run_demo('--help')
    assert result.returncode == 0, result.stderr
    for flag in ('--gpu', '--out', '--verbose', 'NUM_TRAIN'):
        assert flag in result.stdout


def test_unknown_argument_is_one_line_error():
    result = run_demo('--epochs', '3')
    assert result.returncode == 2
    assert result.stderr.strip().count('\n') == 0 and "'--epochs'" in result.stderr


def test_refuses_to_replace_an_unrelated_folder(tmp_path):
    keep = tmp_path / 'mine' / 'notes.txt'
    keep.parent.mkdir()
    keep.write_text('not a demo')
    result = run_demo('--out', str(keep.parent))
    assert result.returncode == 2
    assert str(keep.parent) in result.stderr and result.stderr.strip().count('\n') == 0
    assert keep.read_text() == 'not a demo' and sorted(os.listdir(keep.parent)) == ['notes.txt']


def test_demo_profile_makes_smaller_scenes(tmp_path):
    """Same seeds: the 'demo' profile's processed samples hold fewer agents and map polygons than 'default'."""
    assert 'demo' in PROFILES
    sizes = {}
    for profile in ('demo', 'default'):
        ids = generate_split(str(tmp_path / profile), 'train', 6, seed=3, profile=profile)
        agents, polygons = [], []
        for sid in ids:
            folder = tmp_path / profile / 'train' / sid
            scenario = load_argoverse_scenario_parquet(folder / f'scenario_{sid}.parquet')
            assert sum(t.category == TrackCategory.FOCAL_TRACK for t in scenario.tracks) == 1
            features = process_scenario(load_argoverse_v2_scenario(str(folder)))
            agents.append(int(features['agent']['num_nodes']))
            polygons.append(int(features['map_polygon']['num_nodes']))
        sizes[profile] = (np.mean(agents), np.mean(polygons))
    assert sizes['demo'][0] < 0.7 * sizes['default'][0], sizes
    assert sizes['demo'][1] < 0.7 * sizes['default'][1], sizes


def constant_velocity_errors(val_raw: Path):
    """(mean ADE, mean FDE, miss rate) of the focal agents keeping their last observed velocity for 6 s."""
    ade, fde = [], []
    for folder in sorted(p for p in val_raw.iterdir() if p.is_dir()):
        scenario = load_argoverse_scenario_parquet(folder / f'scenario_{folder.name}.parquet')
        focal = next(t for t in scenario.tracks if t.track_id == scenario.focal_track_id)
        states = {s.timestep: s for s in focal.object_states}
        last = states[49]
        errors = [np.hypot(last.position[0] + last.velocity[0] * 0.1 * k - states[49 + k].position[0],
                           last.position[1] + last.velocity[1] * 0.1 * k - states[49 + k].position[1])
                  for k in range(1, 61)]
        ade.append(np.mean(errors))
        fde.append(errors[-1])
    return float(np.mean(ade)), float(np.mean(fde)), float(np.mean(np.array(fde) > 2.0))


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path):
    if not (PROJECT_ROOT / '.venv' / 'bin' / 'python').exists() and sys.prefix == sys.base_prefix:
        pytest.skip('demo.sh needs a virtual environment: .venv (bash run_tests.sh creates it) or this python\'s')
    out = tmp_path / 'demo'
    env = dict(os.environ, NUM_TRAIN='8', NUM_VAL='4', NUM_TEST='2', PRETRAIN_EPOCHS='1', FINETUNE_EPOCHS='1',
               NUM_PLOTS='1')
    result = run_demo('--out', str(out), env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    for number in range(1, 8):
        assert re.search(rf'^== {number}/7 .* \d+ s$', text, re.M), text
    assert 'Demo finished in' in text

    for relative in ('logs/pretrain/checkpoints/last.ckpt', 'logs/finetune/checkpoints/last.ckpt',
                     'logs/demo_4_finetune.log'):
        assert (out / relative).is_file(), relative
    metrics = json.loads((out / 'val_metrics.json').read_text())
    assert metrics['num_scenarios'] == 4
    test_ids = sorted(p.name for p in (out / 'raw' / 'test').iterdir() if p.is_dir())
    predictions = ChallengeSubmission.from_parquet(out / 'submission.parquet').predictions
    assert sorted(predictions) == test_ids
    pngs = list((out / 'plots').glob('*.png'))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    for artefact in ('submission.parquet', 'val_metrics.json', 'plots', 'logs/finetune/checkpoints/last.ckpt'):
        assert os.path.join(str(out), artefact) in text, artefact

    # summary table: model column from val_metrics.json, baseline column recomputed here
    rows = {m.group(1): m.groups()[1:] for m in
            re.finditer(r'^  (minADE|minFDE|MR)\s+([\d.]+)(?: m)?\s+([\d.]+)(?: m)?$', text, re.M)}
    assert set(rows) == {'minADE', 'minFDE', 'MR'}, text
    baseline = dict(zip(('minADE', 'minFDE', 'MR'), constant_velocity_errors(out / 'raw' / 'val')))
    for key, (model_value, baseline_value) in rows.items():
        assert float(model_value) == pytest.approx(metrics['metrics'][key], abs=0.006)
        assert float(baseline_value) == pytest.approx(baseline[key], abs=0.006)



def test_failed_stage_is_reported_and_old_output_replaced(tmp_path):
    """A previous demo's artefacts are removed first; a failing stage stops the demo and names its log."""
    if not (PROJECT_ROOT / '.venv' / 'bin' / 'python').exists() and sys.prefix == sys.base_prefix:
        pytest.skip('demo.sh needs a virtual environment: .venv (bash run_tests.sh creates it) or this python\'s')
    out = tmp_path / 'demo'
    (out / 'plots').mkdir(parents=True)
    (out / '.demo_output').touch()
    (out / 'submission.parquet').write_bytes(b'stale')
    (out / 'plots' / 'old.png').write_bytes(b'stale')
    result = run_demo('--out', str(out), env=dict(os.environ, NUM_TRAIN='-1'), timeout=300)
    assert result.returncode != 0
    assert re.search(r'^== 1/7 .*FAILED after \d+ s$', result.stdout, re.M), result.stdout
    assert '--num must be >= 0' in result.stdout
    log = out / 'logs' / 'demo_1_data.log'
    assert f"stage 'synthetic Argoverse 2 scenarios (demo)' failed" in result.stderr and str(log) in result.stderr
    assert log.is_file() and not (out / 'submission.parquet').exists() and not (out / 'plots').exists()
