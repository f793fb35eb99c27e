"""The batched geometry of the synthetic generator gives exactly (bit for bit) what the one-at-a-time versions give,
so generated scenes do not depend on how the work is grouped."""
import numpy as np

from datasets.synthetic.geometry import (arc_length, arc_length_and_headings, headings, smooth_connector,
                                         smooth_connectors)
from datasets.synthetic.grid_roads import _lane_piece, _lane_pieces, _Road
from datasets.synthetic.lane_graph import straight, straights
from datasets.synthetic.observation import _tracker_state
from datasets.synthetic.lane_graph import build_lane_table
from datasets.synthetic.profiles import get_profile
from datasets.synthetic.routes import (_smoothed_curvature, build_route, ensure_post, forward_chain, join_geometry,
                                      join_lane_routes)
from tests.synthetic_road_maps import road_maps


def test_smooth_connectors_match_single_curves():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 20))
        start = rng.normal(0.0, 50.0, (n, 2))
        end = start + rng.normal(0.0, 15.0, (n, 2))
        h0, h1 = rng.uniform(-4, 4, n).tolist(), rng.uniform(-4, 4, n).tolist()
        curves = smooth_connectors(start, h0, end, h1, 0.5)
        assert len(curves) == n
        for k in range(n):
            single = smooth_connector(start[k], h0[k], end[k], h1[k], 0.5)
            assert single.shape == curves[k].shape and np.array_equal(single, curves[k])


def test_lane_pieces_match_single_pieces_over_roads_and_directions():
    rng = np.random.default_rng(1)
    for _ in range(30):
        requests = []
        for _ in range(int(rng.integers(1, 5))):
            d = rng.normal(size=2)
            road = _Road(a=0, b=1, start=rng.normal(0.0, 100.0, 2), d=d / np.hypot(*d), length=100.0, n_fwd=1,
                         n_bwd=1, width=3.5, median=0.0, bike_width=0.0, edge_mark='NONE')
            for _ in range(int(rng.integers(1, 8))):
                s_a = float(rng.uniform(0.0, 80.0))
                requests.append((road, s_a, s_a + float(rng.uniform(0.3, 40.0)), float(rng.normal(0.0, 5.0)),
                                 bool(rng.random() < 0.5)))
        pieces = _lane_pieces(requests)
        assert len(pieces) == len(requests)
        for (road, s_a, s_b, lateral, reverse), piece in zip(requests, pieces):
            assert np.array_equal(_lane_piece(road, s_a, s_b, lateral, reverse), piece)


def test_straights_match_single_straights():
    rng = np.random.default_rng(2)
    origins, directions = rng.normal(0.0, 100.0, (7, 2)), rng.normal(0.0, 3.0, (7, 2))
    for start, end in ((-130.0, 0.0), (0.0, 450.0), (-250.0, 0.0)):
        lanes = straights(origins, directions, start, end)
        for k in range(len(origins)):
            assert np.array_equal(straight(origins[k], directions[k], start, end), lanes[k])


def _tracker_state_step_by_step(rng, p_break, p_recover):
    n, steps = p_break.shape
    u = rng.random((n, steps))
    seen = np.empty((n, steps), dtype=bool)
    state = u[:, 0] < 0.85
    for t in range(steps):
        state = np.where(state, u[:, t] >= p_break[:, t], u[:, t] < p_recover)
        seen[:, t] = state
    return seen


def test_tracker_state_matches_the_step_by_step_chain():
    rng = np.random.default_rng(3)
    for trial in range(100):
        n = int(rng.integers(0, 40))
        p_break = rng.uniform(0.0, 0.6, (n, 110))
        p_recover = float(rng.uniform(0.0, 1.0))
        fast = _tracker_state(np.random.default_rng(trial), p_break, p_recover)
        slow = _tracker_state_step_by_step(np.random.default_rng(trial), p_break, p_recover)
        assert fast.dtype == bool and fast.shape == slow.shape and np.array_equal(fast, slow)


def _lane_routes(rng, road_map, table, prof, count):
    """`count` routes of lane chains from random vehicle lanes, and a few into virtual lanes appended to the
    table now."""
    starts = [table.index[lid] for lid, lane in road_map.lanes.items() if lane.lane_type == 'VEHICLE']
    chains = [forward_chain(rng, road_map, table, prof, starts[int(rng.integers(len(starts)))],
                            float(rng.uniform(10.0, 900.0)), 'VEHICLE') for _ in range(count)]
    # a straight continuation after lanes that have successors: appended to the table as scenes do
    chains += [[k, ensure_post(table, k)] for k in starts[:5] if k not in table.post]
    return [build_route(table, road_map, [('lane', k) for k in chain]) for chain in chains]


def test_join_lane_routes_matches_join_geometry():
    for name in ('highway', 'default'):
        prof = get_profile(name)
        for rng, road_map in road_maps(prof, 4):
            table = build_lane_table(road_map, prof.upstream_length).copy()
            routes = _lane_routes(rng, road_map, table, prof, 25)
            assert len(table.blocks) > 2      # virtual lanes appended after the table was built
            twins = [build_route(table, road_map, route.elements) for route in routes]
            join_lane_routes(routes, table)
            join_geometry(twins)
            for route, twin in zip(routes, twins):
                for key in ('points', 's', 'heading', 'curvature'):
                    assert np.array_equal(getattr(route, key), getattr(twin, key))


def test_join_lane_routes_refuses_lane_changes():
    prof = get_profile('highway')
    rng, road_map = next(road_maps(prof, 4))
    table = build_lane_table(road_map, prof.upstream_length)
    route = _lane_routes(rng, road_map, table, prof, 1)[0]
    route.lane_change_end = 10.0
    try:
        join_lane_routes([route], table)
    except ValueError:
        return
    raise AssertionError('a route with a lane change was joined as lanes alone')


def test_smoothed_curvature_matches_each_route_padded_alone():
    rng = np.random.default_rng(3)
    kernel = np.full(9, 1.0 / 9)
    for trial in range(400):
        counts = rng.integers(1, 30 if trial % 2 else 400, int(rng.integers(1, 8))).tolist()
        curvatures = [np.abs(rng.normal(0.0, 0.01, n)) * (rng.random(n) < 0.7) for n in counts]
        alone = np.concatenate([np.convolve(np.pad(c, 4, mode='edge'), kernel, mode='valid') for c in curvatures])
        assert np.array_equal(_smoothed_curvature(curvatures, counts), alone)


def _headings_reference(points: np.ndarray) -> np.ndarray:
    """geometry.headings written out step by step."""
    d = np.diff(points, axis=0)
    seg = np.arctan2(d[:, 1], d[:, 0])
    if len(seg) > 1:
        step = np.diff(seg)
        step -= 2 * np.pi * np.round(step / (2 * np.pi))
        seg = seg[0] + np.concatenate([[0.0], np.cumsum(step)])
    return np.concatenate([[seg[0]], 0.5 * (seg[1:] + seg[:-1]), [seg[-1]]])


def test_arc_length_and_headings_match_the_single_functions():
    rng = np.random.default_rng(5)
    for count in (2, 3, 17, 400):
        # a winding path: its heading passes +-pi several times
        turn = np.cumsum(rng.normal(0.0, 0.6, count))
        points = np.cumsum(np.stack([np.cos(turn), np.sin(turn)], 1) * rng.uniform(0.1, 2.0, (count, 1)), 0)
        arc, heading = arc_length_and_headings(points)
        assert np.array_equal(arc, arc_length(points))
        assert np.array_equal(heading, headings(points))
        assert np.array_equal(heading, _headings_reference(points))
