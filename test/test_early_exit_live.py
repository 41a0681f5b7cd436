"""Early-exit partition offloading live: early_exit_node and server_node over DDS."""

import os
import sys
import time

import numpy as np
import pytest

from cbo_ros.assets import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

NS = f'/ee{os.getpid()}'
FRAMES = 12


@pytest.fixture(scope='module')
def system(tmp_path_factory):
    """server_node and early_exit_node processes and a session that plays frames."""
    from cbo_interfaces.msg import FrameClassification, TransferSample
    from cbo_interfaces.srv import OffloadFeatures
    from cbo_ros.evaluation.early_exit_eval import calibration_path
    from cbo_ros.nodes.ros_common import RESULT_QOS
    from cbo_ros.perception.early_exit import find_early_exit_dir
    if not (find_early_exit_dir() / 'manifest.json').is_file() or \
            not calibration_path().is_file():
        pytest.skip('early-exit parts or calibration not built (docs/early_exit.md)')
    domain = unique_domain_id()
    logs = tmp_path_factory.mktemp('early_exit')
    server = start_process(
        [sys.executable, '-m', 'server_node.offload_server', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'server.yaml'),
         '-r', f'__ns:={NS}', '-p', 'max_payload_bytes:=300000'],
        ros_env(domain), logs / 'server.log')
    # p_tar 1.0: every frame is offloaded; a long deadline keeps a loaded machine in time.
    robot = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.early_exit_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'early_exit.yaml'),
         '-r', f'__ns:={NS}', '-p', 'p_tar:=1.0', '-p', 'deadline_ms:=3000.0'],
        ros_env(domain), logs / 'robot.log')
    session = RosSession(domain)
    results = []
    session.node.create_subscription(FrameClassification, f'{NS}/result', results.append, 100)
    transfers = []
    session.node.create_subscription(TransferSample, f'{NS}/offload_transfers',
                                     transfers.append, RESULT_QOS)
    client = session.client(OffloadFeatures, f'{NS}/offload_features')
    try:
        if not session.spin_until(client.service_is_ready, 40):
            pytest.fail('offload_features did not appear:\n' + (logs / 'server.log').read_text())
        yield {'session': session, 'results': results, 'client': client, 'logs': logs,
               'transfers': transfers, 'server': server}
    finally:
        session.close()
        codes = stop_process(robot), stop_process(server)
        assert codes == (0, 0), (logs / 'robot.log').read_text() + \
            (logs / 'server.log').read_text()


def _frames():
    import cv2
    files = sorted((paths.media_dir() / 'imagenet_samples').glob('*.jpg'))[:FRAMES]
    if not files:
        pytest.skip('media not prepared')
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


@pytest.mark.integration
def test_every_frame_answered_by_the_server_tail_like_offline(system):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from cbo_common.tensor_codec import decode_tensor, encode_tensor
    from cbo_ros.perception.early_exit import EarlyExitModel
    session, results = system['session'], system['results']
    publisher = session.node.create_publisher(
        Image, f'{NS}/image_raw', QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30,
                                             reliability=ReliabilityPolicy.RELIABLE))
    if not session.spin_until(lambda: publisher.get_subscription_count() > 0, 30):
        pytest.fail('early_exit_node did not subscribe:\n' +
                    (system['logs'] / 'robot.log').read_text())
    frames = _frames()
    stamps = []
    for rgb in frames:
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                    step=rgb.shape[1] * 3, data=rgb.tobytes())
        msg.header.stamp = session.node.get_clock().now().to_msg()
        stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        publisher.publish(msg)
        session.spin_for(0.1)
    assert session.spin_until(lambda: len(results) >= len(frames), 60), \
        (len(results), (system['logs'] / 'robot.log').read_text())
    time.sleep(0.2)
    session.spin_for(0.2)
    assert len(results) == len(frames)          # exactly one answer per frame
    by_stamp = {(r.header.stamp.sec, r.header.stamp.nanosec): r for r in results}
    model = EarlyExitModel()
    served = 0
    for stamp, rgb in zip(stamps, frames):
        answer = by_stamp[stamp]
        assert answer.is_final and answer.deadline_met, answer.note
        if answer.source != answer.SOURCE_SERVER:
            continue
        served += 1
        blocks = int(answer.resolution)
        _, features = model.head(blocks, model.preprocess([rgb]))
        decoded = decode_tensor(encode_tensor(features), model.tensor_shape(blocks))
        assert int(answer.class_id) == int(model.tail(blocks, decoded).argmax()), answer.note
    assert served >= len(frames) - 2, [r.note for r in results]
    # One TransferSample per offload call, for the network monitor: the server's answers
    # succeeded (a late one too, flagged timed_out), each with its size and round trip.
    assert session.spin_until(lambda: len(system['transfers']) >= served, 5)
    samples = {t.frame_seq: t for t in system['transfers']}
    assert len(samples) == len(system['transfers']) >= served
    answered = [t for t in samples.values() if t.success]
    assert len(answered) >= served and all(t.payload_bytes > 0 for t in samples.values())
    assert all(t.round_trip_ms > 0 for t in answered), samples


@pytest.mark.integration
def test_a_stalled_server_gets_the_branch_answer_in_time_and_its_late_answer_is_reported(system):
    """server_node stopped (SIGSTOP): the offloaded frame is answered with its branch's answer
    before the deadline; once the server runs again its late answer still yields one transfer
    sample (a response arrived, timed_out), not a failure."""
    import signal
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    session, results, server = system['session'], system['results'], system['server']
    publisher = session.node.create_publisher(
        Image, f'{NS}/image_raw', QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30,
                                             reliability=ReliabilityPolicy.RELIABLE))
    assert session.spin_until(lambda: publisher.get_subscription_count() > 0, 30)
    rgb = _frames()[0]
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                step=rgb.shape[1] * 3, data=rgb.tobytes())
    before_results, before_transfers = len(results), len(system['transfers'])
    server.send_signal(signal.SIGSTOP)
    try:
        msg.header.stamp = session.node.get_clock().now().to_msg()
        publisher.publish(msg)
        assert session.spin_until(lambda: len(results) > before_results, 10)
    finally:
        server.send_signal(signal.SIGCONT)
    answer = results[-1]
    assert answer.source == answer.SOURCE_ROBOT and answer.deadline_met, answer.note
    assert answer.note.startswith('server late: local answer'), answer.note
    assert session.spin_until(lambda: len(system['transfers']) > before_transfers, 10)
    sample = system['transfers'][-1]
    assert sample.timed_out and sample.success and sample.payload_bytes > 0, sample
    session.spin_for(0.5)
    assert len(results) == before_results + 1          # still one answer for the frame


@pytest.mark.integration
def test_server_refuses_a_malformed_tensor_with_a_reason(system):
    from cbo_interfaces.srv import OffloadFeatures
    request = OffloadFeatures.Request()
    request.partition = 99
    request.shape = [1, 2, 3]
    request.dtype = 'uint8'
    request.scale = 1.0
    request.data = b'x' * 10
    response = system['session'].call(system['client'], request)
    assert response is not None and not response.success
    assert 'unknown partition 99' in response.error
    request.partition = 8
    request.shape = [1, 80, 8, 8]
    request.data = bytes(np.zeros(5, np.uint8))
    response = system['session'].call(system['client'], request)
    assert not response.success and 'bad tensor' in response.error, response.error


def test_parameter_file_matches_the_declared_parameters():
    """config/early_exit.yaml lists exactly what early_exit_node declares, with descriptions."""
    import rclpy
    import yaml

    from cbo_ros.evaluation.early_exit_eval import calibration_path
    from cbo_ros.nodes.early_exit_node import EarlyExitNode
    from cbo_ros.perception.early_exit import find_early_exit_dir
    if not (find_early_exit_dir() / 'manifest.json').is_file() or \
            not calibration_path().is_file():
        pytest.skip('early-exit parts or calibration not built (docs/early_exit.md)')
    path = paths.SOURCE_ROOT / 'config' / 'early_exit.yaml'
    values = yaml.safe_load(path.read_text())['/**/early_exit_node']['ros__parameters']
    context = rclpy.Context()
    rclpy.init(args=['test', '--ros-args', '--params-file', str(path)], context=context,
               domain_id=unique_domain_id())
    try:
        node = EarlyExitNode(context=context)
        declared = {p for p in node._parameters if not p.startswith('qos_overrides.')}
        declared -= {'use_sim_time', 'start_type_description_service'}
        assert declared == set(values)
        for key, value in values.items():
            assert node.get_parameter(key).value == value
            assert node.describe_parameter(key).description
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_planner_node_strategy_points_to_early_exit_node():
    from cbo_ros.core.planner import make_planner
    with pytest.raises(ValueError, match='early_exit_node'):
        make_planner('early_exit_partition')
