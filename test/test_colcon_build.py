"""The standard ROS path: colcon builds all four packages, and the install starts on its own.

The workspace is built once (scripts/colcon_build.sh, into a temporary directory: the shared
virtualenv is only read). The start test runs the installed executables in an environment made
of nothing but ``install/setup.bash`` and the virtualenv on PATH (no CBO_ARTIFACTS, no
cbo_env.sh, no Fast DDS variables), with the installed parameter files, and feeds them frames
from a foreign best-effort camera (SensorDataQoS) on a remapped topic.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ros_helpers import start_process, stop_process, unique_domain_id, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    workspace = tmp_path_factory.mktemp('colcon') / 'ws'
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'colcon_build.sh'), str(workspace)],
                            capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Summary: 4 packages finished' in result.stdout
    return workspace


@pytest.mark.slow
def test_colcon_builds_all_packages(workspace):
    install = workspace / 'install'
    assert (install / 'cbo_interfaces' / 'lib' / 'python3.11' / 'site-packages' /
            'cbo_interfaces' / 'msg' / '__init__.py').is_file()
    for executable in ('camera_node', 'npu_classifier_node', 'offload_planner_node',
                       'network_monitor_node', 'robot_bringup', 'cbo_prepare_assets'):
        assert (install / 'cbo_ros' / 'lib' / 'cbo_ros' / executable).is_file(), executable
    assert (install / 'server_node' / 'lib' / 'server_node' / 'server_node').is_file()
    share = install / 'cbo_ros' / 'share' / 'cbo_ros'
    assert list((share / 'launch').glob('*.launch.py'))
    assert (share / 'config' / 'fastdds_profile.xml').is_file()
    # colcon_build.sh installed the generated artifacts where the installed nodes look.
    for name in ('robot_lite0_int8.onnx', 'server_lite2_fp32.onnx'):
        assert (share / 'artifacts' / 'models' / name).is_file(), name
    assert (share / 'artifacts' / 'media' / 'bikes.mp4').is_file()
    # The overlay is usable: the interfaces import from the workspace, not from elsewhere.
    probe = subprocess.run(
        ['bash', '-c', f'source {install}/setup.bash && cd / && python -c '
         '"import cbo_interfaces.msg as m, server_node, cbo_common.ros_helpers as c; '
         'print(m.__file__, server_node.__file__, c.__file__)"'],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert probe.returncode == 0, probe.stderr
    assert all(str(install) in path for path in probe.stdout.split()), probe.stdout


def install_env(domain_id, **extra):
    """A bare environment: the virtualenv on PATH, nothing of cbo_env.sh."""
    venv = Path(sys.executable).parent
    env = {'PATH': f'{venv}:/usr/local/bin:/usr/bin:/bin', 'HOME': os.environ.get('HOME', '/'),
           'LANG': 'C.UTF-8', 'ROS_DOMAIN_ID': str(domain_id), 'PYTHONUNBUFFERED': '1'}
    env.update(extra)
    return env


def in_install(install, command):
    """Argument list running ``command`` after sourcing the workspace's setup.bash."""
    return ['bash', '-c', f'source {install}/setup.bash && cd / && exec {command}']


@pytest.mark.slow
@pytest.mark.integration
def test_install_reports_missing_artifacts_with_the_fix(workspace, tmp_path):
    install = workspace / 'install'
    share = install / 'cbo_ros' / 'share' / 'cbo_ros'
    result = subprocess.run(
        in_install(install, f'{install}/cbo_ros/lib/cbo_ros/npu_classifier_node --ros-args '
                            f'--params-file {share}/config/robot.yaml -p model:=missing.onnx'),
        capture_output=True, text=True, timeout=120,
        env=install_env(unique_domain_id(), XDG_DATA_HOME=str(tmp_path)))
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert 'model file not found' in output and "'missing.onnx'" in output, output
    assert f'{share}/artifacts/models [package share]' in output, output
    assert f'--install-into {share}/artifacts' in output, output


@pytest.mark.slow
@pytest.mark.integration
def test_install_answers_a_foreign_best_effort_camera(workspace, tmp_path):
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from cbo_interfaces.msg import FrameClassification
    from cbo_ros.nodes.ros_common import RESULT_QOS
    from cbo_ros.perception.media import read_frames

    install = workspace / 'install'
    share = install / 'cbo_ros' / 'share' / 'cbo_ros'
    domain = unique_domain_id()
    env = install_env(domain, XDG_DATA_HOME=str(tmp_path / 'data'))
    server = start_process(
        in_install(install, f'{install}/server_node/lib/server_node/server_node --ros-args '
                            f'--params-file {share}/config/server.yaml'),
        env, tmp_path / 'server.log')
    robot = start_process(
        in_install(install, f'{install}/cbo_ros/lib/cbo_ros/robot_bringup --no-camera '
                            '--image-topic /my_cam/image'),
        env, tmp_path / 'robot.log')

    frames = [f.rgb for f in read_frames('bikes.mp4', max_frames=60)[0]]
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node('foreign_camera', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    results = []
    node.create_subscription(FrameClassification, '/result', results.append, RESULT_QOS)
    publisher = node.create_publisher(Image, '/my_cam/image', qos_profile_sensor_data)
    published = []

    def publish(index):
        rgb = np.ascontiguousarray(frames[index % len(frames)])
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                    step=rgb.shape[1] * 3, data=rgb.tobytes())
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = 'my_cam_optical_frame'
        publisher.publish(msg)
        published.append((msg.header.stamp.sec, msg.header.stamp.nanosec))

    logs = ''
    try:
        # Until the nodes are up and matched, frames go unanswered; then 40 more frames.
        start = time.monotonic()
        index = 0
        while not results and time.monotonic() - start < 120:
            assert server.poll() is None and robot.poll() is None, 'a process exited'
            publish(index)
            index += 1
            executor.spin_once(timeout_sec=0.1)
        assert results, 'no result within 120 s'
        first = len(published)
        for _ in range(40):
            publish(index)
            index += 1
            end = time.monotonic() + 0.1
            while time.monotonic() < end:
                executor.spin_once(timeout_sec=0.02)
        wait_for(lambda: executor.spin_once(timeout_sec=0.05) or
                 len(results) >= len(published), 5.0)
    finally:
        code_robot = stop_process(robot)
        code_server = stop_process(server)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        logs = (tmp_path / 'robot.log').read_text() + (tmp_path / 'server.log').read_text()
    answered = [(r.header.stamp.sec, r.header.stamp.nanosec) for r in results]
    later = set(published[first:])
    assert len(answered) == len(set(answered)), 'a frame was answered twice'
    assert set(answered) <= set(published), 'a result for a frame that was not published'
    assert all(r.header.frame_id == 'my_cam_optical_frame' for r in results)
    assert len(later & set(answered)) >= 0.8 * len(later), (len(later & set(answered)), logs)
    # Everything came from the install: parameter files, artifacts, Fast DDS profile.
    assert f'FASTDDS_DEFAULT_PROFILES_FILE={share}/config/fastdds_profile.xml' in logs, logs
    assert f'params {share}/config/robot.yaml' in logs, logs
    assert f'calibration {share}/artifacts/calibration/cbo_calibration.json' in logs, logs
    assert f'({share}/artifacts/models/server_lite2_fp32.onnx)' in logs, logs
    assert 'best effort' in logs, logs      # the readers matched the best-effort camera
    assert 'Traceback' not in logs, logs
    assert code_server in (0, -2) and code_robot in (0, -2), (code_server, code_robot, logs)
