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

from tiny_configs import TINY_QCNET
from sample_data import AV2_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_AV2 = AV2_DIR
AUSTIN_ID = '0a1e6f0a-1817-4a98-b02e-db8c9327d151'
TEST_SPLIT_ID = '0a0af725-fbc3-41de-b969-3be718f694e2'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

needs_real_data = pytest.mark.skipif(not (SHARED_AV2 / 'train' / AUSTIN_ID).is_dir(),
                                     reason=f'real AV2 samples not found at {SHARED_AV2}')


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
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300
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


# ----------------------------------------------------------------------------------------------------------------------
# Real Argoverse 2 samples
# ----------------------------------------------------------------------------------------------------------------------

def _load_real(split: str, scenario_id: str):
    from datasets import load_argoverse_v2_scenario, process_scenario
    return process_scenario(load_argoverse_v2_scenario(SHARED_AV2 / split / scenario_id))


@pytest.fixture(scope='module')
def austin():
    if not (SHARED_AV2 / 'train' / AUSTIN_ID).is_dir():
        pytest.skip(f'real AV2 samples not found at {SHARED_AV2}')
    return _load_real('train', AUSTIN_ID)


def _curved_modes(num_agents: int, num_modes: int = 6, num_steps: int = 60, seed: int = 0):
    """Hand-made QCNet-like output: K arcs in each agent's frame (forward = +x) and random mixture logits."""
    generator = torch.Generator().manual_seed(seed)
    speed = torch.linspace(3.0, 12.0, num_modes)[:, None]                # m/s per mode
    curvature = torch.linspace(-0.04, 0.04, num_modes)[:, None]          # 1/m per mode
    arc = speed * torch.arange(1, num_steps + 1, dtype=torch.float32) / 10.0  # [K, F] travelled distance
    angle = curvature * arc
    # chord of the arc: length ~ arc, direction half the turned angle
    local = torch.stack([arc * torch.cos(angle / 2), arc * torch.sin(angle / 2)], dim=-1)
    return {'loc_refine_pos': local.expand(num_agents, -1, -1, -1).clone(),
            'pi': torch.randn(num_agents, num_modes, generator=generator)}


@needs_real_data
def test_map_polygons_reproduce_the_raw_lane_boundaries(austin):
    raw = json.loads(next((SHARED_AV2 / 'train' / AUSTIN_ID).glob('log_map_archive_*.json')).read_text())
    polygons = map_polygons(austin)
    lanes = [p for p in polygons if p.polygon_type != 'PEDESTRIAN']
    assert len(lanes) == 71 and len(polygons) - len(lanes) == 2 * 6  # each crosswalk is two directed polygons
    for lane in raw['lane_segments'].values():
        for side in ('left', 'right'):
            expected = np.array([[p['x'], p['y']] for p in lane[f'{side}_lane_boundary']])
            # the whole boundary, last point included (rebuilt from the last vector), in some polygon
            matches = [p for p in lanes if getattr(p, side).shape == expected.shape and
                       np.allclose(getattr(p, side), expected, atol=2e-3)]
            assert matches, f'lane {lane["id"]} {side} boundary not reproduced'
            assert matches[0].__dict__[f'{side}_mark'] == lane[f'{side}_lane_mark_type']


@needs_real_data
def test_prediction_from_output_uses_the_focal_frame(austin):
    focal = focal_agent_index(austin)
    assert austin['agent']['id'][focal] == '138951'
    output = _curved_modes(austin['agent']['num_nodes'])
    prediction = prediction_from_output(austin, output, label='x')
    origin = austin['agent']['position'][focal, 49, :2].double().numpy()
    heading = float(austin['agent']['heading'][focal, 49])
    first_step = prediction.trajectories[:, 0] - origin  # one step ahead of the agent
    along = first_step @ np.array([math.cos(heading), math.sin(heading)])
    np.testing.assert_allclose(along, output['loc_refine_pos'][focal, :, 0, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(prediction.probabilities, torch.softmax(output['pi'][focal].double(), -1).numpy())


@needs_real_data
def test_side_by_side_prediction_plot_on_real_scenario(austin, tmp_path):
    output = _curved_modes(austin['agent']['num_nodes'])
    scratch = prediction_from_output(austin, output, label='scratch')
    better = {'loc_refine_pos': output['loc_refine_pos'] * 0.5, 'pi': output['pi'] * 3}
    pretrained = prediction_from_output(austin, better, label='pre-trained')
    figure = plot_scenario(austin, [scratch, pretrained])
    focal = focal_agent_index(austin)
    future = austin['agent']['position'][focal, 50:, :2].double().numpy()
    valid = austin['agent']['valid_mask'][focal, 50:].numpy()
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert len(panels) == 2
    for ax, prediction in zip(panels, (scratch, pretrained)):
        ade, fde = min_ade_fde(prediction, future, valid)
        assert ax.get_title() == f'{prediction.label}\nminFDE {fde:.2f} m   minADE {ade:.2f} m'
        # every mode's endpoint and the ground truth are inside the (shared) view
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        points = np.concatenate([prediction.trajectories[:, -1], future[valid]])
        assert ((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1)).all()
    path = Path(save_figure(figure, tmp_path / 'nested' / 'austin.png'))
    pixels = _assert_rich_png(path)
    assert _pixels_near(pixels, PRED_COLOR) > 500, 'no predicted modes drawn'
    assert _pixels_near(pixels, FOCAL_COLOR) > 20, 'focal agent not drawn'
    assert [p.name for p in path.parent.iterdir()] == ['austin.png']  # no temporary file left behind


@needs_real_data
def test_test_split_scenario_draws_history_only(tmp_path):
    data = _load_real('test', TEST_SPLIT_ID)
    figure = plot_scenario(data)
    assert 'history only' in figure.axes[0].get_title()
    pixels = _assert_rich_png(Path(save_figure(figure, tmp_path / 'test.png')))
    assert _pixels_near(pixels, GT_COLOR, tolerance=25) == 0  # no future to draw
    assert _pixels_near(pixels, FOCAL_COLOR) > 20


@needs_real_data
def test_pretraining_views_plot_from_ssl_views(austin, tmp_path):
    from transforms.ssl_views import SSLViews
    from utils.visualize import windows_from_views
    views = SSLViews(50, 60, seed=3)(austin)
    windows = windows_from_views(views)
    assert [w.label for w in windows] == ['anchor view', 'target view']
    anchor, target = windows
    assert anchor.end - anchor.start == 50 and target.end - target.start == 50 and anchor.end <= target.start
    np.testing.assert_array_equal(anchor.agent_mask, views['anchor']['agent']['view_mask'].numpy())
    pixels = _assert_rich_png(Path(save_figure(plot_pretraining_views(austin, windows), tmp_path / 'views.png')))
    for color in VIEW_COLORS[:2]:
        assert _pixels_near(pixels, color, tolerance=30) > 100, f'no {color} (view window colour) in the plot'


@needs_real_data
def test_bad_inputs_give_clear_errors(austin):
    with pytest.raises(ValueError, match=r"'target view' \[60, 120\) is outside the 110 steps"):
        plot_pretraining_views(austin, [ViewWindow('target view', 60, 120)])
    no_focal = austin.clone()
    no_focal['agent']['category'] = torch.zeros_like(no_focal['agent']['category'])
    with pytest.raises(ValueError, match=f'scenario {AUSTIN_ID}: no agent has category 3'):
        plot_scenario(no_focal)
    broken = austin.clone()
    del broken['map_point']['side']
    with pytest.raises(KeyError, match='map_point.side'):
        plot_scenario(broken)


def test_save_figure_replaces_atomically_with_normal_permissions(tmp_path):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(2, 2))
    figure.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    target = tmp_path / 'plot.png'
    target.write_bytes(b'old')
    save_figure(figure, target, dpi=50)
    assert target.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ['plot.png']
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------------------------------
# visualize.py CLI
# ----------------------------------------------------------------------------------------------------------------------

# six modes; small radii keep the graphs, hence the CPU forward, small
TINY_QCNET_15M = {**TINY_QCNET, 'num_modes': 6, 'pl2pl_radius': 15.0, 'time_span': 4, 'pl2a_radius': 15.0,
                  'a2a_radius': 15.0, 'num_t2m_steps': 10, 'pl2m_radius': 15.0, 'a2m_radius': 15.0}


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    """A randomly initialised hidden_dim-16 QCNet saved the way Lightning saves checkpoints (weights + hparams)."""
    import pytorch_lightning as pl
    from predictors import QCNet
    torch.manual_seed(seed)
    model = QCNet(**TINY_QCNET_15M)
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams),
                'pytorch-lightning_version': pl.__version__}, path)
    return path


def _cli():
    import visualize
    return visualize.main


@needs_real_data
def test_cli_ground_truth_only_with_views_on_raw_av2(tmp_path, capsys):
    root = tmp_path / 'root'
    written = _cli()(['--root', str(root), '--split', 'train', '--raw_dir', str(SHARED_AV2 / 'train'),
                      '--num_scenarios', '1', '--views', '--out_dir', str(tmp_path / 'plots'), '--dpi', '80'])
    first = sorted(p.name for p in (SHARED_AV2 / 'train').iterdir() if p.is_dir())[0]
    assert [Path(p).name for p in written] == [f'{first}.png', f'{first}_views.png']
    assert capsys.readouterr().out.split() == written  # the paths are printed, one per line
    for path in written:
        _assert_rich_png(Path(path), min_kilobytes=15)
    assert not root.exists(), 'plotting a few raw scenarios must not build a cache'


@needs_real_data
def test_cli_compares_two_tiny_qcnet_checkpoints(tmp_path):
    scratch = _tiny_checkpoint(tmp_path / 'scratch.ckpt', seed=0)
    pretrained = _tiny_checkpoint(tmp_path / 'pretrained.ckpt', seed=1)
    out_dir = tmp_path / 'plots'
    written = _cli()(['--root', str(tmp_path), '--split', 'train', '--raw_dir', str(SHARED_AV2 / 'train'),
                      '--ckpt_path', str(scratch), '--compare_ckpt', str(pretrained), '--labels', 'scratch',
                      'pretrained', '--scenario_ids', AUSTIN_ID, '--out_dir', str(out_dir)])
    assert written == [str(out_dir / f'{AUSTIN_ID}.png')]
    pixels = _assert_rich_png(Path(written[0]))
    assert _pixels_near(pixels, PRED_COLOR) > 200, 'no predicted modes drawn'
    assert pixels.shape[1] > 1.6 * pixels.shape[0], 'expected two panels side by side'


@needs_real_data
def test_cli_errors_name_the_problem(tmp_path):
    main = _cli()
    raw = ['--root', str(tmp_path), '--split', 'train', '--raw_dir', str(SHARED_AV2 / 'train'),
           '--out_dir', str(tmp_path / 'plots')]
    with pytest.raises(SystemExit, match='scenario\\(s\\) not-a-scenario not found in'):
        main(raw + ['--scenario_ids', 'not-a-scenario'])
    with pytest.raises(SystemExit, match='--compare_ckpt needs --ckpt_path'):
        main(raw + ['--compare_ckpt', 'b.ckpt'])
    with pytest.raises(SystemExit, match='checkpoint .*missing.ckpt does not exist'):
        main(raw + ['--ckpt_path', str(tmp_path / 'missing.ckpt')])
    with pytest.raises(SystemExit, match='no observed future; pre-training views'):
        main(['--root', str(tmp_path), '--split', 'test', '--raw_dir', str(SHARED_AV2 / 'test'), '--views',
              '--out_dir', str(tmp_path / 'plots')])


def test_cli_on_synthetic_scenarios_with_checkpoint_and_views(tmp_path):
    synthetic = pytest.importorskip('datasets.synthetic', reason='datasets.synthetic (generator) not available')
    raw_root = tmp_path / 'raw'
    synthetic.main(['--out', str(raw_root), '--split', 'val', '--num', '2', '--seed', '5'])
    checkpoint = _tiny_checkpoint(tmp_path / 'model.ckpt', seed=0)
    written = _cli()(['--root', str(tmp_path / 'data'), '--split', 'val', '--raw_dir', str(raw_root / 'val'),
                      '--ckpt_path', str(checkpoint), '--num_scenarios', '1', '--views',
                      '--out_dir', str(tmp_path / 'plots'), '--dpi', '100'])
    scenario = sorted(p.name for p in (raw_root / 'val').iterdir())[0]
    assert [Path(p).name for p in written] == [f'{scenario}.png', f'{scenario}_views.png']
    prediction_pixels = _assert_rich_png(Path(written[0]), min_kilobytes=20)
    assert _pixels_near(prediction_pixels, PRED_COLOR) > 100
    views_pixels = _assert_rich_png(Path(written[1]), min_kilobytes=20)
    assert _pixels_near(views_pixels, VIEW_COLORS[0], tolerance=30) > 100


@needs_real_data
def test_polygons_known_by_one_polyline_are_drawn_as_lines(austin):
    from matplotlib.figure import Figure
    from utils.visualize import draw_map
    centre_only = austin.clone()
    keep = centre_only['map_point']['side'] == 2  # CENTER: as a map with centrelines only (e.g. Waymo lanes)
    for key in ('position', 'orientation', 'magnitude', 'height', 'type', 'side'):
        centre_only['map_point'][key] = centre_only['map_point'][key][keep]
    centre_only['map_point']['num_nodes'] = int(keep.sum())
    edges = centre_only['map_point', 'to', 'map_polygon']['edge_index'][:, keep]
    centre_only['map_point', 'to', 'map_polygon']['edge_index'] = torch.stack(
        [torch.arange(edges.shape[1]), edges[1]])
    polygons = map_polygons(centre_only)
    assert len(polygons) == 83 and all(p.left is None and p.right is None for p in polygons)
    ax = Figure().add_subplot(1, 1, 1)
    draw_map(ax, polygons)
    assert len(ax.patches) == 0 and len(ax.lines) == len(polygons)
    full = Figure().add_subplot(1, 1, 1)
    draw_map(full, map_polygons(austin))
    assert len(full.patches) == 2 * 71 + 12  # two passes over the lanes, one per directed crosswalk polygon


@needs_real_data
def test_cli_reads_the_processed_cache_when_there_is_no_raw_folder(tmp_path):
    from datasets import preprocess_scenarios
    processed = tmp_path / 'root' / 'train' / 'processed'
    preprocess_scenarios(str(SHARED_AV2 / 'train'), str(processed), num_workers=1, names=[AUSTIN_ID],
                         progress=False)
    written = _cli()(['--root', str(tmp_path / 'root'), '--split', 'train', '--out_dir', str(tmp_path / 'plots'),
                      '--dpi', '80'])
    assert [Path(p).name for p in written] == [f'{AUSTIN_ID}.png']
    _assert_rich_png(Path(written[0]), min_kilobytes=15)
    with pytest.raises(SystemExit, match='processed with 50 history \\+ 60 future steps, expected 30 \\+ 60'):
        _cli()(['--root', str(tmp_path / 'root'), '--split', 'train', '--num_historical_steps', '30',
                '--out_dir', str(tmp_path / 'plots')])
