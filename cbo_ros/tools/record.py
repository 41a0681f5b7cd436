"""cbo_record: record a live cbo_ros run into a rosbag2 (MCAP by default, or sqlite3).

A friendlier front end to ``bag_recorder_node``: the options become the node's parameters.
Stop it with Ctrl-C (the bag is closed and complete) or give ``--duration``. Replay the bag with
``camera_node`` (``source:=<bag>``; ``keep_recorded_stamps``, ``publish_clock`` and
``use_sim_time`` for the recorded stamps and clock: ``robot_bringup --video <bag>
--keep-recorded-stamps --publish-clock --use-sim-time``), score it with ``cbo_eval <bag>``
(re-running the models) or ``cbo_eval <bag> --recorded-results`` (what the robot actually
answered).
"""

import argparse
import sys

from cbo_ros.nodes.bag_recorder_node import DEFAULT_TOPICS, IMAGE_TOPICS, main as run_node
from cbo_ros.nodes.bag_recorder_node import STORAGES


def ros_arguments(args):
    """Translate the command-line options into ``--ros-args`` for the recorder node."""
    ros = ['--ros-args', '-p', f'output:={args.output}', '-p', f'storage:={args.storage}',
           '-p', f'images:={args.images}', '-p', f'max_duration_s:={float(args.duration)}']
    topics = args.topics if args.topics is not None else DEFAULT_TOPICS
    ros += ['-p', 'topics:=[' + ','.join(f"'{t}'" for t in topics) + ']']
    if args.namespace:
        ros += ['-r', f"__ns:=/{args.namespace.strip('/')}"]
    if args.use_sim_time:
        ros += ['-p', 'use_sim_time:=true']
    return ros


def main(argv=None):
    """Parse the options and run the recorder node until Ctrl-C or ``--duration``."""
    parser = argparse.ArgumentParser(prog='cbo_record', description=__doc__.splitlines()[0])
    parser.add_argument('-o', '--output', default='',
                        help='bag directory to create (default: cbo_<date>_<time>)')
    parser.add_argument('--storage', choices=STORAGES, default='mcap')
    parser.add_argument('--images', choices=sorted(IMAGE_TOPICS), default='raw',
                        help='camera frames: image_raw (raw), image_raw/compressed, both, none')
    parser.add_argument('--topics', nargs='*', default=None,
                        help=f'other topics (default: {" ".join(DEFAULT_TOPICS)})')
    parser.add_argument('--namespace', default='', help="the robot's namespace, e.g. robot1")
    parser.add_argument('--duration', type=float, default=0.0,
                        help='stop after this many seconds (0: until Ctrl-C)')
    parser.add_argument('--use-sim-time', action='store_true',
                        help='stamp messages with /clock instead of the system clock')
    args = parser.parse_args(argv)
    run_node([sys.argv[0]] + ros_arguments(args))


if __name__ == '__main__':
    main()
