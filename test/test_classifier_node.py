"""npu_classifier_node over DDS: best-effort cameras (auto / fixed QoS), stale frames skipped."""

import os
import sys
import time

import pytest

from cbo_ros.assets import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

pytestmark = pytest.mark.integration

NS = f'/qos{os.getpid()}'


def start_classifier(log, *parameters):
    """A classifier process (shipped config + ``name:=value`` overrides) and a session."""
    domain = unique_domain_id()
    overrides = [arg for p in parameters for arg in ('-p', p)]
    process = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.npu_classifier_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'), *overrides,
         '-r', f'__ns:={NS}'], ros_env(domain), log)
    return process, RosSession(domain, namespace=NS)


def frame_msg(stamp_ns, seed=0):
    import numpy as np
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import Image
    from cbo_ros.nodes.ros_common import ns_to_stamp
    rgb = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    msg = Image(height=120, width=160, encoding='rgb8', step=480, data=rgb.tobytes())
    msg.header.stamp = ns_to_stamp(stamp_ns, Time)
    return msg


def test_auto_reliability_receives_a_best_effort_camera(tmp_path):
    from cbo_interfaces.msg import FrameClassification
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from cbo_ros.nodes.ros_common import RESULT_QOS
    log = tmp_path / 'classifier.log'
    classifier, session = start_classifier(log)            # shipped config: reliability auto
    results = []
    session.node.create_subscription(FrameClassification, 'local_result', results.append,
                                     RESULT_QOS)
    camera = session.node.create_publisher(Image, 'image_raw', qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + 40.0
        while not results and time.monotonic() < deadline:
            camera.publish(frame_msg(time.time_ns()))
            session.spin_for(0.2)
    finally:
        session.close()
        code = stop_process(classifier)
    text = log.read_text()
    assert results and results[0].class_id, text
    assert 'switched to best effort' in text, text
    assert code == 0, text


def test_fixed_reliable_reader_reports_a_best_effort_camera_with_the_fix(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    log = tmp_path / 'classifier.log'
    classifier, session = start_classifier(log, 'diagnostics_period_s:=0.2',
                                           'reliability:=reliable')
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


def test_stale_frames_are_answered_as_skipped_fresh_ones_classified(tmp_path):
    from cbo_interfaces.msg import FrameClassification
    from sensor_msgs.msg import Image
    from cbo_ros.nodes.ros_common import RESULT_QOS, frame_qos
    log = tmp_path / 'classifier.log'
    classifier, session = start_classifier(log, 'max_frame_age_ms:=1000.0')
    results = []
    session.node.create_subscription(FrameClassification, 'local_result', results.append,
                                     RESULT_QOS)
    camera = session.node.create_publisher(Image, 'image_raw', frame_qos())
    try:
        assert session.spin_until(lambda: camera.get_subscription_count() > 0, 30.0), \
            log.read_text()
        camera.publish(frame_msg(time.time_ns() - 5 * 10**9))
        camera.publish(frame_msg(time.time_ns()))
        assert session.spin_until(lambda: len(results) >= 2, 20.0), log.read_text()
    finally:
        session.close()
        stop_process(classifier)
    stale, fresh = sorted(results, key=lambda r: r.header.stamp.sec * 10**9
                          + r.header.stamp.nanosec)
    assert not stale.class_id and stale.note.startswith('skipped: frame'), stale.note
    assert fresh.class_id and fresh.note.startswith('local answer'), fresh.note
