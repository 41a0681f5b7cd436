#!/usr/bin/env python3
"""Premodel candidates: true-label accuracy and robot CPU time of each model and input size.

Prints, per (model, input size): top-1 accuracy on a benchmark split (true label sets; with
``--every N`` only every N-th clip) and the mean single-frame onnxruntime time with 1 thread
and with onnxruntime's default threads (preprocessing of a 640x480 frame included). Used to
choose the candidates' input sizes on the calibration split (docs/premodel.md). Model outputs
are cached (artifacts/cache), so a rerun only times.

    python scripts/premodel_candidates.py --split calibration --every 4 \
        --sizes int8:128 fp32:160,192,224 lite1:192,240 lite2:224,260
"""

import argparse
import json
import sys
import time

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.evaluation.outputs_cache import ROBOT_MODELS, labelled_only, load_outputs
from cbo_ros.evaluation.pooling import benchmark_sources
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.media import read_frames


def mean_time_ms(tag, size, frames, threads, repeats=3):
    """Mean time of classifying one frame (preprocessing + inference), over real frames."""
    model = OnnxClassifier(str(paths.resolve_model(ROBOT_MODELS[tag])), size,
                           intra_op_threads=threads)
    model.logits(frames[:1])
    times = []
    for _ in range(repeats):
        for frame in frames:
            start = time.perf_counter()
            model.logits([frame])
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.mean(times))


def parse_sizes(items):
    """['fp32:160,224', ...] -> [('fp32', 160), ('fp32', 224), ...]."""
    pairs = []
    for item in items:
        tag, _, sizes = item.partition(':')
        if tag not in ROBOT_MODELS or not sizes:
            raise SystemExit(f'bad --sizes item {item!r}: TAG:SIZE[,SIZE] with TAG in '
                             f'{list(ROBOT_MODELS)}')
        pairs.extend((tag, int(s)) for s in sizes.split(','))
    return pairs


def main(argv=None):
    """Measure and print the table; write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--split', default='calibration')
    parser.add_argument('--every', type=int, default=1, help='use every N-th clip of the split')
    parser.add_argument('--sizes', nargs='+',
                        default=['int8:128', 'fp32:224', 'lite1:240', 'lite2:260'])
    parser.add_argument('--timing-frames', type=int, default=20)
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    pairs = parse_sizes(args.sizes)
    sources = benchmark_sources(args.split)[::max(1, args.every)]
    frames = [f.rgb for f in read_frames(sources[0].media, max_frames=args.timing_frames)[0]]
    rows = []
    print(f'{len(sources)} clips of {args.split}; time: mean per frame incl. preprocessing')
    print(f"{'model':<8}{'size':>5}{'acc%':>7}{'1 thread ms':>13}{'default ms':>12}")
    for tag, size in pairs:
        correct, count = 0.0, 0
        for source in sources:
            outputs = load_outputs(source.media, robot_tags=(tag,), robot_resolutions=(size,),
                                   offload_resolutions=(), labels_file=source.labels_file,
                                   progress=False)
            kept = labelled_only([outputs])
            if kept:
                correct += float(kept[0].local_correct(tag, size).sum())
                count += len(kept[0])
        row = {'tag': tag, 'model_file': ROBOT_MODELS[tag], 'input_size': size,
               'accuracy': correct / max(count, 1), 'frames': count,
               'time_ms_1_thread': mean_time_ms(tag, size, frames, 1),
               'time_ms_default_threads': mean_time_ms(tag, size, frames, 0)}
        rows.append(row)
        print(f"{tag:<8}{size:>5}{100 * row['accuracy']:7.1f}{row['time_ms_1_thread']:13.2f}"
              f"{row['time_ms_default_threads']:12.2f}", flush=True)
    out = args.json or paths.results_dir() / f'premodel_candidates_{args.split}.json'
    paths.results_dir().mkdir(parents=True, exist_ok=True)
    with open(out, 'w') as handle:
        json.dump({'split': args.split, 'every': args.every, 'rows': rows}, handle, indent=1)
    print(f'JSON: {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
