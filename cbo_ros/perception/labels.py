"""True per-frame labels of a source: label-set CSV files (no ROS, numpy only).

A labels file is a CSV with the header line ``frame,labels`` and one row per frame:

- ``frame``: the 0-based frame index of a video (or the message index on a rosbag2 topic), or
  the file name of an image of an image folder;
- ``labels``: space-separated ImageNet-1k class indices (0-999), ANY of which counts as a
  correct answer (a label set, e.g. every dog breed); an empty cell marks an unlabelled frame,
  which is left out of accuracy and calibration (and counted as such).

A video's labels are found next to it as ``<video stem>.labels.csv`` (``clip.avi`` ->
``clip.labels.csv``) unless a file is named explicitly. Image folders keep their older format
too: ``labels.csv`` with ``file,class_id`` (or ``name,label``, or no header) and one class per
image, and ``imagenet_<i>_<class>`` file names (foolbox's samples).
"""

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NUM_CLASSES = 1000
HEADER = ('frame', 'labels')
LEGACY_HEADERS = (('file', 'class_id'), ('name', 'label'))
SIBLING_SUFFIX = '.labels.csv'
# Labelled file names such as foolbox's 'imagenet_07_609.jpg' (class 609).
LABEL_IN_NAME = re.compile(r'^imagenet_\d+_(\d+)\.\w+$')


class LabelsError(ValueError):
    """A labels file cannot be used (the message names the file, the line and the reason)."""


@dataclass
class FrameLabels:
    """Label set of each frame of a source (an empty set: an unlabelled frame)."""

    path: str                                   # where the labels came from
    sets: dict = field(default_factory=dict)    # frame index (int) or file name (str) -> set
    lines: dict = field(default_factory=dict)   # key -> line number in the file (for errors)

    def __len__(self):
        return len(self.sets)

    @property
    def labelled_count(self):
        """Number of frames with at least one class."""
        return sum(1 for s in self.sets.values() if s)

    def check_frames(self, count):
        """Check a video's labels cover exactly its frames 0..count-1 (count None: skip)."""
        if count is None:
            return
        beyond = sorted(k for k in self.sets if k >= count)
        if beyond:
            raise LabelsError(f'{self.path}:{self.lines.get(beyond[0], "?")}: frame {beyond[0]} '
                              f'is beyond the video, which has {count} frames (0..{count - 1})')
        missing = [k for k in range(count) if k not in self.sets]
        if missing:
            raise LabelsError(f'{self.path}: missing frames: {len(missing)} of the video\'s '
                              f'{count} frames have no row (first: frame {missing[0]}); give '
                              'every frame a row (an empty labels cell marks it unlabelled)')

    def check_names(self, names):
        """Check the labels of an image folder: a row per image, no row for a missing image."""
        names = set(names)
        unknown = sorted(k for k in self.sets if k not in names)
        if unknown:
            raise LabelsError(f'{self.path}:{self.lines.get(unknown[0], "?")}: {unknown[0]!r} '
                              f'is not an image of the folder ({len(unknown)} such rows)')
        missing = sorted(names - set(self.sets))
        if missing:
            raise LabelsError(f'{self.path}: {len(missing)} images have no label (first: '
                              f'{missing[0]}); give every image a row')

    def matrix(self, keys, num_classes=NUM_CLASSES):
        """Boolean (len(keys), num_classes) matrix: row i marks the classes of frame keys[i]."""
        missing = [k for k in keys if k not in self.sets]
        if missing:
            raise LabelsError(f'{self.path}: no row for frame {missing[0]!r} '
                              f'({len(missing)} frames missing)')
        return label_matrix([self.sets[k] for k in keys], num_classes)


def label_matrix(sets, num_classes=NUM_CLASSES):
    """Boolean matrix of label sets (an empty set gives an all-False row: unlabelled)."""
    out = np.zeros((len(sets), int(num_classes)), dtype=bool)
    for row, classes in enumerate(sets):
        if classes:
            out[row, list(classes)] = True
    return out


def parse_label_set(text, where='', num_classes=NUM_CLASSES):
    """Parse a space-separated list of class ids into a frozenset (empty text: empty set)."""
    classes = set()
    for token in text.split():
        try:
            value = int(token)
        except ValueError:
            raise LabelsError(f'{where}: label {token!r} is not an integer class id '
                              f'(0..{num_classes - 1})') from None
        if not 0 <= value < num_classes:
            raise LabelsError(f'{where}: label {value} is outside the ImageNet-1k class ids '
                              f'0..{num_classes - 1}')
        classes.add(value)
    return frozenset(classes)


def read_frame_labels(path, by_name=False, num_classes=NUM_CLASSES):
    """Read a ``frame,labels`` file; keys are frame indices (or file names when ``by_name``)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f'labels file {path} not found')
    labels = FrameLabels(str(path))
    with open(path, newline='') as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or tuple(c.strip() for c in header) != HEADER:
            raise LabelsError(f'{path}:1: wrong header {",".join(header or [])!r}: expected '
                              f'exactly {",".join(HEADER)!r}')
        for line, row in enumerate(rows, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f'{path}:{line}'
            if len(row) > 2:
                raise LabelsError(f'{where}: {len(row)} columns, expected 2 (frame,labels); '
                                  'separate the classes of a set with spaces')
            key = row[0].strip()
            if not by_name:
                try:
                    key = int(key)
                except ValueError:
                    raise LabelsError(f'{where}: frame {row[0]!r} is not a frame index') from None
                if key < 0:
                    raise LabelsError(f'{where}: negative frame index {key}')
            if key in labels.sets:
                raise LabelsError(f'{where}: duplicate frame {key!r} (first on line '
                                  f'{labels.lines[key]})')
            labels.sets[key] = parse_label_set(row[1] if len(row) > 1 else '', where, num_classes)
            labels.lines[key] = line
    if not labels.sets:
        raise LabelsError(f'{path}: no rows after the header')
    return labels


def read_image_labels(path, num_classes=NUM_CLASSES):
    """Labels of an image folder: ``frame,labels`` (frame = file name) or the older format."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f'labels file {path} not found')
    with open(path, newline='') as handle:
        first = next(csv.reader(handle), None)
    if first and tuple(c.strip() for c in first) == HEADER:
        return read_frame_labels(path, by_name=True, num_classes=num_classes)
    labels = FrameLabels(str(path))
    with open(path, newline='') as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith('#') or not ''.join(row).strip():
                continue
            if line == 1 and tuple(c.strip() for c in row[:2]) in LEGACY_HEADERS:
                continue
            where = f'{path}:{line}'
            if len(row) < 2:
                raise LabelsError(f'{where}: expected "file,class_id" (or a "frame,labels" '
                                  'header)')
            key = row[0].strip()
            if key in labels.sets:
                raise LabelsError(f'{where}: duplicate image {key!r}')
            classes = parse_label_set(row[1], where, num_classes)
            if len(classes) != 1:
                raise LabelsError(f'{where}: one class id per image in this format (use the '
                                  '"frame,labels" header for label sets)')
            labels.sets[key] = classes
            labels.lines[key] = line
    return labels


def labels_from_names(names):
    """Label sets read from 'imagenet_<i>_<class>' file names (names without one are skipped)."""
    found = {}
    for name in names:
        match = LABEL_IN_NAME.match(name)
        if match:
            found[name] = frozenset([int(match.group(1))])
    return found


def sibling_labels_file(media_path):
    """``<stem>.labels.csv`` next to a video or rosbag2 when it exists, else None."""
    path = Path(str(media_path).rstrip('/'))
    candidate = path.with_name(path.stem + SIBLING_SUFFIX) if path.suffix else \
        path.with_name(path.name + SIBLING_SUFFIX)
    return candidate if candidate.is_file() else None


def write_frame_labels(path, sets):
    """Write ``frame,labels`` rows; ``sets`` is a list (index = frame) or a {key: set} dict."""
    items = sets.items() if isinstance(sets, dict) else enumerate(sets)
    path = Path(path)
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle, lineterminator='\n')
        writer.writerow(HEADER)
        for key, classes in items:
            writer.writerow([key, ' '.join(str(c) for c in sorted(classes or ()))])
    return path
