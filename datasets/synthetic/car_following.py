"""Longitudinal motion of every lane-following road user: IDM car following with per-driver parameters and a
reaction lag, right of way at intersection gates (signals, stop signs, conflicting paths, pedestrians).

All agents move along their own route (arc length s). Agent j is ahead of agent i when j's current lane lies on
i's route. Entering a gated lane (intersection connector, merge) needs a green signal (signalised nodes), a full
stop first (stop-controlled arms), its conflicting lanes free of other agents and its crosswalks free of
pedestrians. Where two connectors conflict, the one of lower priority (a stop arm, a permissive left turn) also
gives way to vehicles approaching on the other within ACCEPTED_GAP, and nobody enters in front of a vehicle that
is too close to stop. The model is integrated at SUBSTEPS * DT with constant acceleration per step, which gives the 10 Hz
samples in between exactly.
"""
from __future__ import annotations

import math

from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from datasets.synthetic.drivers import Driver, driver_speed_limits
from datasets.synthetic.lane_graph import LaneTable
from datasets.synthetic.trajectory import DT

SUBSTEPS = 3                 # the car-following model is integrated at SUBSTEPS * DT
DECIDE_EVERY = 5             # integration steps between two looks of the drivers at the lanes beside them
COMMIT_DECEL = 4.0           # m/s^2: closer than the stopping distance at this deceleration -> go
SIGNAL_COMMIT_DECEL = 3.0    # amber: a driver who cannot stop comfortably drives on
GATE_LOOKAHEAD = 45.0        # metres before a gate at which right of way is checked
STOP_VIEW = 100.0            # metres before a red signal or a stop sign from which drivers slow down for it
MERGE_VIEW = 30.0            # metres before merging connectors from which the other stream is followed
MERGE_ROOM = 0.5             # share of the distance left to where merging paths meet that adds to the gap
ACCEPTED_GAP = 4.5           # s: a driver giving way enters only if priority traffic is further away than this
CLEAR_MARGIN = 2.0           # s: ... and than the time it needs to clear the conflict point, plus this
PRIORITY_RANGE = 80.0        # metres before a gate within which approaching priority traffic is seen
MAX_DECEL = 9.0              # m/s^2, the hardest braking
CAH_FROM = 0.5               # m/s^2 of IDM braking from which the ACC blend is applied (it is ~ the IDM below)
CAH_COOLNESS = 0.99          # weight of the constant-acceleration heuristic in the ACC blend
CAH_MIN_GAP = 2.0            # metres: the gap the heuristic assumes at least
ENTRY_SLACK, GATE_SLACK, METRE_SLACK = 16, 2, 80   # spare columns for routes that change during the run


class _Padded:
    """Per-driver route data padded into arrays [N, ...] so one numpy pass serves all agents."""

    def __init__(self, drivers: List[Driver], table: LaneTable, speed_limits: List[np.ndarray],
                 slack: bool = False):
        routes = [d.route for d in drivers]
        # with slack, routes that change during the run usually still fit their row (see set_row)
        n_entries = max(len(r.entry_start) for r in routes) + 1 + (ENTRY_SLACK if slack else 0)
        n_gates = max(len(r.gates) for r in routes) + 1 + (GATE_SLACK if slack else 0)
        # row-major masks of the filled cells, so each field is written from one flat list of all agents
        entries = np.arange(n_entries) < np.array([len(r.entry_start) for r in routes])[:, None]
        gates = np.arange(n_gates) < np.array([len(r.gates) for r in routes])[:, None]
        self.start = _padded(entries, np.inf, float, [r.entry_start for r in routes])
        self.lane = _padded(entries, 0, int, [r.entry_lane for r in routes])
        self.base = _padded(entries, 0.0, float, [r.entry_base for r in routes])
        self.lane2 = _padded(entries, 0, int, [r.entry_lane2 for r in routes])
        self.base2 = _padded(entries, 0.0, float, [r.entry_base2 for r in routes])
        self.gate = _padded(gates, np.inf, float, [[g for g, _ in r.gates] for r in routes])
        self.gate_lane = _padded(gates, 0, int, [[lane for _, lane in r.gates] for r in routes])
        self.on_route = _route_positions(routes, table)
        max_len = max(len(x) for x in speed_limits) + (METRE_SLACK if slack else 0)
        self.vlim = np.repeat(np.array([x[-1] for x in speed_limits])[:, None], max_len, 1)
        self.vlim[np.arange(max_len) < np.array([len(x) for x in speed_limits])[:, None]] = \
            np.concatenate(speed_limits)
        self.route_end = np.array([r.s[-1] for r in routes]) - 1.0

    def set_row(self, i: int, route, limit: np.ndarray, table: LaneTable) -> bool:
        """Write agent i's new route and speed limit into its rows; False (nothing written) when they do not fit.
        The flat views of _Flat see the change."""
        n = len(route.entry_start)
        if n >= self.start.shape[1] or len(route.gates) >= self.gate.shape[1] or len(limit) > self.vlim.shape[1]:
            return False
        for field, values, fill in ((self.start, route.entry_start, np.inf), (self.lane, route.entry_lane, 0),
                                    (self.base, route.entry_base, 0.0), (self.lane2, route.entry_lane2, 0),
                                    (self.base2, route.entry_base2, 0.0)):
            field[i, :n] = values
            field[i, n:] = fill
        g = len(route.gates)
        self.gate[i, :g] = [pos for pos, _ in route.gates]
        self.gate[i, g:] = np.inf
        self.gate_lane[i, :g] = [lane for _, lane in route.gates]
        self.gate_lane[i, g:] = 0
        self.on_route[i] = np.nan
        own = _own_lanes(route, table)
        self.on_route[i, list(own)] = list(own.values())
        self.vlim[i, :len(limit)] = limit
        self.vlim[i, len(limit):] = limit[-1]
        self.route_end[i] = route.s[-1] - 1.0
        return True


def _padded(filled: np.ndarray, fill, dtype, rows: List[List]) -> np.ndarray:
    """Array shaped like the mask `filled` [N, M]: the values of `rows` in its True cells, `fill` elsewhere."""
    out = np.full(filled.shape, fill, dtype=dtype)
    out[filled] = [value for row in rows for value in row]
    return out


def _route_positions(routes, table: LaneTable) -> np.ndarray:
    """on_route[i, lane]: route s of agent i at which that lane's own s is zero (NaN: not on i's route)."""
    rows, lanes, values = [], [], []
    for i, r in enumerate(routes):
        own = _own_lanes(r, table)
        rows += [i] * len(own)
        lanes += own.keys()
        values += own.values()
    on_route = np.full((len(routes), table.total), np.nan)
    on_route[rows, lanes] = values
    return on_route


def _own_lanes(r, table: LaneTable) -> Dict[int, float]:
    """{lane: route s at which that lane's own s is zero} for the lanes of route r."""
    own = dict(zip(r.entry_lane, r.entry_base))
    own.update(zip(r.entry_lane2, r.entry_base2))
    # lanes branching from the same predecessor overlap where they start: an agent that took the other
    # branch is still in the way there, so treat it as if it were on this route
    for lane_idx, base in zip(r.entry_lane, r.entry_base):
        for sib, shift in table.siblings[lane_idx]:
            if sib not in own:
                own[sib] = base + shift
    return own


class _Flat:
    """One-dimensional views of the `_Padded` arrays and each agent's row offset into them: looking up one
    element per agent in a flat array is cheaper than a two-dimensional fancy index."""

    def __init__(self, pad: _Padded):
        n = len(pad.route_end)
        self.entry_row = np.arange(n) * pad.start.shape[1]
        self.gate_row = np.arange(n) * pad.gate.shape[1]
        self.vlim_row = np.arange(n) * pad.vlim.shape[1]
        self.start, self.lane, self.base = pad.start.ravel(), pad.lane.ravel(), pad.base.ravel()
        self.lane2, self.base2 = pad.lane2.ravel(), pad.base2.ravel()
        self.gate, self.gate_lane, self.vlim = pad.gate.ravel(), pad.gate_lane.ravel(), pad.vlim.ravel()


class VehicleSimulation:
    """State and one integration step of all lane-following agents (see the module docstring)."""

    def __init__(self, drivers: List[Driver], table: LaneTable, speed_limits: List[np.ndarray],
                 crosswalk_busy: np.ndarray, red: Optional[np.ndarray], priority: Optional[np.ndarray] = None,
                 merges: Set[Tuple[int, int]] = frozenset(), lane_changes=None):
        self.n = len(drivers)
        self.drivers, self.speed_limits = drivers, list(speed_limits)
        # decides lane changes during the run (a lane_changes.LaneChanges, or None: routes stay as spawned)
        self.lane_changes = lane_changes
        if lane_changes is not None:
            lane_changes.bind(drivers)
        self.ar = np.arange(self.n)
        self.table = table
        self.pad = _Padded(drivers, table, speed_limits, slack=lane_changes is not None)
        self.flat = _Flat(self.pad)
        self.length = np.array([d.length for d in drivers])
        self.half = self.length / 2
        self.half_sum = self.half[:, None] + self.half[None, :]
        self.a_max = np.array([d.a_max for d in drivers])
        self.b_comf = np.array([d.b_comf for d in drivers])
        self.sqrt_ab = 2.0 * np.sqrt(self.a_max * self.b_comf)
        self.headway = np.array([d.headway for d in drivers])
        self.min_gap = np.array([d.min_gap for d in drivers])
        # first-order lag of the applied acceleration: a driver reacts within its reaction time
        self.lag = np.minimum(1.0, SUBSTEPS * DT / np.array([d.reaction for d in drivers]))
        self.dwell = [d.dwell for d in drivers]
        self.stop_speed = [d.stop_speed for d in drivers]
        self.watched = np.zeros(table.total, dtype=bool)     # lanes some gate has to keep an eye on
        for conf in table.conflicts:
            for c, _ in conf:
                self.watched[c] = True
        # [steps, crosswalks] pedestrians on each crosswalk; turned into sets only for the steps that ask
        self.crosswalk_busy = crosswalk_busy if crosswalk_busy.size else None
        self.red = red                      # [steps, lanes] signal shows red for that connector (or None)
        self.priority = np.full(table.total, -1) if priority is None else priority   # [lanes], -1: no rule
        self.merging = np.zeros(table.total, dtype=bool)   # connectors that merge into another's exit lane
        self.merge_partners: Dict[int, List[int]] = {}
        for lane, other in merges:
            self.merging[lane] = True
            self.merge_partners.setdefault(lane, []).append(other)
        # per lane: the conflicting lanes whose paths cross it (merging ones are followed, not waited for)
        self.crossing = [tuple((c, at) for c, at in conf if (lane, c) not in merges)
                         for lane, conf in enumerate(table.conflicts)]
        # meet[lane][c]: arc length on `lane` where its path meets that of the conflicting lane c
        self.meet: List[Dict[int, float]] = [{} for _ in range(table.total)]
        for c, conf in enumerate(table.conflicts):
            for lane, at in conf:
                self.meet[lane][c] = at
        self.stop_done = [-1] * self.n
        self.stop_timer = [0] * self.n
        # plain-Python copies of per-lane and per-agent constants for the scalar right-of-way checks
        self.needs_stop = np.asarray(table.needs_stop, dtype=bool)
        self.needs_stop_list = [bool(x) for x in table.needs_stop]
        self.priority_list = self.priority.tolist()
        self.half_list = self.half.tolist()
        self.a_max_list = self.a_max.tolist()
        self.b_comf_list = self.b_comf.tolist()
        self.ns_or_nopri = self.needs_stop | (self.priority < 0)   # lanes whose approaching agents never count
        self.s = np.array([d.s for d in drivers])
        self.v = np.array([d.v for d in drivers])
        self.acc = np.zeros(self.n)
        self._set_pointers()
        self._settle_initial_speeds()

    def _set_pointers(self) -> None:
        """Route entry and gate pointers of every agent from its position, and what they select."""
        self.k = (self.pad.start <= self.s[:, None]).sum(1) - 1
        self._entries_moved()
        self.gptr = (self.pad.gate < (self.s + self.half)[:, None]).sum(1)   # next gate ahead of the front
        self._gates_moved()
        # entry pointers of the front and rear bumpers (positions only grow, so they only move on)
        self.k_front = (self.pad.start <= (self.s + self.half)[:, None]).sum(1) - 1
        self.k_rear = np.maximum((self.pad.start <= (self.s - self.half)[:, None]).sum(1) - 1, 0)
        self._bumpers_moved()

    def replace_routes(self, changes) -> None:
        """Give agents new routes [(agent, Route)] that agree with their old ones up to where they are: their
        padded rows are rewritten (all rows rebuilt when one does no longer fit)."""
        for i, route in changes:
            self.drivers[i].route = route
        fits = True
        for (i, route), limit in zip(changes, driver_speed_limits([self.drivers[i] for i, _ in changes])):
            self.speed_limits[i] = limit
            fits = fits and self.pad.set_row(i, route, limit, self.table)
        if not fits:
            self.pad = _Padded(self.drivers, self.table, self.speed_limits, slack=True)
            self.flat = _Flat(self.pad)
        # a new route agrees with the old one beyond the front bumper (a change starts ahead of it even after this
        # step), so every pointer still selects the same entry and gate (the step moves them on as ever); only
        # what they select is read again from the rewritten (or rebuilt) rows
        self._entries_moved()
        self._gates_moved()
        self._bumpers_moved()

    # The route entries and gates that the pointers select change only when an agent passes a boundary, so
    # what is looked up through them is kept until a pointer moves.
    def _entries_moved(self) -> None:
        f = self.flat
        at = f.entry_row + self.k
        self.lane, self.lane2 = f.lane[at], f.lane2[at]
        self.base, self.base2 = f.base[at], f.base2[at]
        self.next_start = f.start[at + 1]

    def _gates_moved(self) -> None:
        f = self.flat
        at = f.gate_row + self.gptr
        self.gate_s, self.gate_lane = f.gate[at], f.gate_lane[at]
        self.gate_stop = self.needs_stop[self.gate_lane]

    def _bumpers_moved(self) -> None:
        f = self.flat
        front, rear = f.entry_row + self.k_front, f.entry_row + self.k_rear
        self.front, self.rear = f.lane[front], f.lane[rear]
        self.rear_base = f.base[rear]
        self.front_next, self.rear_next = f.start[front + 1], f.start[rear + 1]

    def _settle_initial_speeds(self) -> None:
        """Seeded agents start no faster than they could stop for their next gate and behind their leader."""
        p, s = self.pad, self.s
        v = np.minimum(p.vlim[self.ar, np.minimum(s.astype(int), p.vlim.shape[1] - 1)], self.v)
        gptr = (p.gate < (s + self.half)[:, None]).sum(1)
        first_gate = p.gate[self.ar, gptr] - s - self.half
        gate_lane = p.gate_lane[self.ar, gptr]
        closed = self.needs_stop[gate_lane] | (self.red[0, gate_lane] if self.red is not None else False)
        v = np.where(closed, np.minimum(v, np.sqrt(3.0 * np.maximum(first_gate - 2.0, 0.0))), v)
        for _ in range(3):      # repeated so that platoons settle
            lead, gap, _, _ = self.leaders()
            # no faster than the leader plus what closes the gap to the driver's equilibrium spacing
            v = np.minimum(v, v[lead] + np.maximum(np.minimum(gap, 1e3) - self.min_gap - v[lead] * self.headway,
                                                   0.0) / 4.0)
        self.v = v

    def leaders(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(leader index [N], bumper gap [N], primary lane [N], secondary lane [N]) at the current state.

        rel[i, j] is how far agent j is ahead of agent i along i's route (NaN when j's lane is not on it;
        exactly 0 for i itself). Agents changing lanes are also looked up through their secondary lane. Called
        under np.errstate(invalid='ignore') (see simulate_vehicles)."""
        p, s, ar = self.pad, self.s, self.ar
        lane, lane2 = self.lane, self.lane2
        rel = p.on_route.take(lane, axis=1)   # C order, unlike on_route[:, lane]
        rel += s - self.base
        rel -= s[:, None]
        ahead = np.where(rel > 0, rel, np.inf)
        changing = (lane2 != lane).nonzero()[0]
        if len(changing):
            rel2 = p.on_route.take(lane2[changing], axis=1)
            rel2 += s[changing] - self.base2[changing]
            rel2 -= s[:, None]
            ahead[:, changing] = np.minimum(ahead[:, changing], np.where(rel2 > 0, rel2, np.inf))
        ahead -= self.half_sum
        lead = ahead.argmin(1)
        gap = ahead[ar, lead]
        overlapped = (gap < 0).nonzero()[0]
        if len(overlapped):
            # a vehicle beside us that is already faster is pulling away, not a reason for an emergency stop
            sub = ahead[overlapped]
            sub[(sub < 0) & (self.v[None, :] > self.v[overlapped, None] + 0.5)] = np.inf
            lead[overlapped] = sub.argmin(1)
            gap[overlapped] = sub[np.arange(len(overlapped)), lead[overlapped]]
        return lead, gap, lane, lane2

    def _clear_of(self, lane, lane2) -> Dict[int, float]:
        """clear_of[lane]: how far along that lane the rearmost vehicle touching it has its rear bumper (-inf when
        one is just entering or has claimed it). A conflict blocks until that rear passes where paths meet."""
        s, half = self.s, self.half
        f = self.flat
        moved = False
        front_s = s + half
        adv = self.front_next <= front_s
        while np.count_nonzero(adv):
            self.k_front += adv
            self.front_next = f.start[f.entry_row + self.k_front + 1]
            adv = self.front_next <= front_s
            moved = True
        rear_s = s - half
        adv = self.rear_next <= rear_s
        while np.count_nonzero(adv):
            self.k_rear += adv
            self.rear_next = f.start[f.entry_row + self.k_rear + 1]
            adv = self.rear_next <= rear_s
            moved = True
        if moved:
            rear_at = f.entry_row + self.k_rear
            self.front, self.rear = f.lane[f.entry_row + self.k_front], f.lane[rear_at]
            self.rear_base = f.base[rear_at]
        front, rear = self.front, self.rear
        rear_local = rear_s - self.rear_base
        w = self.watched
        touching = (w[lane] | w[lane2] | w[front] | w[rear]).nonzero()[0]
        clear_of: Dict[int, float] = {}
        inf = math.inf
        for l1, l2, lf, lr, r_local in zip(lane[touching].tolist(), lane2[touching].tolist(),
                                           front[touching].tolist(), rear[touching].tolist(),
                                           rear_local[touching].tolist()):
            # lanes it is entering are claimed; the lane its rear is in is clear behind the rear bumper
            if l1 != lr:
                clear_of[l1] = -inf
            if l2 != lr:
                clear_of[l2] = -inf
            if lf != lr:
                clear_of[lf] = -inf
            if r_local < clear_of.get(lr, inf):
                clear_of[lr] = r_local
        self._front = front
        return clear_of

    def _gates(self, t: int, lead, gap_l, lane, lane2):
        """(waiting agents, their distance to the closed gate, those of them that stop hard at the line, gate
        position [N]) at step t; the first three are lists."""
        s, half = self.s, self.half
        gptr = self.gptr
        front_s = s + half
        adv = self.gate_s < front_s         # positions only grow: move the pointers on when passed
        if np.count_nonzero(adv):
            while np.count_nonzero(adv):
                gptr += adv
                adv = self.flat.gate[self.flat.gate_row + gptr] < front_s
            self._gates_moved()
        g_s = self.gate_s
        d_gate = g_s - s - half
        self._next_gate_lane, self._d_gate = self.gate_lane, d_gate
        waiting, wait_gap, hard_stop = [], [], []
        # agents queued behind a leader whose front has not reached the gate yet need no check
        first = gap_l + self.length[lead] > d_gate
        cand = ((d_gate < GATE_LOOKAHEAD) & first).nonzero()[0]
        # a red light or a stop sign is seen from further away than right of way is judged: drivers ease off
        # early (a stop is only made near the line, so one further away is still to come)
        far = (d_gate >= GATE_LOOKAHEAD) & (d_gate < STOP_VIEW) & first
        far &= self.gate_stop | self.red[t, self.gate_lane] if self.red is not None else self.gate_stop
        far = far.nonzero()[0]
        if len(far):
            waiting, wait_gap = far.tolist(), d_gate[far].tolist()
        if not len(cand):
            return waiting, wait_gap, hard_stop, g_s
        clear_of = self._clear_of(lane, lane2)
        self._approach = None     # computed when first asked for in this step
        self._t = t
        busy = (frozenset(self.crosswalk_busy[t].nonzero()[0].tolist()) if self.crosswalk_busy is not None
                else frozenset())
        red = self.red[t] if self.red is not None else None
        lists = (lead.tolist(), gap_l.tolist(), lane.tolist(), self._front.tolist())
        order = cand[np.argsort(d_gate[cand])]
        gate_lanes, dists, speeds, pointers = (self._next_gate_lane.tolist(), d_gate.tolist(), self.v.tolist(),
                                               gptr.tolist())
        for i in order.tolist():
            dist = dists[i]
            verdict = self._gate_verdict(i, gate_lanes[i], dist, speeds[i], pointers[i], clear_of, busy, red, lists)
            if verdict is not None:
                waiting.append(i)
                wait_gap.append(dist)
                if verdict:
                    hard_stop.append(i)
        return waiting, wait_gap, hard_stop, g_s

    def _approaching(self, t: int, d_gate: np.ndarray, gate_lane: np.ndarray) -> Dict[int, List[Tuple[float, float]]]:
        """approach[lane]: (distance, speed) of the moving agents heading for that intersection connector, not
        held by a red signal or a stop sign."""
        v = self.v
        excluded = self.ns_or_nopri[gate_lane]
        if self.red is not None:
            excluded |= self.red[t, gate_lane]
        moving = ((d_gate < PRIORITY_RANGE) & (v > 1.5) & ~excluded).nonzero()[0]
        approach: Dict[int, List[Tuple[float, float]]] = {}
        for gl, d, vi in zip(gate_lane[moving].tolist(), d_gate[moving].tolist(), v[moving].tolist()):
            approach.setdefault(gl, []).append((d, vi))
        return approach

    def _gap_too_short(self, i: int, gl: int, dist: float, vi: float) -> bool:
        """Agent i (dist metres before lane gl, at speed vi) must let someone through first: a vehicle with right
        of way over gl that reaches the point where the paths meet before i has cleared it (at least
        ACCEPTED_GAP), or one on any conflicting lane that is too close to stop."""
        if self._approach is None:
            self._approach = self._approaching(self._t, self._d_gate, self._next_gate_lane)
        approach = self._approach
        if not approach:
            return False
        priority = self.priority_list
        own = priority[gl]
        a = self.a_max_list[i]
        for c, at in self.crossing[gl]:
            if c not in approach:
                continue
            higher = priority[c] > own >= 0
            if higher:
                # time for i to get its rear past the meeting point, accelerating from vi
                d_clear = dist + self.meet[gl].get(c, 0.0) + 2.0 * self.half_list[i]
                needed = max(ACCEPTED_GAP, (math.sqrt(vi * vi + 2.0 * a * d_clear) - vi) / a + CLEAR_MARGIN)
            for d, v in approach[c]:
                if (higher and d + at < needed * v) or d < v * v / (2 * COMMIT_DECEL) + 1.0:
                    return True
        return False

    def _gate_verdict(self, i, gl, dist, vi, gp, clear_of, busy, red, lists) -> Optional[bool]:
        """None: agent i may enter gate lane gl; else it must wait (True: stop hard at the line)."""
        if self.needs_stop_list[gl] and self.stop_done[i] != gp:
            # a full stop near the line, or a rolling one a little earlier
            if vi < self.stop_speed[i] and dist < (3.0 if self.dwell[i] else 5.0):
                self.stop_timer[i] += SUBSTEPS
                if self.stop_timer[i] >= self.dwell[i]:
                    self.stop_done[i] = gp
                    self.stop_timer[i] = 0
            if self.stop_done[i] != gp:
                return True
        if red is not None and red[gl] and not (vi > 2.0 and dist < vi * vi / (2 * SIGNAL_COMMIT_DECEL) + 0.5):
            return True
        # nearest first: whoever is closer claims the conflict area, later ones see that claim.
        # Pedestrians are only respected by agents that can still stop for them.
        committed = vi > 3.0 and dist < vi * vi / (2 * COMMIT_DECEL) + 1.0
        # following a leader through the same connector (a platoon) needs no new check: crossing traffic is
        # already waiting for that leader
        lead_list, gap_list, lane_list, front_list = lists
        j = lead_list[i]
        platoon = gap_list[i] < 15.0 and (lane_list[j] == gl or front_list[j] == gl)
        blocked = False
        if not platoon:
            for c, at in self.crossing[gl]:
                if c in clear_of and clear_of[c] < at + 1.0:
                    blocked = True
                    break
        blocked = blocked or (not committed and self._gap_too_short(i, gl, dist, vi))
        if blocked or (not committed and busy and not busy.isdisjoint(self.table.crosswalks[gl])):
            return not committed
        if dist < max(12.0, vi * vi / (2 * COMMIT_DECEL) + 3.0):
            clear_of[gl] = -np.inf
        return None

    def _merge_leaders(self, lead: np.ndarray, gap_l: np.ndarray, lane: np.ndarray):
        """(leader [N], gap [N]) with vehicles on merging connectors as leaders: on (or within MERGE_VIEW
        metres before) two connectors that merge, the vehicle further along, measured from where the paths
        meet, leads the other."""
        s, half = self.s, self.half
        next_lane, d_gate = self._next_gate_lane, self._d_gate     # set by _gates this step
        inside = self.merging[lane]
        near = inside | (self.merging[next_lane] & (d_gate < MERGE_VIEW))
        if np.count_nonzero(near) < 2:
            return lead, gap_l
        agents = near.nonzero()[0]
        own_lane = np.where(inside, lane, next_lane)
        # centre position along the own connector (negative before its start)
        x = np.where(inside, s - self.base, -d_gate - half)
        agent_list = agents.tolist()
        lanes_of = own_lane[agents].tolist()
        x_of = dict(zip(agent_list, x[agents].tolist()))
        on: Dict[int, List[int]] = {}
        for j, lj in zip(agent_list, lanes_of):
            on.setdefault(lj, []).append(j)
        gaps = gap_l.tolist()
        lead, gap_l = lead.copy(), gap_l.copy()
        half_list, meet = self.half_list, self.meet
        for i, li in zip(agent_list, lanes_of):
            xi, best, g_i = x_of[i], None, gaps[i]
            for c in self.merge_partners[li]:
                for j in on.get(c, ()):
                    ahead = x_of[j] - meet[c][li] + meet[li][c] - xi   # j's lead over i, centres
                    if ahead > 0.0 or (ahead == 0.0 and j < i):
                        # projected onto i's lane; i need only be behind j where the paths meet, so part of the
                        # distance left to that point counts as room (no emergency stop for a car alongside)
                        g = (ahead - half_list[i] - half_list[j]
                             + MERGE_ROOM * max(meet[li][c] - xi - half_list[i], 0.0))
                        if g < g_i:
                            best, g_i = j, g
            if best is not None:
                lead[i], gap_l[i] = best, g_i
        return lead, gap_l

    def _idm(self, v_l, a_l, gap_l, waiting: List[int], wait_gap: List[float]) -> np.ndarray:
        """Acceleration [N] towards the local speed limit behind the leader (speed v_l, acceleration a_l) and,
        for the `waiting` agents, the closed gate `wait_gap` metres ahead: IDM, with its braking limited by the
        constant-acceleration heuristic where the IDM would overreact (see `_limited_braking`)."""
        v = self.v
        v0 = self.flat.vlim[self.flat.vlim_row + self.s.astype(int)]   # s <= route_end < len(speed profile)
        ratio = v / np.maximum(v0, 0.1)
        ratio *= ratio
        vh = v * self.headway
        inter = (self.min_gap + np.maximum(vh + v * (v - v_l) / self.sqrt_ab, 0.0)) / np.maximum(gap_l, 0.1)
        inter *= inter
        if waiting:
            at = np.array(waiting)
            inter_g = (1.0 + vh[at] + v[at] * v[at] / self.sqrt_ab[at]) / np.maximum(wait_gap, 0.1)
            inter[at] = np.maximum(inter[at], inter_g * inter_g)
        acc = self.a_max * (1.0 - ratio - inter)
        braking = (acc < -CAH_FROM).nonzero()[0]
        if len(braking):
            acc[braking] = self._limited_braking(braking, acc[braking], v_l, a_l, gap_l, waiting, wait_gap)
        return np.minimum(np.maximum(acc, -MAX_DECEL), self.a_max)

    def _limited_braking(self, at: np.ndarray, a_idm: np.ndarray, v_l, a_l, gap_l, waiting: List[int],
                         wait_gap: List[float]) -> np.ndarray:
        """The ACC model's blend (Kesting, Treiber and Helbing 2010) for the braking agents `at`: where the IDM
        brakes harder than the constant-acceleration heuristic (CAH: the leader keeps its acceleration, the
        follower just avoids a collision) says is needed, as when a leader cuts in or a gate closes close ahead,
        the driver brakes about the CAH deceleration plus at most its comfortable one, not the IDM's panic."""
        # plain Python: only a few agents brake at a time, too few for numpy to pay
        gate_gap = dict(zip(waiting, wait_gap)) if waiting else {}
        out = []
        for i, a, v, vl, al, s in zip(at.tolist(), a_idm.tolist(), self.v[at].tolist(), v_l[at].tolist(),
                                      a_l[at].tolist(), gap_l[at].tolist()):
            # a leader that appears (nearly) alongside, e.g. where lanes overlap, counts as a standstill gap ahead
            s = max(s, CAH_MIN_GAP)
            al = min(al, self.a_max_list[i])
            if al < 0.0 and vl * (v - vl) <= -2.0 * s * al:
                cah = v * v * al / (vl * vl - 2.0 * s * al)   # a braking leader that stops before it is reached
            else:
                closing = max(v - vl, 0.0)
                cah = al - closing * closing / (2.0 * s)
            if i in gate_gap:   # a closed gate is a standing obstacle about a metre before the line
                cah = min(cah, -v * v / (2.0 * max(gate_gap[i] - 1.0, 0.1)))
            a = max(a, -MAX_DECEL)   # the IDM's term is unbounded as the gap closes
            if a < cah:
                b = self.b_comf_list[i]
                a = (1.0 - CAH_COOLNESS) * a + CAH_COOLNESS * (cah + b * math.tanh((a - cah) / b))
            out.append(a)
        return np.array(out)

    def step(self, t: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Advance by SUBSTEPS * DT; returns (s, v, acceleration, clamp) of the step (clamp: positions that
        must not be passed within the step, or None)."""
        p = self.pad
        adv = self.next_start <= self.s   # short entries: a few boundaries may pass in one step
        if np.count_nonzero(adv):
            while np.count_nonzero(adv):
                self.k += adv
                adv = self.flat.start[self.flat.entry_row + self.k + 1] <= self.s
            self._entries_moved()
        lead, gap_l, lane, lane2 = self.leaders()
        waiting, wait_gap, hard_stop, g_s = self._gates(t, lead, gap_l, lane, lane2)
        if self.merge_partners:
            lead, gap_l = self._merge_leaders(lead, gap_l, lane)
        changes = None
        if self.lane_changes is not None and t % (SUBSTEPS * DECIDE_EVERY) == 0:
            changes = self.lane_changes.decide(self, lead, gap_l)
        target = self._idm(self.v[lead], self.acc[lead], gap_l, waiting, wait_gap)
        # react with a lag, but brake at once when the situation demands it
        acc = np.where(target < -2.5, target, self.acc + (target - self.acc) * self.lag)
        sim_dt = SUBSTEPS * DT
        v_new = np.maximum(self.v + acc * sim_dt, 0.0)
        acc = (v_new - self.v) / sim_dt                        # a stop within the step: decelerate exactly to 0
        s_new = self.s + 0.5 * (self.v + v_new) * sim_dt
        clamped = None
        # never roll over a line that is not clear (unless too close to stop)
        if hard_stop:
            at = np.array(hard_stop)
            limit = np.maximum(g_s[at] - self.half[at] - 0.05, self.s[at])
            over = s_new[at] > limit
            if np.count_nonzero(over):
                s_new[at[over]] = limit[over]
                v_new[at[over]] = 0.0
                clamped = s_new
        s_old, v_old = self.s, self.v
        self.s = np.minimum(s_new, p.route_end)
        self.v = v_new
        self.acc = np.where(v_new > 0.0, acc, 0.0)
        if changes:
            self.replace_routes(changes)
        return s_old, v_old, acc, clamped


def simulate_vehicles(drivers: List[Driver], table: LaneTable, speed_limits: List[np.ndarray],
                      crosswalk_busy: np.ndarray, red: Optional[np.ndarray], steps: int,
                      priority: Optional[np.ndarray] = None, merges: Set[Tuple[int, int]] = frozenset(),
                      lane_changes=None) -> Tuple[np.ndarray, np.ndarray]:
    """Route positions s [N, steps] and speeds [N, steps] of all lane-following agents (priority [lanes]: see
    signals.connector_priority; lane_changes: a lane_changes.LaneChanges or None). Drivers whose route changes
    get their new route."""
    # NaN (a lane that is not on a route) compares False in `leaders`, as intended
    with np.errstate(invalid='ignore'):
        return _run(VehicleSimulation(drivers, table, speed_limits, crosswalk_busy, red, priority, merges,
                                      lane_changes), steps)


def _run(sim: VehicleSimulation, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Route positions s [N, steps] and speeds [N, steps] sampled at DT while `sim` integrates."""
    s_at, v_at, acc, clamp = [sim.s], [sim.v], [], []     # per integration step
    no_clamp = np.full(sim.n, np.inf)
    for t in range(0, steps - 1, SUBSTEPS):
        _, _, acc_t, clamped = sim.step(t)
        acc.append(acc_t)
        clamp.append(no_clamp if clamped is None else clamped)
        s_at.append(sim.s)
        v_at.append(sim.v)
    if not acc:     # a single sample: the initial state
        return np.stack(s_at, 1), np.stack(v_at, 1)
    return _sampled(np.stack(s_at, 1), np.stack(v_at, 1), np.stack(acc, 1), np.stack(clamp, 1),
                    sim.pad.route_end, steps)


def _sampled(s_at, v_at, acc, clamp, route_end, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """s [N, steps] and v [N, steps] at DT from the state at each integration step (s_at, v_at [N, M + 1]) and
    the constant acceleration and clamp of each step (acc, clamp [N, M]): the samples in between follow
    s + v t + a t^2 / 2, never past the clamp or the route end."""
    n, m = acc.shape
    end = route_end[:, None, None]
    offsets = np.arange(1, SUBSTEPS) * DT           # j * DT, j = 1 .. SUBSTEPS - 1
    s0, v0, a = s_at[:, :-1, None], v_at[:, :-1, None], acc[:, :, None]
    s_inner = np.minimum(np.minimum(s0 + v0 * offsets + 0.5 * offsets ** 2 * a, clamp[:, :, None]), end)
    s_hist = np.concatenate([np.minimum(s0, end), s_inner], 2).reshape(n, SUBSTEPS * m)
    v_hist = np.concatenate([v0, v0 + a * offsets], 2).reshape(n, SUBSTEPS * m)
    s_hist[:, 0] = s_at[:, 0]     # the initial state as spawned; later ones never pass the route end
    if steps > SUBSTEPS * m:      # the state after the last step is a sample of its own
        s_hist = np.concatenate([s_hist, np.minimum(s_at[:, -1:], route_end[:, None])], 1)
        v_hist = np.concatenate([v_hist, v_at[:, -1:]], 1)
    return s_hist[:, :steps], v_hist[:, :steps]
