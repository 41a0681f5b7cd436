"""Print the planner results table of docs/evaluation.md from the current code and calibration.

For each held-out video, deadline and constant bandwidth (RTT 20 ms, loss 0): local-only, the
best baseline, CBO, cbo_adaptive, the exact hindsight solver of CBO's model, the oracle, and
CBO's share of the oracle's gain over local-only. Usage (after ``source cbo_env.sh``)::

    python scripts/results_table.py [--videos bikes.mp4 cup.mp4] [--deadlines-ms 200 100]
"""

import argparse

from cbo_ros.core.calibration import load_calibration
from cbo_ros.evaluation.outputs_cache import load_outputs
from cbo_ros.evaluation.simulator import SimulationConfig
from cbo_ros.evaluation.traces import NetworkTrace
from cbo_ros.tools.evaluate import evaluate

BASELINES = ('local_only', 'server_only_96', 'server_only_128', 'server_only_176',
             'server_only_224', 'server_only_260', 'raw_threshold', 'calibrated_threshold',
             'bandwidth_driven')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--videos', nargs='+', default=['bikes.mp4', 'cup.mp4'])
    parser.add_argument('--deadlines-ms', type=float, nargs='+', default=[200.0, 100.0])
    parser.add_argument('--bandwidths-mbps', type=float, nargs='+', default=[0.5, 1, 2, 4])
    parser.add_argument('--rtt-ms', type=float, default=20.0)
    args = parser.parse_args()
    bundle = load_calibration()
    print('| video | deadline | Mbit/s | local | best baseline | cbo | cbo_adaptive | cbo_exact '
          '| oracle | share |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for video in args.videos:
        outputs = load_outputs(video, robot_tags=('int8',),
                               robot_resolutions=sorted(bundle.calibrators),
                               offload_resolutions=bundle.offload_resolutions,
                               jpeg_quality=bundle.jpeg_quality, progress=False)
        for deadline in args.deadlines_ms:
            for mbps in args.bandwidths_mbps:
                trace = NetworkTrace.constant(mbps * 1e6, args.rtt_ms / 1e3, 0.0)
                report = evaluate(outputs, bundle, trace,
                                  SimulationConfig(deadline_s=deadline / 1e3))
                acc = {name: 100 * s['accuracy'] for name, s in report['strategies'].items()}
                best = max(BASELINES, key=lambda name: acc[name])
                share = report['oracle_gain_share'].get('cbo')
                share = f'{100 * share:.0f} %' if share is not None else '-'
                print(f"| {outputs.name.split('.')[0]} | {deadline:.0f} ms | {mbps:g} | "
                      f"{acc['local_only']:.1f} | {acc[best]:.1f} ({best}) | "
                      f"**{acc['cbo']:.1f}** | {acc['cbo_adaptive']:.1f} | "
                      f"{acc['cbo_exact']:.1f} | {acc['oracle']:.1f} | {share} |", flush=True)


if __name__ == '__main__':
    main()
