"""The standard ROS path: colcon builds all four packages of a workspace containing this repo."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_colcon_builds_all_packages(tmp_path):
    workspace = tmp_path / 'ws'
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'colcon_build.sh'), str(workspace)],
                            capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Summary: 4 packages finished' in result.stdout
    install = workspace / 'install'
    assert (install / 'cbo_interfaces' / 'lib' / 'python3.11' / 'site-packages' /
            'cbo_interfaces' / 'msg' / '__init__.py').is_file()
    for executable in ('camera_node', 'npu_classifier_node', 'offload_planner_node',
                       'network_monitor_node'):
        assert (install / 'cbo_ros' / 'lib' / 'cbo_ros' / executable).is_file(), executable
    assert (install / 'server_node' / 'lib' / 'server_node' / 'server_node').is_file()
    share = install / 'cbo_ros' / 'share' / 'cbo_ros'
    assert list((share / 'launch').glob('*.launch.py'))
    assert (share / 'config' / 'fastdds_profile.xml').is_file()
    # The overlay is usable: the interfaces import from the workspace, not from elsewhere.
    probe = subprocess.run(
        ['bash', '-c', f'source {install}/setup.bash && cd / && python -c '
         '"import cbo_interfaces.msg as m, server_node, cbo_common.ros_helpers as c; '
         'print(m.__file__, server_node.__file__, c.__file__)"'],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert probe.returncode == 0, probe.stderr
    assert all(str(install) in path for path in probe.stdout.split()), probe.stdout
