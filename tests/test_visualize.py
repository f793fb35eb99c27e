"""Tests of utils/visualize.py and the visualize.py CLI: real PNGs from real and synthetic AV2 scenarios."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.visualize import (FOCAL_COLOR, GT_COLOR, PRED_COLOR, VIEW_COLORS, Prediction, ViewWindow,
                             agent_frame_to_world, focal_agent_index, map_polygons, min_ade_fde, plot_pretraining_views,
                             plot_scenario, prediction_from_output, save_figure)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_AV2 = PROJECT_ROOT.parent / 'shared' / 'data' / 'av2'
AUSTIN_ID = '0a1e6f0a-1817-4a98-b02e-db8c9327d151'
TEST_SPLIT_ID = '0a0af725-fbc3-41de-b969-3be718f694e2'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

needs_real_data = pytest.mark.skipif(not (SHARED_AV2 / 'train' / AUSTIN_ID).is_dir(),
                                     reason=f'real AV2 samples not found at {SHARED_AV2} (../shared/data/av2)')


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int64)


def _read_png(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 pixels of a PNG, after checking it is one."""
    import matplotlib.image
    with open(path, 'rb') as stream:
        assert stream.read(8) == PNG_SIGNATURE, f'{path} is not a PNG'
    pixels = matplotlib.image.imread(str(path))
    return (np.asarray(pixels)[..., :3] * 255).round().astype(np.int64)


def _pixels_near(pixels: np.ndarray, color: str, tolerance: int = 40) -> int:
    return int((np.abs(pixels - _hex_rgb(color)).max(axis=-1) <= tolerance).sum())


def _assert_rich_png(path: Path, min_kilobytes: float = 30.0) -> np.ndarray:
    assert path.is_file(), f'{path} was not written'
    assert path.stat().st_size > min_kilobytes * 1024, f'{path} is suspiciously small ({path.stat().st_size} B)'
    pixels = _read_png(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    assert pixels.std() > 10.0, 'image is (almost) uniform'
    distinct = np.unique(pixels.reshape(-1, 3) // 8, axis=0).shape[0]
    assert distinct > 50, f'only {distinct} colour bins used'
    return pixels


# ----------------------------------------------------------------------------------------------------------------------
# Geometry and metrics (hand-checkable values)
# ----------------------------------------------------------------------------------------------------------------------

def test_agent_frame_to_world_rotates_then_translates():
    local = np.array([[1.0, 0.0], [0.0, 2.0]])
    world = agent_frame_to_world(local, origin=np.array([10.0, -5.0, 3.0]), theta=math.pi / 2)
    # The agent faces +y: its forward axis (local x) maps to world +y, its left (local y) to world -x.
    np.testing.assert_allclose(world, [[10.0, -4.0], [8.0, -5.0]], atol=1e-12)


def test_agent_frame_to_world_matches_official_test_step_formula():
    generator = torch.Generator().manual_seed(0)
    local = torch.randn(6, 60, 2, generator=generator)
    origin, theta = torch.tensor([100.0, 200.0]), torch.tensor(0.7)
    cos, sin = theta.cos(), theta.sin()
    rotation = torch.stack([torch.stack([cos, sin]), torch.stack([-sin, cos])])  # official rot_mat layout
    expected = torch.matmul(local, rotation) + origin
    np.testing.assert_allclose(agent_frame_to_world(local, origin, float(theta)), expected.numpy(), atol=1e-4)


def test_min_ade_fde_agrees_with_project_metrics():
    from metrics import minADE, minFDE
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(6, 60, 2, generator=generator).cumsum(dim=1)
    target = torch.randn(60, 2, generator=generator).cumsum(dim=0)
    valid = torch.ones(60, dtype=torch.bool)
    valid[45:] = False  # the last valid step, not the last step, is the "final" one
    ours = min_ade_fde(Prediction(prediction, torch.full((6,), 1 / 6)), target.numpy(), valid.numpy())
    ade, fde = minADE(max_guesses=6), minFDE(max_guesses=6)
    ade.update(prediction[None], target[None], None, valid[None])
    fde.update(prediction[None], target[None], None, valid[None])
    assert ours == pytest.approx((float(ade.compute()), float(fde.compute())), rel=1e-5)


def test_prediction_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r'\[K, F, 2\]'):
        Prediction(np.zeros((6, 60)), np.full(6, 1 / 6), label='bad')
    with pytest.raises(ValueError, match='5 probabilities for 6 modes'):
        Prediction(np.zeros((6, 60, 2)), np.full(5, 0.2), label='bad')
