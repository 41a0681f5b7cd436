"""Fitting the calibration bundle from cached model outputs (the library behind cbo_calibrate).

Targets are P(local correct): the robot model's top-1 equals the label (true labels when the
source has them, else the server's reference answer). Every video weighs the same in a fit (its
frames and all its views share one unit of weight), so that a long video does not dominate.

``method='auto'`` picks the calibrator by **leave-one-video-out** cross-validation on the
calibration videos (every view of the held-out video is held out with it): the candidate with
the lowest video-weighted log loss on the held-out videos wins. The uncalibrated raw max-softmax
('identity') is a candidate too: a fitted map must beat the model's own confidence on videos it
was not fitted on. The server profile A_r(c) is measured on the centre view of the calibration
videos (the only one with offload outputs) against the chosen confidence.
"""

import numpy as np

from cbo_ros.core.calibration import (METHODS, CalibrationBundle, CalibrationError,
                                      ServerProfile, calibration_report, make_calibrator,
                                      max_softmax, top1_correct)
from cbo_ros.core.calibration_metrics import expected_calibration_error

CANDIDATES = ('identity',) + METHODS


def stack_outputs(outputs_list, tag, resolution):
    """Concatenated robot logits and labels of several ``VideoOutputs``."""
    logits = np.concatenate([o.robot_logits[(tag, int(resolution))] for o in outputs_list])
    labels = np.concatenate([o.labels for o in outputs_list])
    return logits, labels


def video_groups(outputs_list):
    """Video name of every frame of ``outputs_list`` (views of a video share its name)."""
    return np.concatenate([[o.name] * len(o) for o in outputs_list])


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
    """Out-of-video predictions of ``method``: each video scored by a fit on the others."""
    logits, labels = stack_outputs(outputs_list, tag, resolution)
    groups = video_groups(outputs_list)
    predictions = np.zeros(len(labels))
    for name in np.unique(groups):
        train = groups != name
        calibrator = make_calibrator(method).fit(logits[train], labels[train],
                                                 video_weights(groups[train]))
        predictions[~train] = calibrator.predict(logits[~train])
    return predictions, top1_correct(logits, labels), video_weights(groups)


def select_method(outputs_list, tag, resolution, candidates=CANDIDATES):
    """Leave-one-video-out selection; returns (best method, {method: scores}).

    Scores are video-weighted log loss (the criterion), Brier score and ECE of the out-of-video
    predictions. With fewer than two videos there is nothing to hold out: temperature scaling.
    """
    if len({o.name for o in outputs_list}) < 2:
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


def segment_bootstrap(statistic, segments, samples=1000, seed=0):
    """95 % interval of ``statistic(indices)`` when whole segments are resampled.

    Frames of a video are strongly correlated (e.g. 2 s of one video form a segment), so
    resampling frames would understate the noise. Returns (low, high).
    """
    segments = np.asarray(segments)
    ids = np.unique(segments)
    members = [np.flatnonzero(segments == i) for i in ids]
    rng = np.random.default_rng(seed)
    values = [statistic(np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))]))
              for _ in range(int(samples))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


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


def method_metrics(calibration, evaluation, tag, resolution, chosen=None, bootstrap=1000):
    """Before/after metrics of every method: fitted on ``calibration``, scored on both sets.

    Returns ({'calibration': {method: metrics}, 'held_out': {method: metrics}}, extras) where
    'uncalibrated' is the raw max-softmax; held-out rows carry a segment-bootstrap 95 % interval
    of the ECE (``ece_ci``). ``extras`` holds the temperature, the leave-one-video-out scores and
    the method chosen by them (``chosen``, or selected here).
    """
    logits, labels = stack_outputs(calibration, tag, resolution)
    weights = video_weights(video_groups(calibration))
    fitted = {m: make_calibrator(m).fit(logits, labels, weights) for m in METHODS}
    selected, loo = select_method(calibration, tag, resolution)
    sets = {'calibration': calibration}
    if evaluation:
        sets['held_out'] = evaluation
    table = {}
    for set_name, outputs_list in sets.items():
        set_logits, set_labels = stack_outputs(outputs_list, tag, resolution)
        correct = top1_correct(set_logits, set_labels)
        predictions = {'uncalibrated': max_softmax(set_logits)}
        predictions.update({m: c.predict(set_logits) for m, c in fitted.items()})
        segments = frame_segments(outputs_list) if set_name == 'held_out' and bootstrap else None
        rows = {}
        for method, conf in predictions.items():
            rows[method] = calibration_report(conf, correct)
            if segments is not None:
                rows[method]['ece_ci'] = list(segment_bootstrap_ece(conf, correct, segments,
                                                                    bootstrap))
        table[set_name] = rows
    extras = {'temperature': fitted['temperature'].temperature, 'loo': loo,
              'chosen': chosen or selected}
    return table, extras


def fit_bundle(calibration, robot_tag='int8', robot_resolutions=(224,), robot_resolution=224,
               offload_resolutions=(96, 128, 176, 224, 260), method='auto', server_time_s=None,
               jpeg_quality=90, source_info=None, profile_bins=10):
    """Fit the calibration bundle on the ``VideoOutputs`` of the calibration videos.

    The calibrators use every output (all views); the server profile uses the outputs that hold
    server answers at every offload resolution (the centre view).
    """
    if not calibration:
        raise CalibrationError('no calibration outputs to fit on')
    if int(robot_resolution) not in [int(r) for r in robot_resolutions]:
        raise CalibrationError(f'robot resolution {robot_resolution} is not among the fitted '
                               f'resolutions {list(robot_resolutions)}')
    calibrators, selection = {}, {}
    for resolution in robot_resolutions:
        chosen = method
        if method == 'auto':
            chosen, scores = select_method(calibration, robot_tag, resolution)
            selection[str(resolution)] = {'chosen': chosen, 'criterion': 'leave-one-video-out '
                                          'log loss (video-weighted)', 'scores': scores}
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
