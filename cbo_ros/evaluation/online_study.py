"""Causal replays that measure the online (feedback-driven) calibration of ``cbo_adaptive``.

``online_calibration_metrics`` replays each video with CBO + online calibration over a constant
link (the evaluator's simulator, same planner code), feeding back only the server answers that
have arrived, and scores the confidences the planner actually used (each computed before that
frame's own feedback) against the frames' local correctness: ECE (15 bins) with the 2-s segment
bootstrap, next to the raw and the static confidences of the same frames, and the accuracy of
CBO with and without the adaptation.

``tune_on_calibration_videos`` picks the calibrator's options by leave-one-video-out replays of
the *calibration* videos (bundle refitted without the replayed video), never the held-out ones.
"""

import itertools

import numpy as np

from cbo_ros.core.calibration_fit import fit_bundle, segment_bootstrap, segment_bootstrap_ece
from cbo_ros.core.calibration_metrics import expected_calibration_error
from cbo_ros.evaluation.report import time_segments
from cbo_ros.evaluation.simulator import SimulationConfig, run_strategies
from cbo_ros.evaluation.traces import NetworkTrace

DEFAULT_BANDWIDTHS_MBPS = (1.0, 2.0)


def replay_online(outputs_list, bundle, bandwidths_mbps=DEFAULT_BANDWIDTHS_MBPS,
                  deadline_s=0.2, rtt_s=0.02, online_options=None, strategies=('cbo_adaptive',),
                  robot_tag='int8'):
    """Replays per bandwidth: {mbps: [(outputs, results, frames), ...]} (one per video)."""
    options = {'online_options': dict(online_options or {})}
    runs = {}
    for mbps in bandwidths_mbps:
        trace = NetworkTrace.constant(float(mbps) * 1e6, rtt_s, 0.0)
        config = SimulationConfig(deadline_s=deadline_s, robot_tag=robot_tag,
                                  robot_resolution=bundle.robot_resolution,
                                  planner_options=options)
        runs[mbps] = []
        for outputs in outputs_list:
            results, frames = run_strategies(outputs, bundle, trace, config, list(strategies))
            runs[mbps].append((outputs, results, frames))
    return runs


def _scored(frames):
    """(N,) bool: the frames scored (labelled; all of them with reference labels)."""
    return np.ones(len(frames.capture_s), bool) if frames.labelled is None else frames.labelled


def _pooled(entries, key):
    conf, correct, segments, offset = [], [], [], 0
    for _, results, frames in entries:
        scored = _scored(frames)        # unlabelled frames are never scored
        conf.append(np.asarray(key(results, frames))[scored])
        correct.append(frames.local_correct[scored])
        seg = time_segments(frames.capture_s)
        segments.append(seg[scored] + offset)
        offset += int(seg.max()) + 1
    return np.concatenate(conf), np.concatenate(correct), np.concatenate(segments)


def online_calibration_metrics(outputs_list, bundle, bandwidths_mbps=DEFAULT_BANDWIDTHS_MBPS,
                               deadline_s=0.2, rtt_s=0.02, online_options=None, bootstrap=1000):
    """ECE of raw / static / online confidences and CBO accuracy, pooled over the videos.

    Returns {'<mbps> Mbit/s': {'raw': {...}, 'static': {...}, 'online': {...},
    'accuracy': {'cbo': .., 'cbo_adaptive': ..}, 'feedback_samples': n}, ...}.
    """
    runs = replay_online(outputs_list, bundle, bandwidths_mbps, deadline_s, rtt_s,
                         online_options, strategies=('cbo', 'cbo_adaptive'))
    table = {}
    for mbps, entries in runs.items():
        row = {}
        for name, key in (('raw', lambda r, f: f.raw_confidence),
                          ('static', lambda r, f: f.confidence),
                          ('online', lambda r, f: r['cbo_adaptive'].confidence)):
            conf, correct, segments = _pooled(entries, key)
            row[name] = {'ece': expected_calibration_error(conf, correct),
                         'mean_confidence': float(conf.mean()),
                         'accuracy': float(correct.mean()), 'samples': int(len(conf))}
            if bootstrap:
                row[name]['ece_ci'] = list(segment_bootstrap_ece(conf, correct, segments,
                                                                 bootstrap))
        conf_s, correct, segments = _pooled(entries, lambda r, f: f.confidence)
        conf_o = _pooled(entries, lambda r, f: r['cbo_adaptive'].confidence)[0]
        if bootstrap:
            row['online_minus_static_ci'] = list(paired_bootstrap_delta(
                conf_o, conf_s, correct, segments, bootstrap))
        row['feedback_samples'] = int(sum(
            ((r['cbo_adaptive'].resolution >= 224) & ~r['cbo_adaptive'].lost).sum()
            for _, r, _ in entries))
        frames_total = sum(int(_scored(f).sum()) for _, _, f in entries)
        row['accuracy'] = {s: float(sum(r[s].correct[_scored(f)].sum() for _, r, f in entries)
                                    / max(frames_total, 1)) for s in ('cbo', 'cbo_adaptive')}
        row['per_video'] = {
            o.name: {'ece_static': expected_calibration_error(f.confidence[k],
                                                              f.local_correct[k]),
                     'ece_online': expected_calibration_error(r['cbo_adaptive'].confidence[k],
                                                              f.local_correct[k]),
                     'accuracy_cbo': float(r['cbo'].correct[k].mean()),
                     'accuracy_cbo_adaptive': float(r['cbo_adaptive'].correct[k].mean())}
            for o, r, f in entries for k in [_scored(f)] if k.any()}
        table[f'{mbps:g} Mbit/s'] = row
    return table


def paired_bootstrap_delta(conf_a, conf_b, correct, segments, samples=1000, seed=0):
    """95 % interval of ECE(a) - ECE(b) on the same resampled 2-s segments (paired)."""
    return segment_bootstrap(
        lambda pick: expected_calibration_error(conf_a[pick], correct[pick])
        - expected_calibration_error(conf_b[pick], correct[pick]), segments, samples, seed)


def format_online(table):
    """Terminal lines of ``online_calibration_metrics``."""
    lines = ['int8 held-out ONLINE calibration (causal replay of CBO + online calibration, '
             'fed only by server answers that had arrived; deadline 200 ms, RTT 20 ms):']
    for link, row in table.items():
        cells = []
        for name in ('raw', 'static', 'online'):
            m = row[name]
            ci = m.get('ece_ci')
            cells.append(f"{name} {100 * m['ece']:.1f}%"
                         + (f' [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]' if ci else ''))
        delta = row.get('online_minus_static_ci')
        delta = f'; online - static [{100 * delta[0]:+.1f}, {100 * delta[1]:+.1f}]' \
            if delta else ''
        per_video = ', '.join(f"{v} {100 * m['ece_static']:.1f}->{100 * m['ece_online']:.1f}"
                              for v, m in row['per_video'].items())
        lines.append(f"  {link:>10}: ECE {' | '.join(cells)}{delta}; per video "
                     f"(static->online) {per_video}; CBO accuracy "
                     f"{100 * row['accuracy']['cbo']:.1f}% -> "
                     f"{100 * row['accuracy']['cbo_adaptive']:.1f}% with adaptation; "
                     f"{row['feedback_samples']} feedback answers (r >= 224)")
    return '\n'.join(lines)


DEFAULT_GRID = {'prior_shift': (3.0, 10.0, 30.0), 'fit_slope': (False, True),
                'window': (50, 150), 'min_resolution': (176, 224)}


def tune_on_calibration_videos(calibration_outputs, bundle, grid=None,
                               bandwidths_mbps=DEFAULT_BANDWIDTHS_MBPS, deadline_s=0.2,
                               rtt_s=0.02):
    """Leave-one-video-out choice of the online calibrator's options on calibration videos.

    For each calibration video (centre view, with server outputs), the bundle (static map,
    profile, score map) is refitted on the other videos with the deployed bundle's method and
    server times; the video is replayed with ``cbo_adaptive`` for every option combination.
    Criterion: mean over (video, bandwidth) of the ECE of the used confidences minus that of
    the static ones. Returns (best options, [(options, score), ...]).
    """
    grid = dict(grid or DEFAULT_GRID)
    names = list(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    videos = [o for o in calibration_outputs
              if all(int(r) in o.server_pred for r in bundle.offload_resolutions)]
    times = {r: bundle.server_time_s(r) for r in bundle.offload_resolutions}
    method = 'identity' if bundle.method == 'identity' else bundle.method.split('+')[0]
    held = []
    for video in videos:
        others = [o for o in calibration_outputs if o.name != video.name]
        held.append((video, fit_bundle(others, 'int8', [bundle.robot_resolution],
                                       bundle.robot_resolution, bundle.offload_resolutions,
                                       method, times, bundle.jpeg_quality)))
    scores = []
    for options in combos:
        deltas = []
        for video, loo_bundle in held:
            runs = replay_online([video], loo_bundle, bandwidths_mbps, deadline_s, rtt_s,
                                 options)
            for entries in runs.values():
                _, results, frames = entries[0]
                deltas.append(expected_calibration_error(results['cbo_adaptive'].confidence,
                                                         frames.local_correct)
                              - expected_calibration_error(frames.confidence,
                                                           frames.local_correct))
        scores.append((options, float(np.mean(deltas))))
    best = min(scores, key=lambda item: item[1])[0]
    return best, scores
