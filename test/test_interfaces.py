"""cbo_interfaces: every interface imports; a result round-trips over DDS between processes."""

import subprocess
import sys
import textwrap

import pytest

from ros_helpers import ros_env, unique_domain_id

MESSAGES = ['ClassHypothesis', 'LatencyBreakdown', 'FrameClassification', 'NetworkQuality',
            'OffloadDecision', 'ServerLoad', 'TransferSample']
SERVICES = ['Offload', 'OffloadFeatures', 'Probe']


def test_all_interfaces_import_with_expected_fields():
    import cbo_interfaces.msg as msg
    import cbo_interfaces.srv as srv
    for name in MESSAGES:
        assert hasattr(msg, name), name
    for name in SERVICES:
        assert hasattr(srv, name), name
    result = msg.FrameClassification()
    assert msg.FrameClassification.SOURCE_ROBOT == 0 and msg.FrameClassification.SOURCE_SERVER == 1
    for field in ('header', 'frame_seq', 'class_id', 'class_name', 'score', 'calibrated_confidence',
                  'raw_confidence', 'top_k', 'source', 'resolution', 'latency', 'deadline'):
        assert hasattr(result, field), field
    request = srv.Offload.Request()
    assert request.image.format == '' and request.deadline.sec == 0
    response = srv.Offload.Response()
    for field in ('success', 'error', 'top_k', 'scores', 'server_ms', 'batch_size'):
        assert hasattr(response, field), field


PUBLISHER = textwrap.dedent('''
    import time
    import rclpy
    from cbo_interfaces.msg import ClassHypothesis, FrameClassification
    rclpy.init()
    node = rclpy.create_node('roundtrip_publisher')
    pub = node.create_publisher(FrameClassification, 'result', 10)
    msg = FrameClassification()
    msg.header.frame_id = 'camera_optical'
    msg.header.stamp.sec = 1234
    msg.header.stamp.nanosec = 5678
    msg.frame_seq = 42
    msg.class_id = '671'
    msg.class_name = 'mountain bike'
    msg.score = 0.875
    msg.source = FrameClassification.SOURCE_SERVER
    msg.resolution = 176
    msg.top_k = [ClassHypothesis(class_id='671', class_name='mountain bike', score=0.875),
                 ClassHypothesis(class_id='444', class_name='bicycle-built-for-two', score=0.1)]
    msg.latency.total_ms = 55.5
    end = time.monotonic() + 20
    while time.monotonic() < end:
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=0.1)
    rclpy.shutdown()
''')


@pytest.mark.integration
def test_frame_classification_round_trip_between_processes():
    import rclpy
    from cbo_interfaces.msg import FrameClassification
    domain = unique_domain_id()
    child = subprocess.Popen([sys.executable, '-c', PUBLISHER], env=ros_env(domain),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node('roundtrip_subscriber', context=context)
        received = []
        node.create_subscription(FrameClassification, 'result', received.append, 10)
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        import time
        end = time.monotonic() + 20
        while not received and time.monotonic() < end and child.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        assert received, 'no message crossed between the processes'
        msg = received[0]
        assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == \
            ('camera_optical', 1234, 5678)
        assert (msg.frame_seq, msg.class_id, msg.class_name) == (42, '671', 'mountain bike')
        assert msg.score == pytest.approx(0.875) and msg.resolution == 176
        assert msg.source == FrameClassification.SOURCE_SERVER
        assert [h.class_id for h in msg.top_k] == ['671', '444']
        assert msg.latency.total_ms == pytest.approx(55.5)
    finally:
        child.kill()
        child.wait()
        rclpy.shutdown(context=context)
