"""Behaviour of the synthetic traffic that keeps futures predictable from their context: braking limited by the
constant-acceleration heuristic (no panic stops), queues standing at red signals from the start, and drivers that
wait only for pedestrians near their own path."""
import numpy as np
import pytest

from datasets.synthetic.car_following import MAX_DECEL, VehicleSimulation
from datasets.synthetic.drivers import driver_speed_limits, spawn_vehicles
from datasets.synthetic.lane_graph import build_lane_table
from datasets.synthetic.pedestrians import PATH_MARGIN, crosswalk_occupancy
from datasets.synthetic.profiles import PROFILES
from datasets.synthetic.signals import (QUEUE_STOP_MARGIN, connector_priority, merging_pairs, queue_at_red_signals,
                                        red_elapsed, red_lights)
from datasets.synthetic.trajectory import DT, NUM_STEPS, WARMUP_STEPS, Trajectory
from synthetic_road_maps import road_maps

STEPS = WARMUP_STEPS + NUM_STEPS
PROF = PROFILES['default']


def _scenes(count: int, signalised: bool = False):
    """(road map, lane table, spawned drivers) of `count` default scenes (with signals if `signalised`)."""
    out = []
    for rng, road_map in road_maps(PROF, 200):
        if signalised and not road_map.signals:
            continue
        table = build_lane_table(road_map, PROF.upstream_length)
        out.append((road_map, table, spawn_vehicles(rng, road_map, table, PROF, STEPS * DT)))
        if len(out) == count:
            return out
    raise AssertionError('too few road networks')


def _next_gate(driver):
    front = driver.s + 0.5 * driver.length
    return next(((g, lane) for g, lane in driver.route.gates if g > front), None)


def test_queues_stand_at_red_signals_from_the_start():
    queued_total, longest = 0, 0
    for road_map, table, drivers in _scenes(8, signalised=True):
        red = red_lights(road_map, table, 2)
        elapsed = red_elapsed(road_map, table)
        before = [(d.s, d.v) for d in drivers]
        queue_at_red_signals(drivers, road_map, table)
        lines = {}
        for d, (s0, v0) in zip(drivers, before):
            if (d.s, d.v) == (s0, v0):
                continue
            g, gate_lane = _next_gate(d)
            assert d.v == 0.0 and d.s > s0, 'a queued driver moves forward to the queue and stands'
            assert red[0, gate_lane] and elapsed[gate_lane] > 0.0
            # it would have reached the back of the queue since the signal turned red
            assert (g - s0 - 0.5 * d.length) - (g - d.s - 0.5 * d.length - QUEUE_STOP_MARGIN) \
                <= elapsed[gate_lane] * v0 + 1e-6
            k = int(np.searchsorted(np.asarray(d.route.entry_start), g - 1e-6, side='right')) - 1
            lines.setdefault(d.route.entry_lane[k], []).append((g - d.s - 0.5 * d.length, d.length + d.min_gap))
            queued_total += 1
        for queue in lines.values():   # per approach lane: (distance of the front to the line, length + gap)
            queue.sort()
            assert queue[0][0] == pytest.approx(QUEUE_STOP_MARGIN)   # the first stands at the line ...
            for (front, spacing), (front_behind, _) in zip(queue[:-1], queue[1:]):
                assert front_behind - front == pytest.approx(spacing)   # ... the others one vehicle apart
            longest = max(longest, len(queue))
    assert queued_total >= 5 and longest >= 2


def test_queued_vehicles_do_not_overlap():
    for road_map, table, drivers in _scenes(6, signalised=True):
        before = [(d.s, d.v) for d in drivers]
        queue_at_red_signals(drivers, road_map, table)
        queued = np.array([(d.s, d.v) != b for d, b in zip(drivers, before)])
        sim = VehicleSimulation(drivers, table, driver_speed_limits(drivers), crosswalk_occupancy(road_map, [], 2),
                                red_lights(road_map, table, STEPS), connector_priority(road_map, table),
                                merging_pairs(road_map, table))
        with np.errstate(invalid='ignore'):
            _, gap, _, _ = sim.leaders()
        assert (gap[queued] > -1e-6).all()


def test_braking_is_limited_when_a_leader_appears_alongside():
    road_map, table, drivers = _scenes(1)[0]
    sim = VehicleSimulation(drivers, table, driver_speed_limits(drivers), crosswalk_occupancy(road_map, [], 2),
                            red_lights(road_map, table, STEPS), connector_priority(road_map, table),
                            merging_pairs(road_map, table))
    i = int(np.argmax(sim.v))
    assert sim.v[i] > 5.0
    at = np.array([i])
    same_speed, zero = sim.v.copy(), np.zeros(sim.n)
    # a leader at the same speed right beside: the IDM's term is huge, the driver backs off at about b_comf
    a = sim._limited_braking(at, np.array([-1e4]), same_speed, zero, np.full(sim.n, 0.1), [], [])[0]
    assert -sim.b_comf[i] - 0.2 < a < 0.0
    # a standing obstacle closer than the comfortable stopping distance: hard braking, at most MAX_DECEL
    stop_distance = sim.v[i] ** 2 / (2.0 * sim.b_comf[i])
    a = sim._limited_braking(at, np.array([-1e4]), zero, zero, np.full(sim.n, 0.5 * stop_distance), [], [])[0]
    assert -MAX_DECEL - 1e-9 <= a < -sim.b_comf[i]
    # a closed gate far ahead calls for a little more than the kinematic deceleration, not the IDM's panic
    gap = 40.0
    a = sim._limited_braking(at, np.array([-8.0]), same_speed, zero, np.full(sim.n, 1e3), [i], [gap])[0]
    needed = sim.v[i] ** 2 / (2.0 * (gap - 1.0))
    assert -needed - sim.b_comf[i] - 0.1 < a < -needed + 0.1


def test_drivers_wait_only_for_pedestrians_near_their_path():
    checked = 0
    for road_map, table, _ in _scenes(10):
        by_crosswalk = {}
        for k, (c, at) in enumerate(table.crossings):
            by_crosswalk.setdefault(c, []).append((k, at))
        for c, crossings in by_crosswalk.items():
            k_near, at_near = min(crossings, key=lambda x: x[1])
            k_far, at_far = max(crossings, key=lambda x: x[1])
            cw = road_map.crosswalks[c]
            # someone standing on the road on the crosswalk, near the first lane's crossing
            at = min(max(at_near, -cw.half_length + 2.0), cw.half_length - 2.0)
            if abs(at - at_near) > PATH_MARGIN - 0.5 or at_far - at < PATH_MARGIN + 0.5:
                continue
            spot = cw.origin + cw.along * at
            pedestrian = Trajectory('pedestrian', np.tile(spot, (3, 1)), np.zeros(3), np.zeros((3, 2)))
            busy = crosswalk_occupancy(road_map, [pedestrian], 3, table.crossings)
            assert busy[:, k_near].all() and not busy[:, k_far].any()
            whole = crosswalk_occupancy(road_map, [pedestrian], 3)   # without crossings: the whole crosswalk
            assert whole[:, c].all()
            checked += 1
    assert checked >= 3
