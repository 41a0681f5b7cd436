"""cbo_eval: trace-driven evaluation of every offloading strategy on real model outputs.

With no arguments: the evaluation video bikes.mp4 over a constant 1 Mbit/s uplink (RTT 20 ms),
200 ms deadline, the default calibration file; prints the table and writes JSON and plots under
artifacts/results/.

Labels: a source with true labels (``--labels FILE``, a video's sibling ``<stem>.labels.csv``, an
image folder's ``labels.csv``) is scored for accuracy against its label sets (``labels: true``);
a labels file that cannot be used is an error. Without labels the figures are agreement with the
server's reference labels (``labels: reference``), not accuracy. Several sources, or
``--benchmark SPLIT`` (the benchmark manifest's clips), give pooled figures with 95 % intervals
that resample whole objects (sources without an object: whole sources).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.core.calibration import CalibrationError, load_calibration, max_softmax, top1_correct
from cbo_ros.core.planner import PREMODEL_STRATEGIES
from cbo_ros.core.premodel import Premodel, PremodelError
from cbo_ros.evaluation.outputs_cache import load_outputs
from cbo_ros.evaluation.pooling import (ManifestError, LabelledSource, benchmark_sources,
                                        format_pooled, pooled_strategies)
from cbo_ros.evaluation.report import build_report, format_table, score_name, write_json
from cbo_ros.evaluation.simulator import SimulationConfig, default_strategies, run_strategies
from cbo_ros.evaluation.traces import NetworkTrace, TraceError, load_trace
from cbo_ros.perception.media import MediaError
from cbo_ros.tools.model_args import add_model_arguments, describe_models, model_specs

DEFAULT_BANDWIDTH_BPS = 1e6
SWEEP_BANDWIDTHS_MBPS = (0.25, 0.5, 1.0, 2.0, 4.0)
SWEEP_DEADLINES_MS = (60, 100, 200, 400, 800)


def parse_args(argv):
    """Parse the cbo_eval command line."""
    parser = argparse.ArgumentParser(prog='cbo_eval', description=__doc__.splitlines()[0])
    parser.add_argument('media', nargs='*', default=[],
                        help='video files, image folders (labels.csv optional), rosbag2 '
                             '(sqlite3/MCAP) or embedded media names (default: bikes); several '
                             'give pooled figures')
    parser.add_argument('--labels', default=None,
                        help='true labels (CSV "frame,labels") of the one source (default: a '
                             'video\'s sibling <stem>.labels.csv, an image folder\'s labels.csv)')
    parser.add_argument('--benchmark', default=None, metavar='SPLIT',
                        help='score the clips of a benchmark split (calibration, evaluation, '
                             'heldout_category) listed in the manifest')
    parser.add_argument('--manifest', default=None,
                        help='benchmark manifest (default: artifacts/benchmark/manifest.json)')
    parser.add_argument('--bootstrap', type=int, default=1000,
                        help='bootstrap samples of the pooled 95 %% intervals (0: none)')
    parser.add_argument('--topic', default=None, help='image topic of a rosbag2')
    parser.add_argument('--recorded-results', action='store_true',
                        help='score what a recorded live run answered (its final `result` '
                             'messages, cbo_record) instead of re-running the models')
    parser.add_argument('--result-topic', default=None,
                        help='result topic of a recorded run (default: the only one)')
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
    parser.add_argument('--strategies', nargs='+', default=None,
                        help='strategies to run (default: all, plus cbo_exact and oracle)')
    parser.add_argument('--premodel', default=None, metavar='FILE',
                        help='trained premodel (cbo_premodel build): adds the premodel and '
                             'premodel_cbo strategies; "default" = calibration/premodel.npz '
                             '(also used when --strategies names a premodel strategy)')
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
    add_model_arguments(parser)
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


def _sources(args):
    """List the sources to score (``LabelledSource``), from the arguments or the manifest."""
    if args.benchmark and args.media:
        raise ManifestError('give media or --benchmark, not both')
    if args.benchmark:
        if args.labels:
            raise ManifestError('--labels applies to one source; benchmark clips have theirs')
        return benchmark_sources(args.benchmark, args.manifest)
    media = args.media or ['bikes']
    if args.labels and len(media) > 1:
        raise ManifestError('--labels applies to one source; give each video its sibling '
                            '<stem>.labels.csv (or an image folder its labels.csv)')
    return [LabelledSource(m, args.labels) for m in media]


def calibration_mismatch(bundle, models):
    """Say why the calibration file may not be for the robot model evaluated ('' if it is)."""
    fitted = (bundle.source_info or {}).get('models')
    robot = models['robot']
    if fitted is None:
        shipped = Path(robot['model']).name in ('robot_lite0_int8.onnx', 'robot_lite0_fp32.onnx')
        return '' if shipped else (
            'the calibration file records no model (it was fitted for the shipped robot model); '
            f'calibrate {robot["model"]} with cbo_calibrate --robot-model')
    if Path(fitted['robot']['model']).name != Path(robot['model']).name or \
            fitted['robot']['preprocessing'] != robot['preprocessing']:
        return (f'the calibration file was fitted for {fitted["robot"]["model"]} '
                f'({fitted["robot"]["preprocessing"]}), not {robot["model"]} '
                f'({robot["preprocessing"]}): its confidences do not apply')
    return ''


def labels_line(outputs):
    """One line saying which labels score a source."""
    if outputs.label_source == 'true':
        left_out = outputs.unlabelled_count
        return (f'{outputs.name}: labels: true, from {outputs.labels_file} ({len(outputs)} '
                f'frames' + (f', {left_out} unlabelled left out of accuracy)' if left_out else ')'))
    return (f'{outputs.name}: labels: reference (no labels file: figures are agreement with the '
            'server\'s reference labels, not accuracy)')


def bag_image_topic(media, topic=None):
    """Return the image topic read from a rosbag2 (printed with the others); else ``topic``.

    A bag with several image topics (e.g. raw and compressed) is read on the one named with
    ``--topic``, else on the first in name order; either way the line says which.
    """
    from cbo_ros.perception.media import is_rosbag, RosbagSource
    if not is_rosbag(media):
        return topic
    path = paths.resolve_media(media)
    bag = path.parent if path.suffix == '.db3' else path
    source = RosbagSource(bag, topic=topic)
    print(source.describe('--topic'))
    return source.topic


def score_recorded(args):
    """``--recorded-results``: score the final answers recorded in each bag; exit code."""
    import json
    from cbo_ros.evaluation.recorded_results import (format_score, RecordedResultsError,
                                                     score_recorded_run)
    from cbo_ros.perception.labels import LabelsError, read_frame_labels, sibling_labels_file
    if not args.media or (args.labels and len(args.media) > 1):
        print('cbo_eval: --recorded-results needs one or more rosbag2 paths (and --labels only '
              'with one)', file=sys.stderr)
        return 1
    summaries = []
    for bag in args.media:
        labels_file = args.labels or sibling_labels_file(bag)
        try:
            labels = read_frame_labels(labels_file) if labels_file else None
            if labels_file:
                print(f'{bag}: labels: true, from {labels_file}')
            score = score_recorded_run(bag, labels, args.topic, args.result_topic)
        except (RecordedResultsError, LabelsError, OSError, ValueError) as error:
            print(f'cbo_eval: {bag}: {error}', file=sys.stderr)
            return 1
        print('\n'.join(format_score(score)))
        summaries.append(score.summary())
    json_path = Path(args.json) if args.json else paths.results_dir() / 'eval_recorded.json'
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({'recorded_runs': summaries}, indent=1))
    print(f'JSON: {json_path}')
    return 0


def main(argv=None):
    """Entry point of cbo_eval."""
    args = parse_args(argv)
    if args.recorded_results:
        return score_recorded(args)
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
    wants_premodel = args.premodel or any(n in PREMODEL_STRATEGIES
                                          for n in args.strategies or ())
    premodel = None
    if wants_premodel:
        from cbo_ros.assets.premodel_models import resolve_premodel
        path = resolve_premodel(args.premodel or 'default')
        try:
            premodel = Premodel.load(path)
        except PremodelError as error:
            print(f'cbo_eval: {error}', file=sys.stderr)
            return 1
    try:
        tag, robot_models, server_model = model_specs(args, bundle.robot_resolution)
        args.robot_tag = tag
        mismatch = calibration_mismatch(bundle, describe_models(tag, robot_models, server_model))
        if mismatch:
            print(f'cbo_eval: warning: {mismatch}', file=sys.stderr)
        sources = _sources(args)
        loaded = []
        for source in sources:
            topic = bag_image_topic(source.media, args.topic)
            outputs = load_outputs(source.media, robot_tags=(tag,), robot_models=robot_models,
                                   server_model=server_model,
                                   robot_resolutions=sorted(bundle.calibrators),
                                   offload_resolutions=bundle.offload_resolutions,
                                   jpeg_quality=bundle.jpeg_quality, stride=args.stride,
                                   max_frames=args.max_frames, labels_file=source.labels_file,
                                   topic=topic, cache_dir=args.cache_dir,
                                   progress=not args.no_progress)
            outputs.group = source.group or outputs.source
            if premodel is not None:
                from cbo_ros.evaluation.premodel_data import attach_premodel_inputs
                attach_premodel_inputs(outputs, source.media, source.labels_file,
                                       stride=args.stride, max_frames=args.max_frames,
                                       cache_dir=args.cache_dir, topic=topic,
                                       progress=not args.no_progress)
            print(labels_line(outputs))
            loaded.append(outputs)
    except (MediaError, ValueError, FileNotFoundError) as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    kinds = {o.label_source for o in loaded}
    if len(kinds) > 1:
        print('cbo_eval: the sources mix true and reference labels: accuracy and agreement '
              'cannot be pooled (label every source, or score them separately)', file=sys.stderr)
        return 1
    calibration_media = {u.get('media') for u in
                         bundle.source_info.get('calibration_media', [])}
    for outputs in loaded:
        if outputs.name in calibration_media:
            print(f'cbo_eval: warning: {outputs.name} was used to calibrate; results are not '
                  'held-out', file=sys.stderr)
    config = SimulationConfig(deadline_s=args.deadline_ms / 1e3,
                              local_latency_s=args.local_latency_ms / 1e3, fps=args.fps,
                              robot_tag=tag, robot_resolution=bundle.robot_resolution,
                              seed=args.seed, p_tar=args.p_tar, window=args.window,
                              premodel=premodel)
    strategies = args.strategies or default_strategies(bundle.offload_resolutions)
    if premodel is not None and not args.strategies:
        strategies = strategies + list(PREMODEL_STRATEGIES)
    try:
        if len(loaded) == 1:
            report, stem = _single(args, loaded[0], bundle, trace, config, strategies,
                                   calibration_media)
        else:
            report, stem = _pooled(args, loaded, bundle, trace, config, strategies,
                                   calibration_media)
    except ValueError as error:
        print(f'cbo_eval: {error}', file=sys.stderr)
        return 1
    report['models'] = describe_models(tag, robot_models, server_model)
    plots_dir = Path(args.plots) if args.plots else paths.results_dir() / f'eval_{stem}'
    figures = [] if args.no_plots else _figures(args, loaded, bundle, report, trace, plots_dir)
    report['figures'] = [str(f) for f in figures]
    json_path = Path(args.json) if args.json else paths.results_dir() / f'eval_{stem}.json'
    write_json(report, json_path)
    print(f'JSON: {json_path}')
    if figures:
        print('figures: ' + ', '.join(str(f) for f in figures))
    print(f'done in {time.perf_counter() - started:.1f} s')
    return 0


def _single(args, outputs, bundle, trace, config, strategies, calibration_media):
    """Report of one source (the table, and the sweep when asked)."""
    report = evaluate(outputs, bundle, trace, config, strategies)
    report['evaluation_media_held_out'] = outputs.name not in calibration_media
    print(format_table(report))
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
        print(_sweep_table(report['sweep'], outputs.label_source))
    return report, Path(str(outputs.name)).stem


def _pooled(args, loaded, bundle, trace, config, strategies, calibration_media):
    """Pooled report of several sources: per-source reports and object-level intervals."""
    reports = []
    for outputs in loaded:
        report = evaluate(outputs, bundle, trace, config, strategies)
        report['object'] = outputs.group
        report['evaluation_media_held_out'] = outputs.name not in calibration_media
        reports.append(report)
    groups = [o.group for o in loaded]
    named = args.benchmark is not None
    units = 'objects' if named else 'sources'
    pooled, comparisons = pooled_strategies(reports, groups, args.bootstrap, args.seed)
    label_source = loaded[0].label_source
    word = 'acc' if label_source == 'true' else 'agree'
    print(f"{'source':<28}{'frames':>7}{'unlab':>6} {word}%: local_only     cbo  oracle")
    for r in reports:
        s = r['strategies']
        cells = ' '.join(f"{100 * s[n]['accuracy']:7.1f}" if n in s else f"{'-':>7}"
                         for n in ('local_only', 'cbo', 'oracle'))
        print(f"{r['video'][:27]:<28}{r['frames']:7d}{r['unlabelled_frames']:6d}"
              f"{'':>12}{cells}")
    total = sum(len(o) for o in loaded)
    unlabelled = sum(o.unlabelled_count for o in loaded)
    print(f"pooled over {len(loaded)} sources, {len({*groups})} {units}, {total} frames"
          + (f' ({unlabelled} unlabelled left out)' if unlabelled else '')
          + f', labels: {label_source}, trace: {trace.name}, deadline {args.deadline_ms:g} ms')
    print(format_pooled(pooled, comparisons, units, label_source))
    report = {
        'sources': reports,
        'benchmark': {'split': args.benchmark, 'manifest': args.manifest} if named else None,
        'labels': label_source,
        'score': score_name(label_source),
        'frames': total,
        'unlabelled_frames': unlabelled,
        'ci_unit': units,
        'bootstrap_samples': args.bootstrap,
        'trace': trace.name,
        'deadline_ms': args.deadline_ms,
        'pooled': pooled,
        'comparisons': comparisons,
    }
    if args.sweep:
        series = {}
        for key, values, make in (
                ('accuracy_vs_bandwidth', args.sweep_bandwidths_mbps,
                 lambda v: (NetworkTrace.constant(v * 1e6, *trace.at(0.0)[1:]), config)),
                ('accuracy_vs_deadline', args.sweep_deadlines_ms,
                 lambda v: (trace, SimulationConfig(**{**config.__dict__,
                                                       'deadline_s': v / 1e3})))):
            points = []
            for value in values:
                point_trace, point_config = make(value)
                point = [evaluate(o, bundle, point_trace, point_config, strategies)
                         for o in loaded]
                points.append(pooled_strategies(point, groups, 0)[0])
            series[key] = {n: [p[n]['accuracy'] for p in points] for n in points[0]}
        report['sweep'] = {'bandwidths_mbps': args.sweep_bandwidths_mbps,
                           'deadline_ms_for_bandwidth_sweep': args.deadline_ms,
                           'deadlines_ms': args.sweep_deadlines_ms,
                           'trace_for_deadline_sweep': trace.name, **series}
        print(_sweep_table(report['sweep'], label_source))
    stem = f'benchmark_{args.benchmark}' if named else 'pooled'
    return report, stem


def _figures(args, loaded, bundle, report, trace, plots_dir):
    """Reliability diagrams (labelled frames of every source) and the sweep curves."""
    from cbo_ros.evaluation.plots import accuracy_curves, reliability_diagrams
    scored = [o.labelled_only() for o in loaded]
    scored = [o for o in scored if len(o)]
    logits = np.concatenate([o.robot_logits[(args.robot_tag, bundle.robot_resolution)]
                             for o in scored])
    labels = np.concatenate([o.labels for o in scored])
    correct = top1_correct(logits, labels)
    true = loaded[0].label_source == 'true'
    name = loaded[0].name if len(loaded) == 1 else f'{len(loaded)} sources'
    figures = [reliability_diagrams(
        [('uncalibrated', max_softmax(logits), correct),
         (f'calibrated ({bundle.method})', bundle.calibrate_confidences(logits), correct)],
        plots_dir / 'reliability.png',
        f'{name}: robot {args.robot_tag}, labels: {loaded[0].label_source}',
        ylabel='accuracy' if true else 'agreement with reference labels')]
    if 'sweep' in report:
        s = report['sweep']
        ylabel = 'accuracy (%)' if true else 'agreement with reference labels (%)'
        figures.append(accuracy_curves(
            s['bandwidths_mbps'], s['accuracy_vs_bandwidth'],
            plots_dir / 'accuracy_vs_bandwidth.png', 'uplink bandwidth (Mbit/s)',
            f'{name}, deadline {args.deadline_ms:g} ms', log_x=True, ylabel=ylabel))
        figures.append(accuracy_curves(
            s['deadlines_ms'], s['accuracy_vs_deadline'],
            plots_dir / 'accuracy_vs_deadline.png', 'deadline (ms)',
            f'{name}, {trace.name}', log_x=True, ylabel=ylabel))
    return figures


def _sweep_table(s, label_source='true'):
    word = 'accuracy' if label_source == 'true' else 'agreement with reference labels'
    lines = [f'{word} (%) vs bandwidth (Mbit/s): ' + ' '.join(
        f'{b:>6g}' for b in s['bandwidths_mbps'])]
    for name, values in s['accuracy_vs_bandwidth'].items():
        lines.append(f'  {name:<22}' + ' '.join(f'{100 * v:6.1f}' for v in values))
    lines.append(f'{word} (%) vs deadline (ms): ' + ' '.join(
        f'{d:>6g}' for d in s['deadlines_ms']))
    for name, values in s['accuracy_vs_deadline'].items():
        lines.append(f'  {name:<22}' + ' '.join(f'{100 * v:6.1f}' for v in values))
    if 'oracle_gain_share_vs_bandwidth' in s:
        share = ['-' if v is None else f'{100 * v:.0f}%'
                 for v in s['oracle_gain_share_vs_bandwidth']]
        lines.append('CBO share of the oracle gain vs bandwidth: ' + ' '.join(share))
    if 'online_vs_exact_vs_bandwidth' in s:
        ratio = ['-' if v is None else f'{100 * v:.0f}%' for v in s['online_vs_exact_vs_bandwidth']]
        lines.append('online CBO / exact (planned gain) vs bandwidth: ' + ' '.join(ratio))
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
