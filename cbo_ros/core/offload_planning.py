"""Planning one live frame: its offload options, the strategy's choice, the resources it takes.

:class:`FramePlanner` is the planning half of offload_planner_node (ROS-free; the node sends).
For a frame with a known local answer it builds the options of every offload resolution (the
JPEG size, the profiled server accuracy at the frame's confidence, the server time to plan
with plus the wait behind this planner's earlier offloads), asks the strategy
(:func:`cbo_ros.core.planner.make_planner`), lets :class:`ServerTimeProbe` turn a local answer
into a measuring offload now and then, encodes the chosen payload and reserves the uplink and
the server for it. Times are seconds on the caller's clock.
"""

import time
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import numpy as np

from cbo_ros.core.payload_sizing import PayloadSizer
from cbo_ros.core.planner import Decision, FrameCandidate, LinkState, make_planner, OffloadOption
from cbo_ros.core.server_time import ServerOccupancy, ServerTimeModel, ServerTimeProbe


@dataclass
class Plan:
    """The outcome of planning one frame."""

    decision: Decision
    payload: Optional[bytes] = None     # the JPEG to send (offloads only)
    measure_only: bool = False          # a server-time probe: the frame keeps its local answer
    encode_ms: float = 0.0              # JPEG encoding time spent while planning


def link_view(quality, initial_bandwidth_bps: float, initial_rtt_s: float,
              cap_bps: float = 0.0, busy_until_s: float = 0.0,
              unreachable_why: str = '') -> Tuple[LinkState, str, str]:
    """Return the planner's view of the uplink: ``(LinkState, why unreachable, source)``.

    ``quality``: a fresh link estimate (``bandwidth_bps``, ``rtt_ms``, ``loss_rate``,
    ``source``, ``server_reachable``, as in a NetworkQuality message) or None; without one, or
    with an unknown bandwidth, the initial values hold. ``cap_bps`` > 0 bounds the bandwidth.
    ``unreachable_why``: why the caller knows the server to be unreachable ('': it does not).
    """
    if quality is not None and quality.bandwidth_bps > 0:
        bandwidth, rtt = quality.bandwidth_bps, quality.rtt_ms / 1e3
        loss, source = quality.loss_rate, quality.source or 'network_quality'
    else:
        bandwidth, rtt, loss, source = initial_bandwidth_bps, initial_rtt_s, 0.0, 'initial'
    if cap_bps > 0 and (bandwidth <= 0 or cap_bps < bandwidth):
        bandwidth, source = cap_bps, f'{source}, capped'
    why = unreachable_why
    if not why and quality is not None and not quality.server_reachable:
        why = 'server unreachable (network monitor)'
    link = LinkState(bandwidth_bps=float(bandwidth), rtt_s=float(rtt), loss_rate=float(loss),
                     reachable=not why, busy_until_s=busy_until_s)
    return link, why, source


class FramePlanner:
    """Plans live frames with one strategy, tracking the uplink queue and the server's."""

    def __init__(self, strategy: str, bundle, resolutions: Iterable[int],
                 sizer: PayloadSizer, server_time: ServerTimeModel,
                 occupancy: Optional[ServerOccupancy] = None,
                 probe: Optional[ServerTimeProbe] = None, premodel=None) -> None:
        self.strategy = strategy
        self.bundle = bundle
        # premodel_cbo: A_r(c) of the candidate model that answered the frame (core.premodel).
        self.premodel = premodel
        self.resolutions = [int(r) for r in resolutions]
        self.policy = make_planner(strategy, bundle)
        self.sizer = sizer
        self.server_time = server_time
        self.occupancy = occupancy or ServerOccupancy()
        self.probe = probe or ServerTimeProbe(0.0)
        self.busy_until_s = 0.0             # when the uplink has sent the offloads queued

    def server_accuracy(self, resolution: int, confidence: float,
                        local_model: Optional[str] = None) -> float:
        """A_r(c) of the local model: a premodel candidate's own profile, else the bundle's."""
        if self.premodel is not None and local_model in self.premodel.candidates:
            return self.premodel.server_accuracy(self.premodel.candidates.index(local_model),
                                                 resolution, confidence,
                                                 self.bundle.server_accuracy)
        return self.bundle.server_accuracy(resolution, confidence)

    def options(self, payloads: dict, confidence: float, link: LinkState,
                now_s: float, local_model: Optional[str] = None) -> list:
        """Return the offload options of a frame whose payloads (or sizes) are known."""
        options = []
        for r in self.resolutions:
            size = self.sizer.size(r, payloads)
            options.append(OffloadOption(
                resolution=r, payload_bytes=size,
                server_accuracy=float(self.server_accuracy(r, confidence, local_model)),
                server_time_s=(self.server_time.server_time_s(r, now_s)
                               + self.occupancy.wait_s(now_s, size, link))))
        return options

    def plan(self, seq: int, rgb: np.ndarray, confidence: float, raw_confidence: float,
             local_class: Optional[int], deadline_s: float, link: LinkState,
             now_s: float, local_model: Optional[str] = None) -> Plan:
        """Decide one frame; for an offload, encode its payload and reserve link and server.

        ``local_model``: the model that answered locally (premodel_cbo uses its profile).
        """
        encode_start = time.perf_counter()
        payloads = self.sizer.encode_payloads(rgb)
        encode_ms = (time.perf_counter() - encode_start) * 1e3
        candidate = FrameCandidate(seq=seq, arrival_s=now_s, deadline_s=deadline_s,
                                   confidence=float(confidence),
                                   options=self.options(payloads, confidence, link, now_s,
                                                        local_model))
        candidate.raw_confidence = float(raw_confidence)
        candidate.local_class = local_class
        decision = self.policy.decide(candidate, link, now_s)
        plan = Plan(decision=decision)
        if not decision.offload:
            probe = self.probe.propose(candidate, link, now_s)
            if probe is None:
                plan.encode_ms = encode_ms
                return plan
            # The strategy's confidence stays the one the frame is answered with.
            probe.confidence = decision.confidence
            plan.decision, plan.measure_only = probe, True
        resolution = int(plan.decision.resolution)
        if resolution not in payloads:
            encode_start = time.perf_counter()
            payloads[resolution] = self.sizer.encode(rgb, resolution)
            encode_ms += (time.perf_counter() - encode_start) * 1e3
        plan.payload, plan.encode_ms = payloads[resolution], encode_ms
        self.busy_until_s = max(self.busy_until_s, float(plan.decision.link_free_after_s))
        # The server is a FIFO resource too: this request occupies it after it arrived there.
        self.occupancy.reserve(float(plan.decision.link_free_after_s), link.rtt_s)
        return plan

    def offload_sent(self, now_s: float) -> None:
        """Note that an offload left (a server-time probe is due only a period later)."""
        self.probe.offload_sent(now_s)

    def observe_answer(self, now_s: float, seq: int, resolution: int, round_trip_s: float,
                       transfer_s: float, rtt_s: float, response) -> None:
        """Learn from a successful server response (late ones too).

        ``response`` carries ``queue_ms``, ``inference_ms``, ``batch_size``, ``decode_ms``,
        ``score`` and ``class_id`` (an Offload response).
        """
        self.server_time.observe(now_s, resolution, round_trip_s, transfer_s, rtt_s,
                                 response.queue_ms / 1e3)
        self.occupancy.observe(response.inference_ms, response.batch_size, response.decode_ms)
        # Late answers teach the strategy too (server profile, online calibration).
        self.policy.observe_server_answer(
            seq, resolution, float(response.score), now_s,
            server_class=int(response.class_id) if response.class_id else None)
