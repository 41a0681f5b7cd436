#!/usr/bin/env python3
"""Premodel figures on the true-label benchmark's evaluation split (docs/premodel.md).

    make premodel       # build (cached) + cbo_premodel evaluate + this script
    python scripts/premodel_results.py [--grid]

1. premodel vs each single local candidate: accuracy and mean CPU time per frame, 95 %
   intervals over objects (``cbo_premodel evaluate``; Taylor et al.'s +7.52 % / 1.8x as anchor).
2. premodel and premodel_cbo next to CBO, the baselines and the oracle
   (``cbo_eval --benchmark evaluation --premodel default``) at 1 Mbit/s / 200 ms, and with
   ``--grid`` at every point of ``make results``' grid (0.5/1/2/4 Mbit/s x 100/200/300 ms).
Writes artifacts/results/premodel_results.{json,md}. The premodel was trained and tuned on the
calibration split only.
"""

import argparse
import json
import subprocess
import sys
import time

from cbo_ros.assets import paths
from benchmark_results import BANDWIDTHS_MBPS, DEADLINES_MS, ci, paired_gap, pct, run_eval

STRATEGIES = ('local_only', 'premodel', 'cbo', 'premodel_cbo', 'oracle')


def premodel_table(split):
    """Run ``cbo_premodel evaluate``; return its JSON report."""
    out = paths.results_dir() / f'premodel_{split}.json'
    cmd = [sys.executable, '-m', 'cbo_ros.tools.premodel', 'evaluate', '--split', split,
           '--no-progress', '--json', str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stdout}\n{done.stderr}')
    print(done.stdout)
    return json.loads(out.read_text())


def main():
    """Compute the figures and write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--split', default='evaluation')
    parser.add_argument('--grid', action='store_true', help='the whole bandwidth x deadline grid')
    args = parser.parse_args()
    started = time.monotonic()
    results = {'split': args.split}
    table = premodel_table(args.split)
    results['selection'] = table
    lines = [f"## Premodel vs single local models ({args.split} split: {table['objects']} "
             f"objects, {table['frames']} labelled frames; 95 % CI over objects)\n",
             '| local answer | accuracy % | 95 % CI | mean time ms | chosen % |',
             '| --- | --- | --- | --- | --- |']
    for name, row in table['rows'].items():
        share = table['chosen_share'].get(name)
        lines.append(f"| {name} | {pct(row['accuracy'])} | {ci(row['accuracy_ci'])} | "
                     f"{row['mean_time_ms']:.1f} | "
                     f"{'-' if share is None else f'{100 * share:.0f}'} |")
    comp = table['comparisons']
    lines.append(f"\nPremodel − most capable: {100 * comp['accuracy_minus_largest'][0]:+.1f} "
                 f"points {ci(comp['accuracy_minus_largest'][1:])}, "
                 f"{comp['speedup_vs_largest'][0]:.2f}× less time "
                 f"[{comp['speedup_vs_largest'][1]:.2f}, {comp['speedup_vs_largest'][2]:.2f}]; "
                 f"premodel − cheapest: {100 * comp['accuracy_minus_cheapest'][0]:+.1f} points "
                 f"{ci(comp['accuracy_minus_cheapest'][1:])} (Taylor et al.: +7.52 %, 1.8×). "
                 f"Premodel setting: {table['setting']}; oracle selection "
                 f"{pct(table['oracle_selection_accuracy'])} %.\n")
    points = [(m, d) for m in BANDWIDTHS_MBPS for d in DEADLINES_MS] if args.grid \
        else [(1.0, 200)]
    lines.append('## With offloading (accuracy %, 95 % CI over objects)\n')
    lines.append('| link | deadline | ' + ' | '.join(STRATEGIES) +
                 ' | best non-CBO baseline | premodel_cbo offloads % | premodel_cbo − premodel |'
                 ' premodel_cbo − cbo |\n|' + ' --- |' * (len(STRATEGIES) + 6))
    grid = []
    for mbps, deadline in points:
        report = run_eval(args.split, mbps, deadline, ['--premodel', 'default'])
        pooled, comp = report['pooled'], report['comparisons']
        base = comp['cbo_minus_best_baseline']['best_baseline']
        gaps = {f'{a}_minus_{b}': paired_gap(report, a, b)
                for a, b in (('premodel_cbo', 'premodel'), ('premodel_cbo', 'cbo'))}
        grid.append({'bandwidth_mbps': mbps, 'deadline_ms': deadline, 'pooled': pooled,
                     'comparisons': comp, 'paired': gaps})
        cells = [f"{pct(pooled[n]['accuracy'])} {ci(pooled[n]['accuracy_ci'])}"
                 for n in STRATEGIES]
        cells += [f"{base} {pct(pooled[base]['accuracy'])}",
                  f"{100 * pooled['premodel_cbo']['offload_share']:.0f}"]
        cells += [f'{100 * g:+.1f} {ci(i)}' for g, i in gaps.values()]
        lines.append(f'| {mbps:g} Mbit/s | {deadline} ms | ' + ' | '.join(cells) + ' |')
        print(lines[-1], flush=True)
    results['grid'] = grid
    lines.append(f'\nRTT 20 ms, 15 fps, JPEG q90; local latency 15 ms plus the premodel\'s extra '
                 'time; differences paired over objects. The oracle is that of the int8 robot '
                 '(local_only): not an upper bound of the premodel strategies. Computed in '
                 f'{time.monotonic() - started:.0f} s.')
    text = '\n'.join(lines)
    print(text)
    out = paths.results_dir()
    (out / 'premodel_results.json').write_text(json.dumps(results, indent=1))
    (out / 'premodel_results.md').write_text(text + '\n')
    print(f'\nwritten: {out / "premodel_results.md"}')


if __name__ == '__main__':
    main()
