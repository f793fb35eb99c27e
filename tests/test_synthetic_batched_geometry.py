"""The batched geometry of the synthetic generator gives exactly (bit for bit) what the one-at-a-time versions give,
so generated scenes do not depend on how the work is grouped."""
import numpy as np

from datasets.synthetic.geometry import smooth_connector, smooth_connectors
from datasets.synthetic.grid_roads import _lane_piece, _lane_pieces, _Road
from datasets.synthetic.lane_graph import straight, straights
from datasets.synthetic.observation import _tracker_state


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
