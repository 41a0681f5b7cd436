#!/usr/bin/env python3
"""Early-exit partition offloading on the true-label benchmark (docs/early_exit.md).

    python scripts/early_exit_results.py [--split evaluation]

Builds the early-exit parts and fits their per-branch temperatures when missing (calibration
split), then reports on the evaluation split:
1. per branch: accuracy, held-out ECE of the raw vs the temperature-scaled confidence, the
   tail's accuracy after the quantised tensor, tensor bytes vs JPEG bytes per offload;
2. accuracy of early_exit_partition and early_exit_partition_uncalibrated next to local_only,
   calibrated_threshold and cbo at 0.5/1/2/4 Mbit/s x 100/200/300 ms (``cbo_eval``).
Writes artifacts/results/early_exit_results.{json,md}.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cbo_ros.assets import paths

BANDWIDTHS_MBPS = (0.5, 1.0, 2.0, 4.0)
DEADLINES_MS = (100, 200, 300)
STRATEGIES = ('local_only', 'calibrated_threshold', 'cbo', 'early_exit_partition',
              'early_exit_partition_uncalibrated')


def run_eval(split, bandwidth_mbps, deadline_ms):
    """Run cbo_eval on a benchmark split with the compared strategies; return its report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'eval.json'
        cmd = [sys.executable, '-m', 'cbo_ros.tools.evaluate', '--benchmark', split,
               '--bandwidth', str(bandwidth_mbps * 1e6), '--deadline-ms', str(deadline_ms),
               '--no-plots', '--no-progress', '--json', str(out), '--strategies', *STRATEGIES]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stdout}\n{done.stderr}')
        return json.loads(out.read_text())


def p_tar_sweep(split, thresholds=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9), bandwidth_mbps=1.0,
                deadline_ms=200):
    """Pooled accuracy and exit share of both early-exit strategies for several p_tar."""
    import numpy as np

    from cbo_ros.core.early_exit import EARLY_EXIT_STRATEGIES
    from cbo_ros.evaluation.early_exit_eval import replay_early_exit
    from cbo_ros.evaluation.outputs_cache import load_outputs
    from cbo_ros.evaluation.pooling import benchmark_sources
    from cbo_ros.evaluation.simulator import SimulationConfig
    from cbo_ros.evaluation.traces import NetworkTrace
    trace = NetworkTrace.constant(bandwidth_mbps * 1e6, 0.02)
    loaded = [load_outputs(s.media, robot_tags=('int8',), progress=False)
              for s in benchmark_sources(split)]
    rows = []
    for p_tar in thresholds:
        config = SimulationConfig(deadline_s=deadline_ms / 1e3, p_tar=p_tar)
        row = {'p_tar': p_tar}
        for name, key in zip(EARLY_EXIT_STRATEGIES, ('calibrated', 'uncalibrated')):
            correct = scored = exits = frames = 0
            for outputs in loaded:
                replay = replay_early_exit(name, outputs, trace, config)
                keep = outputs.labelled
                correct += float(replay.correct[keep].sum())
                scored += int(keep.sum())
                exits += int(np.sum(replay.resolution == 0))
                frames += len(outputs)
            row[key], row[f'{key}_exit'] = correct / scored, exits / frames
        rows.append(row)
    return rows


def pct(value):
    """Format a share as a percentage."""
    return f'{100 * value:.1f}'


def main():
    """Compute and write the early-exit figures."""
    from cbo_ros.assets.early_exit_export import build_early_exit
    from cbo_ros.evaluation import early_exit_eval
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--split', default='evaluation')
    parser.add_argument('--grid', action='store_true', help='also the bandwidth x deadline grid')
    args = parser.parse_args()
    started = time.monotonic()
    manifest = build_early_exit()
    calibration_file = early_exit_eval.calibration_path()
    parts = early_exit_eval.shared_model().directory / 'manifest.json'
    if not calibration_file.is_file() or \
            calibration_file.stat().st_mtime < parts.stat().st_mtime:    # parts rebuilt
        early_exit_eval.main(['calibrate', '--evaluation-split', args.split])
    calibration = early_exit_eval.load_early_exit_calibration()
    branches = calibration.metrics['held_out']['branches']
    lines = [f"## Early-exit branches ({args.split} split, "
             f"{calibration.metrics['held_out']['frames']} labelled frames)\n",
             '| partition | head ms | tail ms | T | branch acc % | ECE raw % | '
             'ECE calibrated % | tail acc % | tensor bytes (mean / p95) |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for p in manifest['partitions']:
        b = branches[str(p['blocks'])]
        lines.append(f"| b{p['blocks']} {p['tensor_shape'][1:]} | {p['head_ms']:.2f} | "
                     f"{p['tail_ms']:.2f} | {b['temperature']:.2f} | "
                     f"{pct(b['branch_accuracy'])} | {pct(b['ece_raw'])} | "
                     f"{pct(b['ece_calibrated'])} | {pct(b['tail_accuracy'])} | "
                     f"{b['tensor_bytes_mean']:.0f} / {b['tensor_bytes_p95']:.0f} |")
    jpeg = branches['jpeg_bytes_mean']
    lines.append('\nJPEG bytes per offload (mean, quality 90): ' +
                 ', '.join(f'{r} px {float(v):.0f}' for r, v in jpeg.items()) +
                 f"; full Lite0 fp32 {manifest['full_ms']:.2f} ms per frame here.\n")
    results = {'split': args.split, 'manifest': manifest, 'calibration': calibration.to_dict()}
    sweep = p_tar_sweep(args.split)
    results['p_tar_sweep'] = sweep
    lines.append('## Accuracy % vs p_tar at 1 Mbit/s, 200 ms (exit share % in brackets)\n')
    lines.append('| p_tar | calibrated | uncalibrated |\n| --- | --- | --- |')
    for row in sweep:
        lines.append(f"| {row['p_tar']:.2f} | {pct(row['calibrated'])} "
                     f"({pct(row['calibrated_exit'])}) | {pct(row['uncalibrated'])} "
                     f"({pct(row['uncalibrated_exit'])}) |")
    lines.append('')
    print('\n'.join(lines), flush=True)
    points = [(1.0, 200)]
    if args.grid:
        points += [(m, d) for m in BANDWIDTHS_MBPS for d in DEADLINES_MS if (m, d) != (1.0, 200)]
    lines.append('## Accuracy % (95 % CI over objects) and offload share %\n')
    lines.append('| link | deadline | ' + ' | '.join(STRATEGIES) + ' |\n| --- | --- | ' +
                 ' | '.join('---' for _ in STRATEGIES) + ' |')
    grid = []
    for mbps, deadline in points:
        report = run_eval(args.split, mbps, deadline)
        pooled = report['pooled']
        grid.append({'bandwidth_mbps': mbps, 'deadline_ms': deadline, 'pooled': pooled})
        cells = []
        for name in STRATEGIES:
            s = pooled[name]
            ci = s.get('accuracy_ci') or [0, 0]
            cells.append(f"{pct(s['accuracy'])} [{pct(ci[0])}, {pct(ci[1])}] "
                         f"({pct(s.get('offload_share', 0.0))} off)")
        lines.append(f'| {mbps:g} Mbit/s | {deadline} ms | ' + ' | '.join(cells) + ' |')
        print(lines[-1], flush=True)
    results['grid'] = grid
    results['seconds'] = round(time.monotonic() - started, 1)
    out = paths.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'early_exit_results.json').write_text(json.dumps(results, indent=2))
    (out / 'early_exit_results.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    print(f"wrote {out / 'early_exit_results.md'} in {results['seconds']} s")


if __name__ == '__main__':
    main()
