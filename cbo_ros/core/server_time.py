"""What the offload server costs a planner: measured server time, occupancy, probes (ROS-free).

The calibration profile measures the server model alone on an idle machine. A live call costs
more (request queueing, executor wake-ups on both sides, decode, batching, inference on a busy
CPU, the response): :class:`ServerTimeModel` plans with the profile plus a percentile of what
recent calls cost beyond it. :class:`ServerOccupancy` models the server as a FIFO resource this
planner's offloads occupy one after another. :class:`ServerTimeProbe` offloads a frame now and
then only to measure the server when nothing was offloaded for a while. All times in seconds.
"""

from collections import deque
from typing import Callable, Deque, Optional, Tuple

import numpy as np

from cbo_ros.core.planner import Decision, FrameCandidate, LinkState


def _link_free_s(now_s: float, payload_bytes: int, link: LinkState) -> float:
    """When the uplink has sent ``payload_bytes`` queued now (FIFO behind busy_until_s)."""
    start = max(now_s, link.busy_until_s)
    return start + payload_bytes * 8.0 / max(link.bandwidth_bps, 1.0)


class ServerTimeModel:
    """Server time to plan with per resolution: profile + measured excess over recent calls.

    ``profile(resolution)`` is the calibration's server time. With ``adapt`` false the profile
    is used as is. Otherwise every successful call adds (round trip - planned transfer - RTT -
    server queue - profile); the plan uses profile + the ``percentile`` of those of the last
    ``window_s`` (the profile alone when there are none, so an overloaded server is tried
    again later), at least 1 ms.
    """

    def __init__(self, profile: Callable[[int], float], adapt: bool = True,
                 percentile: float = 75.0, window_s: float = 5.0, history: int = 30) -> None:
        self.profile = profile
        self.adapt = bool(adapt)
        self.percentile = float(percentile)
        self.window_s = float(window_s)
        self.excess: Deque[Tuple[float, float]] = deque(maxlen=history)  # (when, excess s)

    def observe(self, now_s: float, resolution: int, round_trip_s: float, transfer_s: float,
                rtt_s: float, queue_s: float = 0.0) -> None:
        """Record what a call cost beyond its planned transfer, the RTT and its queueing."""
        measured = round_trip_s - transfer_s - rtt_s - queue_s
        self.excess.append((now_s, measured - float(self.profile(resolution))))

    def server_time_s(self, resolution: int, now_s: float) -> float:
        """Return the server time to plan with at ``resolution`` (seconds)."""
        profiled = float(self.profile(resolution))
        if not self.adapt:
            return profiled
        while self.excess and now_s - self.excess[0][0] > self.window_s:
            self.excess.popleft()
        if not self.excess:
            return profiled
        excess = float(np.percentile([e for _, e in self.excess], self.percentile))
        return max(1e-3, profiled + excess)


class ServerOccupancy:
    """The server as a FIFO resource: when it is done with this planner's offloads.

    A request occupies the server for (inference / batch size + decode), learnt from the
    responses (the first one, then an exponential average with weight ``alpha``).
    """

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = float(alpha)
        self.occupancy_s = 0.0
        self.measured = False
        self.free_s = 0.0           # when the server ends this planner's offloads

    def observe(self, inference_ms: float, batch_size: int, decode_ms: float) -> None:
        """Learn the server's time per request, batching included, from one response."""
        occupancy = (inference_ms / max(batch_size, 1) + decode_ms) / 1e3
        self.occupancy_s = occupancy if not self.measured else \
            self.occupancy_s + self.alpha * (occupancy - self.occupancy_s)
        self.measured = True

    def wait_s(self, now_s: float, payload_bytes: int, link: LinkState) -> float:
        """Return the expected wait in the server queue of a payload queued on the link now."""
        arrives = _link_free_s(now_s, payload_bytes, link) + link.rtt_s / 2.0
        return max(0.0, self.free_s - arrives)

    def reserve(self, link_free_after_s: float, rtt_s: float) -> None:
        """Account for an offload sent: it occupies the server once it arrived there."""
        arrives = link_free_after_s + rtt_s / 2.0
        self.free_s = max(self.free_s, arrives) + self.occupancy_s


class ServerTimeProbe:
    """Occasional offloads that only measure the server (the frame keeps its local answer).

    When nothing was offloaded for ``period_s``, the planner's server time (the calibration
    profile, or a few slow measurements) may be too pessimistic: it would never offload and
    never learn better. At most every ``period_s`` the smallest option of a frame is offloaded
    if its answer can arrive before the deadline. ``period_s`` 0 disables it.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = float(period_s)
        self.last_probe_s = 0.0
        self.last_offload_s = 0.0

    def offload_sent(self, now_s: float) -> None:
        """Note an offload (any): a probe is due only ``period_s`` after the latest."""
        self.last_offload_s = now_s

    def propose(self, candidate: FrameCandidate, link: LinkState,
                now_s: float) -> Optional[Decision]:
        """Return an offload of the smallest option that only measures the server, or None."""
        if (not self.period_s
                or now_s - max(self.last_probe_s, self.last_offload_s) < self.period_s):
            return None
        option = min(candidate.options, key=lambda o: o.payload_bytes)
        free = _link_free_s(now_s, option.payload_bytes, link)
        if free + link.rtt_s >= candidate.deadline_s:
            return None
        self.last_probe_s = now_s
        return Decision(seq=candidate.seq, offload=True, resolution=option.resolution,
                        payload_bytes=option.payload_bytes,
                        expected_accuracy=candidate.confidence, expected_gain=0.0,
                        expected_finish_s=free + link.rtt_s + option.server_time_s,
                        link_free_after_s=free,
                        reason='measure server time (no recent measurement)')
