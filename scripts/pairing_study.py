#!/usr/bin/env python3
"""Robot/server pairing study on true labels: which robot input size and which server pipeline.

For every clip of a benchmark split (artifacts/benchmark/manifest.json) it measures, per frame,
whether the robot model (int8 Lite0) at each robot input size is right (top-1 in the frame's
label set), and whether the server model (Lite2 fp32) is right on the JPEG the robot would send
at each offload resolution, run at each server input size ("native": the profile's 260 px;
"match": the offload resolution itself, i.e. server-side zoom). Accuracies come with 95 %
bootstrap intervals over OBJECTS; the gap server − robot is bootstrapped paired by object.
Choose the pairing on the calibration split; report it on the evaluation split.

    python scripts/pairing_study.py --split calibration --stride 3
"""

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np

from cbo_ros.assets import paths
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.image_ops import center_square, decode_image, encode_jpeg


def read_label_sets(path):
    """Per-frame label sets of a ``frame,labels`` CSV (None for an unlabelled frame)."""
    with open(path, newline='') as handle:
        rows = list(csv.reader(handle))
    sets = {}
    for row in rows[1:]:
        cell = row[1].strip() if len(row) > 1 else ''
        sets[int(row[0])] = frozenset(int(x) for x in cell.split()) if cell else None
    return sets


def read_clip(video, stride):
    """Frames (RGB) of a video, every ``stride``-th, with their indices."""
    capture = cv2.VideoCapture(str(video))
    frames, index = [], 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        if index % stride == 0:
            frames.append((index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    return frames


def bootstrap_ci(per_object, rounds=2000, seed=0):
    """95 % interval of the mean of per-object (correct, total) sums, resampling objects."""
    correct = np.array([c for c, _ in per_object], dtype=np.float64)
    total = np.array([t for _, t in per_object], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(total), (rounds, len(total)))
    means = correct[picks].sum(axis=1) / np.maximum(total[picks].sum(axis=1), 1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main():
    """Run the study and print one table (and write a JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--manifest', default=str(paths.artifacts_dir() / 'benchmark' /
                                                  'manifest.json'))
    parser.add_argument('--split', default='calibration')
    parser.add_argument('--stride', type=int, default=3, help='every n-th frame')
    parser.add_argument('--robot-res', type=int, nargs='+', default=[128, 160, 192, 224])
    parser.add_argument('--offload-res', type=int, nargs='+', default=[160, 224, 288, 384])
    parser.add_argument('--server-inputs', nargs='+', default=['native', 'match'])
    parser.add_argument('--quality', type=int, default=90)
    parser.add_argument('--output', default='')
    args = parser.parse_args()
    manifest_path = Path(args.manifest)
    manifest = json.loads(manifest_path.read_text())
    clips = manifest['splits'][args.split]
    robot = OnnxClassifier(str(paths.models_dir() / paths.ROBOT_MODEL_INT8), 224)
    server = OnnxClassifier(str(paths.models_dir() / paths.SERVER_MODEL_FP32),
                            paths.SERVER_INPUT_SIZE)
    configs = [('robot', r, r) for r in args.robot_res]
    configs += [('server', r, paths.SERVER_INPUT_SIZE if s == 'native' else
                 (r if s == 'match' else int(s)))
                for r in args.offload_res for s in args.server_inputs]
    configs = list(dict.fromkeys(configs))
    per_object = {c: {} for c in configs}
    jpeg_bytes = {r: [] for r in args.offload_res}
    started = time.monotonic()
    frames_used = 0
    for clip in clips:
        base = manifest_path.parent
        label_sets = read_label_sets(base / clip['labels'])
        frames = [(i, rgb) for i, rgb in read_clip(base / clip['video'], args.stride)
                  if label_sets.get(i)]
        if not frames:
            continue
        frames_used += len(frames)
        truth = [label_sets[i] for i, _ in frames]
        rgbs = [rgb for _, rgb in frames]
        decoded = {}
        for r in args.offload_res:
            jpegs = [encode_jpeg(center_square(rgb, r), args.quality) for rgb in rgbs]
            jpeg_bytes[r].extend(len(j) for j in jpegs)
            decoded[r] = [decode_image(j) for j in jpegs]
        for config in configs:
            kind, res, model_input = config
            if kind == 'robot':
                top1 = robot.logits(rgbs, res).argmax(axis=1)
            else:
                top1 = server.logits(decoded[res], model_input).argmax(axis=1)
            hits = sum(int(p) in t for p, t in zip(top1, truth))
            c, n = per_object[config].get(clip['object'], (0, 0))
            per_object[config][clip['object']] = (c + hits, n + len(truth))
    objects = sorted(per_object[configs[0]])
    rows = []
    for config in configs:
        pairs = [per_object[config][o] for o in objects]
        accuracy = sum(c for c, _ in pairs) / max(sum(n for _, n in pairs), 1)
        rows.append({'kind': config[0], 'resolution': config[1], 'model_input': config[2],
                     'accuracy': accuracy, 'ci95': bootstrap_ci(pairs)})
    best_robot = {r['resolution']: r for r in rows if r['kind'] == 'robot'}
    gaps = []
    for row in rows:
        if row['kind'] != 'server':
            continue
        for res in best_robot:
            server_pairs = per_object[('server', row['resolution'], row['model_input'])]
            robot_pairs = per_object[('robot', res, res)]
            rng = np.random.default_rng(1)
            sc = np.array([server_pairs[o][0] for o in objects], dtype=float)
            rc = np.array([robot_pairs[o][0] for o in objects], dtype=float)
            n = np.array([robot_pairs[o][1] for o in objects], dtype=float)
            picks = rng.integers(0, len(objects), (2000, len(objects)))
            diffs = (sc[picks].sum(1) - rc[picks].sum(1)) / n[picks].sum(1)
            gaps.append({'server': [row['resolution'], row['model_input']], 'robot': res,
                         'gap': float((sc.sum() - rc.sum()) / n.sum()),
                         'ci95': [float(np.percentile(diffs, 2.5)),
                                  float(np.percentile(diffs, 97.5))]})
    timing = {r: robot.latency_ms(repeats=20, input_size=r) for r in args.robot_res}
    timing_server = {s: server.latency_ms(repeats=10, input_size=s)
                     for s in sorted({c[2] for c in configs if c[0] == 'server'})}
    print(f'split {args.split}: {len(objects)} objects, {frames_used} labelled frames '
          f'(stride {args.stride}), {time.monotonic() - started:.0f} s; accuracy against TRUE '
          f'labels (top-1 in the label set), 95 % CI over objects')
    for row in rows:
        extra = (f'robot {timing[row["resolution"]]:.2f} ms/frame' if row['kind'] == 'robot'
                 else f'server input {row["model_input"]} ({timing_server[row["model_input"]]:.1f}'
                 f' ms), JPEG q{args.quality} mean '
                 f'{np.mean(jpeg_bytes[row["resolution"]]) / 1e3:.1f} KB')
        print(f'  {row["kind"]:6s} @{row["resolution"]:4d}: {100 * row["accuracy"]:5.1f} % '
              f'[{100 * row["ci95"][0]:.1f}, {100 * row["ci95"][1]:.1f}]  {extra}')
    for gap in sorted(gaps, key=lambda g: -g['gap'])[:8]:
        print(f'  gap server@{gap["server"][0]} (input {gap["server"][1]}) − robot@{gap["robot"]}'
              f': {100 * gap["gap"]:+.1f} points [{100 * gap["ci95"][0]:+.1f}, '
              f'{100 * gap["ci95"][1]:+.1f}]')
    if args.output:
        Path(args.output).write_text(json.dumps(
            {'split': args.split, 'objects': len(objects), 'rows': rows, 'gaps': gaps,
             'robot_ms': timing, 'server_ms': timing_server,
             'jpeg_kb': {r: float(np.mean(b)) / 1e3 for r, b in jpeg_bytes.items()}}, indent=1))


if __name__ == '__main__':
    main()
