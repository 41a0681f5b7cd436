"""Faithful rosbag2 replay: recorded stamps, frame ids and timing, /clock, use_sim_time."""

import sys

import pytest

from bag_writing import NS, write_camera_bag
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id, wait_for

START_NS = 1_700_000_123 * NS + 250_000_000     # a recording made long ago


@pytest.fixture(scope='module')
def camera_bag(tmp_path_factory):
    """20 bikes frames at 15 fps on a raw and a compressed topic, receipt times jittered."""
    bag = tmp_path_factory.mktemp('bags') / 'camera'
    stamps = write_camera_bag(bag, frames=20, fps=15.0, start_ns=START_NS,
                              topics=('/cam/image_raw', '/cam/image_raw/compressed'))
    return bag, stamps


def test_bag_timing_follows_the_header_stamps(camera_bag):
    from cbo_ros.perception.media import RosbagSource
    bag, stamps = camera_bag
    source = RosbagSource(bag)
    frames = list(source)
    assert source.timing == 'header stamps'
    assert source.fps == pytest.approx(15.0, abs=1e-6)   # gaps, not count / duration (16.0)
    assert [f.stamp_ns for f in frames] == stamps
    assert {f.frame_id for f in frames} == {'rec_cam'}
    assert [f.time_s for f in frames] == pytest.approx([(s - stamps[0]) / NS for s in stamps])
    line = source.describe('--topic')
    assert '/cam/image_raw ' in line and '/cam/image_raw/compressed' in line, line


def test_bag_without_header_stamps_falls_back_to_receipt_times(tmp_path):
    from cbo_ros.perception.media import RosbagSource
    write_camera_bag(tmp_path / 'bag', frames=4, zero_stamps=True)
    source = RosbagSource(tmp_path / 'bag')
    assert source.timing == 'receipt times'
    assert [round(f.time_s, 3) for f in source] == [0.0, 0.073, 0.133, 0.206]


def test_cbo_eval_names_the_image_topic_it_reads(camera_bag, capsys):
    from cbo_ros.tools.evaluate import bag_image_topic
    bag, _ = camera_bag
    assert bag_image_topic(str(bag)) == '/cam/image_raw'
    out = capsys.readouterr().out
    assert 'image topic /cam/image_raw (20 frames' in out
    assert 'other image topics: /cam/image_raw/compressed (choose one with --topic)' in out
    assert bag_image_topic(str(bag), '/cam/image_raw/compressed') == '/cam/image_raw/compressed'
    assert bag_image_topic('bikes.mp4', None) is None


def camera_node(domain, **parameters):
    """A CameraNode in this process (its own context) with parameter overrides."""
    import rclpy
    from rclpy.parameter import Parameter
    from cbo_ros.nodes.camera_node import CameraNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    overrides = [Parameter(k, value=v) for k, v in parameters.items()]
    try:
        return CameraNode(context=context, parameter_overrides=overrides), context
    except Exception:
        rclpy.try_shutdown(context=context)
        raise


def test_camera_schedule_keeps_the_recorded_gaps(camera_bag):
    import rclpy
    bag, stamps = camera_bag
    node, context = camera_node(unique_domain_id(), source=str(bag), mode='once',
                                keep_recorded_stamps=True)
    try:
        due = []
        while node.pending is not None:
            due.append(node.due_s(node.pending))
            node.pass_index += 1
            node.pending = node.next_frame()
        gaps = [b - a for a, b in zip(due, due[1:])]
        assert gaps == pytest.approx([(b - a) / NS for a, b in zip(stamps, stamps[1:])],
                                     abs=1e-9)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_recorded_stamps_need_a_bag_played_once(camera_bag):
    from cbo_ros.nodes.camera_node import SourceOpenError
    bag, _ = camera_bag
    with pytest.raises(ValueError, match='needs mode: once'):
        camera_node(unique_domain_id(), source=str(bag), keep_recorded_stamps=True)
    with pytest.raises(SourceOpenError, match='needs a rosbag2 source'):
        camera_node(unique_domain_id(), source='bikes.mp4', mode='once',
                    keep_recorded_stamps=True)


def robot_process(name, log, domain, *parameters):
    """One robot node process: shipped config + overrides, simulated time."""
    from cbo_ros.assets import paths
    overrides = [arg for p in parameters for arg in ('-p', p)]
    return start_process(
        [sys.executable, '-m', f'cbo_ros.nodes.{name}', '--ros-args', '--params-file',
         str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'), '-p', 'use_sim_time:=true',
         *overrides], ros_env(domain), log)


@pytest.mark.integration
def test_replay_with_recorded_stamps_is_answered_and_recorded_with_them(camera_bag, tmp_path):
    """Bag -> camera_node (kept stamps, /clock) -> classifier + planner on sim time -> cbo_record.

    The final results carry the recorded stamps and frame id, every frame is answered once by
    its deadline on the recorded clock, and the recording of the replay scores every frame.
    """
    from cbo_interfaces.msg import FrameClassification
    from rosgraph_msgs.msg import Clock
    from cbo_ros.evaluation.recorded_results import score_recorded_run
    from cbo_ros.nodes.ros_common import RESULT_QOS
    from ros_session import RosSession
    bag, stamps = camera_bag
    domain = unique_domain_id()
    replayed = tmp_path / 'replayed'
    logs = {n: tmp_path / f'{n}.log' for n in ('camera', 'classifier', 'planner', 'recorder')}
    processes = [
        start_process(['-m', 'cbo_ros.tools.record', '-o', str(replayed), '--images', 'raw',
                       '--use-sim-time'], ros_env(domain), logs['recorder']),
        robot_process('npu_classifier_node', logs['classifier'], domain),
        robot_process('offload_planner_node', logs['planner'], domain,
                      'strategy:=local_only', 'deadline_ms:=1000.0'),
    ]
    session = RosSession(domain)
    results, clock = [], []
    reader = session.node.create_subscription(FrameClassification, 'result', results.append,
                                              RESULT_QOS)
    session.node.create_subscription(Clock, '/clock', clock.append, 10)
    # The planner's result writer is matched with this reader before the first frame.
    session.spin_until(lambda: reader.get_publisher_count() > 0, 60.0)
    camera = robot_process('camera_node', logs['camera'], domain, f'source:={bag}',
                           'mode:=once', 'exit_when_done:=true', 'keep_recorded_stamps:=true',
                           'publish_clock:=true', 'clock_tail_s:=3.0', 'subscriber_timeout_s:=60.0',
                           'wait_for_subscribers:=3')    # classifier, planner, recorder
    try:
        session.spin_until(lambda: len(results) >= len(stamps), 90.0)
        session.spin_until(lambda: camera.poll() is not None, 20.0)
    finally:
        session.close()
        codes = [stop_process(p) for p in processes + [camera]]
    text = '\n'.join(f'--- {n}\n{p.read_text()}' for n, p in logs.items() if p.exists())
    assert codes == [0, 0, 0, 0], text
    got = [r.header.stamp.sec * NS + r.header.stamp.nanosec for r in results]
    assert sorted(got) == stamps, text                 # each recorded stamp answered once
    assert {r.header.frame_id for r in results} == {'rec_cam'}, text
    assert all(r.class_id for r in results), text
    assert all(r.deadline_met for r in results), text  # on the recorded clock
    first_clock = clock[0].clock.sec * NS + clock[0].clock.nanosec
    assert first_clock == stamps[0], text              # /clock starts at the recorded time
    assert 'recorded stamps and frame ids kept' in text, text
    assert wait_for(lambda: (replayed / 'metadata.yaml').is_file(), 5.0), text
    score = score_recorded_run(replayed)
    assert (score.frames, score.answered, score.duplicates) == (len(stamps), len(stamps), 0)


@pytest.mark.integration
def test_sim_time_without_clock_fails_loudly(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import UInt64
    from cbo_ros.nodes.ros_common import LATCHED_QOS
    from ros_session import RosSession
    domain = unique_domain_id()
    log = tmp_path / 'camera.log'
    camera = robot_process('camera_node', log, domain, 'source:=bikes.mp4',
                           'wait_for_subscribers:=0')
    session = RosSession(domain)
    errors, counts = [], []
    session.node.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda m: errors.extend(s for s in m.status if s.level == s.ERROR), 10)
    session.node.create_subscription(UInt64, 'frames_published', counts.append, LATCHED_QOS)
    try:
        session.spin_until(lambda: errors, 30.0)
    finally:
        session.close()
        code = stop_process(camera)
    text = log.read_text()
    assert code == 0, text
    assert 'no /clock message has arrived' in text and 'publish_clock' in text, text
    assert errors and 'no /clock' in errors[0].message, text
    assert counts and all(c.data == 0 for c in counts), 'frames were published with no clock'


@pytest.mark.integration
def test_server_on_sim_time_without_clock_reports_an_error(tmp_path):
    """server_node checks deadlines on its clock: with use_sim_time and no /clock it says so."""
    from diagnostic_msgs.msg import DiagnosticArray
    from cbo_ros.assets import paths
    from ros_session import RosSession
    domain = unique_domain_id()
    log = tmp_path / 'server.log'
    server = start_process(
        [sys.executable, '-m', 'server_node.offload_server', '--ros-args', '--params-file',
         str(paths.SOURCE_ROOT / 'config' / 'server.yaml'), '-p', 'use_sim_time:=true'],
        ros_env(domain), log)
    session = RosSession(domain)
    errors = []
    session.node.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda m: errors.extend(s for s in m.status if s.level == s.ERROR), 10)
    try:
        session.spin_until(lambda: errors, 40.0)
    finally:
        session.close()
        code = stop_process(server)
    text = log.read_text()
    assert code == 0, text
    assert 'no /clock message has arrived' in text, text
    assert errors and 'no /clock' in errors[0].message, text
