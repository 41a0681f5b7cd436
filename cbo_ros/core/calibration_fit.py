"""Fitting the calibration bundle from cached model outputs (the library behind cbo_calibrate).

Targets are P(local correct): the robot model's top-1 is in the frame's label set (true labels
when the source has them, else the server's reference answer); unlabelled frames are left out.
Every *group* weighs the same in a fit (a group is a benchmark object, else a video; its frames
and all its views share one unit of weight), so that a long video does not dominate.

``method='auto'`` picks the calibrator by **leave-groups-out** cross-validation on the
calibration set (leave-one-video-out for videos, leave-objects-out for a benchmark; every view
of a held-out group is held out with it; more than ``MAX_FOLDS`` groups are dealt into that many
folds): the candidate with the lowest group-weighted log loss on the held-out groups wins. The
uncalibrated raw max-softmax ('identity') is a candidate too: a fitted map must beat the model's
own confidence on groups it was not fitted on. The server profile A_r(c) is measured on the
centre view of the calibration videos (the only one with offload outputs) against the chosen
confidence.
"""

import numpy as np

from cbo_ros.assets.paths import OFFLOAD_RESOLUTIONS, ROBOT_INPUT_SIZE
from cbo_ros.core.calibration import (METHODS, CalibrationBundle, CalibrationError,
                                      ServerProfile, calibration_report, make_calibrator,
                                      max_softmax, top1_correct)
from cbo_ros.core.calibration_metrics import expected_calibration_error

CANDIDATES = ('identity',) + METHODS
MAX_FOLDS = 10


def scored_outputs(outputs_list):
    """Keep the labelled frames of each ``VideoOutputs`` (unlabelled frames are never scored)."""
    kept = [o.labelled_only() if hasattr(o, 'labelled_only') else o for o in outputs_list]
    return [o for o in kept if len(o)]


def stack_outputs(outputs_list, tag, resolution):
    """Concatenated robot logits and labels of several ``VideoOutputs``."""
    logits = np.concatenate([o.robot_logits[(tag, int(resolution))] for o in outputs_list])
    labels = np.concatenate([o.labels for o in outputs_list])
    return logits, labels


def output_group(outputs):
    """Cross-validation / bootstrap unit of a ``VideoOutputs``: its object, else its video."""
    return getattr(outputs, 'group', None) or outputs.name


def video_groups(outputs_list):
    """Group of every frame of ``outputs_list`` (views of a video share it; see output_group)."""
    return np.concatenate([[output_group(o)] * len(o) for o in outputs_list])


def group_folds(groups, max_folds=MAX_FOLDS):
    """Fold id of every frame: each group its own fold, or groups dealt into ``max_folds``."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(names) <= max_folds:
        return inverse
    order = np.random.default_rng(0).permutation(len(names))
    fold_of_group = np.empty(len(names), dtype=int)
    fold_of_group[order] = np.arange(len(names)) % max_folds
    return fold_of_group[inverse]


def video_weights(groups):
    """Per-frame weights giving every video the same total weight (mean weight 1)."""
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return len(groups) / (len(names) * counts[inverse])


def _log_loss(conf, correct, weights):
    conf = np.clip(conf, 1e-4, 1.0 - 1e-4)
    losses = -(correct * np.log(conf) + (1.0 - correct) * np.log(1.0 - conf))
    return float(np.sum(weights * losses) / np.sum(weights))


def leave_one_video_out(outputs_list, tag, resolution, method):
    """Out-of-group predictions of ``method`` (leave-groups-out; see ``group_folds``).

    Each group (video or object) is scored by a fit on the others.
    """
    outputs_list = scored_outputs(outputs_list)
    logits, labels = stack_outputs(outputs_list, tag, resolution)
    groups = video_groups(outputs_list)
    folds = group_folds(groups)
    predictions = np.zeros(len(labels))
    for fold in np.unique(folds):
        train = folds != fold
        calibrator = make_calibrator(method).fit(logits[train], labels[train],
                                                 video_weights(groups[train]))
        predictions[~train] = calibrator.predict(logits[~train])
    return predictions, top1_correct(logits, labels), video_weights(groups)


def select_method(outputs_list, tag, resolution, candidates=CANDIDATES):
    """Leave-groups-out selection; returns (best method, {method: scores}).

    Scores are group-weighted log loss (the criterion), Brier score and ECE of the out-of-group
    predictions. With fewer than two groups there is nothing to hold out: temperature scaling.
    """
    outputs_list = scored_outputs(outputs_list)
    if len({output_group(o) for o in outputs_list}) < 2:
        return 'temperature', {}
    scores = {}
    for method in candidates:
        conf, correct, weights = leave_one_video_out(outputs_list, tag, resolution, method)
        scores[method] = {
            'log_loss': _log_loss(conf, correct, weights),
            'brier': float(np.sum(weights * (conf - correct) ** 2) / np.sum(weights)),
            'ece': expected_calibration_error(conf, correct)}
    best = min(scores, key=lambda m: scores[m]['log_loss'])
    return best, scores


def group_bootstrap(statistic, groups, samples=1000, seed=0):
    """95 % intervals of ``statistic(indices)`` when whole groups are resampled.

    Frames of one object or of 2 s of one video are strongly correlated, so resampling frames
    would understate the noise: whole groups (objects, sources or segments) are drawn with
    replacement. ``scipy.stats.bootstrap`` (percentile method) resamples the group ids, and the
    statistic sees the frames of the drawn groups (a cluster bootstrap; scipy itself only
    resamples observations, so the groups are expanded to their frames here). ``statistic``
    may return a scalar or a vector; returns (low, high) arrays of its shape.
    """
    import warnings

    from scipy.stats import bootstrap
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind='stable')
    bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]

    def of_groups(drawn):
        return np.asarray(statistic(np.concatenate([members[int(i)] for i in drawn])),
                          dtype=np.float64)

    if len(members) < 2:
        # One group: every resample is the data itself (scipy refuses a single observation).
        value = of_groups([0] * len(members))
        return value, value.copy()
    with warnings.catch_warnings():
        # A statistic that is NaN on some resamples (an undefined ratio) gives NaN bounds,
        # which callers handle; scipy's warning about it adds nothing.
        warnings.simplefilter('ignore', RuntimeWarning)
        result = bootstrap((np.arange(len(members)),), of_groups, n_resamples=int(samples),
                           vectorized=False, method='percentile', confidence_level=0.95,
                           rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return np.asarray(interval.low, dtype=np.float64), np.asarray(interval.high, dtype=np.float64)


def segment_bootstrap(statistic, segments, samples=1000, seed=0):
    """95 % interval (low, high) of a scalar ``statistic(indices)`` over resampled segments.

    See ``group_bootstrap``.
    """
    low, high = group_bootstrap(statistic, segments, samples, seed)
    return float(low), float(high)


def segment_bootstrap_ece(confidences, correct, segments, samples=1000, seed=0):
    """95 % interval of the ECE when whole segments are resampled (see segment_bootstrap)."""
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    return segment_bootstrap(lambda pick: expected_calibration_error(conf[pick], hits[pick]),
                             segments, samples, seed)


def frame_segments(outputs_list, seconds=2.0):
    """Segment id of every frame: (video, view, index of its ``seconds``-long stretch)."""
    ids, offset = [], 0
    for o in outputs_list:
        block = np.floor(np.asarray(o.times) / float(seconds)).astype(int)
        _, local = np.unique(block, return_inverse=True)
        ids.append(local + offset)
        offset += int(local.max()) + 1 if len(local) else 0
    return np.concatenate(ids)


def bootstrap_units(outputs_list, min_groups=5):
    """Return (unit name, per-frame ids) of the held-out bootstrap.

    Objects or sources when there are at least ``min_groups`` of them (or any benchmark
    object), else 2-s segments.
    """
    groups = video_groups(outputs_list)
    named = any(output_group(o) != o.name for o in outputs_list)
    if named or len(np.unique(groups)) >= min_groups:
        return ('objects' if named else 'sources'), groups
    return '2-s segments', frame_segments(outputs_list)


METRIC_NAMES = ('ece', 'mce', 'nll', 'brier')


def _metric_vector(conf, correct):
    report = calibration_report(conf, correct)
    return np.array([report[m] for m in METRIC_NAMES])


def method_metrics(calibration, evaluation, tag, resolution, chosen=None, bootstrap=1000):
    """Before/after metrics of every method: fitted on ``calibration``, scored on both sets.

    Returns ({'calibration': {method: metrics}, 'held_out': {method: metrics}}, extras) where
    'uncalibrated' is the raw max-softmax. Held-out rows carry 95 % bootstrap intervals
    (``<metric>_ci`` for ECE, MCE, NLL and Brier) and the interval of the paired ECE difference
    method - uncalibrated (``ece_minus_raw_ci``); whole objects (benchmark), sources, or 2-s
    segments are resampled (``extras['ci_unit']``). ``extras`` also holds the temperature, the
    leave-groups-out scores and the method chosen by them (``chosen``, or selected here).
    Unlabelled frames are left out.
    """
    calibration = scored_outputs(calibration)
    evaluation = scored_outputs(evaluation or [])
    logits, labels = stack_outputs(calibration, tag, resolution)
    weights = video_weights(video_groups(calibration))
    fitted = {m: make_calibrator(m).fit(logits, labels, weights) for m in METHODS}
    selected, loo = select_method(calibration, tag, resolution)
    sets = {'calibration': calibration}
    if evaluation:
        sets['held_out'] = evaluation
    table, unit = {}, None
    for set_name, outputs_list in sets.items():
        set_logits, set_labels = stack_outputs(outputs_list, tag, resolution)
        correct = top1_correct(set_logits, set_labels)
        predictions = {'uncalibrated': max_softmax(set_logits)}
        predictions.update({m: c.predict(set_logits) for m, c in fitted.items()})
        rows = {method: calibration_report(conf, correct) for method, conf in predictions.items()}
        if set_name == 'held_out' and bootstrap:
            unit, groups = bootstrap_units(outputs_list)
            names = list(predictions)
            stacked = np.stack([predictions[m] for m in names])

            def statistic(pick):
                metrics = np.stack([_metric_vector(c[pick], correct[pick]) for c in stacked])
                return np.concatenate([metrics.ravel(), metrics[:, 0] - metrics[0, 0]])

            low, high = group_bootstrap(statistic, groups, bootstrap)
            width = len(METRIC_NAMES)
            for i, method in enumerate(names):
                for j, metric in enumerate(METRIC_NAMES):
                    rows[method][f'{metric}_ci'] = [float(low[i * width + j]),
                                                    float(high[i * width + j])]
                if i:
                    offset = len(names) * width + i
                    rows[method]['ece_minus_raw_ci'] = [float(low[offset]), float(high[offset])]
        table[set_name] = rows
    extras = {'temperature': fitted['temperature'].temperature, 'loo': loo,
              'chosen': chosen or selected, 'ci_unit': unit,
              'groups': {name: len({output_group(o) for o in outputs_list})
                         for name, outputs_list in sets.items()}}
    return table, extras


def fit_bundle(calibration, robot_tag='int8', robot_resolutions=(ROBOT_INPUT_SIZE,),
               robot_resolution=ROBOT_INPUT_SIZE, offload_resolutions=OFFLOAD_RESOLUTIONS,
               method='auto', server_time_s=None,
               jpeg_quality=90, source_info=None, profile_bins=10):
    """Fit the calibration bundle on the ``VideoOutputs`` of the calibration videos.

    The calibrators use every output (all views); the server profile uses the outputs that hold
    server answers at every offload resolution (the centre view).
    """
    calibration = scored_outputs(calibration)
    if not calibration:
        raise CalibrationError('no calibration outputs to fit on (no labelled frame)')
    if int(robot_resolution) not in [int(r) for r in robot_resolutions]:
        raise CalibrationError(f'robot resolution {robot_resolution} is not among the fitted '
                               f'resolutions {list(robot_resolutions)}')
    calibrators, selection = {}, {}
    for resolution in robot_resolutions:
        chosen = method
        if method == 'auto':
            chosen, scores = select_method(calibration, robot_tag, resolution)
            selection[str(resolution)] = {'chosen': chosen, 'criterion': 'leave-groups-out '
                                          '(objects or videos) log loss (group-weighted)',
                                          'scores': scores}
        logits, labels = stack_outputs(calibration, robot_tag, resolution)
        calibrators[int(resolution)] = make_calibrator(chosen).fit(
            logits, labels, video_weights(video_groups(calibration)))
    profiled = [o for o in calibration
                if all(int(r) in o.server_pred for r in offload_resolutions)]
    if not profiled:
        raise CalibrationError('no calibration outputs hold server answers at every offload '
                               f'resolution {list(offload_resolutions)}')
    logits, labels = stack_outputs(profiled, robot_tag, robot_resolution)
    conf = calibrators[int(robot_resolution)].predict(logits)
    raw = max_softmax(logits)
    server_correct = {int(r): np.concatenate([o.server_correct(r) for o in profiled])
                      for r in offload_resolutions}
    weights = video_weights(video_groups(profiled))
    profile = ServerProfile.fit(conf, raw, server_correct, bins=profile_bins, weights=weights)
    if all(int(r) in o.server_score for o in profiled for r in offload_resolutions):
        profile.fit_score_map({int(r): np.concatenate([o.server_score[int(r)] for o in profiled])
                               for r in offload_resolutions}, server_correct, weights)
    methods = sorted({c.method for c in calibrators.values()})
    info = dict(source_info or {})
    info['method_selection'] = selection
    info['local_accuracy'] = float(top1_correct(logits, labels).mean())
    info['server_accuracy'] = {str(r): float(v.mean()) for r, v in server_correct.items()}
    times = server_time_s or {int(r): 0.04 for r in offload_resolutions}
    return CalibrationBundle(calibrators, robot_resolution, offload_resolutions, profile, times,
                             '+'.join(methods), info, jpeg_quality=jpeg_quality)
