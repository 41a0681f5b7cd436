#!/usr/bin/env python3
"""Planner benchmarks (printed figures, not timed tests).

- decision time per frame of every online strategy (mean, p99), on the real candidates of the
  evaluation video (bikes: real JPEG sizes, calibrated confidences);
- the exact solver's time on windows of several sizes (DP over 1 ms link-time steps);
- evaluator throughput once the model outputs are cached (frames replayed per second, all
  strategies).

Usage: python scripts/benchmark_planner.py [--media bikes] [--bandwidth 1e6]
"""

import argparse
import time

import numpy as np

from cbo_ros.core.calibration import load_calibration
from cbo_ros.evaluation.outputs_cache import load_outputs
from cbo_ros.evaluation.simulator import (SimulationConfig, default_strategies, prepare_frames,
                                          replay, run_strategies)
from cbo_ros.evaluation.traces import NetworkTrace
from cbo_ros.core.exact_solver import jobs_from_candidates, solve_exact
from cbo_ros.core.planner import LinkState, make_planner


def main():
    """Print the benchmark figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--media', default='bikes')
    parser.add_argument('--bandwidth', type=float, default=1e6)
    parser.add_argument('--deadline-ms', type=float, default=200.0)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    bundle = load_calibration()
    outputs = load_outputs(args.media, robot_tags=('int8',),
                           offload_resolutions=bundle.offload_resolutions)
    config = SimulationConfig(deadline_s=args.deadline_ms / 1e3)
    trace = NetworkTrace.constant(args.bandwidth, 0.02)
    frames = prepare_frames(outputs, bundle, config)
    n = len(frames.candidates)
    print(f'{args.media}: {n} frames, {len(frames.resolutions)} offload resolutions, '
          f'{trace.name}, deadline {args.deadline_ms:g} ms')

    print('\nplanner decision time per frame (online strategies):')
    for name in default_strategies(frames.resolutions):
        if name in ('oracle', 'cbo_exact'):
            continue
        times = np.concatenate([replay(make_planner(name, bundle), frames, trace,
                                       bundle).decision_s for _ in range(args.repeats)])
        print(f'  {name:<22} mean {times.mean() * 1e6:7.1f} us   p99 '
              f'{np.percentile(times, 99) * 1e6:7.1f} us')

    print('\nexact solver (exact Pareto frontier, quantum 0) on windows of W frames:')
    link = LinkState(args.bandwidth, 0.02)
    for window in (5, 10, 25, 50, 100, n):
        samples = []
        starts = range(0, n - window + 1, max(1, window)) if window < n else [0]
        for start in list(starts)[:10]:
            jobs = jobs_from_candidates(frames.candidates[start:start + window], link)
            began = time.perf_counter()
            solution = solve_exact(jobs, trace.transfer_finish)
            samples.append(time.perf_counter() - began)
        per_frame = np.array(samples) / window
        print(f'  W={window:<4} solve mean {np.mean(samples) * 1e3:8.2f} ms   p99 '
              f'{np.percentile(samples, 99) * 1e3:8.2f} ms   per frame '
              f'{per_frame.mean() * 1e6:7.1f} us   peak frontier {solution.states_peak}')

    print('\nevaluator throughput (cached outputs, every strategy incl. exact and oracle):')
    began = time.perf_counter()
    results, _ = run_strategies(outputs, bundle, trace, config)
    elapsed = time.perf_counter() - began
    print(f'  {len(results)} strategies x {n} frames in {elapsed:.2f} s: '
          f'{n / elapsed:.0f} frames/s (all strategies), '
          f'{n * len(results) / elapsed:.0f} strategy-frames/s')


if __name__ == '__main__':
    main()
