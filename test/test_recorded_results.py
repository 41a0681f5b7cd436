"""Scoring the recorded result stream of a run (rosbag2 written with rosbags, no ROS graph)."""

import numpy as np
import pytest

from cbo_ros.evaluation.recorded_results import (RecordedResultsError, format_score,
                                                 score_recorded_run)
from cbo_ros.nodes.bag_recorder_node import make_typestore
from cbo_ros.perception.labels import LabelsError, read_frame_labels


def write_bag(path, answers, frames=6, extra_image_topic=False):
    """A bag with ``frames`` images on /cam/image and the given final answers on /result.

    ``answers``: frame index -> (class_id, source, deadline_met), one result per entry.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    store = make_typestore()
    image_type = store.types['sensor_msgs/msg/Image']
    header_type = store.types['std_msgs/msg/Header']
    time_type = store.types['builtin_interfaces/msg/Time']
    result_type = store.types['cbo_interfaces/msg/FrameClassification']
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        topics = ['/cam/image'] + (['/other/image'] if extra_image_topic else [])
        images = [writer.add_connection(t, 'sensor_msgs/msg/Image', typestore=store)
                  for t in topics]
        results = writer.add_connection('/result', 'cbo_interfaces/msg/FrameClassification',
                                        typestore=store)
        for index in range(frames):
            header = header_type(stamp=time_type(sec=50 + index, nanosec=7), frame_id='cam')
            image = image_type(header=header, height=1, width=1, encoding='rgb8',
                               is_bigendian=0, step=3, data=np.zeros(3, dtype=np.uint8))
            for connection in images:
                writer.write(connection, 1000 + index,
                             store.serialize_cdr(image, 'sensor_msgs/msg/Image'))
            if index in answers:
                class_id, source, met = answers[index]
                result = _result(store, result_type, header, class_id, source, met)
                writer.write(results, 2000 + index,
                             store.serialize_cdr(result, 'cbo_interfaces/msg/FrameClassification'))
    return path


def _result(store, result_type, header, class_id, source, met):
    latency_type = store.types['cbo_interfaces/msg/LatencyBreakdown']
    time_type = store.types['builtin_interfaces/msg/Time']
    latency = latency_type(**{name: 0.0 for name in latency_type.__dataclass_fields__})
    return result_type(header=header, frame_seq=0, class_id=str(class_id), class_name='',
                       score=0.5, calibrated_confidence=0.5, raw_confidence=0.5, top_k=[],
                       source=source, model='m', resolution=224, is_final=True,
                       deadline_met=met, deadline=time_type(sec=0, nanosec=0), note='n',
                       latency=latency)


def test_recorded_answers_scored_against_label_sets(tmp_path):
    bag = write_bag(tmp_path / 'run', {0: (1, 0, True), 1: (2, 1, True), 2: (3, 1, False),
                                       3: (9, 0, True), 4: (5, 0, True)})
    labels = tmp_path / 'labels.csv'
    labels.write_text('frame,labels\n0,1 7\n1,2\n2,4\n3,\n4,5\n5,6\n')
    score = score_recorded_run(bag, read_frame_labels(labels))
    assert (score.frames, score.answered, score.deadline_misses, score.offloaded) == (6, 5, 1, 2)
    # labelled frames 0,1,2,4,5: right on 0 (1 in {1,7}), 1, 4; wrong on 2; frame 5 unanswered
    assert score.labelled == 5 and score.correct == 3
    assert score.accuracy == pytest.approx(0.6)
    assert score.summary()['labels'] == 'true'
    assert any('1 unlabelled left out' in line for line in format_score(score))


def test_labels_must_cover_the_recorded_frames(tmp_path):
    bag = write_bag(tmp_path / 'run', {0: (1, 0, True)})
    labels = tmp_path / 'labels.csv'
    labels.write_text('frame,labels\n0,1\n1,2\n')
    with pytest.raises(LabelsError, match='missing frames'):
        score_recorded_run(bag, read_frame_labels(labels))


def test_without_labels_no_accuracy_and_ambiguous_topics_named(tmp_path):
    score = score_recorded_run(write_bag(tmp_path / 'a', {0: (1, 0, True)}))
    assert score.accuracy is None and score.label_source == 'none'
    assert 'accuracy not computed' in format_score(score)[1]
    bag = write_bag(tmp_path / 'b', {0: (1, 0, True)}, extra_image_topic=True)
    with pytest.raises(RecordedResultsError, match='several image topics'):
        score_recorded_run(bag)
    assert score_recorded_run(bag, image_topic='/other/image').frames == 6


def test_cbo_eval_recorded_results(tmp_path, capsys):
    from cbo_ros.tools.evaluate import main
    bag = write_bag(tmp_path / 'run', {i: (i, 0, True) for i in range(6)})
    (tmp_path / 'run.labels.csv').write_text('frame,labels\n' + ''.join(
        f'{i},{i if i % 2 else 999}\n' for i in range(6)))
    assert main([str(bag), '--recorded-results', '--json', str(tmp_path / 'r.json')]) == 0
    out = capsys.readouterr().out
    assert 'labels: true' in out and 'accuracy (labels: true) 50.0 %' in out
    (tmp_path / 'run.labels.csv').write_text('frame,label\n0,1\n')
    assert main([str(bag), '--recorded-results']) == 1
    assert 'wrong header' in capsys.readouterr().err
