"""Calibration metrics of a top-1 confidence: ECE, MCE, NLL, Brier, reliability bins.

NLL and Brier are scikit-learn's ``log_loss`` and ``brier_score_loss`` (imported when first
used, so that the robot, which only applies calibrators, needs no scikit-learn).

All metrics score the binary event "the top-1 answer is correct" against the confidence given to
it, so that every calibrator (temperature scaling, histogram binning, isotonic regression) is
scored the same way. ``multiclass_nll`` is the usual cross-entropy of full probability vectors.
"""

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_BINS = 15
_EPS = 1e-12


def _as_pair(confidences, correct):
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    hits = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != hits.shape:
        raise ValueError(f'{conf.size} confidences but {hits.size} correctness values')
    if conf.size == 0:
        raise ValueError('no samples to score')
    return np.clip(conf, 0.0, 1.0), hits


def reliability_bins(confidences: ArrayLike, correct: ArrayLike, bins: int = DEFAULT_BINS):
    """Equal-width bins over [0, 1].

    Returns ``(edges, mean_confidence, accuracy, counts)``; empty bins have NaN means.
    """
    conf, hits = _as_pair(confidences, correct)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # Bin b holds (edges[b], edges[b+1]]; confidence 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, conf, side='left') - 1, 0, int(bins) - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    sum_conf = np.bincount(index, weights=conf, minlength=bins)
    sum_hits = np.bincount(index, weights=hits, minlength=bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        accuracy = np.where(counts > 0, sum_hits / counts, np.nan)
    return edges, mean_conf, accuracy, counts.astype(int)


def expected_calibration_error(confidences: ArrayLike, correct: ArrayLike,
                               bins: int = DEFAULT_BINS) -> float:
    """ECE: bin-weighted mean of |accuracy - confidence| over equal-width bins (default 15)."""
    _, mean_conf, accuracy, counts = reliability_bins(confidences, correct, bins)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(accuracy[used] - mean_conf[used])) / counts.sum())


def maximum_calibration_error(confidences: ArrayLike, correct: ArrayLike,
                              bins: int = DEFAULT_BINS) -> float:
    """MCE: the largest |accuracy - confidence| over non-empty equal-width bins."""
    _, mean_conf, accuracy, counts = reliability_bins(confidences, correct, bins)
    used = counts > 0
    return float(np.max(np.abs(accuracy[used] - mean_conf[used])))


def negative_log_likelihood(confidences: ArrayLike, correct: ArrayLike) -> float:
    """Mean binary log loss of the top-1 correctness event under the given confidence."""
    from sklearn.metrics import log_loss
    conf, hits = _as_pair(confidences, correct)
    return float(log_loss(hits, np.clip(conf, _EPS, 1.0 - _EPS), labels=[0.0, 1.0]))


def brier_score(confidences: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared error between the confidence and the top-1 correctness (0/1)."""
    from sklearn.metrics import brier_score_loss
    conf, hits = _as_pair(confidences, correct)
    return float(brier_score_loss(hits, conf, pos_label=1.0, labels=[0.0, 1.0]))


def multiclass_nll(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """Mean cross-entropy of (N, C) probability vectors against integer labels."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0))))


def calibration_report(confidences: ArrayLike, correct: ArrayLike,
                       bins: int = DEFAULT_BINS) -> dict:
    """All top-1 metrics of one set of confidences as a dict."""
    conf, hits = _as_pair(confidences, correct)
    return {
        'samples': int(conf.size),
        'accuracy': float(hits.mean()),
        'mean_confidence': float(conf.mean()),
        'ece': expected_calibration_error(conf, hits, bins),
        'mce': maximum_calibration_error(conf, hits, bins),
        'nll': negative_log_likelihood(conf, hits),
        'brier': brier_score(conf, hits),
    }
