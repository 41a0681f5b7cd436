"""Exact offline solver of the CBO problem (and a brute force to check it) — ROS-free.

Given a window of frames known in advance, choose for each frame "local" or one offload
resolution so that the total gain is maximal and every offloaded answer arrives by its deadline,
with transfers sent FIFO in frame order over one uplink (see docs/planner.md). The link is free
again at ``initial_free_s``.

The solver is a dynamic programme over frames whose state is the time at which the link becomes
free. States are kept as a Pareto frontier (earlier free time or higher gain), so the frontier is
exact when ``quantum_s`` is 0. With ``quantum_s`` > 0 each free time is rounded *up* to the grid
("DP over discretised link time"): the frontier then holds at most (deadline span / quantum)
states and every schedule it returns stays feasible in continuous time. Cost:
O(N * S * R) for N frames, S frontier states and R resolutions.
"""

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from cbo_ros.core.planner import FrameCandidate, LinkState, OffloadOption

# finish(start_s, payload_bytes) -> when the last byte has been sent
TransferFinish = Callable[[float, int], float]


@dataclass
class JobOption:
    """One offload choice of a job: its payload, what follows the transfer, and its gain."""

    resolution: int
    payload_bytes: int
    after_transfer_s: float    # what follows the last byte: server time (+ RTT unless rtt_at)
    gain: float                # value of choosing it over the local answer


@dataclass
class Job:
    """A frame for the offline solver."""

    seq: int
    release_s: float           # earliest start of its transfer
    deadline_s: float          # its answer must arrive by then
    options: List[JobOption] = field(default_factory=list)


def constant_bandwidth(bandwidth_bps: float) -> TransferFinish:
    """Transfer model ``finish(start_s, payload_bytes)`` of a constant-rate link."""
    rate = float(bandwidth_bps)

    def finish(start_s: float, payload_bytes: int) -> float:
        return start_s + 8.0 * payload_bytes / rate
    return finish


@dataclass
class Solution:
    """An optimal schedule: total gain and {seq: resolution} of the offloaded frames."""

    value: float
    schedule: Dict[int, int]
    states_peak: int = 0


def solve_exact(jobs: Sequence[Job], transfer_finish: TransferFinish,
                initial_free_s: float = 0.0, quantum_s: float = 0.0, tolerance_s: float = 1e-9,
                rtt_at: Optional[Callable[[float], float]] = None) -> Solution:
    """Maximise the total gain of ``jobs`` (in release order) under FIFO deadline constraints.

    ``transfer_finish(start_s, payload_bytes)`` gives when a transfer started at ``start_s``
    ends (non-decreasing in ``start_s``). ``rtt_at(start_s)``, when given, is the RTT of a
    transfer started then, added to each option's ``after_transfer_s`` (a trace whose RTT
    changes while a frame waits for the link). Options with a gain <= 0 are never chosen.

    Exact while ``transfer_finish(s, b) + rtt_at(s)`` never decreases in ``s`` (constant or
    rising RTT): the frontier keeps the earliest free time per value, and a transfer starts as
    soon as the link is free. Where the RTT falls, a later start can arrive earlier, and the
    pruned frontier may miss the optimum.
    """
    jobs = sorted(jobs, key=lambda job: (job.release_s, job.seq))
    quantum = float(quantum_s)
    # Frontier entries: (free_time, value, parent index in the previous frontier, resolution).
    frontier = [(float(initial_free_s), 0.0, -1, 0)]
    layers = []
    peak = 1
    for position, job in enumerate(jobs):
        candidates = []
        for index, (free, value, _, _) in enumerate(frontier):
            candidates.append((free, value, index, 0))
            start = max(free, job.release_s)
            rtt = rtt_at(start) if rtt_at is not None else 0.0
            for option in job.options:
                if option.gain <= 0:
                    continue
                end = transfer_finish(start, option.payload_bytes)
                if end + rtt + option.after_transfer_s > job.deadline_s + tolerance_s:
                    continue
                if quantum > 0:
                    end = math.ceil(end / quantum - 1e-9) * quantum
                candidates.append((end, value + option.gain, index, int(option.resolution)))
        # The link idles until the next release: earlier free times are equivalent to it.
        next_release = jobs[position + 1].release_s if position + 1 < len(jobs) else None
        if next_release is not None:
            candidates = [(max(free, next_release), value, parent, r)
                          for free, value, parent, r in candidates]
        frontier = _pareto(candidates)
        layers.append(frontier)
        peak = max(peak, len(frontier))
    if not layers:
        return Solution(0.0, {}, peak)
    best = max(range(len(frontier)), key=lambda i: (frontier[i][1], -frontier[i][0]))
    value = frontier[best][1]
    schedule = {}
    index = best
    for job, layer in zip(reversed(jobs), reversed(layers)):
        _, _, parent, resolution = layer[index]
        if resolution:
            schedule[job.seq] = resolution
        index = parent
    return Solution(float(value), schedule, peak)


def _pareto(states):
    """Keep the states no other state beats on both free time (lower) and value (higher)."""
    states.sort(key=lambda s: (s[0], -s[1]))
    kept, best = [], -math.inf
    for state in states:
        if state[1] > best + 1e-12:
            kept.append(state)
            best = state[1]
    return kept


def schedule_feasible(jobs: Sequence[Job], schedule: Dict[int, int],
                      transfer_finish: TransferFinish, initial_free_s: float = 0.0,
                      tolerance_s: float = 1e-9,
                      rtt_at: Optional[Callable[[float], float]] = None) -> bool:
    """Tell whether ``schedule`` meets every deadline with FIFO transfers in release order."""
    free = float(initial_free_s)
    for job in sorted(jobs, key=lambda j: (j.release_s, j.seq)):
        resolution = schedule.get(job.seq)
        if not resolution:
            continue
        option = next(o for o in job.options if o.resolution == resolution)
        start = max(free, job.release_s)
        free = transfer_finish(start, option.payload_bytes)
        rtt = rtt_at(start) if rtt_at is not None else 0.0
        if free + rtt + option.after_transfer_s > job.deadline_s + tolerance_s:
            return False
    return True


def schedule_value(jobs: Sequence[Job], schedule: Dict[int, int]) -> float:
    """Total gain of ``schedule``."""
    total = 0.0
    for job in jobs:
        resolution = schedule.get(job.seq)
        if resolution:
            total += next(o.gain for o in job.options if o.resolution == resolution)
    return total


def solve_brute_force(jobs: Sequence[Job], transfer_finish: TransferFinish,
                      initial_free_s: float = 0.0,
                      rtt_at: Optional[Callable[[float], float]] = None) -> Solution:
    """Enumerate every choice ((R+1)^N): the reference the DP is tested against (small N)."""
    best = Solution(0.0, {})
    choices = [[0] + [o.resolution for o in job.options] for job in jobs]
    for combo in itertools.product(*choices):
        schedule = {job.seq: r for job, r in zip(jobs, combo) if r}
        if not schedule_feasible(jobs, schedule, transfer_finish, initial_free_s,
                                 rtt_at=rtt_at):
            continue
        value = schedule_value(jobs, schedule)
        if value > best.value + 1e-12:
            best = Solution(value, schedule)
    return best


def jobs_from_candidates(candidates: Sequence[FrameCandidate], link: LinkState,
                         gain: Optional[Callable[[FrameCandidate, OffloadOption], float]] = None
                         ) -> List[Job]:
    """Jobs of planner ``FrameCandidate``s over ``link`` (RTT and loss of the LinkState).

    ``gain(candidate, option)`` defaults to the planner's expected gain
    (1 - loss) * (A_r(c) - c).
    """
    keep = 1.0 - float(link.loss_rate)

    def model_gain(candidate, option):
        return keep * (option.server_accuracy - candidate.confidence)

    gain = gain or model_gain
    return [Job(c.seq, c.arrival_s, c.deadline_s,
                [JobOption(o.resolution, o.payload_bytes, link.rtt_s + o.server_time_s,
                           gain(c, o)) for o in c.options])
            for c in candidates]
