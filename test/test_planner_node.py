"""offload_planner_node: restarts, run-time parameters, frames the classifier skipped."""

import contextlib
import os
import sys
import time

import pytest

from cbo_ros.assets import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

pytestmark = pytest.mark.integration

NS = f'/restart{os.getpid()}'


def test_results_from_before_the_start_are_not_answered_again(tmp_path):
    from cbo_interfaces.msg import FrameClassification
    from cbo_ros.nodes.ros_common import LOCAL_RESULT_QOS, RESULT_QOS, ns_to_stamp
    from builtin_interfaces.msg import Time
    domain = unique_domain_id()
    session = RosSession(domain, namespace=NS)
    local_pub = session.node.create_publisher(FrameClassification, 'local_result',
                                              LOCAL_RESULT_QOS)
    results = []
    session.node.create_subscription(FrameClassification, 'result', results.append, RESULT_QOS)
    # What a classifier published for frames a previous planner already answered.
    old_ns = time.time_ns() - 10 * 10**9
    for i in range(20):
        msg = FrameClassification(frame_seq=i, class_id='1', class_name='goldfish', score=0.5)
        msg.header.stamp = ns_to_stamp(old_ns + i * 40_000_000, Time)
        local_pub.publish(msg)
    log = tmp_path / 'planner.log'
    planner = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.offload_planner_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'),
         '-r', f'__ns:={NS}'], ros_env(domain), log)
    try:
        # A live frame: its local result (no image: answered at its deadline) shows the planner
        # is up and matched; the old ones must not come back.
        assert session.spin_until(lambda: local_pub.get_subscription_count() > 0, 30.0), \
            log.read_text()
        session.spin_for(1.0)
        live = FrameClassification(frame_seq=99, class_id='2', class_name='great white shark')
        live.header.stamp = ns_to_stamp(time.time_ns(), Time)
        local_pub.publish(live)
        assert session.spin_until(lambda: results, 10.0), log.read_text()
        session.spin_for(1.0)
    finally:
        session.close()
        stop_process(planner)
    assert [r.class_id for r in results] == ['2'], [(r.frame_seq, r.note) for r in results]


@contextlib.contextmanager
def planner_in_process(ros_args=()):
    """An OffloadPlannerNode with the shipped parameters, in its own context (not spun)."""
    import rclpy
    from cbo_ros.nodes.offload_planner_node import OffloadPlannerNode
    context = rclpy.Context()
    rclpy.init(args=['test', '--ros-args', '--params-file',
                     str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'), *ros_args],
               context=context, domain_id=unique_domain_id())
    try:
        node = OffloadPlannerNode(context=context)
        try:
            yield node
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_the_payload_sizer_follows_the_parameters():
    """The node's sizer measures its resolutions at jpeg_quality, also after a change."""
    import numpy as np
    from rclpy.parameter import Parameter
    from cbo_ros.perception.image_ops import center_square, encode_jpeg
    textured = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with planner_in_process() as node:
        sizer = node.sizer
        assert sizer.resolutions == node.resolutions == node.planning.resolutions
        assert (sizer.quality, sizer.refresh_frames) == (90, node.settings.size_refresh_frames)
        assert sorted(sizer.encode_payloads(textured)) == sorted(node.resolutions)
        assert node.set_parameters([Parameter('jpeg_quality', value=60)])[0].successful
        assert sizer.quality == 60 and sizer.sizes == {}   # sizes at 90 no longer hold
        sizer.encode_payloads(textured)
        assert sizer.sizes == {r: len(encode_jpeg(center_square(textured, r), 60))
                               for r in node.resolutions}


def test_run_time_parameters_apply_and_start_up_ones_are_refused():
    from rclpy.parameter import Parameter
    with planner_in_process() as node:
        results = node.set_parameters([Parameter('deadline_ms', value=450.0),
                                       Parameter('jpeg_quality', value=70),
                                       Parameter('top_k', value=3),
                                       Parameter('bandwidth_cap_bps', value=2e6)])
        assert all(r.successful for r in results), [r.reason for r in results]
        settings = node.settings
        assert settings.deadline_ns == 450_000_000
        assert (settings.jpeg_quality, settings.top_k) == (70, 3)
        assert node.link_state(node.now_ns())[0].bandwidth_bps == 2e6   # the cap applies
        out_of_range = node.set_parameters([Parameter('deadline_ms', value=1.0)])[0]
        assert not out_of_range.successful and node.settings.deadline_ns == 450_000_000
        # In range, but inconsistent with another setting: refused by the on-set validation.
        inconsistent = node.set_parameters([Parameter('deadline_margin_ms', value=500.0)])[0]
        assert not inconsistent.successful and 'must be below deadline_ms' in inconsistent.reason
        assert node.settings.margin_ns == 25_000_000
        start_up_only = node.set_parameters([Parameter('strategy', value='local_only'),
                                             Parameter('depth', value=5)])
        assert not any(r.successful for r in start_up_only)
        assert node.settings.strategy == 'cbo' and node.settings is settings


def test_frame_qos_is_overridable_in_the_standard_way():
    from rclpy.qos import HistoryPolicy, ReliabilityPolicy
    with planner_in_process() as node:
        assert node.frames_in.qos.reliability == ReliabilityPolicy.RELIABLE   # auto starts here
        assert node.frames_in.qos.depth == node.settings.depth
    prefix = 'qos_overrides./image_raw.subscription.'
    with planner_in_process(['-p', f'{prefix}reliability:=best_effort',
                             '-p', f'{prefix}depth:=7']) as node:
        qos = node.frames_in.qos
        assert (qos.reliability, qos.depth) == (ReliabilityPolicy.BEST_EFFORT, 7)
        assert qos.history == HistoryPolicy.KEEP_LAST
        assert node.get_parameter(f'{prefix}depth').value == 7


def test_a_frame_the_classifier_skipped_is_still_offloaded_in_time(tmp_path):
    import numpy as np
    from builtin_interfaces.msg import Time
    from cbo_interfaces.msg import FrameClassification
    from cbo_interfaces.srv import Offload
    from sensor_msgs.msg import Image
    from cbo_ros.nodes.ros_common import (LOCAL_RESULT_QOS, RESULT_QOS, frame_qos,
                                          ns_to_stamp)
    domain = unique_domain_id()
    config = paths.SOURCE_ROOT / 'config'
    server = start_process(
        [sys.executable, '-m', 'server_node.offload_server', '--ros-args', '--params-file',
         str(config / 'server.yaml'), '-p', 'warmup:=false', '-r', f'__ns:={NS}s'],
        ros_env(domain), tmp_path / 'server.log')
    planner = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.offload_planner_node', '--ros-args',
         '--params-file', str(config / 'robot.yaml'), '-p', 'deadline_ms:=2000.0',
         '-r', f'__ns:={NS}s'], ros_env(domain), tmp_path / 'planner.log')
    session = RosSession(domain, namespace=f'{NS}s')
    camera = session.node.create_publisher(Image, 'image_raw', frame_qos())
    local_pub = session.node.create_publisher(FrameClassification, 'local_result',
                                              LOCAL_RESULT_QOS)
    results = []
    session.node.create_subscription(FrameClassification, 'result', results.append, RESULT_QOS)
    offload = session.client(Offload, 'offload')
    try:
        assert session.spin_until(lambda: offload.service_is_ready()
                                  and camera.get_subscription_count() > 0, 40.0), \
            (tmp_path / 'planner.log').read_text()
        session.spin_for(1.5)                       # the planner sees the server too
        stamp = ns_to_stamp(time.time_ns(), Time)
        rgb = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        image = Image(height=240, width=320, encoding='rgb8', step=960, data=rgb.tobytes())
        image.header.stamp = stamp
        skipped = FrameClassification(note='skipped: frame 1200 ms old (classifier overloaded)')
        skipped.header.stamp = stamp
        camera.publish(image)
        local_pub.publish(skipped)
        assert session.spin_until(lambda: results, 15.0), (tmp_path / 'planner.log').read_text()
    finally:
        session.close()
        stop_process(planner)
        stop_process(server)
    final = results[0]
    assert final.source == final.SOURCE_SERVER and final.class_id, final.note
