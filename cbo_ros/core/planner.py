"""The CBO planner: which frames to offload, and at which resolution (ROS-free).

Formulation (ours; see docs/planner.md): frame i is ready at t_i with calibrated local confidence
c_i and must be answered by d_i. Offloading at resolution r costs a payload s_r(i) bytes on the
uplink (transfers are serialised FIFO behind those already queued), then the RTT and the server
time; it is worth (1 - loss) * (A_r(c_i) - c_i), where A_r(c) is the profiled probability that the
server is correct at r for frames whose local confidence is c. The offline evaluator and the live
offload_planner_node call the same ``decide`` of the planners built by ``make_planner``.
"""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from cbo_ros.assets.paths import OFFLOAD_RESOLUTIONS


@dataclass
class OffloadOption:
    """One way to offload a frame."""

    resolution: int            # side length of the square sent to the server (pixels)
    payload_bytes: int         # real JPEG size at this resolution
    server_accuracy: float     # A_r(c_i): P(server correct | local confidence c_i)
    server_time_s: float       # expected server time (queue + decode + inference)


@dataclass
class FrameCandidate:
    """A frame ready for the planner (its local answer is already known)."""

    seq: int
    arrival_s: float           # when the frame can be sent (after local inference)
    deadline_s: float          # absolute time by which the answer must be published
    confidence: float          # calibrated P(local answer correct)
    options: List[OffloadOption] = field(default_factory=list)
    raw_confidence: Optional[float] = None   # robot max softmax (None: same as confidence)
    local_class: Optional[int] = None        # robot top-1 (online calibration; None: unknown)


@dataclass
class LinkState:
    """The planner's view of the uplink."""

    bandwidth_bps: float       # estimated goodput (bits/s); <= 0 means unknown/unusable
    rtt_s: float               # round trip of a small request
    loss_rate: float = 0.0
    reachable: bool = True
    busy_until_s: float = 0.0  # absolute time at which transfers already queued are sent


@dataclass
class Decision:
    """The planner's choice for one frame."""

    seq: int
    offload: bool
    resolution: int = 0
    payload_bytes: int = 0
    expected_accuracy: float = 0.0     # of the answer that will be used
    expected_gain: float = 0.0         # expected_accuracy - confidence
    expected_finish_s: float = 0.0     # absolute planned arrival of the server answer
    link_free_after_s: float = 0.0     # absolute time the uplink is free after this transfer
    reason: str = ''
    confidence: Optional[float] = None  # local confidence the policy used (None: candidate's)


# ------------------------------------------------------------------------------------ link model

def transfer_seconds(payload_bytes: float, bandwidth_bps: float) -> float:
    """Time to push ``payload_bytes`` through the uplink at ``bandwidth_bps``."""
    return 8.0 * float(payload_bytes) / float(bandwidth_bps)


def plan_transfer(option: OffloadOption, link: LinkState,
                  now_s: float) -> Tuple[float, float, float]:
    """Return ``(start_s, link_free_s, answer_s)`` of offloading ``option`` now (FIFO link)."""
    start = max(float(now_s), float(link.busy_until_s))
    free = start + transfer_seconds(option.payload_bytes, link.bandwidth_bps)
    return start, free, free + float(link.rtt_s) + float(option.server_time_s)


def link_usable(link: LinkState) -> bool:
    """Tell whether the planner may offload at all over ``link``."""
    return bool(link.reachable) and link.bandwidth_bps > 0 and math.isfinite(link.bandwidth_bps)


def expected_gain(candidate: FrameCandidate, option: OffloadOption,
                  loss_rate: float = 0.0) -> float:
    """(1 - loss) * (A_r(c) - c): expected accuracy gained by offloading instead of answering."""
    return (1.0 - float(loss_rate)) * (float(option.server_accuracy) - float(candidate.confidence))


def _local(candidate, reason, confidence=None):
    conf = candidate.confidence if confidence is None else confidence
    return Decision(seq=candidate.seq, offload=False, expected_accuracy=float(conf),
                    reason=reason, confidence=float(conf))


def _offload(candidate, option, link, now_s, reason, confidence=None, accuracy=None):
    conf = candidate.confidence if confidence is None else confidence
    server = option.server_accuracy if accuracy is None else accuracy
    _, free, answer = plan_transfer(option, link, now_s)
    loss = float(link.loss_rate)
    exp_acc = (1.0 - loss) * server + loss * conf
    return Decision(seq=candidate.seq, offload=True, resolution=int(option.resolution),
                    payload_bytes=int(option.payload_bytes), expected_accuracy=float(exp_acc),
                    expected_gain=float(exp_acc - conf), expected_finish_s=float(answer),
                    link_free_after_s=float(free), reason=reason, confidence=float(conf))


class BasePlanner:
    """Common part of every strategy: the feasibility test against the deadline."""

    name = 'base'

    def __init__(self, bundle=None, safety_margin_s: float = 0.005, **_ignored) -> None:
        self.bundle = bundle
        self.safety_margin_s = float(safety_margin_s)

    def feasible(self, candidate: FrameCandidate, option: OffloadOption, link: LinkState,
                 now_s: float) -> bool:
        """Tell whether the answer at ``option`` is predicted to arrive before the deadline."""
        _, _, answer = plan_transfer(option, link, now_s)
        return answer <= candidate.deadline_s - self.safety_margin_s

    def feasible_options(self, candidate: FrameCandidate, link: LinkState,
                         now_s: float) -> List[OffloadOption]:
        """Return the candidate's options whose answer is predicted in time."""
        return [o for o in candidate.options if self.feasible(candidate, o, link, now_s)]

    def decide(self, candidate: FrameCandidate, link: LinkState,
               now_s: float) -> Decision:  # pragma: no cover - interface
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state (between evaluation runs)."""

    def observe_server_answer(self, seq: int, resolution: int, server_score: float,
                              now_s: Optional[float] = None,
                              server_class: Optional[int] = None) -> None:
        """Feed back a server answer that has arrived (optional; only CBO uses it).

        ``server_score`` is the softmax probability the server returned with its top-1,
        ``server_class`` that top-1 (optional: used by ``cbo_adaptive``'s online calibration).
        Call it when the answer arrives (late answers too, lost ones never); ``now_s`` is the
        arrival time. The base implementation ignores it.
        """


class ServerFeedback:
    """Online refinement of the server profile A_r(c) from the answers that have arrived.

    For each answered offload the bundle's score map turns the server's returned score into
    q = P(server correct | score) (fitted on the calibration videos); the residual
    logit(q) - logit(A_r(c)) against the profile value used at decision time measures how much
    easier (> 0) or harder this scene is for the server than the calibration videos. The shift
    delta is the mean residual of the last ``window`` answers shrunk toward 0 by ``prior``
    pseudo-answers, and the planner uses sigmoid(logit(A_r(c)) + delta) for every resolution.
    Only answers that have arrived feed it, so it is causal; answers exist only for offloaded
    (mostly low-confidence) frames, a selection bias that the shared shift accepts.
    """

    def __init__(self, bundle, window: int = 50, prior: float = 10.0) -> None:
        self.bundle = bundle
        self.prior = float(prior)
        self.residuals = deque(maxlen=int(window))
        self.pending = {}                   # seq -> profile value A_r(c) used at decision

    def reset(self) -> None:
        """Forget any state (between evaluation runs)."""
        self.residuals.clear()
        self.pending.clear()

    @property
    def shift(self) -> float:
        """Current logit shift delta of the server profile."""
        n = len(self.residuals)
        return sum(self.residuals) / (n + self.prior) if n else 0.0

    def adjust(self, accuracy: float) -> float:
        """Shifted server accuracy sigmoid(logit(a) + delta)."""
        delta = self.shift
        if delta == 0.0:
            return float(accuracy)
        return _sigmoid(_logit(accuracy) + delta)

    def remember(self, seq: int, resolution: int, accuracy: float) -> None:
        """Record the (unshifted) profile value of an offload when it is decided."""
        self.pending[int(seq)] = (int(resolution), float(accuracy))
        if len(self.pending) > 1000:
            self.pending.pop(next(iter(self.pending)))

    def observe(self, seq: int, resolution: int, server_score: float) -> None:
        """Add the residual of an arrived answer; return it (None when unusable)."""
        entry = self.pending.pop(int(seq), None)
        if entry is None or self.bundle is None or server_score is None:
            return None
        q = self.bundle.server_confidence(resolution, server_score)
        if q is None:
            return None
        residual = _logit(q) - _logit(entry[1])
        self.residuals.append(residual)
        return residual


def _logit(p):
    p = min(max(float(p), 1e-3), 1.0 - 1e-3)
    return math.log(p / (1.0 - p))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


class LocalOnlyPlanner(BasePlanner):
    """Never offload: the robot model's answer always stands."""

    name = 'local_only'

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        return _local(candidate, 'local only')


class ServerOnlyPlanner(BasePlanner):
    """Offload every frame at one fixed resolution; a late answer falls back to the local one."""

    def __init__(self, resolution: int, bundle=None, **options) -> None:
        super().__init__(bundle, **options)
        self.resolution = int(resolution)
        self.name = f'server_only_{self.resolution}'

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        if not link_usable(link):
            return _local(candidate, 'link unusable')
        option = _nearest_option(candidate.options, self.resolution)
        if option is None:
            return _local(candidate, 'no offload option')
        late = '' if self.feasible(candidate, option, link, now_s) else ' (predicted late)'
        return _offload(candidate, option, link, now_s, f'server only {option.resolution}{late}')


def _nearest_option(options, resolution):
    if not options:
        return None
    return min(options, key=lambda o: abs(int(o.resolution) - int(resolution)))


def _best_accuracy_option(options):
    return max(options, key=lambda o: (o.server_accuracy, -o.payload_bytes)) if options else None


class ThresholdPlanner(BasePlanner):
    """Pacheco-style p_tar rule: offload when the confidence is below p_tar.

    Offloads at the feasible resolution with the highest profiled server accuracy; stays local
    when no resolution meets the deadline. ``raw=True`` thresholds the raw max-softmax.
    """

    def __init__(self, bundle=None, p_tar: float = 0.7, raw: bool = False, **options) -> None:
        super().__init__(bundle, **options)
        self.p_tar = float(p_tar)
        self.raw = bool(raw)
        self.name = 'raw_threshold' if raw else 'calibrated_threshold'

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        conf = candidate.confidence
        if self.raw and candidate.raw_confidence is not None:
            conf = float(candidate.raw_confidence)
        if conf >= self.p_tar:
            return _local(candidate, f'confident ({conf:.2f} >= p_tar {self.p_tar:.2f})')
        if not link_usable(link):
            return _local(candidate, 'link unusable')
        option = _best_accuracy_option(self.feasible_options(candidate, link, now_s))
        if option is None:
            return _local(candidate, 'no resolution meets the deadline')
        return _offload(candidate, option, link, now_s,
                        f'unsure ({conf:.2f} < {self.p_tar:.2f}): offload {option.resolution}')


class _FrameInterval:
    """Running estimate of the time between frames (from their ready times)."""

    def __init__(self, alpha=0.1):
        self.alpha = alpha
        self.last = None
        self.value = None

    def update(self, t):
        if self.last is not None and t > self.last:
            gap = t - self.last
            self.value = gap if self.value is None else (1 - self.alpha) * self.value \
                + self.alpha * gap
        self.last = t
        return self.value

    def reset(self) -> None:
        self.last = self.value = None


class BandwidthDrivenPlanner(BasePlanner):
    """FastVA/DeepDecision-like: resolution from bandwidth alone, offload every feasible frame.

    Picks the largest resolution whose transfer fits in one frame interval at the estimated
    bandwidth (so the link keeps up with the frame rate), falling back to smaller resolutions
    when that one would miss the deadline.
    """

    name = 'bandwidth_driven'

    def __init__(self, bundle=None, **options) -> None:
        super().__init__(bundle, **options)
        self.interval = _FrameInterval()

    def reset(self) -> None:
        """Forget any state (between evaluation runs)."""
        self.interval.reset()

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        interval = self.interval.update(candidate.arrival_s)
        if not link_usable(link):
            return _local(candidate, 'link unusable')
        options = sorted(candidate.options, key=lambda o: o.payload_bytes)
        if not options:
            return _local(candidate, 'no offload option')
        if interval:
            fits = [o for o in options
                    if transfer_seconds(o.payload_bytes, link.bandwidth_bps) <= interval]
            target = fits[-1] if fits else options[0]
        else:
            target = options[-1]
        for option in reversed(options[:options.index(target) + 1]):
            if self.feasible(candidate, option, link, now_s):
                return _offload(candidate, option, link, now_s,
                                f'bandwidth-driven {option.resolution}')
        return _local(candidate, 'no resolution meets the deadline')


def upper_hull_increments(
        points: Iterable[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Incremental (bytes, gain) steps of the upper concave hull of ``points`` and (0, 0).

    ``points`` are (bytes, gain) of one frame's options; only gains > 0 matter. Returns a list of
    (delta_bytes, delta_gain) with decreasing gain per byte: the items of the LP relaxation of the
    multiple-choice knapsack for that frame.
    """
    hull = [(0.0, 0.0)]
    for size, gain in sorted((float(b), float(g)) for b, g in points if g > 0 and b > 0):
        if gain <= hull[-1][1]:
            continue
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            # Drop the middle point when it lies on or below the chord to the new point.
            if (y1 - y0) * (size - x0) <= (gain - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append((size, gain))
    return [(x1 - x0, y1 - y0) for (x0, y0), (x1, y1) in zip(hull, hull[1:])]


def lp_shadow_price(increments: Sequence[Tuple[float, float]],
                    capacity_bytes: float) -> float:
    """Gain per byte of the marginal increment of the greedy LP-relaxation solution.

    ``increments`` are (delta_bytes, delta_gain) items; the LP fills ``capacity_bytes`` with the
    most efficient ones first. The price is 0 when everything fits.
    """
    if not increments:
        return 0.0
    items = sorted(increments, key=lambda item: item[1] / item[0], reverse=True)
    used = 0.0
    for size, gain in items:
        used += size
        if used >= capacity_bytes:
            return gain / size
    return 0.0


class CboPlanner(BasePlanner):
    """The online CBO policy: maximise gain - lambda * bytes over the feasible options.

    lambda, the shadow price of the uplink (gain per byte), solves the LP relaxation of the
    multiple-choice knapsack over a sliding window of the last ``window`` frames, whose capacity
    is what the estimated bandwidth carries in the window's span times ``utilisation`` (1.5 by
    default: tuned on the calibration videos; the LP over-prices because, with deadlines, frames
    that arrive while the link is busy cannot use it anyway). Per decision: O(R) to score the
    options plus O(W R log(W R)) to re-price.
    ``calibrated=False`` uses the raw max-softmax instead of the calibrated confidence (and the
    server profile indexed by raw confidence): the "CBO without calibration" ablation.
    """

    def __init__(self, bundle=None, window: int = 50, utilisation: float = 1.5,
                 calibrated: bool = True, feedback: bool = True, feedback_window: int = 50,
                 feedback_prior: float = 10.0, price_overlap_only: bool = True,
                 online_calibration=None, online_options: Optional[dict] = None,
                 **options) -> None:
        super().__init__(bundle, **options)
        self.price_overlap_only = bool(price_overlap_only)
        self.interval = _FrameInterval()
        self.window = int(window)
        self.utilisation = float(utilisation)
        self.calibrated = bool(calibrated)
        self.name = 'cbo' if calibrated else 'cbo_uncalibrated'
        # Online calibration (cbo_adaptive): an OnlineCalibrator, or True to build one.
        if online_calibration is True:
            from cbo_ros.core.online_calibration import OnlineCalibrator
            online_calibration = OnlineCalibrator(bundle, **(online_options or {})) \
                if bundle is not None else None
        self.online = online_calibration if online_calibration not in (None, False) else None
        self.online_pending = {}               # seq -> (static confidence, local class)
        if self.online is not None:
            self.name = 'cbo_adaptive'
        self.history = deque(maxlen=self.window)   # (ready time, hull increments)
        self.price_per_byte = 0.0
        self.feedback = ServerFeedback(bundle, feedback_window, feedback_prior) \
            if feedback else None

    def reset(self) -> None:
        """Forget any state (between evaluation runs)."""
        self.history.clear()
        self.price_per_byte = 0.0
        self.interval.reset()
        if self.feedback is not None:
            self.feedback.reset()
        if self.online is not None:
            self.online.reset()
            self.online_pending.clear()

    def observe_server_answer(self, seq: int, resolution: int, server_score: float,
                              now_s: Optional[float] = None,
                              server_class: Optional[int] = None) -> None:
        """Refine the planner's models with an arrived answer.

        The server profile (``ServerFeedback``) and, for ``cbo_adaptive``, the local confidence
        map (``OnlineCalibrator``; needs ``server_class``).
        """
        if self.feedback is not None:
            self.feedback.observe(seq, resolution, server_score)
        pending = self.online_pending.pop(int(seq), None) if self.online is not None else None
        if pending is not None and server_class is not None:
            self.online.observe(pending[0], pending[1], server_class, server_score, resolution,
                                now_s=now_s)

    def _profile_view(self, candidate):
        """Confidence and per-option (unshifted) server accuracy of the policy's model."""
        if self.calibrated or candidate.raw_confidence is None:
            return candidate.confidence, [o.server_accuracy for o in candidate.options]
        raw = float(candidate.raw_confidence)
        if self.bundle is not None:
            accuracies = [self.bundle.server_accuracy(o.resolution, raw, raw=True)
                          for o in candidate.options]
        else:
            accuracies = [o.server_accuracy for o in candidate.options]
        return raw, accuracies

    def _view(self, candidate, now_s=None):
        """Confidence and per-option server accuracy the policy believes in (refined)."""
        conf, accuracies = self._profile_view(candidate)
        if self.online is not None:
            conf = self.online.adjust(conf, now_s)
        if self.feedback is not None:
            accuracies = [self.feedback.adjust(a) for a in accuracies]
        return conf, accuracies

    def _reprice(self, link):
        if len(self.history) < 2:
            self.price_per_byte = 0.0
            return
        span = self.history[-1][0] - self.history[0][0]
        span *= len(self.history) / (len(self.history) - 1)   # n frames cover n intervals
        capacity = self.utilisation * link.bandwidth_bps * span / 8.0
        increments = [item for _, steps in self.history for item in steps]
        self.price_per_byte = lp_shadow_price(increments, capacity)

    def _priced_bytes(self, option, link, now_s, interval):
        """Bytes of ``option`` that hold the link past the next frame's expected ready time.

        A transfer that ends before the next frame is ready takes nothing from it: the link
        would have idled. Only the overlap competes with later frames and is priced.
        """
        if not self.price_overlap_only or not interval:
            return option.payload_bytes
        _, free, _ = plan_transfer(option, link, now_s)
        overlap = free - (float(now_s) + interval)
        if overlap <= 0:
            return 0.0
        return min(float(option.payload_bytes), overlap * link.bandwidth_bps / 8.0)

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        interval = self.interval.update(candidate.arrival_s)
        conf, accuracies = self._view(candidate, now_s)
        keep = 1.0 - float(link.loss_rate)
        gains = [keep * (a - conf) for a in accuracies]
        if not link_usable(link):
            self.history.append((candidate.arrival_s, []))
            return _local(candidate, 'link unusable', conf)
        # The window's demand: options that could meet the deadline on an idle link.
        budget = candidate.deadline_s - candidate.arrival_s - self.safety_margin_s - link.rtt_s
        self.history.append((candidate.arrival_s, upper_hull_increments(
            [(o.payload_bytes, g) for o, g in zip(candidate.options, gains)
             if transfer_seconds(o.payload_bytes, link.bandwidth_bps) + o.server_time_s
             <= budget])))
        self._reprice(link)
        best, best_score = None, 0.0
        for option, gain, accuracy in zip(candidate.options, gains, accuracies):
            if gain <= 0:
                continue
            score = gain - self.price_per_byte * self._priced_bytes(option, link, now_s,
                                                                    interval)
            if score > best_score and self.feasible(candidate, option, link, now_s):
                best, best_score = (option, accuracy), score
        if best is None:
            if not any(g > 0 for g in gains):
                return _local(candidate, f'server not expected to do better (c={conf:.2f})', conf)
            return _local(candidate, 'no option worth its link time before the deadline', conf)
        option, accuracy = best
        if self.online is not None and candidate.local_class is not None:
            self.online_pending[int(candidate.seq)] = (float(candidate.confidence),
                                                       int(candidate.local_class))
            if len(self.online_pending) > 1000:
                self.online_pending.pop(next(iter(self.online_pending)))
        if self.feedback is not None:
            profiled = self._profile_view(candidate)[1][candidate.options.index(option)]
            self.feedback.remember(candidate.seq, option.resolution, profiled)
        return _offload(candidate, option, link, now_s,
                        f'offload {option.resolution}: gain {best_score:.3f} after link price',
                        conf, accuracy)


class SchedulePlanner(BasePlanner):
    """Replays a precomputed schedule {seq: resolution} (the oracle and the exact solver)."""

    def __init__(self, schedule: Optional[Dict[int, int]] = None, bundle=None, name: str = 'oracle',
                 **options) -> None:
        super().__init__(bundle, **options)
        self.schedule = dict(schedule or {})
        self.name = name

    def decide(self, candidate: FrameCandidate, link: LinkState, now_s: float) -> Decision:
        """Return the Decision for ``candidate`` given the link at ``now_s``."""
        resolution = int(self.schedule.get(candidate.seq, 0))
        if not resolution or not link_usable(link):
            return _local(candidate, f'{self.name}: local')
        option = _nearest_option(candidate.options, resolution)
        return _offload(candidate, option, link, now_s, f'{self.name}: offload {resolution}')


FIXED_STRATEGIES = ('local_only', 'raw_threshold', 'calibrated_threshold', 'bandwidth_driven',
                    'cbo_uncalibrated', 'cbo', 'cbo_adaptive', 'oracle')


# Premodel model selection (docs/premodel.md): the local answer comes from the model the
# premodel picked per frame; 'premodel' never offloads, 'premodel_cbo' plans with CBO from that
# model's calibrated confidence. They need a trained premodel, so they are not in the default list.
PREMODEL_STRATEGIES = ('premodel', 'premodel_cbo')


def strategy_names(offload_resolutions: Sequence[int] = OFFLOAD_RESOLUTIONS) -> List[str]:
    """All strategy names (server_only_<r> for each offload resolution)."""
    server = [f'server_only_{int(r)}' for r in offload_resolutions]
    return ['local_only'] + server + list(FIXED_STRATEGIES[1:])


def make_planner(strategy: str = 'cbo', bundle=None, **options) -> BasePlanner:
    """Build the planner of ``strategy`` (see ``strategy_names``); ``options`` tune it.

    Options: ``safety_margin_s`` (all), ``p_tar`` (thresholds), ``window``, ``utilisation``,
    ``feedback`` (online refinement of the server profile from ``observe_server_answer``),
    ``feedback_window`` and ``feedback_prior`` (cbo), ``online_options`` (cbo_adaptive: keyword
    arguments of ``OnlineCalibrator``), ``schedule`` (oracle: {seq: resolution},
    evaluator only). Every planner has ``observe_server_answer(seq, resolution, score, now_s)``.
    """
    name = str(strategy).strip()
    if name == 'local_only':
        return LocalOnlyPlanner(bundle, **options)
    if name in PREMODEL_STRATEGIES:
        planner = LocalOnlyPlanner(bundle, **options) if name == 'premodel' else \
            CboPlanner(bundle, calibrated=True, **options)
        planner.name = name
        return planner
    if name.startswith('server_only_'):
        try:
            resolution = int(name[len('server_only_'):])
        except ValueError:
            raise ValueError(f"bad strategy '{name}': expected server_only_<pixels>") from None
        return ServerOnlyPlanner(resolution, bundle, **options)
    if name in ('raw_threshold', 'calibrated_threshold'):
        return ThresholdPlanner(bundle, raw=name == 'raw_threshold', **options)
    if name == 'bandwidth_driven':
        return BandwidthDrivenPlanner(bundle, **options)
    if name in ('cbo', 'cbo_uncalibrated'):
        return CboPlanner(bundle, calibrated=name == 'cbo', **options)
    if name == 'cbo_adaptive':
        options.setdefault('online_calibration', True)
        return CboPlanner(bundle, calibrated=True, **options)
    if name in ('oracle', 'cbo_exact'):
        if 'schedule' not in options:
            raise ValueError(f"strategy '{name}' needs a precomputed schedule (evaluator only)")
        return SchedulePlanner(bundle=bundle, name=name, **options)
    if name.startswith('early_exit_partition'):
        raise ValueError(f"strategy '{name}' sends tensors, not frames: run early_exit_node "
                         '(docs/early_exit.md); offline, cbo_eval --strategies runs it')
    raise ValueError(f"unknown planner strategy '{name}' (choose from "
                     f"{', '.join(strategy_names() + list(PREMODEL_STRATEGIES))})")
