"""SROS2 wiring: every node gets an enclave; secured nodes refuse an unauthenticated publisher.

The enclave wiring of the launch files and robot_bringup is checked here (ast, as in
test_launch_files.py). The end-to-end check needs Fast DDS built with DDS-Security and sros2
(``ros2 security``): the pip wheels of this repository's venv have neither, so it is skipped
here with the reason; on a ROS 2 installation it runs.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKI_PLUGIN = b'DDS:Auth:PKI-DH'


def fastdds_library():
    """Path of the libfastdds this interpreter's rmw loads (None: not found)."""
    dirs = os.environ.get('LD_LIBRARY_PATH', '').split(':') + [str(Path(sys.prefix) / 'lib'),
                                                               '/opt/ros']
    for directory in filter(None, dirs):
        for path in sorted(Path(directory).rglob('libfastdds.so*')) if Path(directory).is_dir() \
                else []:
            return path
    return None


def security_unavailable():
    """Why the end-to-end SROS2 test cannot run here ('' when it can)."""
    library = fastdds_library()
    if library is None:
        return 'libfastdds not found'
    if PKI_PLUGIN not in library.read_bytes():
        return (f'{library} is built without DDS-Security (no {PKI_PLUGIN.decode()} plugin; the '
                'Fast DDS of the ROS 2 pip wheels has no security libraries, and enabling ROS '
                'security fails closed); run this on a ROS 2 installation')
    if shutil.which('ros2') is None:
        return "sros2 ('ros2 security') is not installed"
    return ''


def test_launch_files_give_every_node_an_enclave():
    for name in ('robot.launch.py', 'server.launch.py'):
        text = (ROOT / 'launch' / name).read_text()
        tree = ast.parse(text)
        args = {n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, 'id', '') == 'DeclareLaunchArgument'}
        assert {'security', 'keystore', 'enclave_root'} <= args, (name, args)
        assert "'--enclave'" in text, name
        for variable in ('ROS_SECURITY_ENABLE', 'ROS_SECURITY_STRATEGY', 'ROS_SECURITY_KEYSTORE'):
            assert f"SetEnvironmentVariable('{variable}'" in text, (name, variable)
    demo = (ROOT / 'launch' / 'demo.launch.py').read_text()
    assert "'security': LaunchConfiguration('security')" in demo


def test_robot_bringup_gives_every_node_an_enclave():
    from cbo_ros.nodes import bringup
    for name, _, _ in bringup.NODES:
        command = bringup.node_command(name, ['p.yaml'], 'robot1', [], None)
        index = command.index('--enclave')
        assert command[index + 1] == f'/cbo_ros/{name}'
    assert '--enclave' not in bringup.node_command('camera_node', [], '', [], None,
                                                   enclave_root='')


def test_the_enclave_argument_is_harmless_without_security():
    """A node started with --enclave and ROS_SECURITY_ENABLE unset runs unsecured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('ROS_SECURITY')}
    code = ('import rclpy; rclpy.init(args=["x", "--ros-args", "--enclave", "/cbo_ros/x"]); '
            'rclpy.create_node("x"); print("up")')
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and 'up' in out.stdout, out.stderr


@pytest.mark.integration
@pytest.mark.skipif(bool(security_unavailable()), reason=security_unavailable() or 'available')
def test_secured_nodes_ignore_an_unauthenticated_publisher(tmp_path):
    """Two enclaves of one keystore talk; a participant without certificates is not heard."""
    from ros_helpers import ros_env, unique_domain_id
    keys = tmp_path / 'keys'
    subprocess.run(['ros2', 'security', 'create_keystore', str(keys)], check=True)
    for enclave in ('/cbo_ros/talker', '/cbo_ros/listener'):
        subprocess.run(['ros2', 'security', 'create_enclave', str(keys), enclave], check=True)
    domain = unique_domain_id()
    secure = ros_env(domain, ROS_SECURITY_ENABLE='true', ROS_SECURITY_STRATEGY='Enforce',
                     ROS_SECURITY_KEYSTORE=keys)
    plain = {k: v for k, v in ros_env(domain).items() if not k.startswith('ROS_SECURITY')}
    talker = ('import rclpy, time; from std_msgs.msg import String\n'
              'rclpy.init(args=["t", "--ros-args", "--enclave", "{enclave}"])\n'
              'n = rclpy.create_node("talker_{tag}"); p = n.create_publisher(String, "t", 10)\n'
              'for i in range(60): p.publish(String(data="{tag}")); time.sleep(0.1)\n')
    listener = ('import rclpy, time; from std_msgs.msg import String\n'
                'rclpy.init(args=["l", "--ros-args", "--enclave", "/cbo_ros/listener"])\n'
                'n = rclpy.create_node("listener"); got = set()\n'
                'n.create_subscription(String, "t", lambda m: got.add(m.data), 10)\n'
                'end = time.time() + 8\n'
                'while time.time() < end: rclpy.spin_once(n, timeout_sec=0.1)\n'
                'print(sorted(got))\n')
    processes = [
        subprocess.Popen([sys.executable, '-c', talker.format(enclave='/cbo_ros/talker',
                                                              tag='secure')], env=secure),
        subprocess.Popen([sys.executable, '-c', talker.format(enclave='/cbo_ros/none',
                                                              tag='foreign')], env=plain)]
    try:
        out = subprocess.run([sys.executable, '-c', listener], env=secure, capture_output=True,
                             text=True, timeout=60)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert "['secure']" in out.stdout, (out.stdout, out.stderr)
