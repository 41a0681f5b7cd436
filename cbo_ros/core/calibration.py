"""Confidence calibration of the robot model and the calibration bundle the nodes load (ROS-free).

Calibrators map the robot model's logits to a calibrated P(local top-1 answer is correct):

- ``TemperatureScaling``: one temperature T, fitted by minimising the multi-class NLL of
  softmax(logits / T); it keeps the ranking and the top-1 class.
- ``HistogramBinning``: equal-width bins of the raw max-softmax, each mapped to its empirical
  accuracy (shrunk towards the overall accuracy when a bin holds few samples).
- ``IsotonicCalibration``: a non-decreasing map of the raw max-softmax (scikit-learn's
  ``IsotonicRegression``), interpolated linearly between the centres of its blocks.
- ``LogisticCalibration``: Platt scaling of P(top-1 correct) on several features of the softmax
  (log max-probability, top-1/top-2 margin, normalised entropy), L2-regularised logistic
  regression. It is a calibrated estimate of P(local correct), not of the class probabilities.
  Its fit stays a scipy L-BFGS minimisation: the model has a fixed offset (the raw logit of the
  max-probability, so that it shrinks toward the raw confidence) and a penalised intercept,
  neither of which scikit-learn's ``LogisticRegression`` can express.

scikit-learn (fitting only) is imported when a calibrator is fitted, never when one is loaded
and applied: the robot nodes need no scikit-learn.

Every calibrator has ``fit(logits, labels, weights=None)`` and ``predict(logits) -> confidences``
(``weights``: optional per-sample weights, e.g. equal total weight per video);
binning and isotonic regression also fit/predict on confidences directly
(``fit_confidences(confidences, correct)`` / ``predict_confidences(confidences)``).

``CalibrationBundle`` is what ``cbo_calibrate`` writes and the classifier and planner nodes load:
a calibrator per robot input resolution, the profile A_r(c) of the server's accuracy at each
offload resolution r per local-confidence bin, and the profiled server time per resolution.
"""

import json
import math
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar

from cbo_ros.core.calibration_metrics import (  # noqa: F401 (API)
    brier_score, calibration_report, expected_calibration_error, maximum_calibration_error,
    multiclass_nll, negative_log_likelihood)
from cbo_ros.perception.image_ops import softmax
from cbo_ros.assets.paths import artifacts_dir, ROBOT_INPUT_SIZE

FORMAT = 'cbo_calibration/1'
METHODS = ('temperature', 'histogram', 'isotonic', 'logistic')


class CalibrationError(ValueError):
    """A calibration file is missing or invalid, or a calibrator cannot be fitted."""


def default_calibration_path() -> Path:
    """Where ``cbo_calibrate`` writes the calibration and the nodes look for it."""
    return artifacts_dir() / 'calibration' / 'cbo_calibration.json'


def max_softmax(logits: ArrayLike) -> np.ndarray:
    """Top-1 softmax probability of each row of ``logits`` (N, C) -> (N,)."""
    return softmax(np.atleast_2d(logits)).max(axis=1)


def top1_correct(logits: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """1.0 where the argmax of a row of ``logits`` is correct, else 0.0.

    ``labels`` is either one class id per row or an (N, C) boolean label-set matrix (any
    marked class counts as correct: hierarchical correctness). Rows with an empty set
    (unlabelled frames) score 0: leave them out before scoring (see ``labelled_rows``).
    """
    logits = np.atleast_2d(logits)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape != logits.shape:
            raise CalibrationError(f'label matrix {labels.shape} does not match logits '
                                   f'{logits.shape}')
        return labels[np.arange(len(labels)), logits.argmax(axis=1)].astype(np.float64)
    labels = labels.ravel()
    if len(labels) != len(logits):
        raise CalibrationError(f'{len(logits)} logit rows but {len(labels)} labels')
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise CalibrationError(f'labels must lie in [0, {logits.shape[1]}) (got '
                               f'{labels.min()}..{labels.max()}): mismatched label set?')
    return (logits.argmax(axis=1) == labels).astype(np.float64)


def labelled_rows(labels):
    """(N,) bool: rows with a label (class id >= 0, or a non-empty label set)."""
    labels = np.asarray(labels)
    return labels.any(axis=1) if labels.ndim == 2 else labels.ravel() >= 0


class TemperatureScaling:
    """softmax(logits / T) with the NLL-optimal temperature T."""

    method = 'temperature'

    def __init__(self, temperature=1.0):
        self.temperature = float(temperature)

    def fit(self, logits, labels, weights=None):
        """Find T minimising the (weighted) multi-class NLL on (logits, labels); return self.

        With label sets the likelihood of a row is the probability mass of its set.
        """
        logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
        labels = np.asarray(labels)
        top1_correct(logits, labels)  # validates the labels
        if labels.ndim == 1:
            labels = labels.astype(np.int64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        w = _weights(weights, len(labels))

        def log_sum_exp(values):
            top = values.max(axis=1)
            return np.log(np.exp(values - top[:, None]).sum(axis=1)) + top

        def nll(log_t):
            scaled = shifted / math.exp(log_t)
            if labels.ndim == 2:
                picked = log_sum_exp(np.where(labels, scaled, -np.inf))
            else:
                picked = scaled[np.arange(len(labels)), labels]
            return float(np.sum(w * (log_sum_exp(scaled) - picked)))

        result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method='bounded',
                                 options={'xatol': 1e-5})
        self.temperature = float(math.exp(result.x))
        return self

    def probabilities(self, logits):
        """Return the calibrated class probability vectors, one row per logits row."""
        return softmax(np.atleast_2d(logits) / self.temperature)

    def predict(self, logits):
        """Calibrated top-1 confidence of each row of ``logits``."""
        return max_softmax(np.atleast_2d(np.asarray(logits, dtype=np.float64)) / self.temperature)

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'method': self.method, 'temperature': self.temperature}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        return cls(float(data['temperature']))


def _confidence_outcomes(confidences, correct, method):
    """Validate and flatten (confidence, outcome) pairs for a confidence-space calibrator."""
    conf = np.clip(np.asarray(confidences, dtype=np.float64).ravel(), 0.0, 1.0)
    hits = np.asarray(correct, dtype=np.float64).ravel()
    if conf.size == 0 or conf.size != hits.size:
        raise CalibrationError(f'{method} needs as many confidences as outcomes (> 0)')
    return conf, hits


def _weights(weights, n):
    """Per-sample weights normalised to sum 1 (uniform when ``weights`` is None)."""
    if weights is None:
        return np.full(n, 1.0 / max(n, 1))
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size != n or np.any(w < 0) or w.sum() <= 0:
        raise CalibrationError(f'expected {n} non-negative weights with a positive sum')
    return w / w.sum()


class _ConfidenceCalibrator:
    """Shared logits-level interface of the calibrators that work on the raw max-softmax."""

    def fit(self, logits, labels, weights=None):
        """Fit on logits and labels (through the raw max-softmax and top-1 correctness)."""
        return self.fit_confidences(max_softmax(logits), top1_correct(logits, labels), weights)

    def predict(self, logits):
        """Calibrated top-1 confidence of each row of ``logits``."""
        return self.predict_confidences(max_softmax(logits))


class HistogramBinning(_ConfidenceCalibrator):
    """Equal-width bins of the raw confidence mapped to their (shrunk) empirical accuracy."""

    method = 'histogram'

    def __init__(self, bins=15, prior_strength=2.0, values=None):
        self.bins = int(bins)
        self.prior_strength = float(prior_strength)
        self.values = None if values is None else np.asarray(values, dtype=np.float64)

    def fit_confidences(self, confidences, correct, weights=None):
        """Fit the bin accuracies; empty or thin bins lean on the overall accuracy."""
        conf, hits = _confidence_outcomes(confidences, correct, 'histogram binning')
        w = _weights(weights, conf.size) * conf.size     # mean weight 1: counts stay counts
        index = self._index(conf)
        counts = np.bincount(index, weights=w, minlength=self.bins)
        sums = np.bincount(index, weights=w * hits, minlength=self.bins)
        prior = float(np.sum(w * hits) / np.sum(w))
        self.values = (sums + self.prior_strength * prior) / (counts + self.prior_strength)
        return self

    def _index(self, conf):
        return np.clip((conf * self.bins).astype(int), 0, self.bins - 1)

    def predict_confidences(self, confidences):
        """Map raw confidences to their bin's accuracy."""
        if self.values is None:
            raise CalibrationError('HistogramBinning used before fit')
        conf = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
        return self.values[self._index(conf)]

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'method': self.method, 'bins': self.bins, 'prior_strength': self.prior_strength,
                'values': [float(v) for v in self.values]}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        return cls(int(data['bins']), float(data.get('prior_strength', 2.0)), data['values'])


def pool_adjacent_violators(y: ArrayLike, weights: Optional[ArrayLike] = None) -> np.ndarray:
    """Non-decreasing weighted least-squares fit of the sequence ``y`` (already ordered by x).

    scikit-learn's ``isotonic_regression`` (pool adjacent violators).
    """
    from sklearn.isotonic import isotonic_regression
    y = np.asarray(y, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    return np.asarray(isotonic_regression(y, sample_weight=w, increasing=True),
                      dtype=np.float64)


class IsotonicCalibration(_ConfidenceCalibrator):
    """Non-decreasing map of the raw confidence (pool adjacent violators), linear in between."""

    method = 'isotonic'

    def __init__(self, knots_x=None, knots_y=None):
        self.knots_x = None if knots_x is None else np.asarray(knots_x, dtype=np.float64)
        self.knots_y = None if knots_y is None else np.asarray(knots_y, dtype=np.float64)

    def fit_confidences(self, confidences, correct, weights=None):
        """Fit the isotonic map; the knots are the centres of the pooled blocks.

        scikit-learn's ``IsotonicRegression`` fits the map (tied confidences pooled into one
        point, so the map does not depend on the order of the samples); the knots are then
        placed at each block's weighted mean confidence, so that a block's value is reached at
        its centre and the map is linear between blocks (not a step at the block's edge).
        """
        from sklearn.isotonic import IsotonicRegression
        conf, hits = _confidence_outcomes(confidences, correct, 'isotonic regression')
        w = _weights(weights, conf.size)
        keep = w > 0
        conf, hits, w = conf[keep], hits[keep], w[keep]
        xs, inverse = np.unique(conf, return_inverse=True)
        mass = np.bincount(inverse, weights=w, minlength=xs.size)
        fitted = IsotonicRegression(increasing=True, out_of_bounds='clip').fit(
            conf, hits, sample_weight=w)
        ys = fitted.predict(xs)
        # One knot per block of equal fitted values: at the block's mean confidence.
        starts = np.flatnonzero(np.r_[True, np.diff(ys) != 0])
        ends = np.r_[starts[1:], len(ys)]
        knots_x = np.array([np.average(xs[s:e], weights=mass[s:e])
                            for s, e in zip(starts, ends)])
        knots_y = ys[starts]
        # Keep the extremes of [0, 1] reachable and the map within (0, 1).
        self.knots_x = knots_x
        self.knots_y = np.clip(knots_y, 1e-3, 1.0 - 1e-3)
        return self

    def predict_confidences(self, confidences):
        """Interpolate the isotonic map (constant beyond the first and last knots)."""
        if self.knots_x is None:
            raise CalibrationError('IsotonicCalibration used before fit')
        conf = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
        return np.interp(conf, self.knots_x, self.knots_y)

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'method': self.method, 'knots_x': [float(v) for v in self.knots_x],
                'knots_y': [float(v) for v in self.knots_y]}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        return cls(data['knots_x'], data['knots_y'])


class IdentityCalibration(_ConfidenceCalibrator):
    """No calibration: the raw max-softmax (the explicit uncalibrated fallback)."""

    method = 'identity'

    def fit_confidences(self, confidences, correct, weights=None):
        """Nothing to fit: return self."""
        return self

    def predict_confidences(self, confidences):
        """Return the confidences unchanged (clipped to [0, 1])."""
        return np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'method': self.method}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        return cls()


def confidence_features(logits: ArrayLike) -> np.ndarray:
    """Features of each logits row that ``LogisticCalibration`` maps to P(top-1 correct).

    Columns: log max-probability, top-1 minus top-2 probability, entropy / log(classes).
    """
    probs = softmax(np.atleast_2d(np.asarray(logits, dtype=np.float64)))
    top2 = -np.partition(-probs, 1, axis=1)[:, :2]
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-30, 1.0)), axis=1)
    return np.column_stack([np.log(np.clip(top2[:, 0], 1e-30, 1.0)), top2[:, 0] - top2[:, 1],
                            entropy / math.log(probs.shape[1])])


FEATURE_NAMES = ('log_max_prob', 'margin', 'norm_entropy')


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1.0 - 1e-6)
    return np.log(p) - np.log1p(-p)


class LogisticCalibration:
    """Platt scaling on softmax features, shrunk toward the raw confidence.

    P(correct) = sigmoid(logit(p_max) + b + w . z), with z the standardised
    ``confidence_features``: all-zero parameters give back the raw max-softmax, and the L2
    penalty ``l2`` (on b and w, per sample: l2 / N) shrinks the fit toward it, so that a few
    scenes cannot pull the map far from the model's own confidence. Fitted by minimising the
    weighted binary log loss of the top-1 correctness event with scipy's L-BFGS: scikit-learn's
    ``LogisticRegression`` has neither a fixed per-sample offset nor a penalised intercept, so
    it would fit another model (shrunk toward a constant, not toward the raw confidence).
    """

    method = 'logistic'

    def __init__(self, l2=20.0, mean=None, scale=None, coef=None, intercept=0.0):
        self.l2 = float(l2)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.coef = None if coef is None else np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)

    def fit(self, logits, labels, weights=None):
        """Fit on logits and labels (top-1 correctness); return self."""
        return self.fit_features(confidence_features(logits), top1_correct(logits, labels),
                                 weights)

    def fit_features(self, features, correct, weights=None):
        """Fit on a feature matrix (``confidence_features``) and 0/1 outcomes."""
        from scipy.optimize import minimize
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        y = np.asarray(correct, dtype=np.float64).ravel()
        if len(x) == 0 or len(x) != len(y):
            raise CalibrationError('logistic calibration needs as many feature rows as outcomes')
        w = _weights(weights, len(y))
        self.mean = np.sum(w[:, None] * x, axis=0)
        self.scale = np.sqrt(np.sum(w[:, None] * (x - self.mean) ** 2, axis=0)) + 1e-9
        z = np.column_stack([np.ones(len(y)), (x - self.mean) / self.scale])
        offset = _logit(np.exp(x[:, 0]))
        penalty = self.l2 / len(y)

        def loss(theta):
            s = offset + z @ theta
            p = 0.5 * (1.0 + np.tanh(0.5 * s))
            value = np.sum(w * (np.logaddexp(0.0, s) - y * s)) + 0.5 * penalty * theta @ theta
            return value, z.T @ (w * (p - y)) + penalty * theta

        theta = minimize(loss, np.zeros(z.shape[1]), jac=True, method='L-BFGS-B').x
        self.intercept, self.coef = float(theta[0]), theta[1:]
        return self

    def predict_features(self, features):
        """P(correct) of each feature row."""
        if self.coef is None:
            raise CalibrationError('LogisticCalibration used before fit')
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        s = _logit(np.exp(x[:, 0])) + self.intercept + ((x - self.mean) / self.scale) @ self.coef
        return 0.5 * (1.0 + np.tanh(0.5 * s))

    def predict(self, logits):
        """Calibrated top-1 confidence of each row of ``logits``."""
        return self.predict_features(confidence_features(logits))

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'method': self.method, 'l2': self.l2, 'features': list(FEATURE_NAMES),
                'offset': 'logit(max_prob)',
                'mean': [float(v) for v in self.mean], 'scale': [float(v) for v in self.scale],
                'coef': [float(v) for v in self.coef], 'intercept': self.intercept}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        if list(data.get('features', FEATURE_NAMES)) != list(FEATURE_NAMES):
            raise CalibrationError(f"logistic calibrator features {data.get('features')} differ "
                                   f'from {list(FEATURE_NAMES)}')
        return cls(data.get('l2', 20.0), data['mean'], data['scale'], data['coef'],
                   data['intercept'])


CALIBRATORS = {cls.method: cls for cls in (TemperatureScaling, HistogramBinning,
                                           IsotonicCalibration, LogisticCalibration,
                                           IdentityCalibration)}


def make_calibrator(method: str):
    """Create an unfitted calibrator by method name (``METHODS`` or 'identity')."""
    try:
        return CALIBRATORS[method]()
    except KeyError:
        raise CalibrationError(f"unknown calibration method '{method}' "
                               f"(choose from {', '.join(CALIBRATORS)})") from None


def calibrator_from_dict(data: dict):
    """Rebuild a calibrator saved with ``to_dict``."""
    method = data.get('method')
    if method not in CALIBRATORS:
        raise CalibrationError(f"unknown calibration method '{method}'")
    return CALIBRATORS[method].from_dict(data)


class ServerProfile:
    """A_r(c): P(server correct at offload resolution r | local confidence c), per confidence bin.

    ``accuracy[r]`` holds one value per bin of ``edges`` (equal width over [0, 1]); lookups
    interpolate linearly between bin centres. ``raw_accuracy`` is the same profile indexed by the
    raw (uncalibrated) confidence, used by the uncalibrated CBO variant.
    """

    def __init__(self, edges, accuracy, raw_accuracy=None, overall=None, score_map=None):
        self.edges = np.asarray(edges, dtype=np.float64)
        # r -> IsotonicCalibration of the server's own score: P(server correct | its score).
        self.score_map = {int(r): (m if isinstance(m, IsotonicCalibration)
                                   else IsotonicCalibration.from_dict(m))
                          for r, m in (score_map or {}).items()}
        self.centres = 0.5 * (self.edges[:-1] + self.edges[1:])
        self.accuracy = {int(r): np.asarray(v, dtype=np.float64) for r, v in accuracy.items()}
        raw = raw_accuracy or accuracy
        self.raw_accuracy = {int(r): np.asarray(v, dtype=np.float64) for r, v in raw.items()}
        self.overall = {int(r): float(v) for r, v in (overall or {}).items()} or {
            r: float(np.mean(v)) for r, v in self.accuracy.items()}

    @classmethod
    def fit(cls, confidences, raw_confidences, server_correct, bins=10, prior_strength=4.0,
            weights=None, monotone=True):
        """Profile from per-frame local confidences and server correctness {r: (N,) 0/1}.

        Each bin's accuracy is shrunk toward the overall accuracy at r with ``prior_strength``
        pseudo-frames; ``weights`` (mean 1, e.g. equal per video) weigh the frames; with
        ``monotone`` the bins are made non-decreasing in c (pool adjacent violators weighted by
        the bin masses): a frame the robot finds easier is not harder for the server.
        """
        edges = np.linspace(0.0, 1.0, int(bins) + 1)
        n = len(np.asarray(confidences))
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)

        def per_bin(conf, hits):
            index = np.clip((np.asarray(conf) * bins).astype(int), 0, bins - 1)
            counts = np.bincount(index, weights=w, minlength=bins)
            sums = np.bincount(index, weights=w * hits, minlength=bins)
            prior = float(np.sum(w * hits) / np.sum(w))
            values = (sums + prior_strength * prior) / (counts + prior_strength)
            if monotone:
                values = pool_adjacent_violators(values, counts + prior_strength)
            return values

        accuracy, raw_accuracy, overall = {}, {}, {}
        for r, hits in server_correct.items():
            hits = np.asarray(hits, dtype=np.float64)
            accuracy[int(r)] = per_bin(confidences, hits)
            raw_accuracy[int(r)] = per_bin(raw_confidences, hits)
            overall[int(r)] = float(np.sum(w * hits) / np.sum(w))
        return cls(edges, accuracy, raw_accuracy, overall)

    def lookup(self, resolution, confidence, raw=False):
        """A_r(c), interpolated between bin centres; the nearest profiled r if r is unknown."""
        table = self.raw_accuracy if raw else self.accuracy
        r = int(resolution)
        if r not in table:
            r = min(table, key=lambda known: abs(known - int(resolution)))
        return float(np.interp(float(confidence), self.centres, table[r]))

    def fit_score_map(self, server_scores, server_correct, weights=None):
        """Fit P(server correct at r | the server's top-1 softmax score) per resolution."""
        for r, scores in server_scores.items():
            self.score_map[int(r)] = IsotonicCalibration().fit_confidences(
                scores, server_correct[r], weights)
        return self

    def server_confidence(self, resolution: int, score: float) -> float:
        """P(server correct | its score at r), or None when the map was not profiled."""
        if not self.score_map:
            return None
        r = int(resolution)
        if r not in self.score_map:
            r = min(self.score_map, key=lambda known: abs(known - int(resolution)))
        return float(self.score_map[r].predict_confidences(np.array([float(score)]))[0])

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {'score_map': {str(r): m.to_dict() for r, m in self.score_map.items()},
                'edges': [float(e) for e in self.edges],
                'accuracy': {str(r): [float(x) for x in v] for r, v in self.accuracy.items()},
                'raw_accuracy': {str(r): [float(x) for x in v]
                                 for r, v in self.raw_accuracy.items()},
                'overall': {str(r): v for r, v in self.overall.items()}}

    @classmethod
    def from_dict(cls, data):
        """Rebuild from the form written by ``to_dict``."""
        return cls(data['edges'], data['accuracy'], data.get('raw_accuracy'), data.get('overall'),
                   data.get('score_map'))


# Used only by the explicit uncalibrated fallback: a guess, not a measurement.
_FALLBACK_SERVER_TIME_S = 0.04


def _fallback_server_accuracy(resolution):
    return float(min(0.9, 0.4 + 0.5 * int(resolution) / 260.0))


class CalibrationBundle:
    """Everything the classifier and planner need from calibration, loaded from one JSON file."""

    def __init__(self, calibrators, robot_resolution, offload_resolutions, profile,
                 server_time_s, method, source_info=None, metrics=None, jpeg_quality=90,
                 path=None):
        if not calibrators:
            raise CalibrationError('a calibration bundle needs at least one calibrator')
        self.calibrators = {int(r): c for r, c in calibrators.items()}
        self.robot_resolution = int(robot_resolution)
        self.offload_resolutions = sorted(int(r) for r in offload_resolutions)
        self.profile = profile
        self._server_time_s = {int(r): float(t) for r, t in server_time_s.items()}
        self.method = str(method)
        self.source_info = dict(source_info or {})
        self.metrics = dict(metrics or {})
        self.jpeg_quality = int(jpeg_quality)
        self.path = path

    @property
    def is_identity(self) -> bool:
        """True for the explicit uncalibrated fallback (no measured server profile).

        A bundle whose calibrator is the identity because leave-one-video-out selection found
        that no fitted map beats the raw confidence is *not* the fallback: its profile and
        server times are measured.
        """
        return self.method == 'identity' and self.profile is None

    def calibrator(self, resolution=None):
        """Return the calibrator fitted at ``resolution`` (or the nearest fitted resolution)."""
        r = self.robot_resolution if resolution is None else int(resolution)
        if r not in self.calibrators:
            r = min(self.calibrators, key=lambda known: abs(known - r))
        return self.calibrators[r]

    def confidence(self, logits_1d: ArrayLike,
                   resolution: int = ROBOT_INPUT_SIZE) -> Tuple[float, float]:
        """Return ``(calibrated, raw)`` top-1 confidence of one logits vector of the robot model."""
        logits = np.asarray(logits_1d, dtype=np.float64).reshape(1, -1)
        raw = float(max_softmax(logits)[0])
        calibrator = self.calibrator(resolution)
        if isinstance(calibrator, _ConfidenceCalibrator):
            calibrated = float(calibrator.predict_confidences(np.array([raw]))[0])
        else:
            calibrated = float(calibrator.predict(logits)[0])
        return calibrated, raw

    def calibrate_confidences(self, logits: ArrayLike,
                              resolution: Optional[int] = None) -> np.ndarray:
        """Vectorised ``confidence``: calibrated confidences of (N, C) logits."""
        return self.calibrator(resolution).predict(np.atleast_2d(logits))

    def server_accuracy(self, resolution: int, confidence: float, raw: bool = False) -> float:
        """A_r(c): profiled P(server correct at resolution r | local confidence c)."""
        if self.profile is None:
            return _fallback_server_accuracy(resolution)
        return self.profile.lookup(resolution, confidence, raw=raw)

    def server_confidence(self, resolution: int, score: float) -> float:
        """P(server answer at r correct | the score it returned); None when not profiled.

        Used by the planners' optional online refinement (``observe_server_answer``).
        """
        if self.profile is None:
            return None
        return self.profile.server_confidence(resolution, score)

    def server_time_s(self, resolution: int) -> float:
        """Profiled server time (decode + inference) at an offload resolution."""
        r = int(resolution)
        if r in self._server_time_s:
            return self._server_time_s[r]
        if not self._server_time_s:
            return _FALLBACK_SERVER_TIME_S
        return self._server_time_s[min(self._server_time_s, key=lambda k: abs(k - r))]

    def set_server_time_s(self, seconds: float) -> None:
        """Replace the profiled server time at every offload resolution (e.g. a known server)."""
        resolutions = self._server_time_s or {int(r): 0.0 for r in self.offload_resolutions}
        self._server_time_s = {int(r): float(seconds) for r in resolutions}

    @classmethod
    def identity(cls, offload_resolutions,
                 robot_resolution: int = ROBOT_INPUT_SIZE) -> 'CalibrationBundle':
        """Build the explicitly labelled uncalibrated fallback (raw max-softmax, guesses)."""
        warnings.warn('using the UNCALIBRATED identity calibration (run cbo_calibrate)',
                      stacklevel=2)
        return cls({int(robot_resolution): IdentityCalibration()}, robot_resolution,
                   offload_resolutions, None,
                   {int(r): _FALLBACK_SERVER_TIME_S for r in offload_resolutions}, 'identity',
                   {'note': 'uncalibrated fallback: confidence = raw max-softmax; server '
                            'accuracy and time are guesses, not measurements'})

    def to_dict(self):
        """Return the JSON-serialisable form (``from_dict`` reads it back)."""
        return {
            'format': FORMAT,
            'method': self.method,
            'robot_resolution': self.robot_resolution,
            'calibrators': {str(r): c.to_dict() for r, c in self.calibrators.items()},
            'offload_resolutions': self.offload_resolutions,
            'server_profile': None if self.profile is None else self.profile.to_dict(),
            'server_time_s': {str(r): t for r, t in self._server_time_s.items()},
            'jpeg_quality': self.jpeg_quality,
            'source_info': self.source_info,
            'metrics': self.metrics,
        }

    @classmethod
    def from_dict(cls, data, path=None):
        """Rebuild from the form written by ``to_dict``."""
        if data.get('format') != FORMAT:
            raise CalibrationError(f"unsupported calibration format {data.get('format')!r} "
                                   f'(expected {FORMAT!r})')
        profile = data.get('server_profile')
        return cls({int(r): calibrator_from_dict(c) for r, c in data['calibrators'].items()},
                   data['robot_resolution'], data['offload_resolutions'],
                   None if profile is None else ServerProfile.from_dict(profile),
                   data.get('server_time_s', {}), data['method'], data.get('source_info'),
                   data.get('metrics'), data.get('jpeg_quality', 90), path)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the bundle as JSON (creating the directory)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + '.tmp')
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        self.path = path
        return path


def load_calibration(path: Union[str, Path, None] = None) -> CalibrationBundle:
    """Load a calibration bundle; raise ``CalibrationError`` naming the path and the fix."""
    path = Path(path or default_calibration_path())
    fix = f'run `cbo_calibrate --output {path}` (or `make calibrate`) to create it'
    if not path.is_file():
        raise CalibrationError(f'calibration file {path} not found: {fix}')
    try:
        data = json.loads(path.read_text())
        return CalibrationBundle.from_dict(data, path)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CalibrationError(f'calibration file {path} is invalid ({error}): {fix}') from error
