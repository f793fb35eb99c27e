"""Argoverse 2 motion-forecasting challenge submission writer."""
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from av2.datasets.motion_forecasting.eval.submission import ChallengeSubmission

from utils.atomic_io import atomic_output_path

# The AV2 leaderboard scores at most six futures of 60 steps (6 s at 10 Hz) per focal agent.
MAX_SUBMITTED_MODES = 6
NUM_SUBMITTED_STEPS = 60

ArrayLike = Any  # numpy array or torch tensor (torch is not imported here)
ScenarioPrediction = Tuple[str, ArrayLike, ArrayLike]


def _to_numpy(value: ArrayLike) -> np.ndarray:
    if hasattr(value, 'detach'):  # torch.Tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)  # half precision does not round-trip through parquet
    return array


def _check_scenario(scenario_id: str, prediction: ScenarioPrediction) -> Tuple[str, np.ndarray, np.ndarray]:
    """Validates one scenario's entry; returns (track_id, trajectories [K, 60, 2], probabilities [K])."""
    where = f'submission: scenario {scenario_id!r}'
    if not isinstance(scenario_id, str) or not scenario_id:
        raise ValueError(f'submission: scenario ids must be non-empty strings, got {scenario_id!r}')
    if not isinstance(prediction, (tuple, list)) or len(prediction) != 3:
        raise ValueError(f'{where}: expected (track_id, trajectories [K, 60, 2], probabilities [K]), '
                         f'got {type(prediction).__name__}')
    track_id, trajectories, probabilities = prediction
    if not isinstance(track_id, str) or not track_id:
        raise ValueError(f'{where}: track_id must be a non-empty string (AV2 track ids are strings), '
                         f'got {track_id!r}')
    trajectories = _to_numpy(trajectories)
    probabilities = _to_numpy(probabilities)
    if trajectories.ndim != 3 or trajectories.shape[1:] != (NUM_SUBMITTED_STEPS, 2):
        raise ValueError(f'{where}: trajectories must have shape [K, {NUM_SUBMITTED_STEPS}, 2], '
                         f'got {list(trajectories.shape)}')
    num_modes = trajectories.shape[0]
    if not 1 <= num_modes <= MAX_SUBMITTED_MODES:
        raise ValueError(f'{where}: {num_modes} trajectories, the leaderboard accepts 1 to {MAX_SUBMITTED_MODES}')
    if probabilities.shape != (num_modes,):
        raise ValueError(f'{where}: probabilities must have shape [{num_modes}] to match the trajectories, '
                         f'got {list(probabilities.shape)}')
    if not np.isfinite(trajectories).all():
        raise ValueError(f'{where}: trajectories contain NaN or inf')
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ValueError(f'{where}: probabilities must be finite and >= 0, got {probabilities.tolist()}')
    total = float(probabilities.astype(np.float64).sum())
    if not math.isclose(total, 1.0, rel_tol=1e-5, abs_tol=1e-6):
        raise ValueError(f'{where}: probabilities must sum to 1 (softmax them), they sum to {total:.8f}')
    return track_id, trajectories, probabilities


def _format_ids(ids, limit: int = 10) -> str:
    ids = sorted(ids)
    shown = ', '.join(ids[:limit])
    return f'{len(ids)} ({shown}{", ..." if len(ids) > limit else ""})'


def check_coverage(scenario_ids: Iterable[str], expected_scenario_ids: Iterable[str]) -> None:
    """Raises ValueError naming the missing and extra scenarios when the two id sets differ."""
    have, expected = set(scenario_ids), set(expected_scenario_ids)
    missing, extra = expected - have, have - expected
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'missing {_format_ids(missing)}')
        if extra:
            parts.append(f'unexpected {_format_ids(extra)}')
        raise ValueError(f'submission: scenarios do not match the expected {len(expected)}: ' + '; '.join(parts))


def write_submission(predictions: Mapping[str, ScenarioPrediction],
                     path: Union[str, os.PathLike],
                     expected_scenario_ids: Optional[Iterable[str]] = None) -> Path:
    """Validates the predictions and writes the AV2 challenge parquet atomically.

    predictions: scenario_id -> (focal track_id, trajectories [K, 60, 2] in the world (map) frame,
    probabilities [K] summing to 1), K <= 6; numpy arrays or torch tensors.
    expected_scenario_ids: when given, every one must be predicted and no other.
    The file appears complete or not at all (written next to `path`, then renamed). Returns the path written.
    """
    path = Path(path)
    if path.suffix != '.parquet':
        raise ValueError(f'submission: {path}: the file name must end with .parquet')
    if not predictions:
        raise ValueError(f'submission: {path}: no predictions to write')
    if expected_scenario_ids is not None:
        check_coverage(predictions.keys(), expected_scenario_ids)
    scenario_predictions = {}
    for scenario_id, prediction in predictions.items():
        track_id, trajectories, probabilities = _check_scenario(scenario_id, prediction)
        scenario_predictions[scenario_id] = (probabilities, {track_id: trajectories})
    submission = ChallengeSubmission(scenario_predictions)  # av2's own checks on top of ours

    with atomic_output_path(path) as temporary:  # the leaderboard file is whole or absent
        submission.to_parquet(temporary)
    return path
