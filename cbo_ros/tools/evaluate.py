"""cbo_eval: trace-driven evaluation of every offloading strategy on real model outputs.

With no arguments: the evaluation video bikes.mp4 over a constant 1 Mbit/s uplink (RTT 20 ms),
200 ms deadline, the default calibration file; prints the table and writes JSON and plots under
artifacts/results/.
"""

import argparse
import sys
import time
from pathlib import Path

from cbo_ros.assets import paths
from cbo_ros.core.calibration import CalibrationError, load_calibration, max_softmax, top1_correct
from cbo_ros.evaluation.outputs_cache import load_outputs
from cbo_ros.evaluation.report import build_report, format_table, write_json
from cbo_ros.evaluation.simulator import SimulationConfig, default_strategies, run_strategies
from cbo_ros.evaluation.traces import NetworkTrace, TraceError, load_trace
from cbo_ros.perception.media import MediaError

DEFAULT_BANDWIDTH_BPS = 1e6
SWEEP_BANDWIDTHS_MBPS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEP_DEADLINES_MS = (60, 100, 200, 400, 800)


def parse_args(argv):
    """Parse the cbo_eval command line."""
    parser = argparse.ArgumentParser(prog='cbo_eval', description=__doc__.splitlines()[0])
    parser.add_argument('media', nargs='?', default='bikes',
                        help='video file, image folder (labels.csv optional), rosbag2 '
                             '(sqlite3/MCAP) or embedded media name (default: bikes)')
    parser.add_argument('--labels', default=None, help='labels file of an image folder')
    parser.add_argument('--topic', default=None, help='image topic of a rosbag2')
    parser.add_argument('--max-frames', type=int, default=0, help='first N frames only')
    parser.add_argument('--stride', type=int, default=1, help='keep every N-th frame')
    parser.add_argument('--bandwidth', type=float, default=DEFAULT_BANDWIDTH_BPS,
                        help='constant uplink bandwidth in bit/s (default 1e6)')
    parser.add_argument('--trace', default=None,
                        help='CSV trace (time,bandwidth,rtt,loss) instead of --bandwidth')
    parser.add_argument('--rtt-ms', type=float, default=20.0, help='RTT of a constant link')
    parser.add_argument('--server-time-ms', type=float, default=0.0,
                        help='server time per request (0: the calibration file\'s measurement)')
    parser.add_argument('--loss', type=float, default=0.0, help='loss rate of a constant link')
    parser.add_argument('--deadline-ms', type=float, default=200.0,
                        help='answer deadline after capture')
    parser.add_argument('--fps', type=float, default=0.0, help='frame rate (0: the media\'s)')
    parser.add_argument('--local-latency-ms', type=float, default=15.0,
                        help='robot inference time before the planner decides')
    parser.add_argument('--calibration', default=None, help='calibration file (default: '
                        'artifacts/calibration/cbo_calibration.json)')
    parser.add_argument('--robot-model', default='int8', choices=['int8', 'fp32'])
    parser.add_argument('--strategies', nargs='+', default=None,
                        help='strategies to run (default: all, plus cbo_exact and oracle)')
    parser.add_argument('--p-tar', type=float, default=0.7, help='threshold of the p_tar rules')
    parser.add_argument('--window', type=int, default=50, help='CBO price window (frames)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the loss draws')
    parser.add_argument('--sweep', action='store_true',
                        help='also sweep bandwidths and deadlines and draw the curves')
    parser.add_argument('--sweep-bandwidths-mbps', type=float, nargs='+',
                        default=list(SWEEP_BANDWIDTHS_MBPS))
    parser.add_argument('--sweep-deadlines-ms', type=float, nargs='+',
                        default=list(SWEEP_DEADLINES_MS))
    parser.add_argument('--json', default=None, help='write the report as JSON here '
                        '(default: artifacts/results/eval_<media>.json)')
    parser.add_argument('--plots', default=None,
                        help='plot directory (default: artifacts/results/eval_<media>/)')
    parser.add_argument('--no-plots', action='store_true', help='skip the figures')
    parser.add_argument('--cache-dir', default=None, help='model-output cache directory')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser.parse_args(argv)


def evaluate(outputs, bundle, trace, config, strategies=None):
    """One evaluation: the report dict (see ``build_report``)."""
    results, frames = run_strategies(outputs, bundle, trace, config, strategies)
    return build_report(results, frames, outputs, bundle, trace, config)


def sweep(outputs, bundle, base_trace, config, strategies, bandwidths_mbps, deadlines_ms):
    """Accuracy of each strategy vs bandwidth (at the deadline) and vs deadline (at the link)."""
    by_bandwidth, by_deadline = [], []
    rtt, loss = base_trace.at(0.0)[1:]
    for mbps in bandwidths_mbps:
        trace = NetworkTrace.constant(mbps * 1e6, rtt, loss)
        by_bandwidth.append(evaluate(outputs, bundle, trace, config, strategies))
    for deadline in deadlines_ms:
        cfg = SimulationConfig(**{**config.__dict__, 'deadline_s': deadline / 1e3})
        by_deadline.append(evaluate(outputs, bundle, base_trace, cfg, strategies))
    return by_bandwidth, by_deadline


def _accuracy_series(reports):
    names = list(reports[0]['strategies'])
    return {n: [r['strategies'][n]['accuracy'] for r in reports] for n in names}


def main(argv=None):
    """Entry point of cbo_eval."""
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        bundle = load_calibration(args.calibration)
    except CalibrationError as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    if args.server_time_ms > 0:
        bundle.set_server_time_s(args.server_time_ms / 1e3)
    try:
        trace = load_trace(args.trace) if args.trace else \
            NetworkTrace.constant(args.bandwidth, args.rtt_ms / 1e3, args.loss)
    except TraceError as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    try:
        outputs = load_outputs(args.media, robot_tags=(args.robot_model,),
                               robot_resolutions=sorted(bundle.calibrators),
                               offload_resolutions=bundle.offload_resolutions,
                               jpeg_quality=bundle.jpeg_quality, stride=args.stride,
                               max_frames=args.max_frames, labels_file=args.labels,
                               topic=args.topic, cache_dir=args.cache_dir,
                               progress=not args.no_progress)
    except (MediaError, ValueError, FileNotFoundError) as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    calibration_media = {u.get('media') for u in
                         bundle.source_info.get('calibration_media', [])}
    if outputs.name in calibration_media:
        print(f'cbo_eval: warning: {outputs.name} was used to calibrate; results are not '
              'held-out', file=sys.stderr)
    config = SimulationConfig(deadline_s=args.deadline_ms / 1e3,
                              local_latency_s=args.local_latency_ms / 1e3, fps=args.fps,
                              robot_tag=args.robot_model, robot_resolution=bundle.robot_resolution,
                              seed=args.seed, p_tar=args.p_tar, window=args.window)
    strategies = args.strategies or default_strategies(bundle.offload_resolutions)
    try:
        report = evaluate(outputs, bundle, trace, config, strategies)
    except ValueError as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    report['evaluation_media_held_out'] = outputs.name not in calibration_media
    stem = Path(str(outputs.name)).stem
    print(format_table(report))
    plots_dir = Path(args.plots) if args.plots else paths.results_dir() / f'eval_{stem}'
    figures = []
    if args.sweep:
        by_bw, by_dl = sweep(outputs, bundle, trace, config, strategies,
                             args.sweep_bandwidths_mbps, args.sweep_deadlines_ms)
        report['sweep'] = {
            'bandwidths_mbps': args.sweep_bandwidths_mbps,
            'deadline_ms_for_bandwidth_sweep': args.deadline_ms,
            'accuracy_vs_bandwidth': _accuracy_series(by_bw),
            'deadlines_ms': args.sweep_deadlines_ms,
            'trace_for_deadline_sweep': trace.name,
            'accuracy_vs_deadline': _accuracy_series(by_dl),
            'oracle_gain_share_vs_bandwidth': [r.get('oracle_gain_share', {}).get('cbo')
                                               for r in by_bw],
            'online_vs_exact_vs_bandwidth': [r.get('online_vs_exact', {}).get('ratio')
                                             for r in by_bw],
        }
        print(_sweep_table(report['sweep']))
    if not args.no_plots:
        from cbo_ros.evaluation.plots import accuracy_curves, reliability_diagrams
        logits = outputs.robot_logits[(args.robot_model, bundle.robot_resolution)]
        correct = top1_correct(logits, outputs.labels)
        figures.append(reliability_diagrams(
            [('uncalibrated', max_softmax(logits), correct),
             (f'calibrated ({bundle.method})', bundle.calibrate_confidences(logits), correct)],
            plots_dir / 'reliability.png', f'{outputs.name}: robot {args.robot_model}'))
        if args.sweep:
            s = report['sweep']
            figures.append(accuracy_curves(
                s['bandwidths_mbps'], s['accuracy_vs_bandwidth'],
                plots_dir / 'accuracy_vs_bandwidth.png', 'uplink bandwidth (Mbit/s)',
                f'{outputs.name}, deadline {args.deadline_ms:g} ms', log_x=True))
            figures.append(accuracy_curves(
                s['deadlines_ms'], s['accuracy_vs_deadline'],
                plots_dir / 'accuracy_vs_deadline.png', 'deadline (ms)',
                f'{outputs.name}, {trace.name}', log_x=True))
    report['figures'] = [str(f) for f in figures]
    json_path = Path(args.json) if args.json else paths.results_dir() / f'eval_{stem}.json'
    write_json(report, json_path)
    print(f'JSON: {json_path}')
    if figures:
        print('figures: ' + ', '.join(str(f) for f in figures))
    print(f'done in {time.perf_counter() - started:.1f} s')
    return 0


def _sweep_table(s):
    lines = ['accuracy (%) vs bandwidth (Mbit/s): ' + ' '.join(
        f'{b:>6g}' for b in s['bandwidths_mbps'])]
    for name, values in s['accuracy_vs_bandwidth'].items():
        lines.append(f'  {name:<22}' + ' '.join(f'{100 * v:6.1f}' for v in values))
    lines.append('accuracy (%) vs deadline (ms): ' + ' '.join(
        f'{d:>6g}' for d in s['deadlines_ms']))
    for name, values in s['accuracy_vs_deadline'].items():
        lines.append(f'  {name:<22}' + ' '.join(f'{100 * v:6.1f}' for v in values))
    share = ['-' if v is None else f'{100 * v:.0f}%' for v in s['oracle_gain_share_vs_bandwidth']]
    lines.append('CBO share of the oracle gain vs bandwidth: ' + ' '.join(share))
    ratio = ['-' if v is None else f'{100 * v:.0f}%' for v in s['online_vs_exact_vs_bandwidth']]
    lines.append('online CBO / exact (planned gain) vs bandwidth: ' + ' '.join(ratio))
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
