"""write_submission: AV2 challenge parquet written atomically and read back with av2's own reader."""
import os

import numpy as np
import pytest
import torch

from av2.datasets.motion_forecasting.eval.submission import ChallengeSubmission
from utils.submission import write_submission


def make_predictions(num_scenarios=4, num_modes=6, seed=0):
    rng = np.random.default_rng(seed)
    predictions = {}
    for i in range(num_scenarios):
        logits = rng.normal(size=num_modes)
        prob = np.exp(logits) / np.exp(logits).sum()
        traj = rng.normal(size=(num_modes, 60, 2)).cumsum(axis=1) + rng.uniform(-4000, 4000, size=2)
        predictions[f'scenario-{i:04d}'] = (str(1000 + i), traj, prob)
    return predictions


def test_round_trip_through_av2_reader(tmp_path):
    predictions = make_predictions()
    path = write_submission(predictions, tmp_path / 'sub' / 'qcnet.parquet', expected_scenario_ids=predictions)
    assert path == tmp_path / 'sub' / 'qcnet.parquet'
    assert os.listdir(path.parent) == ['qcnet.parquet']  # no temporary file left behind
    loaded = ChallengeSubmission.from_parquet(path).predictions
    assert set(loaded) == set(predictions)
    for scenario_id, (track_id, traj, prob) in predictions.items():
        loaded_prob, loaded_tracks = loaded[scenario_id]
        assert list(loaded_tracks) == [track_id]
        # The av2 reader sorts the futures by decreasing probability.
        order = np.argsort(-prob, kind='stable')
        np.testing.assert_array_equal(loaded_prob, prob[order])
        np.testing.assert_array_equal(loaded_tracks[track_id], traj[order])


def test_torch_tensors_and_fewer_modes_are_accepted(tmp_path):
    traj = torch.randn(3, 60, 2, dtype=torch.float32)
    prob = torch.softmax(torch.randn(3), dim=0)
    path = write_submission({'s1': ('77', traj, prob)}, tmp_path / 'a.parquet')
    loaded_prob, tracks = ChallengeSubmission.from_parquet(path).predictions['s1']
    order = torch.argsort(prob, descending=True).numpy()
    np.testing.assert_array_equal(tracks['77'], traj.numpy()[order])
    np.testing.assert_allclose(loaded_prob, prob.numpy()[order])


def test_missing_and_extra_scenarios_are_listed(tmp_path):
    predictions = make_predictions(num_scenarios=3)
    expected = ['scenario-0000', 'scenario-0001', 'scenario-0099']
    with pytest.raises(ValueError, match=r"missing 1 \(scenario-0099\); unexpected 1 \(scenario-0002\)"):
        write_submission(predictions, tmp_path / 'x.parquet', expected_scenario_ids=expected)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize('mutate, message', [
    (lambda p: (p[0], p[1], p[2] * 2), 'probabilities must sum to 1'),
    (lambda p: (p[0], p[1][:, :50], p[2]), r'trajectories must have shape \[K, 60, 2\]'),
    (lambda p: (p[0], np.concatenate([p[1], p[1][:1]]), np.append(p[2], 0.0)), '7 trajectories'),
    (lambda p: (p[0], p[1], p[2][:5] / p[2][:5].sum()), r'probabilities must have shape \[6\]'),
    (lambda p: (p[0], np.where(np.arange(60)[None, :, None] == 3, np.nan, p[1]), p[2]), 'NaN or inf'),
    (lambda p: (1001, p[1], p[2]), 'track_id must be a non-empty string'),
])
def test_invalid_predictions_are_rejected_and_nothing_is_written(tmp_path, mutate, message):
    predictions = make_predictions(num_scenarios=2)
    predictions['scenario-0001'] = mutate(predictions['scenario-0001'])
    with pytest.raises(ValueError, match=message) as excinfo:
        write_submission(predictions, tmp_path / 'x.parquet')
    assert "scenario 'scenario-0001'" in str(excinfo.value)
    assert not os.listdir(tmp_path)


def test_existing_file_is_replaced_whole(tmp_path):
    path = tmp_path / 'qcnet.parquet'
    write_submission(make_predictions(num_scenarios=5, seed=1), path)
    write_submission(make_predictions(num_scenarios=2, seed=2), path)
    assert len(ChallengeSubmission.from_parquet(path).predictions) == 2
    assert os.listdir(tmp_path) == ['qcnet.parquet']
