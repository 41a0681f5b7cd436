"""Summaries of evaluator replays: per-strategy metrics, the terminal table and the JSON report."""

import json
from pathlib import Path

import numpy as np

from cbo_ros.core.calibration_metrics import expected_calibration_error


SCORE_TRUE = 'accuracy'
SCORE_REFERENCE = 'agreement with reference labels'


def score_name(label_source):
    """Name the 'accuracy' figures of a report: accuracy (true labels) or agreement."""
    return SCORE_TRUE if label_source == 'true' else SCORE_REFERENCE


def summarise(result, resolutions, labelled=None):
    """Metrics of one strategy's ``Replay``; only ``labelled`` frames are scored.

    'accuracy' is the share of scored frames whose answer is in the frame's label set (with
    reference labels: agreement with the server's reference answer, not accuracy).
    """
    offloaded = result.resolution > 0
    misses = offloaded & (result.late | result.lost)
    scored = np.ones(len(result.correct), bool) if labelled is None else np.asarray(labelled)
    return {
        'accuracy': float(result.correct[scored].mean()) if scored.any() else float('nan'),
        'correct': int(result.correct[scored].sum()),
        'frames': int(len(result.correct)),
        'scored_frames': int(scored.sum()),
        'unlabelled_frames': int((~scored).sum()),
        'offload_share': float(offloaded.mean()),
        'offload_share_per_resolution': {str(r): float((result.resolution == r).mean())
                                         for r in resolutions},
        'offloads': int(offloaded.sum()),
        'deadline_misses': int(misses.sum()),
        'late': int((offloaded & result.late).sum()),
        'lost': int((offloaded & result.lost).sum()),
        'bytes_sent': int(result.payload_bytes.sum()),
        'latency_mean_ms': float(result.latency_s.mean() * 1e3),
        'latency_p99_ms': float(np.percentile(result.latency_s, 99) * 1e3),
        'planned_gain': float(result.planned_gain.sum()),
        'decision_mean_us': float(result.decision_s.mean() * 1e6),
        'decision_p99_us': float(np.percentile(result.decision_s, 99) * 1e6),
    }


def time_segments(capture_s, seconds=2.0):
    """Segment id of each frame: the index of its ``seconds``-long stretch of the video."""
    block = np.floor(np.asarray(capture_s, dtype=np.float64) / float(seconds)).astype(int)
    return np.unique(block, return_inverse=True)[1]


def confidence_calibration(results, frames, bootstrap=1000):
    """ECE (15 bins) of the local confidences each policy used, with a 2-s segment bootstrap.

    Rows: 'raw' (max-softmax), 'static' (the bundle's map) and, when ``cbo_adaptive`` was
    replayed, its online (causal) confidences as computed before each frame's own feedback.
    """
    from cbo_ros.core.calibration_fit import segment_bootstrap_ece
    scored = np.ones(len(frames.capture_s), bool) if frames.labelled is None else frames.labelled
    correct = np.asarray(frames.local_correct, dtype=np.float64)[scored]
    segments = time_segments(frames.capture_s)[scored]
    rows = {'raw': frames.raw_confidence, 'static': frames.confidence}
    for name, result in results.items():
        used = getattr(result, 'confidence', None)
        if used is not None and name == 'cbo_adaptive':
            rows[f'online ({name})'] = used
    table = {}
    if not scored.any():
        return table
    for name, conf in rows.items():
        conf = np.asarray(conf, dtype=np.float64)[scored]
        entry = {'ece': float(expected_calibration_error(conf, correct)),
                 'mean_confidence': float(conf.mean()), 'accuracy': float(correct.mean())}
        if bootstrap:
            entry['ece_ci'] = list(segment_bootstrap_ece(conf, correct, segments, bootstrap))
        table[name] = entry
    return table


def build_report(results, frames, outputs, bundle, trace, config):
    """Build the JSON-ready report of one evaluation (one video, one trace, one deadline)."""
    strategies = {name: summarise(r, frames.resolutions, frames.labelled)
                  for name, r in results.items()}
    true = outputs.label_source == 'true'
    if not true:
        for s in strategies.values():
            s['agreement_with_reference'] = s['accuracy']
    report = {
        'video': outputs.name,
        'source': outputs.source,
        'frames': len(outputs),
        'scored_frames': int(np.sum(frames.labelled)) if frames.labelled is not None
        else len(outputs),
        'unlabelled_frames': int(getattr(outputs, 'unlabelled_count', 0)),
        'fps': float(config.fps or outputs.fps),
        'labels': outputs.label_source,
        'labels_file': getattr(outputs, 'labels_file', None),
        'score': score_name(outputs.label_source),
        'labels_note': ('true labels of the source: "accuracy" = top-1 in the frame\'s label '
                        'set; unlabelled frames are left out' if true else
                        'reference labels: server model at its native resolution on the full '
                        'frame, no JPEG (most expensive configuration); "accuracy" fields are '
                        'AGREEMENT WITH REFERENCE LABELS, not accuracy'),
        'trace': trace.name,
        'deadline_ms': config.deadline_s * 1e3,
        'local_latency_ms': config.local_latency_s * 1e3,
        'robot_model': config.robot_tag,
        'robot_resolution': config.robot_resolution,
        'offload_resolutions': frames.resolutions,
        'calibration': {'method': bundle.method, 'path': str(bundle.path or ''),
                        'source_info': bundle.source_info},
        'strategies': strategies,
        'confidence_calibration': confidence_calibration(results, frames),
    }
    if not trace.rtt_never_falls():
        report['exact_solver_note'] = (
            'the trace\'s RTT falls at some point: oracle and cbo_exact prune by earliest link '
            'free time, which is exact only while the RTT never falls, so here they may be '
            'below the optimum (oracle not a strict upper bound)')
    local = strategies.get('local_only', {}).get('accuracy')
    oracle = strategies.get('oracle', {}).get('accuracy')
    if local is not None and oracle is not None:
        span = oracle - local
        report['oracle_gain_share'] = {
            name: (s['accuracy'] - local) / span if span > 1e-12 else None
            for name, s in strategies.items()}
    if 'cbo' in strategies and 'cbo_exact' in strategies:
        exact = strategies['cbo_exact']['planned_gain']
        report['online_vs_exact'] = {
            'cbo_planned_gain': strategies['cbo']['planned_gain'],
            'exact_planned_gain': exact,
            'ratio': strategies['cbo']['planned_gain'] / exact if exact > 1e-12 else None,
            'accuracy_cbo': strategies['cbo']['accuracy'],
            'accuracy_exact': strategies['cbo_exact']['accuracy'],
        }
    return report


def format_table(report):
    """Format one report as a fixed-width terminal table."""
    resolutions = report['offload_resolutions']
    share = report.get('oracle_gain_share', {})
    true = report['labels'] == 'true'
    unlabelled = report.get('unlabelled_frames', 0)
    left_out = f", {unlabelled} unlabelled left out" if unlabelled else ''
    lines = [
        f"video {report['video']} ({report['frames']} frames at {report['fps']:g} fps"
        f"{left_out}), labels: {report['labels']}, trace: {report['trace']}, "
        f"deadline {report['deadline_ms']:g} ms, calibration: {report['calibration']['method']}",
    ]
    res_header = ' '.join(f'{r:>5}' for r in resolutions)
    lines.append(f"{'strategy':<22}{'acc%' if true else 'agree%':>7}{'oracle%':>8}{'offl%':>7} "
                 f"{res_header}"
                 f"{'miss':>6}{'kB':>9}{'lat ms':>8}{'p99 ms':>8}")
    for name, s in report['strategies'].items():
        per_res = ' '.join(f"{100 * s['offload_share_per_resolution'][str(r)]:5.1f}"
                           for r in resolutions)
        captured = share.get(name)
        captured = f'{100 * captured:7.1f}' if captured is not None else f"{'-':>7}"
        lines.append(f"{name:<22}{100 * s['accuracy']:7.1f} {captured}"
                     f"{100 * s['offload_share']:7.1f} {per_res}{s['deadline_misses']:6d}"
                     f"{s['bytes_sent'] / 1e3:9.1f}{s['latency_mean_ms']:8.1f}"
                     f"{s['latency_p99_ms']:8.1f}")
    for name, c in report.get('confidence_calibration', {}).items():
        ci = c.get('ece_ci')
        ci = f' [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]' if ci else ''
        lines.append(f"local confidence {name:<24} ECE {100 * c['ece']:5.1f}%{ci} "
                     f"(mean conf {100 * c['mean_confidence']:.1f}%, "
                     f"local {'acc' if true else 'agreement'} {100 * c['accuracy']:.1f}%)")
    lines.append(('acc%: accuracy, top-1 in the true label set' if true else
                  'agree%: AGREEMENT WITH REFERENCE LABELS (the server model\'s answers), not '
                  'accuracy')
                 + '; oracle%: share of the oracle\'s gain over local-only; offl% per '
                 'resolution; miss: offloads late or lost')
    if report.get('online_vs_exact', {}).get('ratio') is not None:
        ratio = report['online_vs_exact']
        lines.append(f"online CBO vs exact hindsight solver (same model): planned gain "
                     f"{ratio['cbo_planned_gain']:.2f} / {ratio['exact_planned_gain']:.2f} = "
                     f"{100 * ratio['ratio']:.1f}%")
    if report.get('exact_solver_note'):
        lines.append(f"note: {report['exact_solver_note']}")
    return '\n'.join(lines)


def write_json(data, path):
    """Write ``data`` as indented JSON, creating the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path
