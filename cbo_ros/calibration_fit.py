"""Fitting the calibration bundle from cached model outputs (the library behind cbo_calibrate).

Targets are P(local correct): the robot model's top-1 equals the label (true labels when the
source has them, else the server's reference answer). The calibrator is fitted per robot input
resolution; ``method='auto'`` picks, by leave-one-video-out Brier score on the calibration
videos, among temperature scaling, histogram binning and isotonic regression. The server profile
A_r(c) is then measured on the same calibration videos against the calibrated confidence.
"""

import numpy as np

from cbo_ros.calibration import (METHODS, CalibrationBundle, CalibrationError, ServerProfile,
                                 calibration_report, make_calibrator, max_softmax, top1_correct)


def stack_outputs(outputs_list, tag, resolution):
    """Concatenated robot logits and labels of several ``VideoOutputs``."""
    logits = np.concatenate([o.robot_logits[(tag, int(resolution))] for o in outputs_list])
    labels = np.concatenate([o.labels for o in outputs_list])
    return logits, labels


def select_method(outputs_list, tag, resolution):
    """Leave-one-video-out Brier score of each method; returns (best method, {method: score})."""
    if len(outputs_list) < 2:
        return 'temperature', {}
    scores = {}
    for method in METHODS:
        briers = []
        for held in range(len(outputs_list)):
            train = [o for i, o in enumerate(outputs_list) if i != held]
            logits, labels = stack_outputs(train, tag, resolution)
            calibrator = make_calibrator(method).fit(logits, labels)
            test_logits, test_labels = stack_outputs([outputs_list[held]], tag, resolution)
            conf = calibrator.predict(test_logits)
            correct = top1_correct(test_logits, test_labels)
            briers.append(float(np.mean((conf - correct) ** 2)) * len(correct))
        total = sum(len(o) for o in outputs_list)
        scores[method] = sum(briers) / total
    return min(scores, key=scores.get), scores


def method_metrics(calibration, evaluation, tag, resolution):
    """Before/after metrics of every method: fitted on ``calibration``, scored on both sets.

    Returns {'calibration': {method: metrics}, 'held_out': {method: metrics}} where the method
    'uncalibrated' is the raw max-softmax.
    """
    logits, labels = stack_outputs(calibration, tag, resolution)
    fitted = {m: make_calibrator(m).fit(logits, labels) for m in METHODS}
    sets = {'calibration': calibration}
    if evaluation:
        sets['held_out'] = evaluation
    table = {}
    for set_name, outputs_list in sets.items():
        set_logits, set_labels = stack_outputs(outputs_list, tag, resolution)
        correct = top1_correct(set_logits, set_labels)
        rows = {'uncalibrated': calibration_report(max_softmax(set_logits), correct)}
        for method, calibrator in fitted.items():
            rows[method] = calibration_report(calibrator.predict(set_logits), correct)
        table[set_name] = rows
    extras = {'temperature': fitted['temperature'].temperature}
    return table, extras


def fit_bundle(calibration, robot_tag='int8', robot_resolutions=(224,), robot_resolution=224,
               offload_resolutions=(96, 128, 176, 224, 260), method='auto', server_time_s=None,
               jpeg_quality=90, source_info=None, profile_bins=10):
    """Fit the calibration bundle on the ``VideoOutputs`` of the calibration videos."""
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
            selection[str(resolution)] = {'chosen': chosen, 'loo_brier': scores}
        logits, labels = stack_outputs(calibration, robot_tag, resolution)
        calibrators[int(resolution)] = make_calibrator(chosen).fit(logits, labels)
    logits, labels = stack_outputs(calibration, robot_tag, robot_resolution)
    conf = calibrators[int(robot_resolution)].predict(logits)
    raw = max_softmax(logits)
    server_correct = {int(r): np.concatenate([o.server_correct(r) for o in calibration])
                      for r in offload_resolutions}
    profile = ServerProfile.fit(conf, raw, server_correct, bins=profile_bins)
    methods = sorted({c.method for c in calibrators.values()})
    info = dict(source_info or {})
    info['method_selection'] = selection
    info['local_accuracy'] = float(top1_correct(logits, labels).mean())
    info['server_accuracy'] = {str(r): float(v.mean()) for r, v in server_correct.items()}
    times = server_time_s or {int(r): 0.04 for r in offload_resolutions}
    return CalibrationBundle(calibrators, robot_resolution, offload_resolutions, profile, times,
                             '+'.join(methods), info, jpeg_quality=jpeg_quality)
