"""A camera driver publishing best effort against the (reliable) robot readers: a clear error."""

import os
import sys

import pytest

from cbo_ros import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

pytestmark = pytest.mark.integration

NS = f'/qos{os.getpid()}'


def test_best_effort_camera_is_reported_with_the_fix(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    domain = unique_domain_id()
    log = tmp_path / 'classifier.log'
    classifier = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.npu_classifier_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'),
         '-p', 'diagnostics_period_s:=0.2', '-r', f'__ns:={NS}'],
        ros_env(domain), log)
    session = RosSession(domain, namespace=NS)
    diagnostics = []
    session.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    session.node.create_publisher(Image, 'image_raw', qos_profile_sensor_data)

    def reported():
        return [s for array in diagnostics for s in array.status
                if 'npu_classifier_node' in s.name and 'incompatible' in s.message]
    try:
        errors = session.spin_until(reported, timeout=40.0)
    finally:
        session.close()
        code = stop_process(classifier)
    text = log.read_text()
    assert errors, text
    assert errors[-1].level == errors[-1].ERROR
    assert 'RELIABILITY' in text and 'reliability: best_effort' in text, text
    assert code == 0, text
