"""robot_bringup: the robot's nodes, each in its own process (what launch/robot.launch.py starts).

Starts camera_node, npu_classifier_node, network_monitor_node and offload_planner_node from the
same parameter file as the launch file (``config/robot.yaml``). By default every node runs in its
own process, exactly as ``ros2 launch`` does with launch_ros ``Node`` actions:
``python -m cbo_ros.nodes.<node> --ros-args --params-file <file> [--params-file <overrides>]
-r __ns:=/<namespace>``. SIGINT/SIGTERM are forwarded to the children once; a child still
running after ``--stop-timeout`` seconds is terminated, then killed. Children die with the
bring-up (``PR_SET_PDEATHSIG``) if it is killed. Why separate processes: in one process the four
nodes share one GIL and one executor, and on a loaded 2-core machine frames were answered late or
lost (see docs/live_system.md).

``--single-process`` keeps the former composition: all nodes in one process on a
MultiThreadedExecutor (``--executor events`` for rclpy's experimental EventsExecutor).

Plain ``node_name:`` sections of the file are rewritten to ``/**/node_name:`` so they also apply
under ``--namespace``.

Like launch/robot.launch.py: ``--image-topic`` remaps ``image_raw`` of the camera, the classifier
and the planner (frames from your own camera driver: ``--no-camera --image-topic
/my_cam/image``), and the Fast DDS profile is set through the environment:
``FASTDDS_DEFAULT_PROFILES_FILE`` keeps its value when set, else becomes the shipped
config/fastdds_profile.xml (``--fastdds-profile``); ``RMW_FASTRTPS_PUBLICATION_MODE`` becomes
``AUTO`` unless set.

Examples::

    robot_bringup --video bikes.mp4 --mode once
    robot_bringup --namespace robot1 --params-file my_robot.yaml --strategy local_only
    robot_bringup --no-camera --image-topic /camera/image_raw   # your own camera driver
    robot_bringup --video run1 --keep-recorded-stamps --publish-clock --use-sim-time
    robot_bringup --no-camera --image-topic /cam/image_raw --input-transport compressed
    robot_bringup --single-process --executor events
"""

import argparse
import contextlib
import ctypes
import importlib
import inspect
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import yaml

from cbo_ros.assets.paths import config_dir
from cbo_ros.core.early_exit import EARLY_EXIT_STRATEGIES

IMAGE_READERS = ('camera_node', 'npu_classifier_node', 'offload_planner_node',
                 'early_exit_node')
# early_exit_node serves EARLY_EXIT_STRATEGIES (head on the robot, tail on the server) in place
# of npu_classifier_node + offload_planner_node; its parameters: config/early_exit.yaml.
EARLY_EXIT_NODE = ('early_exit_node', 'EarlyExitNode', None)
NODES = (  # (executable / module, class, option that disables it)
    ('camera_node', 'CameraNode', 'no_camera'),
    ('npu_classifier_node', 'NpuClassifierNode', None),
    ('network_monitor_node', 'NetworkMonitorNode', 'no_monitor'),
    ('offload_planner_node', 'OffloadPlannerNode', None),
)
_PR_SET_PDEATHSIG = 1


# SROS2 enclaves of the nodes (as launch/*.launch.py name them).
ENCLAVE_ROOT = '/cbo_ros'


def parse_args(argv):
    """Parse the bring-up options; return (options, unknown arguments)."""
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
    parser.add_argument('--strategy', default=None,
                        help='planner strategy (early_exit_partition[_uncalibrated]: '
                             'early_exit_node replaces the classifier and the planner; '
                             'docs/early_exit.md)')
    parser.add_argument('--deadline-ms', type=float, default=None, help='planner deadline')
    parser.add_argument('--premodel', default=None, metavar='FILE',
                        help="premodel mode: the classifier picks a model per frame with this "
                             "premodel ('default': calibration/premodel.npz) and the planner "
                             'uses it for premodel_cbo (the default strategy then; '
                             'docs/premodel.md)')
    parser.add_argument('--exit-when-done', action='store_true',
                        help='exit once the camera (mode once) is done and the last deadline '
                             'has passed')
    parser.add_argument('--no-camera', action='store_true',
                        help='do not start camera_node (frames come from your own driver)')
    parser.add_argument('--image-topic', default=None,
                        help='frames topic of the classifier and the planner (remap of '
                             'image_raw; the camera, when started, publishes there too)')
    parser.add_argument('--input-transport', choices=('raw', 'compressed'), default=None,
                        help='frames the classifier and the planner read: raw image_raw or '
                             'image_raw/compressed (JPEG/PNG, image_transport convention)')
    parser.add_argument('--keep-recorded-stamps', action='store_true',
                        help='camera playing a rosbag2: keep the recorded header stamps and '
                             'frame ids (implies --mode once unless --mode is given)')
    parser.add_argument('--publish-clock', action='store_true',
                        help='camera publishes /clock from the recorded time (use with '
                             '--use-sim-time)')
    parser.add_argument('--use-sim-time', action='store_true',
                        help='every node runs on /clock (use_sim_time: true)')
    parser.add_argument('--fastdds-profile', default=None,
                        help='Fast DDS XML profile (default: $FASTDDS_DEFAULT_PROFILES_FILE if '
                             'set, else the shipped config/fastdds_profile.xml)')
    parser.add_argument('--no-monitor', action='store_true',
                        help='do not start network_monitor_node')
    parser.add_argument('--single-process', action='store_true',
                        help='all nodes in this process (one executor) instead of one process '
                             'per node')
    parser.add_argument('--executor', choices=('multi', 'events'), default='multi',
                        help='--single-process executor: MultiThreadedExecutor (multi) or '
                             'rclpy.experimental.EventsExecutor (events)')
    parser.add_argument('--threads', type=int, default=4,
                        help='MultiThreadedExecutor threads (--single-process)')
    parser.add_argument('--stop-timeout', type=float, default=5.0,
                        help='seconds a child gets to exit after SIGINT')
    parser.add_argument('--log-level', default=None, help='debug, info, warn, error')
    parser.add_argument('--enclave-root', default=ENCLAVE_ROOT,
                        help='SROS2: node N runs in enclave ENCLAVE_ROOT/N (used only with '
                             'ROS_SECURITY_ENABLE=true; docs/security.md)')
    return parser.parse_known_args(argv)


def namespaced_params(content):
    """Rewrite plain ``node:`` keys of a parameter file's content to ``/**/node:``."""
    if not isinstance(content, dict):
        raise ValueError('not a ROS 2 parameter file')
    return {(key if str(key).startswith('/') else f'/**/{key}'): value
            for key, value in content.items()}


def write_params(content, prefix):
    """Write a parameter dict to a temporary YAML file; return its path."""
    handle = tempfile.NamedTemporaryFile('w', prefix=prefix, suffix='.yaml', delete=False)
    with handle:
        yaml.safe_dump(content, handle)
    return handle.name


def namespaced_params_file(path):
    """Copy of a parameter file whose plain ``node:`` keys become ``/**/node:``."""
    with open(path) as handle:
        content = yaml.safe_load(handle) or {}
    try:
        return write_params(namespaced_params(content), 'robot_params_')
    except ValueError as error:
        raise ValueError(f'{path}: {error}') from None


def node_overrides(options):
    """Command-line overrides per node name (only the options that were given)."""
    camera = {'source': options.source, 'mode': options.mode, 'rate_hz': options.rate,
              'max_frames': options.max_frames, 'start_delay_s': options.start_delay}
    if not options.single_process and options.exit_when_done:
        camera['exit_when_done'] = True
    if options.keep_recorded_stamps:
        camera['keep_recorded_stamps'] = True
        camera['mode'] = options.mode or 'once'
    if options.publish_clock:
        camera['publish_clock'] = True
    if options.input_transport == 'compressed':
        camera['publish_compressed'] = True      # what the readers then take
    # The premodel's local answers come from several models: plan with their own profiles.
    strategy = options.strategy or ('premodel_cbo' if options.premodel else None)
    planner = {'strategy': strategy, 'deadline_ms': options.deadline_ms,
               'input_transport': options.input_transport, 'premodel_file': options.premodel}
    classifier = {'input_transport': options.input_transport, 'premodel_file': options.premodel}
    early_exit = {'strategy': options.strategy, 'deadline_ms': options.deadline_ms}
    if options.strategy in EARLY_EXIT_STRATEGIES:
        camera.setdefault('wait_for_subscribers', 1)     # early_exit_node reads the frames
    sim_time = {'use_sim_time': True} if options.use_sim_time else {}
    return {name: {**sim_time, **{k: v for k, v in values.items() if v is not None}}
            for name, values in (('camera_node', camera), ('offload_planner_node', planner),
                                 ('npu_classifier_node', classifier),
                                 ('network_monitor_node', {}), ('early_exit_node', early_exit))}


def configured(params_file, node, name, default=None):
    """Return a node's parameter value in a parameter file (``default`` when absent)."""
    with contextlib.suppress(Exception):
        with open(params_file) as handle:
            content = yaml.safe_load(handle) or {}
        for key, value in content.items():
            if str(key).split('/')[-1] == node and name in value['ros__parameters']:
                return value['ros__parameters'][name]
    return default


def selected_nodes(options):
    """Return the (module, class) of the nodes the options do not disable."""
    nodes = NODES
    if options.strategy in EARLY_EXIT_STRATEGIES:
        nodes = [n for n in NODES if n[0] not in ('npu_classifier_node', 'offload_planner_node')]
        nodes.append(EARLY_EXIT_NODE)
    return [(name, cls) for name, cls, disabled_by in nodes
            if not (disabled_by and getattr(options, disabled_by))]


def deadline_s(params_file, overrides):
    """Return the planner's deadline in seconds (override, else the parameter file, else 0.3)."""
    if 'deadline_ms' in overrides.get('offload_planner_node', {}):
        return overrides['offload_planner_node']['deadline_ms'] / 1e3
    return float(configured(params_file, 'offload_planner_node', 'deadline_ms', 300.0)) / 1e3


# ---------------------------------------------------------------------- one process per node
def _child_setup():
    """In the child: own process group (signals come from the bring-up only), die with it."""
    os.setpgrp()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def image_remaps(name, image_topic):
    """Return the ``-r`` remap arguments that move a node's image_raw to ``image_topic``."""
    if not image_topic or name not in IMAGE_READERS:
        return []
    return ['-r', f'image_raw:={image_topic}']


def set_dds_environment(profile=None, environ=os.environ):
    """Set the Fast DDS profile (unless set, or ``profile`` given) and the publication mode."""
    if profile:
        environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile)
    elif not environ.get('FASTDDS_DEFAULT_PROFILES_FILE'):
        environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(config_dir() / 'fastdds_profile.xml')
    environ.setdefault('RMW_FASTRTPS_PUBLICATION_MODE', 'AUTO')
    return environ['FASTDDS_DEFAULT_PROFILES_FILE']


def node_command(name, params_files, namespace, ros_args, log_level, image_topic=None,
                 enclave_root=ENCLAVE_ROOT):
    """Return the command line that starts one node, as launch_ros builds it.

    ``--enclave <enclave_root>/<node>``: the node's SROS2 enclave, used only when
    ``ROS_SECURITY_ENABLE=true`` (docs/security.md); '' leaves it out.
    """
    command = [sys.executable, '-m', f'cbo_ros.nodes.{name}', '--ros-args']
    for path in params_files:
        command += ['--params-file', path]
    if enclave_root:
        command += ['--enclave', f"{enclave_root.rstrip('/')}/{name}"]
    command += image_remaps(name, image_topic)
    if namespace:
        command += ['-r', f"__ns:=/{namespace.strip('/')}"]
    if log_level:
        command += ['--log-level', log_level]
    return command + list(ros_args)


def stop_children(children, timeout):
    """SIGINT every running child once, then SIGTERM, then SIGKILL; return their exit codes."""
    for process in children.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
    for step in (signal.SIGTERM, signal.SIGKILL):
        end = time.monotonic() + timeout
        while time.monotonic() < end and any(p.poll() is None for p in children.values()):
            time.sleep(0.05)
        for process in children.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(step)
        timeout = 2.0
    return {name: process.wait() for name, process in children.items()}


def run_processes(options, params_file, ros_args):
    """Run every node in its own process until they end or a signal comes; return the code."""
    overrides = node_overrides(options)
    temp_files = []
    children = {}
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for name, _ in selected_nodes(options):
            files = [params_file]
            if name == 'early_exit_node':
                files.insert(0, str(config_dir() / 'early_exit.yaml'))
            if overrides.get(name):
                path = write_params({f'/**/{name}': {'ros__parameters': overrides[name]}},
                                    f'{name}_overrides_')
                temp_files.append(path)
                files.append(path)
            command = node_command(name, files, options.namespace, ros_args, options.log_level,
                                   options.image_topic, options.enclave_root)
            children[name] = subprocess.Popen(command, preexec_fn=_child_setup)
        started = ', '.join(f'{n} (pid {p.pid})' for n, p in children.items())
        print(f'[robot_bringup] started {started} (params {options.params_file}; one process '
              'per node)', flush=True)
        wait_after_camera = deadline_s(options.params_file, overrides) + 1.0
        camera_done_at = None
        reported = set()
        while not stopping:
            time.sleep(0.1)
            for name, process in children.items():
                if process.poll() is not None and name not in reported:
                    reported.add(name)
                    expected = name == 'camera_node' and options.exit_when_done
                    if process.returncode != 0 or not expected:
                        print(f'[robot_bringup] {name} exited with {process.returncode}',
                              flush=True)
                    if process.returncode != 0:
                        code = code or 1
            if options.exit_when_done and 'camera_node' in reported:
                camera_done_at = camera_done_at or time.monotonic()
                if time.monotonic() - camera_done_at > wait_after_camera:
                    print('[robot_bringup] camera done and last deadline passed: exiting',
                          flush=True)
                    break
            if len(reported) == len(children):
                break
    finally:
        codes = stop_children(children, options.stop_timeout)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for path in temp_files:
            os.unlink(path)
    bad = {n: c for n, c in codes.items() if c not in (0, -signal.SIGINT)}
    if bad and not stopping:
        print(f'[robot_bringup] exit codes {bad}', flush=True)
    return code


# ---------------------------------------------------------------------- one process, one executor
def node_class(module_name, preferred):
    """Return the Node subclass ``preferred`` of a module (or the first one defined there)."""
    from rclpy.node import Node
    module = importlib.import_module(module_name)
    if hasattr(module, preferred):
        return getattr(module, preferred)
    for _, value in inspect.getmembers(module, inspect.isclass):
        if issubclass(value, Node) and value.__module__ == module.__name__:
            return value
    raise ImportError(f'{module_name} defines no rclpy Node')


def run_single_process(options, params_file, ros_args):
    """Run all nodes in this process on one executor; return the exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from cbo_ros.nodes.ros_common import shutdown_executor

    files = [params_file]
    if options.strategy in EARLY_EXIT_STRATEGIES:
        files.insert(0, str(config_dir() / 'early_exit.yaml'))     # as in run_processes
    file_args = [arg for path in files for arg in ('--params-file', path)]
    rclpy_args = ['robot_bringup', '--ros-args'] + file_args + ros_args
    if options.log_level:
        rclpy_args += ['--log-level', options.log_level]
    # SIGINT/SIGTERM end the spin loop below instead of shutting the context down at once:
    # rclpy's own handler invalidated every entity while executor threads were still inside
    # callbacks ("cannot use Destroyable because destruction was requested" at exit).
    # A second signal interrupts a shutdown that hangs.
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        if stop_requested.is_set():
            raise KeyboardInterrupt
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rclpy.init(args=rclpy_args, signal_handler_options=SignalHandlerOptions.NO)
    except BaseException:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    logger = rclpy.logging.get_logger('robot_bringup')
    if options.executor == 'events':
        from rclpy.experimental import EventsExecutor
        executor, threads = EventsExecutor(), 0      # single-threaded
    else:
        threads = max(2, options.threads)
        executor = MultiThreadedExecutor(num_threads=threads)
    overrides = node_overrides(options)
    nodes = []
    code = 0
    try:
        camera = answering = None
        for name, class_name in selected_nodes(options):
            cls = node_class(f'cbo_ros.nodes.{name}', class_name)
            params = [Parameter(k, value=v) for k, v in overrides.get(name, {}).items()]
            remaps = image_remaps(name, options.image_topic)
            node = cls(namespace=options.namespace, parameter_overrides=params,
                       cli_args=['--ros-args'] + remaps if remaps else None)
            nodes.append(node)
            executor.add_node(node)
            camera = node if name == 'camera_node' else camera
            if name in ('offload_planner_node', 'early_exit_node'):
                answering = node              # the node that publishes the final results
        logger.info(f"started {', '.join(n.get_fully_qualified_name() for n in nodes)} "
                    f'(params {options.params_file}; one process)')
        done_since = None
        while rclpy.ok() and not stop_requested.is_set():
            executor.spin_once(timeout_sec=0.2)
            if options.exit_when_done and camera is not None and camera.done:
                done_since = done_since or time.monotonic()
                deadline_ns = (answering.deadline_ns if answering.get_name() == 'early_exit_node'
                               else answering.settings.deadline_ns)
                if time.monotonic() - done_since > deadline_ns / 1e9 + 1.0:
                    logger.info('camera done and last deadline passed: exiting')
                    break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as error:  # noqa: BLE001 - report why bring-up failed, exit non-zero
        if rclpy.ok():      # else SIGINT/SIGTERM shut the context down under the executor
            logger.fatal(f'bring-up failed: {type(error).__name__}: {error}')
            code = 1
    finally:
        # Order matters: stop the executor (its threads finish their callbacks), take the nodes
        # out of it and destroy them, then shut the context down.
        shutdown_executor(executor, threads=threads)
        for node in nodes:
            with contextlib.suppress(Exception):
                executor.remove_node(node)
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def main(argv=None):
    """Start the robot nodes; return the exit code."""
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
    if options.fastdds_profile and not os.path.isfile(options.fastdds_profile):
        print(f'robot_bringup: Fast DDS profile not found: {options.fastdds_profile}',
              file=sys.stderr)
        return 2
    profile = set_dds_environment(options.fastdds_profile)
    print(f'[robot_bringup] FASTDDS_DEFAULT_PROFILES_FILE={profile}', flush=True)
    params_file = namespaced_params_file(options.params_file)
    try:
        if options.single_process:
            return run_single_process(options, params_file, ros_args)
        return run_processes(options, params_file, ros_args)
    finally:
        os.unlink(params_file)


if __name__ == '__main__':
    sys.exit(main())
