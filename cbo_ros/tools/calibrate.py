"""cbo_calibrate: fit the robot model's confidence calibration and the server profile.

With no arguments: the true-label benchmark's calibration split (what set-up runs), held-out
metrics on its evaluation split, the default calibration file
(artifacts/calibration/cbo_calibration.json), reliability diagrams and a before/after table for the
int8 robot model and its fp32 twin. Without a built benchmark: the calibration-role videos of
artifacts/media (subsampled, reference labels) and the evaluation-role videos.

True labels (a video's sibling ``<stem>.labels.csv``, ``--labels`` for one source, an image
folder's labels) are used where a source has them; ``--benchmark`` fits on the benchmark's
calibration split, selects the method by leave-objects-out and reports held-out metrics on the
evaluation split with 95 % intervals that resample whole objects.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.core.calibration import (CalibrationError, default_calibration_path, make_calibrator,
                                      max_softmax, top1_correct)
from cbo_ros.core.calibration_fit import (fit_bundle, method_metrics, scored_outputs,
                                          stack_outputs, video_groups, video_weights)
from cbo_ros.evaluation.outputs_cache import (_classifier, _expected_total,
                                              DEFAULT_OFFLOAD_RESOLUTIONS, load_outputs,
                                              ROBOT_MODELS, SERVER_MODEL, VIEWS)
from cbo_ros.evaluation.pooling import LabelledSource, ManifestError, benchmark_sources
from cbo_ros.perception.media import MediaError, open_source
from cbo_ros.tools.model_args import add_model_arguments, describe_models, model_specs

FALLBACK_ROLES = {'calibration': ['bigbuckbunny.mp4', 'vtest.avi', 'box.mp4',
                                  'carphone_pristine.mp4'],
                  'evaluation': ['bikes.mp4', 'cup.mp4']}


def media_by_role(role):
    """Media names of a role in artifacts/media/manifest.json (fallback: the shipped roles)."""
    manifest = paths.media_dir() / 'manifest.json'
    if manifest.is_file():
        roles = json.loads(manifest.read_text())
        names = [name for name, r in roles.items() if r == role]
        if names:
            return names
    return FALLBACK_ROLES[role]


def stride_for(spec, frames_per_video):
    """Stride that keeps about ``frames_per_video`` frames of a source (1 when unknown)."""
    if not frames_per_video:
        return 1
    source = open_source(spec)
    try:
        total = _expected_total(source, 1, 0)
    finally:
        source.close()
    return max(1, -(-int(total or 0) // int(frames_per_video)))


def measure_server_time(resolutions, quality, repeats=15, server_model=None):
    """Server time per offload resolution on this machine: JPEG decode + inference.

    The minimum over repeats is the server's own cost without interference from other work on
    the machine (a busy calibrating machine would otherwise inflate it several-fold); queueing on
    a loaded server is what the live planner measures and adapts to (``adapt_server_time``).
    """
    from cbo_ros.perception.image_ops import center_square, decode_image, encode_jpeg
    server = _classifier(server_model or SERVER_MODEL)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    times = {}
    for r in resolutions:
        data = encode_jpeg(center_square(frame, r), quality)
        server.logits([decode_image(data)])
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            server.logits([decode_image(data)])
            samples.append(time.perf_counter() - start)
        times[int(r)] = float(np.min(samples))
    return times


def parse_args(argv):
    """Parse the cbo_calibrate command line."""
    parser = argparse.ArgumentParser(prog='cbo_calibrate', description=__doc__.splitlines()[0])
    parser.add_argument('--media', nargs='+', default=None,
                        help='calibration media (default: the benchmark\'s calibration split, '
                             'else the calibration-role videos)')
    parser.add_argument('--held-out', nargs='*', default=None,
                        help='held-out media for before/after metrics (default: evaluation-role '
                             'videos; give none to skip)')
    parser.add_argument('--frames-per-video', type=int, default=100,
                        help='subsample each calibration video to about this many frames '
                             '(0: every frame)')
    parser.add_argument('--views', nargs='*', default=None,
                        choices=[v for v in VIEWS if v != 'center'],
                        help='extra views of each calibration frame to fit the confidence on '
                             '(the centre view is always used; default: none on the benchmark, '
                             'whose labels hold for the whole frame only, else zoom)')
    parser.add_argument('--held-out-frames', type=int, default=125,
                        help='subsample each held-out video to about this many frames (0: all)')
    parser.add_argument('--labels', default=None,
                        help='true labels (CSV "frame,labels") of the one calibration source '
                             '(default: each video\'s sibling <stem>.labels.csv)')
    parser.add_argument('--benchmark', nargs='?', const='calibration', default=None,
                        metavar='SPLIT',
                        help='fit on this benchmark split (default calibration) instead of '
                             '--media; held out: --held-out-split')
    parser.add_argument('--held-out-split', default='evaluation',
                        help='benchmark split of the held-out metrics (with --benchmark)')
    parser.add_argument('--manifest', default=None,
                        help='benchmark manifest (default: artifacts/benchmark/manifest.json)')
    parser.add_argument('--bootstrap', type=int, default=1000,
                        help='bootstrap samples of the held-out 95 %% intervals')
    parser.add_argument('--robot-resolutions', type=int, nargs='+',
                        default=[paths.ROBOT_INPUT_SIZE],
                        help='robot input resolutions to fit a calibrator for')
    parser.add_argument('--robot-resolution', type=int, default=paths.ROBOT_INPUT_SIZE,
                        help='robot resolution the server profile is measured at')
    parser.add_argument('--offload-resolutions', type=int, nargs='+',
                        default=list(DEFAULT_OFFLOAD_RESOLUTIONS))
    parser.add_argument('--method', default='auto',
                        choices=['auto', 'identity', 'temperature', 'histogram', 'isotonic',
                                 'logistic'])
    parser.add_argument('--jpeg-quality', type=int, default=90)
    parser.add_argument('--output', default=None,
                        help=f'calibration file (default {default_calibration_path()})')
    parser.add_argument('--plots', default=None,
                        help='directory of the reliability diagrams (default: next to --output)')
    parser.add_argument('--json', default=None, help='also write the metrics table as JSON')
    parser.add_argument('--cache-dir', default=None, help='model-output cache directory')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.media is None and args.benchmark is None and args.held_out is None:
        from cbo_ros.evaluation.pooling import default_manifest_path
        if (Path(args.manifest) if args.manifest else default_manifest_path()).is_file():
            args.benchmark = 'calibration'
    if args.views is None:
        args.views = [] if args.benchmark else ['zoom']
    return args


def format_metrics(table):
    """Before/after table: one row per (model, method), columns per data set."""
    lines = []
    sets = next(iter(table.values()))['metrics'].keys()
    header = f"{'model':<6}{'method':<15}{'LOGO NLL':>9} " + ''.join(
        f"| {s:<12}{'acc':>6}{'ECE':>6}{' ECE 95% CI':<14}{'MCE':>6}{'NLL':>7}{'Brier':>7}"
        f"{' ECE-raw 95% CI':<17}" for s in sets)
    lines.append(header)
    for tag, entry in table.items():
        methods = entry['metrics'][next(iter(sets))].keys()
        for method in methods:
            chosen = method == entry.get('chosen') or (
                method == 'uncalibrated' and entry.get('chosen') == 'identity')
            loo = entry.get('loo', {}).get('identity' if method == 'uncalibrated' else method)
            loo = f"{loo['log_loss']:9.3f}" if loo else f"{'-':>9}"
            row = f"{tag:<6}{method + (' *' if chosen else ''):<15}{loo} "
            for s in sets:
                m = entry['metrics'][s][method]
                ci = m.get('ece_ci')
                ci = f' [{100 * ci[0]:4.1f},{100 * ci[1]:5.1f}]' if ci else ''
                diff = m.get('ece_minus_raw_ci')
                diff = f' [{100 * diff[0]:+4.1f},{100 * diff[1]:+5.1f}]' if diff else ''
                row += (f"| {m['samples']:<12}{100 * m['accuracy']:6.1f}{100 * m['ece']:6.1f}"
                        f"{ci:<14}{100 * m['mce']:6.1f}{m['nll']:7.3f}{m['brier']:7.3f}"
                        f"{diff:<17}")
            lines.append(row)
    units = {entry.get('ci_unit') for entry in table.values()} - {None}
    unit = units.pop() if units else '2-s segments'
    lines.append(f'ECE/MCE in %, 15 equal-width bins (95 % CI: bootstrap over whole {unit} of the '
                 'held-out set; ECE-raw: paired difference calibrated - uncalibrated; MCE/NLL/'
                 'Brier CIs in the JSON); NLL/Brier of the top-1 correctness event; LOGO NLL: '
                 'leave-groups-out (objects, else videos) log loss on the calibration set (the '
                 'selection criterion); acc: top-1 in the label set (true labels) or agreement '
                 'with reference labels; unlabelled frames left out; * = chosen')
    return '\n'.join(lines)


def _sources(args):
    """(calibration sources, held-out sources) as ``LabelledSource`` lists."""
    if args.benchmark:
        if args.media:
            raise ManifestError('give --media or --benchmark, not both')
        held = [] if args.held_out is not None and not args.held_out else \
            benchmark_sources(args.held_out_split, args.manifest)
        return benchmark_sources(args.benchmark, args.manifest), held
    media = args.media or media_by_role('calibration')
    if args.labels and len(media) > 1:
        raise ManifestError('--labels applies to one source; give each video its sibling '
                            '<stem>.labels.csv')
    held_out = media_by_role('evaluation') if args.held_out is None else args.held_out
    return [LabelledSource(m, args.labels) for m in media], \
        [LabelledSource(m) for m in held_out]


def _usage(outputs, stride, view=None):
    """Describe what a source contributed (for the calibration file's source_info)."""
    entry = {'media': outputs.name, 'frames': len(outputs), 'stride': stride,
             'labels': outputs.label_source, 'labels_file': outputs.labels_file,
             'unlabelled_frames': outputs.unlabelled_count}
    if outputs.group != outputs.name:
        entry['object'] = outputs.group
    if view is not None:
        entry['view'] = view
    return entry


def main(argv=None):
    """Entry point of cbo_calibrate."""
    args = parse_args(argv)
    started = time.perf_counter()
    output = Path(args.output) if args.output else default_calibration_path()
    plots_dir = Path(args.plots) if args.plots else output.parent
    try:
        sources, held_sources = _sources(args)
    except ManifestError as error:
        print(f'cbo_calibrate: {error}', file=sys.stderr)
        return 2
    overlap = {str(paths.resolve_media(s.media)) for s in sources} & \
        {str(paths.resolve_media(s.media)) for s in held_sources}
    objects = {s.group for s in sources if s.group} & {s.group for s in held_sources if s.group}
    if overlap or objects:
        print(f'cbo_calibrate: calibration and held-out media overlap: '
              f'{sorted(overlap) or sorted(objects)}', file=sys.stderr)
        return 2
    resolutions = sorted(set(args.robot_resolutions) | {args.robot_resolution})
    try:
        tag, robot_models, server_model = model_specs(args, args.robot_resolution)
    except (ValueError, FileNotFoundError) as error:
        print(f'cbo_calibrate: {error}', file=sys.stderr)
        return 2
    # The shipped int8 model is compared with its fp32 twin; your own model stands alone.
    tags = ('int8', 'fp32') if robot_models is None and tag in ROBOT_MODELS else (tag,)
    common = dict(robot_tags=tags, robot_resolutions=resolutions, jpeg_quality=args.jpeg_quality,
                  cache_dir=args.cache_dir, progress=not args.no_progress,
                  robot_models=robot_models, server_model=server_model)
    try:
        calibration, used = [], []
        for source in sources:
            stride = stride_for(source.media, args.frames_per_video)
            # The centre view with the server's outputs, then the extra views (robot + labels).
            for view in ['center'] + list(args.views):
                offload = args.offload_resolutions if view == 'center' else ()
                outputs = load_outputs(source.media, offload_resolutions=offload, stride=stride,
                                       view=view, labels_file=source.labels_file, **common)
                outputs.group = source.group or outputs.name
                calibration.append(outputs)
                used.append(_usage(outputs, stride, view))
        evaluation, held_used = [], []
        for source in held_sources:
            stride = stride_for(source.media, args.held_out_frames)
            # Server outputs too: the causal replay of the online calibration needs them.
            outputs = load_outputs(source.media, offload_resolutions=args.offload_resolutions,
                                   stride=stride, labels_file=source.labels_file, **common)
            outputs.group = source.group or outputs.name
            evaluation.append(outputs)
            held_used.append(_usage(outputs, stride))
    except (MediaError, ValueError, FileNotFoundError) as error:
        print(f'cbo_calibrate: {error}', file=sys.stderr)
        return 1

    table = {}
    for compared in tags:
        chosen = None if args.method == 'auto' else args.method
        metrics, extras = method_metrics(calibration, evaluation, compared,
                                         args.robot_resolution, chosen, bootstrap=args.bootstrap)
        table[compared] = {'metrics': metrics, **extras}
    server_time = measure_server_time(args.offload_resolutions, args.jpeg_quality,
                                      server_model=server_model)
    labels = sorted({u['labels'] for u in used})
    info = {
        'robot_model': args.robot_model,
        'models': describe_models(tag, robot_models, server_model),
        'calibration_media': used,
        'held_out_media': held_used,
        'labels': labels,
        'labels_note': 'true labels where the source has them (top-1 in the label set counts as '
                       'correct; unlabelled frames left out), else reference labels (server '
                       'model at its native resolution on the full frame, no JPEG: agreement, '
                       'not accuracy)',
        'benchmark': {'fit_split': args.benchmark, 'held_out_split': args.held_out_split,
                      'manifest': args.manifest} if args.benchmark else None,
        'target': 'P(robot top-1 in the label set)',
        'server_time_note': ('measured on the calibrating machine: JPEG decode + preprocessing'
                             ' + inference, minimum over repeats'),
        'created': time.strftime('%Y-%m-%dT%H:%M:%S'),
    }
    try:
        bundle = fit_bundle(calibration, tag, resolutions, args.robot_resolution,
                            args.offload_resolutions, args.method, server_time,
                            args.jpeg_quality, info)
    except CalibrationError as error:
        print(f'cbo_calibrate: {error}', file=sys.stderr)
        return 1
    bundle.metrics = {tag: entry['metrics'] for tag, entry in table.items()}
    bundle.save(output)

    from cbo_ros.evaluation.plots import reliability_diagrams
    figures = []
    scored = scored_outputs(evaluation) or scored_outputs(calibration)
    fitted_on = scored_outputs(calibration)
    set_name = 'held-out' if scored_outputs(evaluation) else 'calibration (in-sample)'
    true = all(o.label_source == 'true' for o in scored)
    for compared in tags:
        logits = np.concatenate([o.robot_logits[(compared, args.robot_resolution)]
                                 for o in scored])
        labels_all = np.concatenate([o.labels for o in scored])
        correct = top1_correct(logits, labels_all)
        fit_logits, fit_labels = stack_outputs(fitted_on, compared, args.robot_resolution)
        fit_weights = video_weights(video_groups(fitted_on))
        panels = [('uncalibrated', max_softmax(logits), correct)]
        for method in ('temperature', 'isotonic', 'logistic'):
            calibrator = make_calibrator(method).fit(fit_logits, fit_labels, fit_weights)
            panels.append((method, calibrator.predict(logits), correct))
        figures.append(reliability_diagrams(
            panels, plots_dir / f'reliability_{compared}.png',
            f'robot {compared} at {args.robot_resolution} px, {set_name} frames, labels: '
            f'{"true" if true else "reference"}',
            ylabel='accuracy' if true else 'agreement with reference labels'))

    print('calibration media: ' + ', '.join(f"{u['media']} ({u['frames']} frames)" for u in used
                                            if u['view'] == 'center')
          + (f" x views center+{'+'.join(args.views)}" if args.views else '')
          + '; held out: ' + (', '.join(f"{u['media']} ({u['frames']} frames)" for u in held_used)
                              or 'none'))
    print(format_metrics(table))
    if evaluation and robot_models is None and tag == 'int8':
        from cbo_ros.evaluation.online_study import format_online, online_calibration_metrics
        table['int8']['online'] = online_calibration_metrics(evaluation, bundle)
        table['int8']['online_note'] = (
            'ONLINE, causal, feedback-driven: cbo_adaptive replayed on the held-out frames at '
            'each link, confidences computed before each frame\'s own feedback, adapted only '
            'from server answers that had arrived; options chosen on the calibration videos')
        print(format_online(table['int8']['online']))
    print('temperature ' + ', '.join(f"{t} {table[t]['temperature']:.3f}" for t in tags)
          + '; chosen by leave-groups-out: '
          + ', '.join(f"{t} {table[t]['chosen']}" for t in tags))
    print(f'wrote {output} (method {bundle.method} for {args.robot_model}; server accuracy '
          f'{bundle.source_info["server_accuracy"]})')
    print(f'reliability diagrams: {", ".join(str(f) for f in figures)}')
    if args.json:
        from cbo_ros.evaluation.report import write_json
        write_json({'table': table, 'source_info': info, 'calibration_file': str(output)},
                   args.json)
    print(f'done in {time.perf_counter() - started:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
