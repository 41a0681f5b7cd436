"""Scene-adaptive (online) confidence calibration from the server's answers (ROS-free).

A static calibration map fitted on a few calibration videos does not transfer to a new scene:
with reference labels, P(robot top-1 correct) at a given confidence depends on which classes
are in view (docs/evaluation.md). In operation the robot gets the server's answer for every
offloaded frame, and that answer says, with a known reliability, whether the robot's own top-1
was right: with q = P(server correct at r | the score it returned) (the bundle's score map,
fitted on the calibration videos),

- server agrees with the robot's top-1: the robot is correct iff the server is, P = q;
- server disagrees: the robot can only be correct if the server is wrong, P = (1 - q) * c,
  with c the static confidence (what we know of the robot when the server is no help).

``OnlineCalibrator`` turns these soft outcomes into a scene-level correction of the static map
on the logit scale,

    c_online = sigmoid(b + a * logit(c_static)),

fitted by maximum a posteriori (soft-label log loss over the last ``window`` feedback samples,
Gaussian priors b ~ N(0, 1/prior_shift), a ~ N(1, 1/prior_slope), the priors counted in
pseudo-samples): with no feedback it *is* the static map, and the more feedback arrives the
further it may move. Feedback exists only for offloaded frames, which the planner picks among
low-confidence ones: a shift b on the logit scale is identified from that partial support (it
moves the whole curve), a slope much less, hence the default ``prior_slope`` is strong.

Causal by construction: each sample carries its arrival time, and ``confidence``/``adjust``
with ``now_s`` use only the samples that had arrived by then (without ``now_s``: all observed).
"""

import math
from collections import deque
from typing import Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

_EPS = 1e-4


def _logit(p):
    p = min(max(float(p), _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def feedback_target(static_confidence: float, agree: bool, server_reliability: float) -> float:
    """P(robot top-1 correct | the server's answer): q if they agree, else (1 - q) * c."""
    q = min(max(float(server_reliability), 0.0), 1.0)
    return q if agree else (1.0 - q) * float(static_confidence)


def fit_logit_map(x: ArrayLike, y: ArrayLike, weights: Optional[ArrayLike] = None,
                  prior_shift: float = 10.0, prior_slope: float = 50.0, fit_slope: bool = True,
                  iterations: int = 50) -> Tuple[float, float]:
    """MAP (b, a) of P = sigmoid(b + a x) for soft targets ``y`` in [0, 1] at logits ``x``.

    Priors: b ~ N(0, 1/prior_shift), a ~ N(1, 1/prior_slope) (precisions in pseudo-samples).
    Newton's method on the (strictly convex) penalised soft log loss, with a backtracking line
    search (a full Newton step overshoots when the targets sit far from the current curve, e.g.
    many agreements on low-confidence frames) and the slope kept positive (a map that reverses
    the ranking of the confidences is never wanted). Returns (0, 1), the identity, when the
    inputs are not finite.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))
                           and np.all(np.isfinite(w))):
        return 0.0, 1.0

    def objective(b, a):
        s = b + a * x
        return float(np.sum(w * (np.logaddexp(0.0, s) - y * s))
                     + 0.5 * prior_shift * b * b + 0.5 * prior_slope * (a - 1.0) ** 2)

    b, a = 0.0, 1.0
    value = objective(b, a)
    for _ in range(int(iterations)):
        s = b + a * x
        p = 0.5 * (1.0 + np.tanh(0.5 * s))
        r = w * (p - y)
        h = w * p * (1.0 - p)
        if fit_slope:
            grad = np.array([r.sum() + prior_shift * b,
                             (r * x).sum() + prior_slope * (a - 1.0)])
            hess = np.array([[h.sum() + prior_shift, (h * x).sum()],
                             [(h * x).sum(), (h * x * x).sum() + prior_slope]])
            step = np.linalg.solve(hess, grad)
        else:
            step = np.array([(r.sum() + prior_shift * b) / (h.sum() + prior_shift), 0.0])
        gradient_b = r.sum() + prior_shift * b
        decrease = float(grad @ step) if fit_slope else float(step[0] * gradient_b)
        t = 1.0
        while t > 1e-6:
            nb, na = b - t * step[0], a - t * step[1]
            if na > 0.0:
                new = objective(nb, na)
                if new <= value - 1e-4 * t * decrease:
                    break
            t *= 0.5
        else:
            break                           # no decrease possible: at the optimum
        b, a, value = nb, na, new
        if np.max(np.abs(t * step)) < 1e-8:
            break
    return float(b), float(a)


class OnlineCalibrator:
    """Static calibration map adapted to the current scene from the server's answers.

    ``bundle``: the ``CalibrationBundle`` (static map and the server's score map). Options
    (defaults chosen by causal replays of the *calibration* videos, docs/evaluation.md):
    ``window`` feedback samples kept (older ones forgotten: scenes change), ``prior_shift`` and
    ``prior_slope`` (prior precisions, in pseudo-samples), ``fit_slope`` (False: shift only),
    ``min_resolution`` (answers at lower offload resolutions are too unreliable to use).
    """

    def __init__(self, bundle, window: int = 150, prior_shift: float = 1.0,
                 prior_slope: float = 50.0, fit_slope: bool = True,
                 min_resolution: int = 224) -> None:
        self.bundle = bundle
        self.window = int(window)
        self.prior_shift = float(prior_shift)
        self.prior_slope = float(prior_slope)
        self.fit_slope = bool(fit_slope)
        self.min_resolution = int(min_resolution)
        self.samples = deque(maxlen=self.window)     # (arrival s, logit(c_static), target)
        self._cache_key = None
        self._params = (0.0, 1.0)
        self._version = 0

    def reset(self) -> None:
        """Forget every feedback sample (back to the static map)."""
        self.samples.clear()
        self._version += 1
        self._cache_key = None
        self._params = (0.0, 1.0)

    def __len__(self):
        return len(self.samples)

    def static_confidence(self, logits_1d: ArrayLike,
                          resolution: int = 224) -> Tuple[float, float]:
        """Return the bundle's ``(calibrated, raw)`` confidence (the static map)."""
        return self.bundle.confidence(logits_1d, resolution)

    def parameters(self, now_s: Optional[float] = None) -> Tuple[float, float]:
        """(shift b, slope a) fitted on the samples that had arrived by ``now_s``."""
        if now_s is None:
            used = len(self.samples)
        else:
            used = sum(1 for t, _, _ in self.samples if t <= float(now_s))
        key = (self._version, used)
        if key == self._cache_key:
            return self._params
        arrived = [(x, y) for t, x, y in self.samples if now_s is None or t <= float(now_s)]
        if arrived:
            x, y = np.array(arrived).T
            self._params = fit_logit_map(x, y, None, self.prior_shift, self.prior_slope,
                                         self.fit_slope)
        else:
            self._params = (0.0, 1.0)
        self._cache_key = key
        return self._params

    def adjust(self, static_confidence: float, now_s: Optional[float] = None) -> float:
        """Adapted confidence of a frame whose static calibrated confidence is given."""
        b, a = self.parameters(now_s)
        if b == 0.0 and a == 1.0:
            return float(static_confidence)
        return _sigmoid(b + a * _logit(static_confidence))

    def confidence(self, logits_1d: ArrayLike, resolution: int = 224,
                   now_s: Optional[float] = None) -> Tuple[float, float]:
        """Return ``(calibrated, raw)`` like ``CalibrationBundle.confidence``, adapted online."""
        calibrated, raw = self.static_confidence(logits_1d, resolution)
        return self.adjust(calibrated, now_s), raw

    def observe(self, local: ArrayLike, local_class: int, server_class: int, server_score: float,
                resolution: int, now_s: float = 0.0,
                robot_resolution: Optional[int] = None) -> Optional[float]:
        """Add the feedback of one arrived server answer; return its soft target (or None).

        ``local``: the robot's logits for that frame (1-D) or its *static* calibrated
        confidence (float); ``local_class``/``server_class``: the two top-1 classes;
        ``server_score``: the score the server returned; ``resolution``: the offload
        resolution; ``now_s``: the arrival time (later queries with an earlier ``now_s`` ignore
        it). Answers below ``min_resolution``, without a score, or with no score map in the
        bundle are ignored (None).
        """
        if server_score is None or server_class is None or local_class is None \
                or int(resolution) < self.min_resolution:
            return None
        q = self.bundle.server_confidence(int(resolution), float(server_score))
        if q is None:
            return None
        if np.ndim(local) == 0:
            static = float(local)
        else:
            logits = np.asarray(local, dtype=np.float64).ravel()
            r = self.bundle.robot_resolution if robot_resolution is None else robot_resolution
            static = self.bundle.confidence(logits, r)[0]
        target = feedback_target(static, int(local_class) == int(server_class), q)
        self.samples.append((float(now_s or 0.0), _logit(static), target))
        self._version += 1
        return target
