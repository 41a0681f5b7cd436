"""Estimate the robot -> server link (goodput, RTT, loss, reachability) from measurements.

ROS-free. Three kinds of input, each stamped with ``now`` in seconds of a monotonic clock:

* offload transfers (``add_transfer``): a compressed frame of ``payload_bytes`` went up and the
  answer came back after ``round_trip_ms``, of which the server spent ``server_ms``. The time the
  payload took on the wire is ``round_trip_ms - server_ms - base_rtt_ms``, where the base RTT is
  what a tiny request costs (measured by small probes), so one sample of the uplink goodput is
  ``8 * payload_bytes / transfer_s``.
* active probes (``add_probe``): a small probe measures the RTT; a large one (at least
  ``min_bandwidth_payload_bytes``) is also a goodput sample, like a transfer with server_ms = 0.
  A probe without an answer is a loss.
* an external estimate (``set_external``, e.g. from a link monitor with access to the radio or
  the shaper) takes precedence for goodput, RTT and loss while it is fresh.

Goodput is the median of the per-sample rates in a sliding window (robust to a stalled frame or a
scheduling hiccup). A rate change is detected rather than waited out: when the newest
``change_samples`` samples, spanning at least ``change_min_s``, all lie beyond ``change_ratio``
of the older samples' median (all below it or all above it), the older samples are dropped, so the
estimate follows a new link rate after a few transfers instead of after half a window. RTT is
an EWMA of small-probe RTTs with the window's minimum as the base RTT, loss the share of lost
transfers/probes in the window. When nothing new is measured, the last values
are kept but ``estimate_age_s`` grows and ``stale`` becomes true after ``stale_after_s``.
"""

import collections
from dataclasses import dataclass
import math
import statistics
from typing import Optional


@dataclass
class LinkEstimate:
    """The estimate at one instant (fields mirror cbo_interfaces/msg/NetworkQuality)."""

    bandwidth_bps: float = 0.0      # 0: unknown
    rtt_ms: float = 0.0             # 0: unknown
    loss_rate: float = 0.0
    server_reachable: bool = False
    estimate_age_s: float = float('inf')   # inf: never measured (and no start time given)
    stale: bool = True
    samples: int = 0
    source: str = 'none'            # transfers, probes, transfers+probes, external, none


@dataclass
class _External:
    received: float
    bandwidth_bps: float
    rtt_ms: float
    loss_rate: float
    server_reachable: bool
    age_at_receipt_s: float
    samples: int


class NetworkEstimator:
    """Sliding-window estimator of uplink goodput, RTT, loss and server reachability."""

    def __init__(self, window_s: float = 10.0, stale_after_s: float = 2.0,
                 rtt_alpha: float = 0.3, min_bandwidth_payload_bytes: int = 4096,
                 min_transfer_ms: float = 0.2, unreachable_after_s: float = 3.0,
                 max_consecutive_failures: int = 2, external_timeout_s: float = 2.0,
                 max_samples: int = 200, start_time: Optional[float] = None,
                 rate_percentile: float = 50.0, change_samples: int = 4,
                 change_ratio: float = 1.5, change_min_s: float = 0.1) -> None:
        if window_s <= 0 or stale_after_s <= 0 or not 0 < rtt_alpha <= 1:
            raise ValueError('window_s and stale_after_s must be > 0, 0 < rtt_alpha <= 1')
        if change_samples < 0 or change_ratio <= 1.0 or change_min_s < 0:
            raise ValueError('change_samples must be >= 0 (0: no change detection), '
                             'change_ratio > 1 and change_min_s >= 0')
        self.window_s = float(window_s)
        self.stale_after_s = float(stale_after_s)
        self.rtt_alpha = float(rtt_alpha)
        self.min_bandwidth_payload_bytes = int(min_bandwidth_payload_bytes)
        self.min_transfer_ms = float(min_transfer_ms)
        self.unreachable_after_s = float(unreachable_after_s)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.external_timeout_s = float(external_timeout_s)
        # Timing noise (executor wake-ups, scheduling) only ever adds to a measured wire time,
        # so rate samples err low: a percentile above the median compensates (BBR-like).
        self.rate_percentile = float(rate_percentile)
        self.change_samples = int(change_samples)
        self.change_ratio = float(change_ratio)
        self.change_min_s = float(change_min_s)
        # (time, bits per second, kind) of goodput samples
        self._rates = collections.deque(maxlen=max_samples)
        # (time, rtt ms) of small probes
        self._rtts = collections.deque(maxlen=max_samples)
        # (sent, start on the wire, end of upload, bytes) of recent transfers with a send time
        self._wire = collections.deque(maxlen=64)
        # (time, lost, kind) of every transfer/probe outcome
        self._events = collections.deque(maxlen=4 * max_samples)
        self._srtt_ms = None
        self._bandwidth_bps = 0.0
        self._bandwidth_kinds = set()
        self._last_measurement = None
        self._last_success = None
        self._consecutive_failures = 0
        self._external = None
        self._start_time = start_time

    # ------------------------------------------------------------------ inputs
    def add_transfer(self, now: float, payload_bytes: int, round_trip_ms: float,
                     server_ms: float = 0.0, success: bool = True, timed_out: bool = False,
                     sent: Optional[float] = None) -> None:
        """Ingest one offload transfer as measured by the robot.

        ``success``: a response arrived; ``timed_out``: none before the frame's deadline. Either
        counts as a loss (a late answer is useless for its frame), but a late answer still
        shows that the server is reachable and is a goodput sample.

        ``sent``: when the request was sent (same clock as ``now``). A failed one sent before
        the last success counts as a loss but not towards unreachability: failures are reported
        seconds after sending, so while probes are answered, reachability is the probes' verdict
        (the planner backs off from offloads that go unanswered by itself). With it, transfers that
        overlapped on the link are accounted for: the link is FIFO, so a request sent while
        earlier ones were still on the wire also waited for their remaining bytes; the sample is
        (own bytes + bytes still ahead of it) / its wire time. Without it each transfer is
        assumed to have had the link to itself.
        """
        lost = timed_out or not success
        if success and not (math.isfinite(round_trip_ms) and round_trip_ms > 0.0
                            and math.isfinite(server_ms)):
            return                                  # malformed sample: nothing measured
        self._events.append((now, lost, 'transfers'))
        if not success:
            # A request sent before the server's last answer says nothing about the server
            # now (e.g. the calls in flight when a server died, given up seconds later while
            # its successor already answers): a loss, but not a failure in a row.
            if sent is None or self._last_success is None or sent >= self._last_success:
                self._failure(now)
            return
        self._success(now)
        wire_ms = round_trip_ms - max(server_ms, 0.0)
        ahead = 0.0
        if sent is not None:
            wire_s = max(wire_ms - self.base_rtt_ms(now), self.min_transfer_ms) / 1e3
            # Only transfers sent before this one were ahead of it (answers may come back out
            # of order, e.g. from one server batch).
            earlier = [(start, end, size) for was_sent, start, end, size in self._wire
                       if was_sent <= sent]
            for start, end, size in earlier:
                if sent < end:        # still (partly) ahead of this one when it was sent
                    ahead += size * min(1.0, (end - sent) / max(end - start, 1e-6))
            # On the wire from when the link freed up (FIFO), not from when it was sent: the
            # wait behind earlier transfers is not part of its own transfer.
            start = max([float(sent)] + [end for _, end, _ in earlier])
            end = float(sent) + wire_s
            self._wire.append((float(sent), min(start, end), end, float(payload_bytes)))
        self._add_rate(now, payload_bytes, wire_ms, 'transfers', ahead)

    def add_probe(self, now: float, payload_bytes: int, rtt_ms: Optional[float]) -> None:
        """Ingest one probe answered after ``rtt_ms``, or lost when ``rtt_ms`` is None."""
        if rtt_ms is not None and not (math.isfinite(rtt_ms) and rtt_ms > 0.0):
            return                                  # malformed sample: nothing measured
        if rtt_ms is None:
            self._events.append((now, True, 'probes'))
            self._failure(now)
            return
        self._events.append((now, False, 'probes'))
        self._success(now)
        if payload_bytes >= self.min_bandwidth_payload_bytes:
            self._add_rate(now, payload_bytes, rtt_ms, 'probes')
        else:
            self._rtts.append((now, float(rtt_ms)))
            if self._srtt_ms is None:
                self._srtt_ms = float(rtt_ms)
            else:
                self._srtt_ms += self.rtt_alpha * (float(rtt_ms) - self._srtt_ms)

    def add_unreachable(self, now: float) -> None:
        """Record that the server could not be asked at all (e.g. its service is absent).

        Counts towards unreachability but not towards the loss rate: nothing was sent.
        """
        self._failure(now)

    def set_external(self, now: float, bandwidth_bps: float, rtt_ms: float, loss_rate: float,
                     server_reachable: bool = True, estimate_age_s: float = 0.0,
                     stale: bool = False, samples: int = 0) -> None:
        """Ingest an external estimate; it overrides goodput/RTT/loss while fresh."""
        if stale:
            self._external = None
            return
        self._external = _External(now, float(bandwidth_bps), float(rtt_ms), float(loss_rate),
                                   bool(server_reachable), max(float(estimate_age_s), 0.0),
                                   int(samples))

    # ------------------------------------------------------------------ internals
    def _success(self, now):
        self._last_measurement = now
        self._last_success = now
        self._consecutive_failures = 0

    def _failure(self, now):
        self._consecutive_failures += 1

    def base_rtt_ms(self, now: float) -> float:
        """Cost of a tiny request: the smallest small-probe RTT in the window (0 if none)."""
        recent = [r for t, r in self._rtts if now - t <= self.window_s]
        if recent:
            return min(recent)
        return self._srtt_ms or 0.0

    def _add_rate(self, now, payload_bytes, wire_ms, kind, ahead_bytes=0.0):
        if payload_bytes < self.min_bandwidth_payload_bytes:
            return
        transfer_ms = max(wire_ms - self.base_rtt_ms(now), self.min_transfer_ms)
        self._rates.append((now, 8.0 * (payload_bytes + ahead_bytes) / (transfer_ms / 1e3),
                            kind))
        self._drop_samples_before_a_change()

    def _drop_samples_before_a_change(self):
        """Forget the samples older than a rate change seen by the newest ``change_samples``."""
        k = self.change_samples
        if k <= 0 or len(self._rates) <= k:
            return
        samples = list(self._rates)
        recent = [rate for _, rate, _ in samples[-k:]]
        if samples[-1][0] - samples[-k][0] < self.change_min_s:
            return                      # a burst of slow or fast transfers, not a new rate
        older = statistics.median(rate for _, rate, _ in samples[:-k])
        if max(recent) * self.change_ratio < older or min(recent) > older * self.change_ratio:
            for _ in range(len(samples) - k):
                self._rates.popleft()

    def _prune(self, now):
        for queue in (self._rates, self._rtts, self._events):
            while queue and now - queue[0][0] > self.window_s:
                queue.popleft()

    # ------------------------------------------------------------------ output
    def estimate(self, now: float) -> LinkEstimate:
        """Return the :class:`LinkEstimate` at ``now``."""
        self._prune(now)
        est = LinkEstimate()
        if self._rates:
            rates = sorted(r for _, r, _ in self._rates)
            if self.rate_percentile == 50.0:
                self._bandwidth_bps = statistics.median(rates)
            else:
                position = (len(rates) - 1) * self.rate_percentile / 100.0
                low = int(position)
                high = min(low + 1, len(rates) - 1)
                self._bandwidth_bps = rates[low] + (rates[high] - rates[low]) * (position - low)
            self._bandwidth_kinds = {k for _, _, k in self._rates}
        est.bandwidth_bps = self._bandwidth_bps
        est.rtt_ms = self._srtt_ms or 0.0
        lost = sum(1 for _, is_lost, _ in self._events if is_lost)
        est.loss_rate = lost / len(self._events) if self._events else 0.0
        est.samples = len(self._events)
        kinds = set(self._bandwidth_kinds)
        kinds.update(k for _, is_lost, k in self._events if not is_lost)
        if self._srtt_ms is not None:
            kinds.add('probes')
        est.source = '+'.join(k for k in ('transfers', 'probes') if k in kinds) or 'none'
        if self._last_success is not None:
            est.server_reachable = (
                now - self._last_success <= self.unreachable_after_s
                and self._consecutive_failures < self.max_consecutive_failures)
        if self._last_measurement is not None:
            est.estimate_age_s = max(now - self._last_measurement, 0.0)
        elif self._start_time is not None:
            est.estimate_age_s = max(now - self._start_time, 0.0)   # never measured
        ext = self._external
        if ext is not None and now - ext.received <= self.external_timeout_s:
            est.bandwidth_bps = ext.bandwidth_bps or est.bandwidth_bps
            est.rtt_ms = ext.rtt_ms or est.rtt_ms
            est.loss_rate = ext.loss_rate
            if self._last_success is None:
                est.server_reachable = ext.server_reachable
            else:
                est.server_reachable = est.server_reachable and ext.server_reachable
            est.estimate_age_s = min(est.estimate_age_s,
                                     ext.age_at_receipt_s + max(now - ext.received, 0.0))
            est.samples = ext.samples or est.samples
            est.source = 'external'
        est.stale = est.estimate_age_s > self.stale_after_s
        return est
