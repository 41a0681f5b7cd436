"""The live robot system over DDS: real server_node and robot_bringup processes, a recorder here.

Each test runs on its own ROS_DOMAIN_ID. The robot's deadline is 300 ms (config/robot.yaml).
"""

import collections
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from rclpy.executors import SingleThreadedExecutor

from ros_helpers import ros_env, start_process, stop_process, unique_domain_id, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def script(name):
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


class System:
    """Processes of one test plus a recorder node (own context) spinning in a thread."""

    def __init__(self, domain_id):
        from cbo_ros.testbed.recorder import Recorder
        self.domain_id = domain_id
        self.env = ros_env(domain_id)
        self.logs = Path(tempfile.mkdtemp(prefix='cbo_live_'))
        self.processes = {}
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.recorder = Recorder(record_local=True, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.recorder)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutting down
            pass

    def start(self, name, args):
        self.processes[name] = start_process(args, self.env, str(self.logs / f'{name}.log'))
        return self.processes[name]

    def start_server(self):
        return self.start('server', [script('server_node'), '--ros-args', '--params-file',
                                     str(ROOT / 'config' / 'server.yaml')])

    def start_robot(self, *extra):
        return self.start('robot', [script('robot_bringup'), *extra])

    def robot_params(self, **planner_overrides):
        """Return the path of config/robot.yaml with some planner parameters changed."""
        params = yaml.safe_load((ROOT / 'config' / 'robot.yaml').read_text())
        params['/**/offload_planner_node']['ros__parameters'].update(planner_overrides)
        path = self.logs / 'robot_params.yaml'
        path.write_text(yaml.safe_dump(params))
        return str(path)

    def wait_for_server(self, timeout=30.0):
        from cbo_interfaces.srv import Offload
        client = self.recorder.create_client(Offload, 'offload')
        return client.wait_for_service(timeout_sec=timeout)

    def log(self, name):
        path = self.logs / f'{name}.log'
        return path.read_text() if path.exists() else ''

    def close(self):
        for process in self.processes.values():
            stop_process(process)
        self.executor.shutdown(timeout_sec=1.0)
        self.recorder.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def system():
    instance = System(unique_domain_id())
    yield instance
    instance.close()


def final_by_stamp(recorder):
    from cbo_ros.nodes.ros_common import stamp_to_ns
    answers = {}
    for _, _, msg in recorder.snapshot('results'):
        answers.setdefault(stamp_to_ns(msg.header.stamp), []).append(msg)
    return answers


def wait_all_answered(system, frames, timeout):
    recorder = system.recorder

    def done():
        return recorder.frames_published >= frames and \
            len(final_by_stamp(recorder)) >= recorder.frames_published
    ok = wait_for(done, timeout, interval=0.1)
    time.sleep(1.0)          # a duplicate answer would arrive within the deadline (300 ms)
    return ok


def unanswered_report(system):
    """What a failed wait_all_answered saw: counts, the unanswered source frames, the robot log."""
    recorder = system.recorder
    answers = final_by_stamp(recorder)
    missing = sorted(name for stamp, name in recorder.source_frame_names().items()
                     if stamp not in answers)
    return (f'{recorder.frames_published} captured, {len(answers)} answered; '
            f'unanswered source frames: {missing[:20]}\n' + system.log('robot')[-4000:])


def assert_few_load_induced_empty_answers(finals):
    """Robot answers carry a class; on a loaded 2-core machine a local inference can, rarely,
    miss the deadline (answered empty, "local result missing") or a frame can wait so long the
    classifier skips it: at most two, and only for those reasons."""
    empty = [m.note for m in finals if not m.class_id]
    assert len(empty) <= 2, empty
    assert all('local result missing' in n or n.startswith('skipped:') for n in empty), empty


def test_every_frame_gets_exactly_one_final_result(system):
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '40',
                       '--start-delay', '2.0')
    ok = wait_all_answered(system, 40, timeout=50)
    recorder = system.recorder
    answers = final_by_stamp(recorder)
    assert ok, (f'{recorder.frames_published} captured, {len(answers)} answered\n'
                + system.log('robot')[-3000:])
    assert recorder.frames_published == 40
    assert len(answers) == 40
    duplicates = {k: len(v) for k, v in answers.items() if len(v) > 1}
    assert not duplicates, f'frames answered more than once: {duplicates}'
    finals = [v[0] for v in answers.values()]
    assert all(m.is_final for m in finals)
    assert_few_load_induced_empty_answers(finals)
    misses = [m for m in finals if not m.deadline_met]
    assert len(misses) <= 2, f'{len(misses)} deadline misses: {[m.note for m in misses]}'
    decisions = recorder.snapshot('decisions')
    assert len(decisions) == 40
    offloaded = [d for _, _, d in decisions if d.offload]
    transfers = recorder.snapshot('transfers')
    assert len(transfers) == len(offloaded)
    assert all(t.payload_bytes == d.payload_bytes for (_, _, t), d in
               zip(sorted(transfers, key=lambda x: x[2].frame_seq), offloaded))
    server_answers = [m for m in finals if m.source == m.SOURCE_SERVER]
    assert len(server_answers) <= len(offloaded)


def test_local_only_strategy_sends_nothing_even_with_a_server_up(system):
    # Longer than server_time_probe_s (3 s): the server-time probe must not fire either.
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '110',
                       '--start-delay', '2.0', '--strategy', 'local_only')
    ok = wait_all_answered(system, 110, timeout=60)
    recorder = system.recorder
    answers = final_by_stamp(recorder)
    assert ok, (f'{recorder.frames_published} captured, {len(answers)} answered\n'
                + system.log('robot')[-3000:])
    finals = [v[0] for v in answers.values()]
    assert len(finals) == 110
    assert all(m.source == m.SOURCE_ROBOT for m in finals), [m.note for m in finals]
    assert_few_load_induced_empty_answers(finals)
    assert not [d for _, _, d in recorder.snapshot('decisions') if d.offload]
    assert not recorder.snapshot('transfers')


def test_adaptive_strategy_publishes_the_confidence_it_planned_with(system):
    """cbo_adaptive recalibrates the robot's confidence from server answers: the decision and
    the final robot answers carry that confidence, not the classifier's static one."""
    from cbo_ros.nodes.ros_common import stamp_to_ns
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    # 0.5 Mbit/s: most frames keep their robot answer, the rest feed the online calibration.
    # A 1 s deadline leaves room for answers at >= 224 px (the only ones the calibration
    # learns from) even when the machine is loaded and the server is slow.
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '80',
                       '--start-delay', '2.0', '--strategy', 'cbo_adaptive', '--params-file',
                       system.robot_params(bandwidth_cap_bps=0.5e6, deadline_ms=1000.0))
    assert wait_all_answered(system, 80, timeout=60), unanswered_report(system)
    recorder = system.recorder
    static = {stamp_to_ns(m.header.stamp): m.calibrated_confidence
              for _, _, m in recorder.snapshot('local_results')}
    used = {stamp_to_ns(d.header.stamp): d.local_confidence
            for _, _, d in recorder.snapshot('decisions') if d.strategy == 'cbo_adaptive'}
    finals = {k: v[0] for k, v in final_by_stamp(recorder).items()}
    adapted = [k for k in used if k in static and abs(used[k] - static[k]) > 1e-6]
    feedback = [m for _, _, m in recorder.snapshot('results')
                if m.source != m.SOURCE_ROBOT and m.resolution >= 224]
    assert len(adapted) >= 10, (f'{len(adapted)} of {len(used)} decisions used an adapted value '
                                f'({len(feedback)} server answers at >= 224 px)')
    robot = [k for k in adapted if finals[k].source == finals[k].SOURCE_ROBOT
             and finals[k].class_id]
    assert robot, 'no robot answer after the calibration adapted'
    assert all(finals[k].score == finals[k].calibrated_confidence == used[k] for k in robot)


def test_server_killed_mid_run_every_frame_still_answered_by_deadline(system):
    server = system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '75',
                       '--start-delay', '2.0')
    recorder = system.recorder
    assert wait_for(lambda: recorder.count('results') >= 20, 40), system.log('robot')[-3000:]
    server.send_signal(signal.SIGKILL)
    server.wait()
    killed_at = time.monotonic()
    ok = wait_all_answered(system, 75, timeout=40)
    answers = final_by_stamp(recorder)
    assert ok, f'{recorder.frames_published} captured, {len(answers)} answered'
    assert len(answers) == recorder.frames_published == 75
    assert all(len(v) == 1 for v in answers.values())
    finals = [v[0] for v in answers.values()]
    misses = [m for m in finals if not m.deadline_met]
    assert len(misses) <= 2, f'{len(misses)} deadline misses: {[m.note for m in misses]}'
    after = [m for t, _, m in recorder.snapshot('results') if t > killed_at + 0.5]
    assert after, 'no frame was answered after the server died'
    assert all(m.source == m.SOURCE_ROBOT for m in after), [m.note for m in after]
    assert_few_load_induced_empty_answers(after)
    assert system.processes['robot'].poll() is None, 'robot_bringup died with the server'


def image(encoding, height, width, data, stamp_node):
    from sensor_msgs.msg import Image
    msg = Image(encoding=encoding, height=height, width=width, step=width * 3)
    msg.header.stamp = stamp_node.get_clock().now().to_msg()
    msg.header.frame_id = 'test_camera'
    msg.data = data
    return msg


def test_malformed_frames_are_answered_and_skipped(system):
    from sensor_msgs.msg import Image
    system.start_robot('--no-camera', '--no-monitor')
    recorder = system.recorder
    publisher = recorder.create_publisher(Image, 'image_raw', 10)
    assert wait_for(lambda: publisher.get_subscription_count() >= 2, 30), \
        system.log('robot')[-3000:]
    time.sleep(1.0)
    good = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8).tobytes()
    frames = [
        ('valid before', image('rgb8', 120, 160, good, recorder)),
        ('wrong encoding', image('nv12', 120, 160, good, recorder)),
        ('truncated', image('rgb8', 120, 160, good[:1000], recorder)),
        ('zero size', image('rgb8', 0, 0, b'', recorder)),
        ('valid after', image('bgr8', 120, 160, good, recorder)),
    ]
    for _, msg in frames:
        msg.header.stamp = recorder.get_clock().now().to_msg()     # deadline counts from here
        publisher.publish(msg)
        time.sleep(0.15)
    assert wait_for(lambda: len(final_by_stamp(recorder)) >= 5, 15), system.log('robot')[-3000:]
    time.sleep(0.5)
    answers = final_by_stamp(recorder)
    from cbo_ros.nodes.ros_common import stamp_to_ns
    for label, msg in frames:
        finals = answers.get(stamp_to_ns(msg.header.stamp))
        assert finals and len(finals) == 1, f'{label}: {finals}'
        final = finals[0]
        if label.startswith('valid'):
            assert final.class_id and 'invalid' not in final.note, (label, final.note)
        else:
            assert final.class_id == '' and final.score == 0.0, (label, final)
            assert final.note.startswith('invalid frame:'), (label, final.note)
    locals_ = {stamp_to_ns(m.header.stamp): m for _, _, m in recorder.snapshot('local_results')}
    assert 'encoding' in locals_[stamp_to_ns(frames[1][1].header.stamp)].note
    assert 'truncated' in locals_[stamp_to_ns(frames[2][1].header.stamp)].note
    assert 'zero-size' in locals_[stamp_to_ns(frames[3][1].header.stamp)].note
    assert system.processes['robot'].poll() is None, 'robot_bringup died on a malformed frame'
    assert 'invalid frame' in system.log('robot')


def test_bandwidth_drop_changes_the_planners_choices(system):
    """An external link estimate drops from 50 to 0.4 Mbit/s: fewer and/or smaller offloads."""
    from cbo_interfaces.msg import NetworkQuality
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    recorder = system.recorder
    quality_pub = recorder.create_publisher(NetworkQuality, 'network_quality', 10)
    state = {'bandwidth': 50e6}

    def publish_quality():
        msg = NetworkQuality(bandwidth_bps=state['bandwidth'], rtt_ms=2.0, loss_rate=0.0,
                             server_reachable=True, samples=10, source='external')
        msg.header.stamp = recorder.get_clock().now().to_msg()
        quality_pub.publish(msg)
    recorder.create_timer(0.1, publish_quality)
    # Plan with the calibration's server time, not the measured one: what a loaded machine's
    # server measures would change the choices too (a 1-core load: 15 % offloaded at 50 Mbit/s).
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '100',
                       '--start-delay', '2.0', '--no-monitor', '--params-file',
                       system.robot_params(adapt_server_time=False,
                                           # the recorder stands in for the monitor
                                           trusted_quality_publishers=['cbo_recorder']))
    recorder.set_phase('high')
    assert wait_for(lambda: recorder.count('decisions') >= 45, 40), system.log('robot')[-3000:]
    state['bandwidth'] = 0.4e6
    time.sleep(0.3)
    recorder.set_phase('low')
    assert wait_all_answered(system, 100, timeout=60), unanswered_report(system)
    decisions = recorder.snapshot('decisions')

    def stats(phase):
        chosen = [d for _, p, d in decisions if p == phase]
        offloaded = [d for d in chosen if d.offload]
        return (len(offloaded) / len(chosen),
                float(np.mean([d.payload_bytes for d in offloaded])) if offloaded else 0.0,
                {d.resolution for d in offloaded}, chosen)
    high_share, high_bytes, high_res, high = stats('high')
    low_share, low_bytes, low_res, low = stats('low')
    assert len(high) >= 30 and len(low) >= 30
    assert high_share > 0.2, f'hardly any offloads at 50 Mbit/s: {high_share:.0%}'
    planned = [d for d in low[3:] if d.bandwidth_bps > 0]   # 0: answered without a plan
    assert planned and all(abs(d.bandwidth_bps - 0.4e6) < 1 for d in planned), (
        'estimate not used: bandwidths of the planned decisions, high '
        f'{collections.Counter(d.bandwidth_bps for d in high)}, low '
        f'{collections.Counter(d.bandwidth_bps for d in low)}; robot log:\n'
        + '\n'.join(line for line in system.log('robot').splitlines()
                    if 'network_quality' in line or 'WARN' in line)[-3000:])
    # At 0.4 Mbit/s the uplink carries ~12 KB in 250 ms: fewer offloads, or only small ones.
    assert low_share < high_share or low_bytes < 0.6 * high_bytes, \
        (f'no adaptation: high {high_share:.0%} ({high_bytes:.0f} B, {high_res}), '
         f'low {low_share:.0%} ({low_bytes:.0f} B, {low_res})')
    sent_low = sum(d.payload_bytes for d in low if d.offload)
    duration_low = len(low) / 25.0
    assert sent_low * 8 / duration_low <= 0.4e6 * 1.5, 'offloads exceed the link budget'


@pytest.mark.parametrize('composition', [[], ['--single-process']], ids=['processes', 'one'])
def test_early_exit_strategy_through_robot_bringup(system, composition):
    """robot_bringup --strategy early_exit_partition: early_exit_node answers every frame once,
    exiting on the robot or finishing on the server's tail (a process per node, or all nodes
    on one MultiThreadedExecutor)."""
    from cbo_ros.evaluation.early_exit_eval import calibration_path
    from cbo_ros.perception.early_exit import find_early_exit_dir
    if not (find_early_exit_dir() / 'manifest.json').is_file() or \
            not calibration_path().is_file():
        pytest.skip('early-exit parts or calibration not built (scripts/setup.sh step 8)')
    system.start_server()
    assert system.wait_for_server(), 'server did not come up:\n' + system.log('server')
    system.start_robot('--video', 'bikes.mp4', '--mode', 'once', '--max-frames', '30',
                       '--start-delay', '2.0', '--strategy', 'early_exit_partition',
                       '--deadline-ms', '1000', *composition)
    assert wait_all_answered(system, 30, timeout=60), unanswered_report(system)
    answers = final_by_stamp(system.recorder)
    assert len(answers) == 30 and all(len(v) == 1 for v in answers.values())
    finals = [v[0] for v in answers.values()]
    assert all(m.is_final and m.class_id for m in finals), [m.note for m in finals]
    assert 'early_exit_node' in system.log('robot')
    assert any(m.source == m.SOURCE_SERVER for m in finals), [m.note for m in finals]
