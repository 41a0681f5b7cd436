"""sensor_msgs/CompressedImage input (image_transport ``compressed``): decoding and live nodes."""

import os
import sys

import numpy as np
import pytest

from ros_helpers import ros_env, start_process, stop_process, unique_domain_id

NS = f'/cmp{os.getpid()}'


def bikes_frame():
    from cbo_ros.perception.media import read_frames
    frames, _ = read_frames('bikes', max_frames=1)
    return frames[0].rgb


class Compressed:
    """A stand-in with the two fields of sensor_msgs/CompressedImage (no ROS needed)."""

    def __init__(self, image_format, data):
        self.format, self.data = image_format, data


def test_jpeg_and_png_frames_decode_to_rgb():
    from cbo_ros.perception.image_ops import encode_jpeg, encode_png
    from cbo_ros.perception.media import frame_msg_to_rgb
    rgb = bikes_frame()
    png = frame_msg_to_rgb(Compressed('png', encode_png(rgb)))
    np.testing.assert_array_equal(png, rgb)                          # lossless
    jpeg = frame_msg_to_rgb(Compressed('rgb8; jpeg compressed bgr8', encode_jpeg(rgb, 95)))
    assert jpeg.shape == rgb.shape
    assert np.abs(jpeg.astype(int) - rgb).mean() < 4.0               # colours not swapped


@pytest.mark.parametrize('image_format, data, reason', [
    ('jpeg', b'', 'empty image data'),
    ('jpeg', b'\xff\xd8\xff' + bytes(200), "corrupt JPEG header: .* \\(format 'jpeg', 203 bytes"),
    ('16UC1; compressedDepth png', b'\x89PNG', 'compressed depth image'),
])
def test_malformed_compressed_frames_raise_value_error(image_format, data, reason):
    from cbo_ros.perception.media import frame_msg_to_rgb
    with pytest.raises(ValueError, match=reason):
        frame_msg_to_rgb(Compressed(image_format, data))


def node_process(name, log, domain, *parameters):
    """A robot node on the shipped config, compressed input, frames remapped to /cam."""
    from cbo_ros.assets import paths
    overrides = [arg for p in parameters for arg in ('-p', p)]
    return start_process(
        [sys.executable, '-m', f'cbo_ros.nodes.{name}', '--ros-args', '--params-file',
         str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'), *overrides,
         '-r', f'__ns:={NS}', '-r', 'image_raw:=/cam/image_raw'], ros_env(domain), log)


@pytest.mark.integration
def test_compressed_only_stream_gets_every_frame_answered(tmp_path):
    """camera_node publishes only /cam/image_raw/compressed; every frame gets a final result.

    A PNG frame and a malformed frame sent afterwards are answered too (the malformed one with
    the reason).
    """
    from builtin_interfaces.msg import Time
    from cbo_interfaces.msg import FrameClassification
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import UInt64
    from cbo_ros.nodes.ros_common import frame_qos, LATCHED_QOS, ns_to_stamp, RESULT_QOS
    from cbo_ros.perception.image_ops import encode_png
    from ros_session import RosSession
    domain = unique_domain_id()
    logs = {n: tmp_path / f'{n}.log' for n in ('camera', 'classifier', 'planner')}
    readers = [
        node_process('npu_classifier_node', logs['classifier'], domain,
                     'input_transport:=compressed'),
        node_process('offload_planner_node', logs['planner'], domain,
                     'input_transport:=compressed', 'strategy:=local_only'),
    ]
    session = RosSession(domain, namespace=NS)
    results, counts = [], []
    reader = session.node.create_subscription(FrameClassification, 'result', results.append,
                                              RESULT_QOS)
    session.node.create_subscription(UInt64, 'frames_published', counts.append, LATCHED_QOS)
    writer = session.node.create_publisher(CompressedImage, '/cam/image_raw/compressed',
                                           frame_qos())
    session.spin_until(lambda: reader.get_publisher_count() > 0, 60.0)
    camera = node_process('camera_node', logs['camera'], domain, 'source:=bikes.mp4',
                          'mode:=once', 'max_frames:=12', 'publish_raw:=false',
                          'publish_compressed:=true', 'subscriber_timeout_s:=60.0')
    try:
        session.spin_until(lambda: len(results) >= 12, 60.0)
        camera_results = len(results)
        matched_before = writer.get_subscription_count()
        # Both readers (classifier, planner) must have matched this writer too, not only the
        # camera's: a frame published before that reaches only one of them.
        session.spin_until(lambda: writer.get_subscription_count() >= 2, 30.0)
        png = CompressedImage(format='png', data=encode_png(bikes_frame()))
        broken = CompressedImage(format='jpeg', data=b'\xff\xd8\xff' + bytes(100))
        now_ns = session.node.get_clock().now().nanoseconds
        for offset, msg in enumerate((png, broken)):
            msg.header.stamp = ns_to_stamp(now_ns + offset, Time)
            writer.publish(msg)
        session.spin_until(lambda: len(results) >= camera_results + 2, 30.0)
        # The camera's final count comes after its last frame: wait for it before closing.
        session.spin_until(lambda: counts and counts[-1].data >= 12, 10.0)
    finally:
        session.close()
        codes = [stop_process(p) for p in readers + [camera]]
    text = '\n'.join(f'--- {n}\n{p.read_text()}' for n, p in logs.items())
    assert codes == [0, 0, 0], text
    assert 'on /cam/image_raw/compressed' in text, text
    assert counts and counts[-1].data == 12, text
    assert camera_results == 12 and all(r.class_id for r in results[:12]), text
    by_stamp = {r.header.stamp.sec * 10**9 + r.header.stamp.nanosec: r for r in results}
    png_result, broken_result = by_stamp[now_ns], by_stamp[now_ns + 1]
    assert png_result.class_id, (matched_before, png_result.note, broken_result.note, text)
    assert not broken_result.class_id and 'invalid frame' in broken_result.note, text
    assert 'corrupt JPEG header' in logs['classifier'].read_text(), text
    assert len({(r.header.stamp.sec, r.header.stamp.nanosec) for r in results}) == 14, text
