"""Score what a live run actually answered: the recorded ``result`` stream of a rosbag2.

``cbo_record`` writes the camera frames and the planner's final answers into one bag. Frame i is
the i-th message on the image topic; its answer is the final ``result`` with the same header
stamp. Against a labels file (``frame,labels``, frame = that index) this gives the accuracy the
robot delivered, with everything the live system did (deadlines, server answers, fallbacks),
instead of re-running the models. No ROS needed: the bag is read with rosbags.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
RESULT_TYPE = 'cbo_interfaces/msg/FrameClassification'
SOURCE_SERVER = 1


class RecordedResultsError(ValueError):
    """The bag cannot be scored (no image or result topic, ambiguous topics, bad labels)."""


@dataclass
class RecordedScore:
    """What a recorded run answered, frame by frame, and its summary."""

    bag: str
    image_topic: str
    result_topic: str
    frames: int
    answered: int
    duplicates: int
    deadline_misses: int
    offloaded: int
    labelled: int = 0
    correct: int = 0
    label_source: str = 'none'
    notes: Counter = field(default_factory=Counter)
    per_frame: list = field(default_factory=list)   # (index, class_id or None, source, correct)

    @property
    def accuracy(self):
        """Share of labelled frames whose final answer is in the frame's label set (or None)."""
        return self.correct / self.labelled if self.labelled else None

    def summary(self):
        """Return the figures as a JSON-able dict."""
        return {'bag': self.bag, 'image_topic': self.image_topic,
                'result_topic': self.result_topic, 'frames': self.frames,
                'answered': self.answered, 'duplicates': self.duplicates,
                'deadline_misses': self.deadline_misses, 'offloaded': self.offloaded,
                'labels': self.label_source, 'labelled_frames': self.labelled,
                'unlabelled_frames': self.frames - self.labelled if self.label_source == 'true'
                else None, 'accuracy': self.accuracy,
                'notes': dict(self.notes.most_common(8))}


def _pick_topic(connections, types, wanted, kind, exclude_suffix=None):
    """Choose one topic of ``types``: the one named, else the only candidate."""
    candidates = sorted({c.topic for c in connections if c.msgtype in types
                         and not (exclude_suffix and c.topic.endswith(exclude_suffix))})
    if wanted:
        if wanted not in candidates:
            raise RecordedResultsError(f'{kind} topic {wanted!r} is not in the bag (candidates: '
                                       f'{", ".join(candidates) or "none"})')
        return wanted
    if not candidates:
        raise RecordedResultsError(f'the bag has no {kind} topic ({" or ".join(types)})')
    if len(candidates) > 1:
        raise RecordedResultsError(f'the bag has several {kind} topics ({", ".join(candidates)})'
                                   f': name one')
    return candidates[0]


def score_recorded_run(bag, labels=None, image_topic=None, result_topic=None):
    """Score the final answers recorded in ``bag`` (a FrameLabels, or None: no accuracy)."""
    from rosbags.highlevel import AnyReader
    bag = Path(bag)
    with AnyReader([bag]) as reader:
        image_topic = _pick_topic(reader.connections, IMAGE_TYPES, image_topic, 'image')
        result_topic = _pick_topic(reader.connections, (RESULT_TYPE,), result_topic,
                                   'result', exclude_suffix='local_result')
        stamps = []
        for connection, _, raw in reader.messages(
                [c for c in reader.connections if c.topic == image_topic]):
            header = reader.deserialize(raw, connection.msgtype).header
            stamps.append((int(header.stamp.sec), int(header.stamp.nanosec)))
        answers, duplicates = {}, 0
        for connection, _, raw in reader.messages(
                [c for c in reader.connections if c.topic == result_topic]):
            msg = reader.deserialize(raw, connection.msgtype)
            if not msg.is_final:
                continue
            key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
            duplicates += key in answers
            answers.setdefault(key, msg)
    if labels is not None:
        labels.check_frames(len(stamps))
    score = RecordedScore(str(bag), image_topic, result_topic, len(stamps), 0, duplicates, 0, 0,
                          label_source='true' if labels is not None else 'none')
    for index, stamp in enumerate(stamps):
        msg = answers.get(stamp)
        label_set = labels.sets.get(index) if labels is not None else None
        correct = None
        if msg is not None:
            score.answered += 1
            score.deadline_misses += not msg.deadline_met
            score.offloaded += msg.source == SOURCE_SERVER
            score.notes[msg.note or '(none)'] += 1
        if label_set:
            score.labelled += 1
            correct = bool(msg is not None and msg.class_id.isdigit()
                           and int(msg.class_id) in label_set)
            score.correct += correct
        score.per_frame.append((index, msg.class_id if msg is not None else None,
                                'server' if msg is not None and msg.source == SOURCE_SERVER
                                else 'robot', correct))
    return score


def format_score(score):
    """Return human-readable summary lines."""
    lines = [f'recorded run {score.bag}: frames on {score.image_topic}: {score.frames}, '
             f'answered on {score.result_topic}: {score.answered} (duplicates '
             f'{score.duplicates}), deadline misses {score.deadline_misses}, offloaded '
             f'{score.offloaded}']
    if score.label_source == 'true':
        accuracy = score.accuracy
        lines.append(f'accuracy (labels: true) {100 * accuracy:.1f} % of {score.labelled} '
                     f'labelled frames ({score.frames - score.labelled} unlabelled left out)'
                     if accuracy is not None else 'no labelled frame: accuracy undefined')
    else:
        lines.append('no labels file: accuracy not computed (give --labels, or a '
                     '<bag>.labels.csv next to the bag)')
    return lines


def per_frame_correct(score):
    """1/0 per labelled frame (NaN for unlabelled), for intervals over segments."""
    return np.array([np.nan if c is None else float(c) for _, _, _, c in score.per_frame])
