"""Lane changes decided while the traffic is simulated.

Every car_following.DECIDE_EVERY integration steps, each driver that has been held up by a slower leader for
longer than its patience, or holds up such a follower, looks to one side. It changes when the move is safe and
pays (MOBIL, Kesting, Treiber and Helbing 2007): the IDM acceleration it would have behind its new leader minus
the one it has now, plus its politeness times what its new and its old follower gain, plus KEEP_RIGHT for a move
to the right (minus it for one to the left), exceeds its own threshold; and neither it nor its new follower would
have to brake harder than SAFE_DECEL. A share of the drivers (the profile's lane_preference_share) wants the lane
to one side for their route beyond the map, from some moment within the simulated time: a move there is worth
PREFERENCE_GAIN more to them.

Changes are mandatory (any gap the new follower can take braking at most MANDATORY_DECEL will do) for a driver
whose auxiliary lane ends, and for one who wants to turn at the next intersection from a lane that does not serve
that turn while the lane beside it does: it moves over within TURN_PREPARE metres of the intersection and then
takes the turn. What a driver wants at each intersection is drawn when it heads for it, with the profile's turn
weights.

A change is spliced into the driver's route from the next lane boundary ahead: a smooth blend from the source
lane pieces into the parallel target pieces over the distance the driver covers in its own `change_duration`
(3-6 s), so the drift and the turn of the heading show well before the lane line is crossed. Where the blend
begins within those pieces is random (where real drivers cross a line has nothing to do with how the map cuts
its lanes). Routes keep their arc length, so everything already driven stays as it was. No change starts in an
intersection or ends within JUNCTION_CLEARANCE metres of the next one. From the start of the manoeuvre the
changer is on the target lane too, so the vehicle behind there follows it.
"""
from __future__ import annotations

import bisect
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic.car_following import DECIDE_EVERY, SUBSTEPS
from datasets.synthetic.lane_graph import LaneTable
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.routes import Route, build_route, forward_chain, join_geometry, parallel_run
from datasets.synthetic.trajectory import DT

MIN_SPEED = 2.0             # m/s: below this drivers queue rather than change lanes
FOLLOW_TIME, FOLLOW_RANGE = 4.0, 20.0   # s, m: a leader further than v * FOLLOW_TIME + FOLLOW_RANGE does not
SLOWER_BY = 0.1             # ... hold the driver up, nor one within this share of the driver's desired speed
BLEND_SHARE = 0.8           # lane pieces are gathered for this share of the manoeuvre to cover the lateral move
MIN_DURATION = 3.0          # s: the quickest lateral move a driver accepts when the road runs parallel too briefly
JUNCTION_CLEARANCE = 15.0   # m between the end of a manoeuvre and the next intersection gate
MAX_START_AHEAD = 40.0      # m: the manoeuvre starts at a lane boundary no further ahead than this
LOOK_BACK, LOOK_AHEAD = 60.0, 6.0   # m behind, s ahead (at least 100 m) searched for the new follower and leader
SAFE_DECEL = 1.0            # m/s^2 the new follower may be made to brake at most (discretionary)
MANDATORY_DECEL = 2.5       # ... when the lane ends
KEEP_RIGHT = 0.1            # m/s^2: slower traffic keeps right
PREFERENCE_HORIZON = 15.0   # s of driving within which such a preference comes up
PREFERENCE_GAIN = 0.5       # m/s^2 a move towards the lane a driver prefers (for its route beyond the map) is worth
REST = 6.0                  # s driven after a lane change before the next one is considered
TURN_PREPARE = 200.0        # m before an intersection from which a driver gets into the lane for its turn
SIDES = ('left_same', 'right_same')
TURN_CODES = {'left': 1, 'right': 2, 'straight': 3}     # of intersection connectors; other lanes: 0
WISH_SIDE = {1: 'left_same', 2: 'right_same'}


class LaneChanges:
    """Per-scene lane-change decisions for a VehicleSimulation (see the module docstring)."""

    interval = DECIDE_EVERY * SUBSTEPS * DT     # s between two decisions

    def __init__(self, rng: np.random.Generator, road_map: RoadMap, table: LaneTable, prof: SyntheticProfile):
        self.rng, self.road_map, self.table, self.prof = rng, road_map, table, prof
        n_real = len(table.ids)
        self.side = {name: np.full(table.total, -1) for name in SIDES}    # [lanes] neighbour index, -1: none
        self.changeable = np.zeros(table.total, dtype=bool)              # road or auxiliary vehicle lane
        self.lane_drop = np.zeros(table.total, dtype=bool)               # auxiliary lane: it ends ahead
        self.turn = np.zeros(table.total, dtype=int)      # TURN_CODES of intersection connectors and pockets
        for idx in range(n_real):
            lane = road_map.lanes[table.ids[idx]]
            self.turn[idx] = TURN_CODES.get('left' if lane.kind == 'pocket' else lane.turn, 0)
            if lane.lane_type != 'VEHICLE' or lane.kind not in ('road', 'aux'):
                continue
            self.changeable[idx] = True
            self.lane_drop[idx] = lane.kind == 'aux'
            for name in SIDES:
                if getattr(lane, name) is not None:
                    self.side[name][idx] = table.index[getattr(lane, name)]
        self.has_side = (self.side['left_same'] >= 0) | (self.side['right_same'] >= 0)
        # plain-Python copies for the per-driver checks (a numpy scalar look-up costs several times as much)
        self.side_list = {name: self.side[name].tolist() for name in SIDES}
        self.changeable_list, self.lane_drop_list = self.changeable.tolist(), self.lane_drop.tolist()

    def bind(self, drivers) -> None:
        """Per-driver constants of the simulated drivers."""
        self.drivers = drivers
        self.may_change = np.array([d.object_type != 'cyclist' and not d.is_av for d in drivers])
        self.v_desired = np.array([d.v_desired for d in drivers])
        self.change_end = np.array([d.route.lane_change_end for d in drivers])
        self.patience = np.array([d.patience for d in drivers])
        self.held_for = np.zeros(len(drivers))     # s since a slower leader holds the driver up
        self.round = 0                              # decisions so far
        # (agent, side) -> the route element from which a change had no room (looked at again further on)
        self.no_room: Dict[Tuple[int, str], int] = {}
        weights = self.prof.turn_weights
        total = sum(weights.values())
        self.wish_odds = (weights.get('left', 0.0) / total, weights.get('right', 0.0) / total)
        self.wish = np.zeros(len(drivers), dtype=int)        # TURN_CODES of the turn wanted at the next gate
        self.wish_gate = np.full(len(drivers), -1)           # the gate (route gate index) the wish is for
        self.wish_open = np.zeros(len(drivers), dtype=bool)  # wanted and not yet served
        # the side some drivers want to get to for their route beyond the map (WISH_SIDE codes, 0: none), from
        # a route position on that comes anywhere within the simulated time
        u = self.rng.random((2, len(drivers)))
        share = self.prof.lane_preference_share
        self.prefer = np.where(u[0] < share / 2, 1, np.where(u[0] < share, 2, 0)) * self.may_change
        self.prefer_from = np.array([d.s for d in drivers]) + u[1] * self.v_desired * PREFERENCE_HORIZON

    def _new_wishes(self, gate: np.ndarray) -> None:
        """Draw what the drivers heading for a new gate want there (left, right or whatever their lane does)."""
        fresh = (gate != self.wish_gate).nonzero()[0]
        if not len(fresh):
            return
        u = self.rng.random(len(fresh))
        left, right = self.wish_odds
        self.wish[fresh] = np.where(u < left, 1, np.where(u < left + right, 2, 0))
        self.wish_gate[fresh] = gate[fresh]
        self.wish_open[fresh] = (self.wish[fresh] > 0) & self.may_change[fresh]

    def _turns_to_prepare(self, sim) -> np.ndarray:
        """[N] drivers that want a turn at the intersection ahead which their route (their lane) does not take."""
        d_gate, gate_turn = sim._d_gate, self.turn[sim.gate_lane]
        self._new_wishes(sim.gptr)
        self.wish_open &= (d_gate >= JUNCTION_CLEARANCE) & (gate_turn != self.wish) & (gate_turn > 0)
        lane = sim.lane
        beside = np.where(self.wish == 1, self.side['left_same'][lane], self.side['right_same'][lane])
        return self.wish_open & (d_gate < TURN_PREPARE) & (beside >= 0)

    def decide(self, sim, lead: np.ndarray, gap: np.ndarray) -> List[Tuple[int, Route]]:
        """(agent, new route) for every driver that starts a lane change now."""
        self.round += 1
        candidates, turning, follower = self._candidates(sim, lead, gap)
        if not candidates:
            return []
        state = _State(sim, lead, gap, _occupants(sim), follower)
        changes = []
        for i in candidates:
            wish = int(self.wish[i]) if turning[i] else 0
            route = self._change(state, i, wish)
            if route is not None:
                self.change_end[i] = route.lane_change_end
                self.wish_open[i] = False
                for side in SIDES:
                    self.no_room.pop((i, side), None)
                changes.append((i, route))
        return changes

    def _candidates(self, sim, lead: np.ndarray, gap: np.ndarray) -> Tuple[List[int], List[bool], np.ndarray]:
        """(drivers that look at the lanes beside them now, whether each driver prepares a turn [N], closest
        follower of each driver [N], -1: none)."""
        s, v, lane = sim.s, sim.v, sim.lane
        slow = self.v_desired * (1.0 - SLOWER_BY)
        near = gap < v * FOLLOW_TIME + FOLLOW_RANGE
        self.held_for = np.where(near & (v[lead] < slow) & (v < slow), self.held_for + self.interval, 0.0)
        held = self.held_for > self.patience
        # each agent's closest follower (-1: none); held followers push the agent they follow
        order = np.argsort(-gap)
        follower = np.full(len(v), -1)
        follower[lead[order]] = order
        pushing = (follower >= 0) & held[np.maximum(follower, 0)] & (follower != np.arange(len(v)))
        turning = self._turns_to_prepare(sim)
        preferred_lane = np.where(self.prefer == 1, self.side['left_same'][lane], self.side['right_same'][lane])
        preferring = (self.prefer > 0) & (s > self.prefer_from) & (preferred_lane >= 0)
        wants = (held | pushing | turning | preferring | self.lane_drop[lane]) & self.may_change & (v > MIN_SPEED)
        wants &= self.has_side[lane] & (lane == sim.lane2) & (s > self.change_end + v * REST)
        return wants.nonzero()[0].tolist(), turning.tolist(), follower

    def _change(self, state: '_State', i: int, wish: int) -> Optional[Route]:
        """Agent i's new route if it changes lanes now (wish: the turn it prepares for, 0: none), else None."""
        if wish:
            sides, mandatory = (WISH_SIDE[wish],), True
        elif self.lane_drop_list[state.lane[i]]:
            sides, mandatory = ('left_same',), True
        elif self.prefer[i]:
            sides, mandatory = (WISH_SIDE[int(self.prefer[i])],), False
        else:   # a driver looks to one side at a time, the other one the next time
            sides, mandatory = (SIDES[(self.round + i) % 2],), False
        best = None
        lane = state.lane[i]
        for side in sides:
            if self.side_list[side][lane] < 0:
                continue
            plan = self._plan(state, i, side, mandatory)
            if plan is not None and (best is None or plan[0] > best[0]):
                best = plan
        if best is None:
            return None
        if WISH_SIDE.get(int(self.prefer[i])) == best[1]:
            self.prefer[i] = 0
        return self._spliced(i, *best[2:], wish)

    def _plan(self, state: '_State', i: int, side: str, mandatory: bool
              ) -> Optional[Tuple[float, str, int, List[int], List[int], float]]:
        """(incentive, side, first element, source pieces, target pieces, blend span) of a change of agent i to
        `side`, or None when there is no room, no safe gap or (unless mandatory) no advantage."""
        route = self.drivers[i].route
        found = self._manoeuvre(state, i, route, side)
        if found is None:
            return None
        e, src, dst, span = found
        new_lead, new_follow = state.neighbours(i, route, e, self.side_list[side])
        if new_lead is False:
            return None       # someone is beside the driver in the target lane
        a_new = state.idm(i, *new_lead)
        if a_new < -SAFE_DECEL and not mandatory:
            return None
        lead_i, gap_i = state.lead[i], state.gap[i]
        gain = a_new - state.idm(i, state.v[lead_i], gap_i) + (KEEP_RIGHT if side == 'right_same' else -KEEP_RIGHT)
        others = 0.0     # what the new and the old follower gain
        if new_follow is not None:
            f, gap_f = new_follow
            a_f_new = state.idm(f, state.v[i], gap_f)
            if a_f_new < -(MANDATORY_DECEL if mandatory else SAFE_DECEL):
                return None
            others += a_f_new - state.idm(f, state.v[state.lead[f]], state.gap[f])
        f = state.follower[i]
        if f >= 0:
            # the old follower then follows i's leader
            others += (state.idm(f, state.v[lead_i], state.gap[f] + gap_i + 2.0 * state.half[i])
                       - state.idm(f, state.v[i], state.gap[f]))
        gain += self.drivers[i].politeness * others
        if WISH_SIDE.get(int(self.prefer[i])) == side:
            gain += PREFERENCE_GAIN
        if not mandatory and gain <= self.drivers[i].change_threshold:
            return None
        return gain + (math.inf if mandatory else 0.0), side, e, src, dst, span

    def _manoeuvre(self, state: '_State', i: int, route: Route, side: str
                   ) -> Optional[Tuple[int, List[int], List[int], float]]:
        """(index of the route element where the change starts, source pieces, target pieces, share of their
        length the lateral move takes), or None when the road ahead does not run parallel long enough or a junction
        is too close."""
        s_i, v_i = state.s[i], state.v[i]
        # the change starts ahead of the front bumper even after this integration step, so nothing driven moves
        front = s_i + state.half[i] + v_i * state.step_time + 1.0
        starts, elements = route.element_start, route.elements
        e = bisect.bisect_right(starts, front)
        if e >= len(elements) or starts[e] - s_i > MAX_START_AHEAD or elements[e][0] != 'lane':
            return None
        if self.no_room.get((i, side)) == e:
            return None
        found = self._room(i, route, e, side, s_i, v_i)
        if found is None:
            self.no_room[(i, side)] = e
        return found

    def _room(self, i: int, route: Route, e: int, side: str, s_i: float, v_i: float
              ) -> Optional[Tuple[int, List[int], List[int], float]]:
        """_manoeuvre from route element e on."""
        starts, elements = route.element_start, route.elements
        first = elements[e][1]
        changeable = self.changeable_list
        target = self.side_list[side][first] if first < len(changeable) else -1
        if target < 0 or not changeable[first] or not changeable[target]:
            return None
        gates = route.gates
        g = bisect.bisect_left(gates, (s_i, -1))
        room = (gates[g][0] if g < len(gates) else math.inf) - JUNCTION_CLEARANCE - starts[e]
        wanted = v_i * self.drivers[i].change_duration / BLEND_SHARE
        ahead = [element[1] for element in elements[e:e + 16] if element[0] == 'lane']
        src, dst = parallel_run(self.road_map, self.table, ahead, target, wanted, room)
        length = sum(self.table.lengths[k] for k in src)
        if length < v_i * MIN_DURATION / BLEND_SHARE or length > room:
            return None
        return e, src, dst, min(v_i * self.drivers[i].change_duration / length, 0.95)

    def _spliced(self, i: int, e: int, src: List[int], dst: List[int], span: float, wish: int
                 ) -> Optional[Route]:
        """Agent i's route with the change from element e on (and then the turn `wish`, if not 0); the same up
        to there, at least as long after. None when the target lane does not lead to the wished turn."""
        route = self.drivers[i].route
        table = self.table
        lc_end = route.element_start[e] + sum(table.lengths[k] for k in dst)
        needed = float(route.s[-1]) - lc_end + 20.0
        towards = self._towards_turn(dst[-1], wish) if wish else [dst[-1]]
        if not towards:
            return None
        needed -= sum(table.lengths[k] for k in towards[1:])
        rest = towards[1:] + forward_chain(self.rng, self.road_map, table, self.prof, towards[-1],
                                           needed + table.lengths[towards[-1]], 'VEHICLE')[1:]
        start = float(self.rng.uniform(0.0, 1.0 - span))
        elements = route.elements[:e] + [('lc', src, dst, start, span)] + [('lane', k) for k in rest]
        new = build_route(table, self.road_map, elements)
        join_geometry([new])
        return new

    def _towards_turn(self, start: int, wish: int) -> List[int]:
        """Lane indices from `start` along its road up to the first connector (or pocket) that turns as
        `wish`; [] when the road reaches an intersection without one."""
        lanes, table = self.road_map.lanes, self.table
        chain = [start]
        for _ in range(16):
            lane = lanes[table.ids[chain[-1]]]
            options = [table.index[k] for k in lane.successors if lanes[k].lane_type == 'VEHICLE']
            turning = [k for k in options if self.turn[k] == wish]
            if turning:
                chain.append(turning[0])
                if lanes[table.ids[turning[0]]].kind != 'pocket':
                    return chain
                continue
            along = [k for k in options if self.changeable[k]]
            if not along:
                return []
            chain.append(along[0])
        return []


def _occupants(sim) -> Dict[int, List[Tuple[int, float]]]:
    """{lane: [(agent, route s at which that lane's own s is zero)]} of the agents in (or moving into) each lane."""
    occupants: Dict[int, List[Tuple[int, float]]] = {}
    for j, (l1, b1, l2, b2) in enumerate(zip(sim.lane.tolist(), sim.base.tolist(), sim.lane2.tolist(),
                                             sim.base2.tolist())):
        occupants.setdefault(l1, []).append((j, b1))
        if l2 != l1:
            occupants.setdefault(l2, []).append((j, b2))
    return occupants


class _State:
    """What the decisions of one step read: positions, speeds, leaders and who is on which lane."""

    def __init__(self, sim, lead: np.ndarray, gap: np.ndarray, occupants: Dict[int, List[Tuple[int, float]]],
                 follower: np.ndarray):
        self.step_time = SUBSTEPS * DT
        self.s, self.v, self.lane = sim.s.tolist(), sim.v.tolist(), sim.lane.tolist()
        self.lead, self.gap, self.follower = lead.tolist(), gap.tolist(), follower.tolist()
        self.half, self.min_gap = sim.half.tolist(), sim.min_gap.tolist()
        self.a_max, self.headway, self.sqrt_ab = sim.a_max_list, sim.headway.tolist(), sim.sqrt_ab.tolist()
        self.v0 = sim.flat.vlim[sim.flat.vlim_row + sim.s.astype(int)].tolist()   # speed limit where each is
        self.occupants = occupants

    def neighbours(self, i: int, route: Route, e: int, side_of: List[int]):
        """((speed, gap) of the new leader, (agent, gap) of the new follower or None) of agent i in the lane on
        one side of its route; (False, None) when someone there overlaps it. Positions on the side lanes are
        mapped onto i's route through the lane boundaries they share with it."""
        s_i, half_i = self.s[i], self.half[i]
        starts, elements = route.element_start, route.elements
        side_base: Dict[int, float] = {}
        m = max(bisect.bisect_right(starts, s_i - LOOK_BACK) - 1, 0)
        horizon = s_i + max(100.0, self.v[i] * LOOK_AHEAD)
        while m < len(elements) and starts[m] < horizon:
            element = elements[m]
            if element[0] == 'lane' and element[1] < len(side_of) and side_of[element[1]] >= 0:
                side_base[side_of[element[1]]] = starts[m]
            m += 1
        lead_gap, lead_v, follow, follow_gap = math.inf, 0.0, None, math.inf
        min_gap = self.min_gap[i]
        for lane, base in side_base.items():
            for j, base_j in self.occupants.get(lane, ()):
                if j == i:
                    continue
                d = base + self.s[j] - base_j - s_i
                clear = abs(d) - half_i - self.half[j]
                if clear < min_gap:
                    return False, None
                if d > 0 and clear < lead_gap:
                    lead_gap, lead_v = clear, self.v[j]
                elif d < 0 and clear < follow_gap:
                    follow, follow_gap = j, clear
        return (lead_v, lead_gap), (None if follow is None else (follow, follow_gap))

    def idm(self, i: int, v_lead: float, gap: float) -> float:
        """IDM acceleration of agent i behind a leader at speed v_lead, `gap` metres ahead (inf: free road)."""
        v = self.v[i]
        free = (v / max(self.v0[i], 0.1)) ** 2
        if gap == math.inf:
            return self.a_max[i] * (1.0 - free)
        wanted = self.min_gap[i] + max(v * self.headway[i] + v * (v - v_lead) / self.sqrt_ab[i], 0.0)
        return max(self.a_max[i] * (1.0 - free - (wanted / max(gap, 0.1)) ** 2), -9.0)
