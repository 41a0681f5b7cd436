"""robot_bringup: the robot's nodes in one process (what launch/robot.launch.py starts).

Starts camera_node, npu_classifier_node, network_monitor_node and offload_planner_node from the
same parameter file as the launch file (``config/robot.yaml``), parsed by rclpy itself
(``--ros-args --params-file``), in one MultiThreadedExecutor. Plain ``node_name:`` sections of the
file are rewritten to ``/**/node_name:`` so they also apply under ``--namespace``.

Examples::

    robot_bringup --video bikes.mp4 --mode once
    robot_bringup --namespace robot1 --params-file my_robot.yaml --strategy local_only
    robot_bringup --no-camera            # frames come from elsewhere (a real camera driver)
"""

import argparse
import importlib
import inspect
import os
import sys
import tempfile
import time

import rclpy
import yaml
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from cbo_ros.paths import config_dir


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='robot_bringup', description=__doc__.split('\n')[0])
    parser.add_argument('--params-file', default=str(config_dir() / 'robot.yaml'),
                        help='ROS 2 parameter file (default: config/robot.yaml)')
    parser.add_argument('--namespace', default='', help='namespace of all nodes')
    parser.add_argument('--video', '--source', dest='source', default=None,
                        help='camera source (overrides camera_node.source)')
    parser.add_argument('--mode', choices=('loop', 'once'), default=None,
                        help='camera mode (overrides camera_node.mode)')
    parser.add_argument('--rate', type=float, default=None, help='camera rate (fps)')
    parser.add_argument('--max-frames', type=int, default=None, help='camera frames per pass')
    parser.add_argument('--start-delay', type=float, default=None,
                        help='camera start delay in seconds')
    parser.add_argument('--strategy', default=None, help='planner strategy')
    parser.add_argument('--deadline-ms', type=float, default=None, help='planner deadline')
    parser.add_argument('--exit-when-done', action='store_true',
                        help='exit once the camera (mode once) is done and the last deadline '
                             'has passed')
    parser.add_argument('--no-camera', action='store_true', help='do not start camera_node')
    parser.add_argument('--no-monitor', action='store_true',
                        help='do not start network_monitor_node')
    parser.add_argument('--threads', type=int, default=4, help='executor threads')
    parser.add_argument('--log-level', default=None, help='debug, info, warn, error')
    return parser.parse_known_args(argv)


def namespaced_params_file(path):
    """Copy of a parameter file whose plain ``node:`` keys become ``/**/node:``."""
    with open(path) as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise ValueError(f'{path}: not a ROS 2 parameter file')
    rewritten = {(key if str(key).startswith('/') else f'/**/{key}'): value
                 for key, value in content.items()}
    handle = tempfile.NamedTemporaryFile('w', prefix='robot_params_', suffix='.yaml',
                                         delete=False)
    with handle:
        yaml.safe_dump(rewritten, handle)
    return handle.name


def node_class(module_name, preferred):
    """Return the Node subclass ``preferred`` of a module (or the first one defined there)."""
    module = importlib.import_module(module_name)
    if hasattr(module, preferred):
        return getattr(module, preferred)
    for _, value in inspect.getmembers(module, inspect.isclass):
        if issubclass(value, Node) and value.__module__ == module.__name__:
            return value
    raise ImportError(f'{module_name} defines no rclpy Node')


def overrides(pairs):
    return [Parameter(name, value=value) for name, value in pairs if value is not None]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--ros-args' in argv:
        index = argv.index('--ros-args')
        argv, ros_args = argv[:index], argv[index + 1:]
    else:
        ros_args = []
    options, unknown = parse_args(argv)
    if unknown:
        print(f'robot_bringup: unknown arguments {unknown}', file=sys.stderr)
        return 2
    if not os.path.isfile(options.params_file):
        print(f'robot_bringup: parameter file not found: {options.params_file}', file=sys.stderr)
        return 2
    params_file = namespaced_params_file(options.params_file)
    rclpy_args = ['robot_bringup', '--ros-args', '--params-file', params_file] + ros_args
    if options.log_level:
        rclpy_args += ['--log-level', options.log_level]
    rclpy.init(args=rclpy_args)
    logger = rclpy.logging.get_logger('robot_bringup')
    executor = MultiThreadedExecutor(num_threads=max(2, options.threads))
    nodes = []
    code = 0
    try:
        specs = []
        if not options.no_camera:
            specs.append(('cbo_ros.nodes.camera_node', 'CameraNode', overrides([
                ('source', options.source), ('mode', options.mode), ('rate_hz', options.rate),
                ('max_frames', options.max_frames), ('start_delay_s', options.start_delay)])))
        specs.append(('cbo_ros.nodes.npu_classifier_node', 'NpuClassifierNode', []))
        if not options.no_monitor:
            specs.append(('cbo_ros.nodes.network_monitor_node', 'NetworkMonitorNode', []))
        specs.append(('cbo_ros.nodes.offload_planner_node', 'OffloadPlannerNode', overrides([
            ('strategy', options.strategy), ('deadline_ms', options.deadline_ms)])))
        camera = None
        for module_name, class_name, params in specs:
            try:
                cls = node_class(module_name, class_name)
            except ImportError as error:
                if class_name != 'NetworkMonitorNode':
                    raise
                logger.warning(f'network monitor not started ({error}): the planner uses its '
                               'initial bandwidth estimate')
                continue
            node = cls(namespace=options.namespace, parameter_overrides=params)
            nodes.append(node)
            executor.add_node(node)
            if class_name == 'CameraNode':
                camera = node
        logger.info(f"started {', '.join(n.get_fully_qualified_name() for n in nodes)} "
                    f'(params {options.params_file})')
        done_since = None
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
            if options.exit_when_done and camera is not None and camera.done:
                done_since = done_since or time.monotonic()
                deadline_s = nodes[-1].deadline_ns / 1e9 if hasattr(nodes[-1], 'deadline_ns') \
                    else 1.0
                if time.monotonic() - done_since > deadline_s + 1.0:
                    logger.info('camera done and last deadline passed: exiting')
                    break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # noqa: BLE001 - report why bring-up failed, exit non-zero
        logger.fatal(f'bring-up failed: {type(error).__name__}: {error}')
        code = 1
    finally:
        executor.shutdown(timeout_sec=2.0)
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
        os.unlink(params_file)
    return code


if __name__ == '__main__':
    sys.exit(main())
