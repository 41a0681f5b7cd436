"""offload_planner_node under hostile input: frames already late, spoofed network quality."""

import os
import sys
import time

import pytest

from cbo_ros.assets import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

pytestmark = pytest.mark.integration

CONFIG = paths.SOURCE_ROOT / 'config'


def frame(stamp_ns, width=320, height=240, seed=1):
    """A noise rgb8 Image stamped ``stamp_ns`` (may be 0 or negative)."""
    import numpy as np
    from sensor_msgs.msg import Image
    rgb = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image(height=height, width=width, encoding='rgb8', step=3 * width,
                  data=rgb.tobytes())
    image.header.stamp.sec, image.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    return image


def local_answer(header, confidence=0.05):
    """What the classifier would publish for a frame: class 1 at ``confidence``."""
    from cbo_interfaces.msg import FrameClassification
    return FrameClassification(header=header, class_id='1', class_name='goldfish', score=0.4,
                               calibrated_confidence=confidence, raw_confidence=confidence)


class Robot:
    """A test session standing in for camera + classifier of one namespace."""

    def __init__(self, domain, namespace, name='test_client'):
        from cbo_interfaces.msg import FrameClassification, OffloadDecision
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from cbo_ros.nodes.ros_common import LOCAL_RESULT_QOS, RESULT_QOS, frame_qos
        self.session = RosSession(domain, name=name, namespace=namespace)
        node = self.session.node
        self.camera = node.create_publisher(Image, 'image_raw', frame_qos())
        self.local = node.create_publisher(FrameClassification, 'local_result',
                                           LOCAL_RESULT_QOS)
        self.results, self.decisions, self.diagnostics = [], [], []
        node.create_subscription(FrameClassification, 'result', self.results.append, RESULT_QOS)
        node.create_subscription(OffloadDecision, 'offload_decision', self.decisions.append,
                                 RESULT_QOS)
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append, 10)

    def send(self, stamp_ns, confidence=0.05):
        """Publish one frame and its local answer."""
        image = frame(stamp_ns)
        self.camera.publish(image)
        self.local.publish(local_answer(image.header, confidence))

    def planner_status(self, name='offload_planner_node'):
        """The planner's latest diagnostic values ({} before the first)."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.endswith(name):
                    return {kv.key: kv.value for kv in status.values} | {
                        '_message': status.message, '_level': status.level}
        return {}


def start_planner_and_robot(ns, log):
    """Start offload_planner_node in ``ns`` and a Robot session matched to it."""
    domain = unique_domain_id()
    planner = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.offload_planner_node', '--ros-args',
         '--params-file', str(CONFIG / 'robot.yaml'), '-r', f'__ns:={ns}'],
        ros_env(domain), log)
    robot = Robot(domain, ns)
    matched = robot.session.spin_until(
        lambda: robot.camera.get_subscription_count() > 0
        and robot.local.get_subscription_count() > 0, 30.0)
    if not matched:
        robot.session.close()
        stop_process(planner)
    assert matched, log.read_text()
    robot.session.spin_for(1.0)
    return planner, robot


def test_frames_due_before_planning_are_answered_once_late(tmp_path):
    """Stamps of 0, negative and an hour old get exactly one final result, marked late."""
    from cbo_ros.nodes.ros_common import stamp_to_ns
    log = tmp_path / 'planner.log'
    planner, robot = start_planner_and_robot(f'/late{os.getpid()}', log)
    try:
        now = time.time_ns()
        old = [0, -5 * 10**9, now - 3600 * 10**9, now - 2 * 10**9]
        for stamp in old:
            robot.send(stamp)
        live = now + 10**6
        robot.send(live)
        expected = set(old) | {live}
        assert robot.session.spin_until(
            lambda: {stamp_to_ns(r.header.stamp) for r in robot.results} >= expected, 10.0), \
            ([(r.header.stamp, r.note) for r in robot.results], log.read_text())
        robot.session.spin_for(1.0)          # a duplicate would come now
    finally:
        robot.session.close()
        stop_process(planner)
    by_stamp = {}
    for result in robot.results:
        by_stamp.setdefault(stamp_to_ns(result.header.stamp), []).append(result)
    assert {k: len(v) for k, v in by_stamp.items()} == {k: 1 for k in expected}
    for stamp in old:
        result = by_stamp[stamp][0]
        assert result.is_final and not result.deadline_met
        assert result.note.startswith('deadline passed before planning'), result.note
        assert result.class_id == '1', result.note         # the local answer, late
    assert not by_stamp[live][0].note.startswith('deadline passed'), by_stamp[live][0].note


def test_repeated_stamps_are_counted_and_answered_once(tmp_path):
    """Frames are identified by header.stamp: a repeated stamp gets one answer and a count."""
    from cbo_ros.nodes.ros_common import stamp_to_ns
    log = tmp_path / 'planner.log'
    planner, robot = start_planner_and_robot(f'/rep{os.getpid()}', log)
    try:
        stamp = time.time_ns()
        robot.send(stamp)
        robot.camera.publish(frame(stamp, seed=2))          # same stamp, while in flight
        assert robot.session.spin_until(lambda: robot.results, 10.0), log.read_text()
        robot.session.spin_for(0.5)
        robot.camera.publish(frame(stamp, seed=3))          # same stamp, after the answer
        assert robot.session.spin_until(
            lambda: robot.planner_status().get('repeated_stamps') == '2', 10.0), \
            (robot.planner_status(), log.read_text())
    finally:
        robot.session.close()
        stop_process(planner)
    assert [stamp_to_ns(r.header.stamp) for r in robot.results] == [stamp]
    assert len(robot.decisions) == 1
    assert 'repeats the header.stamp' in log.read_text()


def test_spoofed_network_quality_does_not_change_decisions(tmp_path):
    """A foreign node saying "server unreachable" is ignored and reported; the monitor is not."""
    from cbo_interfaces.msg import NetworkQuality
    domain, ns = unique_domain_id(), f'/spoof{os.getpid()}'
    server = start_process(
        [sys.executable, '-m', 'server_node.offload_server', '--ros-args', '--params-file',
         str(CONFIG / 'server.yaml'), '-p', 'warmup:=false', '-r', f'__ns:={ns}'],
        ros_env(domain), tmp_path / 'server.log')
    log = tmp_path / 'planner.log'
    planner = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.offload_planner_node', '--ros-args',
         '--params-file', str(CONFIG / 'robot.yaml'), '-p', 'deadline_ms:=1000.0',
         '-r', f'__ns:={ns}'], ros_env(domain), log)
    robot = Robot(domain, ns)
    foreign = robot.session.node.create_publisher(NetworkQuality, 'network_quality', 10)
    # The trusted name: the control that shows the same message does steer the planner.
    monitor = RosSession(domain, name='network_monitor_node', namespace=ns)
    trusted = monitor.node.create_publisher(NetworkQuality, 'network_quality', 10)
    unreachable = NetworkQuality(bandwidth_bps=10e6, rtt_ms=5.0, server_reachable=False,
                                 source='spoof')

    def run_frames(publisher, count=8):
        start = len(robot.decisions)
        for i in range(count):
            publisher.publish(unreachable)
            monitor.spin_for(0.02)
            robot.session.spin_for(0.1)
            robot.send(time.time_ns())
            robot.session.spin_for(0.15)
        robot.session.spin_until(lambda: len(robot.decisions) >= start + count, 10.0)
        return robot.decisions[start:]

    try:
        assert robot.session.spin_until(
            lambda: robot.camera.get_subscription_count() > 0
            and robot.planner_status().get('server_reachable') == 'True', 40.0), \
            (log.read_text(), robot.planner_status())
        spoofed = run_frames(foreign)
        status = robot.session.spin_until(
            lambda: int(robot.planner_status().get('untrusted_quality_ignored', 0)) > 0
            and robot.planner_status(), 5.0)
        controlled = run_frames(trusted)
    finally:
        monitor.close()
        robot.session.close()
        stop_process(planner)
        stop_process(server)
    assert len(spoofed) == 8 and all(d.offload for d in spoofed), \
        [(d.offload, d.reason) for d in spoofed]
    assert status and 'test_client' in status['_message'], status
    assert any('unreachable' in d.reason for d in controlled), \
        [(d.offload, d.reason) for d in controlled]
