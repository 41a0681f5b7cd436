"""Live demo against true labels: the camera says which source frame each image is, and the
demo's summary scores answers against that frame's label set (labels: true)."""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from labelled_clips import foolbox_samples, make_labelled_clip

from cbo_ros.assets import paths
from cbo_ros.testbed import demo


def _stamp(ns):
    return SimpleNamespace(sec=ns // 10**9, nanosec=ns % 10**9)


def _answer(ns, class_id, server=False):
    return SimpleNamespace(header=SimpleNamespace(stamp=_stamp(ns)), class_id=str(class_id),
                           latency=SimpleNamespace(total_ms=50.0), source=1 if server else 0,
                           SOURCE_SERVER=1, deadline_met=True)


class FakeRecorder:
    """What the recorder saw: answers, local answers and the camera's source frames."""

    def __init__(self, results, local, source_frames):
        self.data = {'results': results, 'local_results': local, 'decisions': [],
                     'transfers': []}
        self.frames = source_frames

    def snapshot(self, name):
        return [(0.0, 'high', msg) for msg in self.data[name]]

    def source_frame_names(self):
        return dict(self.frames)


def test_demo_summary_scores_true_label_sets_by_source_frame():
    sets = {'clip.avi#0': frozenset({1}), 'clip.avi#1': frozenset(),
            'clip.avi#2': frozenset({5, 6}), 'clip.avi#3': frozenset({9})}
    names = list(sets)
    stamps = [10**9 * (k + 1) for k in range(4)]
    # The camera's sidecar maps each stamp to its frame (here deliberately not in stamp order).
    frames = {stamps[0]: names[0], stamps[1]: names[2], stamps[2]: names[1], stamps[3]: names[3]}
    final = [_answer(stamps[0], 1), _answer(stamps[1], 6, True), _answer(stamps[2], 3),
             _answer(stamps[3], 8)]
    local = [_answer(stamps[0], 2), _answer(stamps[1], 5), _answer(stamps[2], 3),
             _answer(stamps[3], 9)]
    args = SimpleNamespace(video='clip.avi', strategy='cbo')
    summary = demo.summarize(FakeRecorder(final, local, frames), 4, [], [], 'loopback', args,
                             1.0, truth=(sets, names, 'clip.labels.csv'))
    assert summary['labels'] == 'true' and summary['score'] == 'accuracy'
    assert summary['accuracy_final'] == pytest.approx(2 / 3)       # frame #1 is unlabelled
    assert summary['accuracy_local_only'] == pytest.approx(2 / 3)
    assert summary['unlabelled_or_unmatched_left_out'] == 1
    assert summary['frames_matched_by_source_frame'] == 4
    # Without the camera's sidecar, the capture order stands in when every frame was answered.
    ordered = demo.summarize(FakeRecorder(final, local, {}), 4, [], [], 'loopback', args, 1.0,
                             truth=(sets, names, 'clip.labels.csv'))
    assert ordered['accuracy_final'] == pytest.approx(1 / 3)
    reference = demo.summarize(FakeRecorder(final, local, {}), 4, [1, 6, 3, 8], [], 'loopback',
                               args, 1.0)
    assert reference['labels'] == 'reference' and 'AGREEMENT' in reference['accuracy_reference']
    assert reference['accuracy_final'] == pytest.approx(1.0)


def test_demo_refuses_an_unusable_labels_file(tmp_path, capsys):
    video, labels, _ = make_labelled_clip(tmp_path, samples=foolbox_samples()[:2],
                                          unlabelled=())
    labels.write_text('frame,labels\n0,1\n')
    assert demo.main(['--video', str(video), '--no-shaping']) == 1
    assert 'missing frames' in capsys.readouterr().err


@pytest.mark.integration
def test_camera_publishes_the_source_frame_of_every_image(tmp_path):
    from sensor_msgs.msg import Image, TimeReference
    from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
    from ros_session import RosSession
    from cbo_ros.nodes.ros_common import RESULT_QOS, frame_qos, stamp_to_ns
    video, _, _ = make_labelled_clip(tmp_path, samples=foolbox_samples()[:4], hold=2,
                                     unlabelled=(2, 5))
    domain = unique_domain_id()
    session = RosSession(domain)
    images, frames = [], []
    session.node.create_subscription(Image, 'image_raw', images.append, frame_qos())
    session.node.create_subscription(TimeReference, 'image_raw/source_frame', frames.append,
                                     RESULT_QOS)
    log = tmp_path / 'camera.log'
    camera = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.camera_node', '--ros-args', '--params-file',
         str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'), '-p', f'source:={video}', '-p',
         'mode:=once', '-p', 'wait_for_subscribers:=1', '-p', 'rate_hz:=20.0'],
        ros_env(domain), log)
    try:
        session.spin_until(lambda: len(images) >= 8 and len(frames) >= 8, 40.0)
    finally:
        session.close()
        stop_process(camera)
    assert len(images) == 8 and len(frames) == 8, log.read_text()
    by_stamp = {stamp_to_ns(f.header.stamp): f.source for f in frames}
    names = [by_stamp[stamp_to_ns(i.header.stamp)] for i in images]
    assert names == [f'{video.name}#{k}' for k in range(8)]
    assert np.allclose([f.time_ref.sec + f.time_ref.nanosec / 1e9 for f in frames],
                       np.arange(8) / 10.0)
