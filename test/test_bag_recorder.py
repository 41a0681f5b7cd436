"""cbo_record: a real recorder process writes what real publishers sent into a readable rosbag2."""

import time

import numpy as np
import pytest

from ros_helpers import ros_env, start_process, stop_process, unique_domain_id, wait_for

pytestmark = pytest.mark.integration


def publish_run(session, frames):
    """Publish ``frames`` best-effort images, one result each, a latched count and diagnostics."""
    from cbo_interfaces.msg import FrameClassification
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import UInt64

    from cbo_ros.nodes.ros_common import LATCHED_QOS, RESULT_QOS
    node = session.node
    images = node.create_publisher(Image, 'image_raw', qos_profile_sensor_data)
    results = node.create_publisher(FrameClassification, 'result', RESULT_QOS)
    count = node.create_publisher(UInt64, 'frames_published', LATCHED_QOS)
    diagnostics = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
    ok = session.spin_until(lambda: images.get_subscription_count() > 0
                            and results.get_subscription_count() > 0
                            and count.get_subscription_count() > 0, 20.0)
    assert ok, 'the recorder did not subscribe image_raw, result and frames_published'
    session.spin_for(0.5)
    sent = []
    rng = np.random.default_rng(0)
    for index in range(frames):
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        image = Image(height=48, width=64, encoding='rgb8', step=64 * 3, data=rgb.tobytes())
        image.header.stamp.sec, image.header.stamp.nanosec = 100 + index, 5
        image.header.frame_id = 'cam'
        images.publish(image)
        result = FrameClassification(class_id=str(index), frame_seq=index, is_final=True)
        result.header = image.header
        results.publish(result)
        sent.append(rgb)
        session.spin_for(0.05)
    count.publish(UInt64(data=frames))
    diagnostics.publish(DiagnosticArray(status=[DiagnosticStatus(name='x', message='ok')]))
    session.spin_for(1.0)
    return sent


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_record_then_read(tmp_path, storage):
    from rosbags.highlevel import AnyReader

    from cbo_ros.perception.media import RosbagSource
    from ros_session import RosSession
    domain = unique_domain_id()
    bag = tmp_path / 'run'
    recorder = start_process(['-m', 'cbo_ros.tools.record', '-o', str(bag), '--storage', storage],
                             ros_env(domain), tmp_path / 'recorder.log')
    session = RosSession(domain)
    try:
        sent = publish_run(session, 12)
    finally:
        session.close()
        code = stop_process(recorder)
    log = (tmp_path / 'recorder.log').read_text()
    assert code == 0, log
    assert wait_for(lambda: (bag / 'metadata.yaml').is_file(), 5.0), log
    with AnyReader([bag]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts['/image_raw'] == 12 and counts['/result'] == 12, counts
        assert counts['/frames_published'] == 1 and counts['/diagnostics'] >= 1, counts
        results = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(
            [c for c in reader.connections if c.topic == '/result'])]
    assert [r.class_id for r in results] == [str(i) for i in range(12)]
    assert [r.header.stamp.sec for r in results] == list(range(100, 112))
    frames = list(RosbagSource(bag, topic='/image_raw'))
    assert len(frames) == 12
    for frame, rgb in zip(frames, sent):
        np.testing.assert_array_equal(frame.rgb, rgb)


def test_existing_output_is_refused(tmp_path):
    (tmp_path / 'run').mkdir()
    process = start_process(['-m', 'cbo_ros.tools.record', '-o', str(tmp_path / 'run')],
                            ros_env(unique_domain_id()), tmp_path / 'recorder.log')
    deadline = time.monotonic() + 20.0
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    code = stop_process(process)
    assert code == 1
    assert 'exists' in (tmp_path / 'recorder.log').read_text()


def test_duration_stops_and_closes_the_bag(tmp_path):
    bag = tmp_path / 'short'
    process = start_process(['-m', 'cbo_ros.tools.record', '-o', str(bag), '--duration', '1.5'],
                            ros_env(unique_domain_id()), tmp_path / 'recorder.log')
    assert wait_for(lambda: process.poll() is not None, 30.0), 'still running after --duration'
    assert process.returncode == 0, (tmp_path / 'recorder.log').read_text()
    assert (bag / 'metadata.yaml').is_file()


def test_a_recorder_started_late_still_gets_the_first_results(tmp_path):
    """result/offload_decision writers offer transient-local history: a recorder that joins
    after the first answers were published still records them (it follows the writers' QoS)."""
    from cbo_interfaces.msg import FrameClassification
    from rosbags.highlevel import AnyReader

    from cbo_ros.nodes.ros_common import RESULT_HISTORY_QOS
    from ros_session import RosSession
    domain = unique_domain_id()
    session = RosSession(domain)
    bag = tmp_path / 'late'
    recorder = None
    try:
        results = session.node.create_publisher(FrameClassification, 'result', RESULT_HISTORY_QOS)
        for index in range(20):                   # nobody listens yet
            result = FrameClassification(class_id=str(index), frame_seq=index, is_final=True)
            result.header.stamp.sec = 100 + index
            results.publish(result)
        recorder = start_process(['-m', 'cbo_ros.tools.record', '-o', str(bag), '--images',
                                  'none'], ros_env(domain), tmp_path / 'recorder.log')
        assert session.spin_until(lambda: results.get_subscription_count() > 0, 20.0)
        session.spin_for(1.0)
    finally:
        session.close()
        code = recorder is not None and stop_process(recorder)
    assert code == 0, (tmp_path / 'recorder.log').read_text()
    with AnyReader([bag]) as reader:
        recorded = [reader.deserialize(raw, c.msgtype).frame_seq for c, _, raw in
                    reader.messages([c for c in reader.connections if c.topic == '/result'])]
    assert recorded == list(range(20))
