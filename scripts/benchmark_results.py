#!/usr/bin/env python3
"""The README's headline figures, on the true-label benchmark's evaluation split, in one command.

    make results        # = python scripts/benchmark_results.py (after set-up)

1. The robot/server gap: local-only vs each server-only resolution with no link or deadline
   constraint (accuracy against true label sets, 95 % bootstrap intervals over objects; the gap
   is paired by object).
2. Calibration: held-out ECE/MCE/NLL/Brier of the shipped static calibration (fitted by set-up on
   the calibration split) vs the raw confidence, with the interval of the ECE difference.
3. CBO re-measured: ``cbo_eval --benchmark evaluation`` at 0.5/1/2/4 Mbit/s x 100/200/300 ms:
   CBO vs the best non-CBO baseline, CBO's share of the oracle's gain, the online planner vs the
   exact hindsight solver.
Writes artifacts/results/benchmark_results.{json,md}. Nothing is tuned here: every choice was made
on the calibration split.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.core.calibration import load_calibration

BANDWIDTHS_MBPS = (0.5, 1.0, 2.0, 4.0)
DEADLINES_MS = (100, 200, 300)


def run_eval(split, bandwidth_mbps, deadline_ms, extra=()):
    """Run cbo_eval on a benchmark split; return its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'eval.json'
        cmd = [sys.executable, '-m', 'cbo_ros.tools.evaluate', '--benchmark', split,
               '--bandwidth', str(bandwidth_mbps * 1e6), '--deadline-ms', str(deadline_ms),
               '--no-plots', '--no-progress', '--json', str(out), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stdout}\n{done.stderr}')
        return json.loads(out.read_text())


def paired_gap(report, better, worse, rounds=2000, seed=0):
    """Pooled accuracy difference better - worse with a bootstrap over objects (paired)."""
    groups = np.array([s['object'] for s in report['sources']])
    b = np.array([s['strategies'][better]['correct'] for s in report['sources']], float)
    w = np.array([s['strategies'][worse]['correct'] for s in report['sources']], float)
    n = np.array([s['strategies'][worse].get('scored_frames', s['frames'])
                  for s in report['sources']], float)
    units = np.unique(groups)
    index = {u: np.flatnonzero(groups == u) for u in units}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        pick = np.concatenate([index[u] for u in rng.choice(units, len(units))])
        diffs.append((b[pick].sum() - w[pick].sum()) / n[pick].sum())
    interval = [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]
    return float((b.sum() - w.sum()) / n.sum()), interval


def pct(value):
    """Format a share as a percentage."""
    return f'{100 * value:.1f}'


def ci(interval):
    """Format a 95 % interval of shares as percentages."""
    return f'[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]' if interval else ''


def main():
    """Compute every headline figure and write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--split', default='evaluation')
    args = parser.parse_args()
    started = time.monotonic()
    lines, results = [], {'split': args.split}

    # 1. gap: a link and deadline that constrain nothing
    free = run_eval(args.split, 10000.0, 5000.0)
    pooled = free['pooled']
    servers = sorted((n for n in pooled if n.startswith('server_only_')),
                     key=lambda n: pooled[n]['accuracy'])
    best = servers[-1]
    gap, gap_ci = paired_gap(free, best, 'local_only')
    results['gap'] = {'local_only': pooled['local_only'],
                      'servers': {n: pooled[n] for n in servers}, 'best_server': best,
                      'gap': gap, 'gap_ci': gap_ci, 'frames': free['frames'],
                      'objects': len({s['object'] for s in free['sources']})}
    lines.append(f"## Robot/server gap ({args.split} split: {results['gap']['objects']} objects, "
                 f"{free['frames']} frames; accuracy against true label sets, 95 % CI over "
                 'objects)\n')
    lines.append('| answer | accuracy % | 95 % CI |\n| --- | --- | --- |')
    lines.append(f"| robot (int8 Lite0 @ {paths.ROBOT_INPUT_SIZE} px) | "
                 f"{pct(pooled['local_only']['accuracy'])} | "
                 f"{ci(pooled['local_only']['accuracy_ci'])} |")
    for name in servers:
        lines.append(f"| server on a {name.rsplit('_', 1)[1]} px JPEG | "
                     f"{pct(pooled[name]['accuracy'])} | {ci(pooled[name]['accuracy_ci'])} |")
    lines.append(f'\nGap, best server ({best}) − robot: **{100 * gap:+.1f} points** '
                 f'{ci(gap_ci)} (paired over objects).\n')

    # 2. calibration (fitted by set-up on the calibration split)
    bundle = load_calibration(None)
    metrics = (bundle.metrics or {}).get('int8', {})
    held = {k: v for k, v in metrics.items() if k != 'calibration'}
    results['calibration'] = {'method': bundle.method, 'metrics': metrics,
                              'source_info': bundle.source_info.get('benchmark')}
    if held:
        name, rows = next(iter(held.items()))
        lines.append(f'## Calibration (robot int8, held-out set `{name}`; chosen: '
                     f'{bundle.method})\n')
        lines.append('| confidence | ECE % | ECE 95 % CI | MCE % | NLL | Brier | ECE − raw, 95 % CI'
                     ' |\n| --- | --- | --- | --- | --- | --- | --- |')
        for method, m in rows.items():
            diff = m.get('ece_minus_raw_ci')
            lines.append(f"| {method} | {pct(m['ece'])} | {ci(m.get('ece_ci'))} | "
                         f"{pct(m['mce'])} | {m['nll']:.3f} | {m['brier']:.3f} | "
                         f"{ci(diff) if diff else '-'} |")
        lines.append('')

    # 3. CBO grid
    grid = []
    lines.append('## CBO vs baselines (accuracy %, 95 % CI over objects)\n')
    lines.append('| link | deadline | local | best non-CBO baseline | CBO | CBO − best | '
                 'share of oracle gain | cbo_exact | oracle |\n| --- | --- | --- | --- | --- | '
                 '--- | --- | --- | --- |')
    for mbps in BANDWIDTHS_MBPS:
        for deadline in DEADLINES_MS:
            report = run_eval(args.split, mbps, deadline)
            p, comp = report['pooled'], report['comparisons']
            diff = comp['cbo_minus_best_baseline']
            share = comp.get('cbo_oracle_gain_share', {})
            grid.append({'bandwidth_mbps': mbps, 'deadline_ms': deadline, 'pooled': p,
                         'comparisons': comp})
            base = diff['best_baseline']
            lines.append(
                f"| {mbps:g} Mbit/s | {deadline} ms | {pct(p['local_only']['accuracy'])} | "
                f"{base} {pct(p[base]['accuracy'])} | **{pct(p['cbo']['accuracy'])}** "
                f"{ci(p['cbo']['accuracy_ci'])} | {100 * diff['difference']:+.1f} "
                f"{ci(diff['ci'])} | "
                + (f"{100 * share['share']:.0f} % {ci(share['ci'])}" if share.get('share')
                   is not None else '-')
                + f" | {pct(p['cbo_exact']['accuracy']) if 'cbo_exact' in p else '-'} | "
                f"{pct(p['oracle']['accuracy'])} |")
    results['grid'] = grid
    elapsed = time.monotonic() - started
    lines.append(f'\nRTT 20 ms, 15 fps, JPEG q90, robot at {paths.ROBOT_INPUT_SIZE} px; '
                 f'computed in {elapsed:.0f} s by `make results`.')
    text = '\n'.join(lines)
    print(text)
    out = paths.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'benchmark_results.json').write_text(json.dumps(results, indent=1))
    (out / 'benchmark_results.md').write_text(text + '\n')
    print(f'\nwritten: {out / "benchmark_results.md"}, {out / "benchmark_results.json"}')


if __name__ == '__main__':
    main()
