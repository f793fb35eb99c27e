"""Lane changes of the synthetic generator, decided during the simulation (datasets/synthetic/lane_changes.py):
they happen, the drift towards the new lane shows before the lane line is crossed, none starts in an intersection
or ends close to one, and the vehicle behind in the target lane follows the changer."""
import dataclasses

import numpy as np
import pytest

from datasets.synthetic.car_following import SUBSTEPS, VehicleSimulation
from datasets.synthetic.drivers import driver_speed_limits, spawn_vehicles
from datasets.synthetic.lane_changes import JUNCTION_CLEARANCE, LaneChanges
from datasets.synthetic.lane_graph import build_lane_table
from datasets.synthetic.pedestrians import crosswalk_occupancy
from datasets.synthetic.profiles import PROFILES
from datasets.synthetic.scenario import build_road_map
from datasets.synthetic.signals import connector_priority, merging_pairs, red_lights
from datasets.synthetic.traffic import simulate_road_users
from datasets.synthetic.trajectory import DT, NUM_STEPS, WARMUP_STEPS
from synthetic_road_maps import road_maps

STEPS = WARMUP_STEPS + NUM_STEPS
NUM_SCENES = 12


def _scenes(profile: str, lane_changes: bool = True):
    """(road map, drivers with their final routes, s [N, T]) of NUM_SCENES simulated scenes."""
    prof = dataclasses.replace(PROFILES[profile], lane_changes=lane_changes)
    out = []
    for rng, road_map in road_maps(prof, 100):
        drivers, s_hist, _, _ = simulate_road_users(rng, road_map, prof, STEPS)
        out.append((road_map, drivers, s_hist))
        if len(out) == NUM_SCENES:
            return out
    raise AssertionError('too few road networks')


@pytest.fixture(scope='module')
def default_scenes():
    return _scenes('default')


def _changes(scenes):
    """(road map, driver, s [T], index of its lane-change element) for every lane change in `scenes`."""
    return [(road_map, d, s_hist[i], k) for road_map, drivers, s_hist in scenes for i, d in enumerate(drivers)
            for k, element in enumerate(d.route.elements) if element[0] == 'lc']


def _point_to_polyline(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance [M] of each point [M, 2] to the polyline [K, 2]."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(np.einsum('mkd,kd->mk', points[:, None] - a[None], ab) / np.maximum((ab ** 2).sum(1), 1e-9), 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(1)


def test_lane_changes_are_decided_during_the_simulation(default_scenes):
    changes = _changes(default_scenes)
    assert len(changes) >= NUM_SCENES // 2, f'only {len(changes)} lane changes in {NUM_SCENES} scenes'
    # every change was decided while driving: it starts ahead of where the driver was after the warm-up's
    # first decision, and routes without the simulation's decisions have none
    without = _scenes('default', lane_changes=False)
    assert not _changes(without)
    for _, d, s, k in changes:
        assert d.route.element_start[k] > s[0]


def test_lane_changes_are_deterministic():
    a, b = _scenes('highway')[:3], _scenes('highway')[:3]
    for (_, drivers_a, s_a), (_, drivers_b, s_b) in zip(a, b):
        assert np.array_equal(s_a, s_b)
        assert [d.route.elements for d in drivers_a] == [d.route.elements for d in drivers_b]


def test_drift_shows_before_the_lane_line_is_crossed(default_scenes):
    checked = 0
    for road_map, d, s, k in _changes(default_scenes):
        route = d.route
        start = route.element_start[k]
        end = route.element_start[k + 1] if k + 1 < len(route.elements) else route.s[-1]
        inside = (s > start) & (s < end)
        if not inside.any() or s[-1] < end:
            continue     # the manoeuvre is not over within the simulated time
        _, src, dst = route.elements[k][:3]
        table = build_lane_table(road_map, PROFILES['default'].upstream_length)
        source = np.concatenate([table.points[i] for i in src])
        target = np.concatenate([table.points[i] for i in dst])
        centre = np.stack([np.interp(s, route.s, route.points[:, j]) for j in (0, 1)], 1)   # [T, 2]
        off_source = _point_to_polyline(centre, source)
        off_target = _point_to_polyline(centre, target)
        crossed = np.flatnonzero(inside & (off_source > off_target))
        assert len(crossed), 'the route never gets closer to the target lane'
        t_cross = int(crossed[0])
        separation = off_source[t_cross] + off_target[t_cross]
        assert 2.5 < separation < 5.0
        # one second before the crossing the vehicle has already drifted towards the target lane since the
        # manoeuvre began, and its heading turns with the drift
        before, first = t_cross - 10, int(np.flatnonzero(inside)[0])
        assert before >= first and s[t_cross] - s[before] > 1.0
        drift = off_source[before] - off_source[first]
        assert drift > 0.25, f'no visible drift 1 s before crossing ({drift:.2f} m)'
        heading = np.interp(s[before], route.s, route.heading)
        lane_heading = np.interp(s[first], route.s, route.heading)
        assert abs(heading - lane_heading) > np.deg2rad(1.0)
        # the lateral move itself takes seconds, not a jump: from 10 % to 90 % of the separation
        moving = np.flatnonzero(inside & (off_source > 0.1 * separation) & (off_source < 0.9 * separation))
        assert len(moving) * DT >= 1.5
        checked += 1
    assert checked >= 3, f'only {checked} complete lane changes to check'


def test_no_lane_change_in_or_close_to_an_intersection(default_scenes):
    for road_map, d, _, k in _changes(default_scenes):
        table = build_lane_table(road_map, PROFILES['default'].upstream_length)
        _, src, dst = d.route.elements[k][:3]
        for lane_idx in src + dst:
            assert road_map.lanes[table.ids[lane_idx]].kind in ('road', 'aux')
        start = d.route.element_start[k]
        end = start + sum(table.lengths[i] for i in src)
        for gate, _ in d.route.gates:
            assert not start <= gate < end + JUNCTION_CLEARANCE - 1e-6
        previous = d.route.elements[k - 1] if k else None
        # it starts at the boundary of a lane piece of the road, not inside a connector
        assert previous is None or previous[0] != 'lane' or previous[1] >= len(table.ids) or \
            road_map.lanes[table.ids[src[0]]].kind in ('road', 'aux')


def test_follower_in_the_target_lane_follows_the_changer():
    prof = PROFILES['highway']
    seen = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        road_map = build_road_map(rng, prof)
        table = build_lane_table(road_map, prof.upstream_length)
        drivers = spawn_vehicles(rng, road_map, table, prof, STEPS * DT)
        red = red_lights(road_map, table, STEPS)
        sim = VehicleSimulation(drivers, table, driver_speed_limits(drivers), crosswalk_occupancy(road_map, [], STEPS),
                                red, connector_priority(road_map, table), merging_pairs(road_map, table),
                                LaneChanges(np.random.default_rng(seed), road_map, table, prof))
        with np.errstate(invalid='ignore'):
            for t in range(0, STEPS - 1, SUBSTEPS):
                sim.step(t)
                lead, gap, lane, lane2 = sim.leaders()
                for i in (lane2 != lane).nonzero()[0]:
                    # agents whose route runs through the changer's target lane, behind the changer
                    behind = sim.pad.on_route[:, lane2[i]] + (sim.s[i] - sim.base2[i]) - sim.s
                    behind[i] = np.nan
                    followers = np.flatnonzero(behind > sim.half + sim.half[i])
                    if not len(followers):
                        continue
                    j = followers[np.argmin(behind[followers])]
                    distance = behind[j] - sim.half[j] - sim.half[i]
                    # the changer is j's leader, or j follows someone even closer
                    assert lead[j] == i or gap[j] <= distance + 1e-6
                    seen += lead[j] == i
    assert seen >= 5


class _RepointingAll(VehicleSimulation):
    """Sets every agent's pointers afresh after new routes, not only those of the agents that got them."""

    def replace_routes(self, changes) -> None:
        super().replace_routes(changes)
        self._set_pointers()


def _selected(sim) -> dict:
    """What the pointers of every agent select in the current padded rows, looked up afresh."""
    f = sim.flat
    at, gate = f.entry_row + sim.k, f.gate_row + sim.gptr
    front, rear = f.entry_row + sim.k_front, f.entry_row + sim.k_rear
    return dict(lane=f.lane[at], lane2=f.lane2[at], base=f.base[at], base2=f.base2[at], next_start=f.start[at + 1],
                gate_s=f.gate[gate], gate_lane=f.gate_lane[gate], front=f.lane[front], rear=f.lane[rear],
                rear_base=f.base[rear], front_next=f.start[front + 1], rear_next=f.start[rear + 1])


def _run(profile: str, seed: int, simulation):
    """(s [steps, N], number of steps with new routes) of one scene simulated by `simulation`; after new routes
    what the pointers select is checked against the rows."""
    prof = PROFILES[profile]
    rng = np.random.default_rng(seed)
    road_map = build_road_map(rng, prof)
    table = build_lane_table(road_map, prof.upstream_length)
    drivers = spawn_vehicles(rng, road_map, table, prof, STEPS * DT)
    sim = simulation(drivers, table, driver_speed_limits(drivers), crosswalk_occupancy(road_map, [], STEPS),
                     red_lights(road_map, table, STEPS), connector_priority(road_map, table),
                     merging_pairs(road_map, table), LaneChanges(np.random.default_rng(seed), road_map, table, prof))
    replaced = 0
    original = sim.replace_routes

    def checked(changes):
        nonlocal replaced
        replaced += 1
        original(changes)
        for name, values in _selected(sim).items():
            assert np.array_equal(getattr(sim, name), values), name

    sim.replace_routes = checked
    with np.errstate(invalid='ignore'):
        s = [sim.step(t)[0] for t in range(0, STEPS - 1, SUBSTEPS)]
    return np.stack(s), replaced


def test_new_routes_keep_the_pointers():
    # a new route agrees with the old one beyond the front bumper: the pointers stay, what they select is read
    # again, and the run is the same as with every pointer set afresh after new routes
    replaced = 0
    for profile in ('highway', 'default'):
        for seed in range(6):
            s, count = _run(profile, seed, VehicleSimulation)
            s_all, count_all = _run(profile, seed, _RepointingAll)
            assert count == count_all and np.array_equal(s, s_all)
            replaced += count
    assert replaced >= 12
