"""Small labelled clips built from foolbox's 20 ImageNet samples (true labels), for the tests."""

import json
import re
from pathlib import Path

import cv2
import numpy as np

from cbo_ros.assets import paths
from cbo_ros.perception.labels import write_frame_labels

FRAME_SIZE = (320, 240)          # width, height
_NAME = re.compile(r'^imagenet_(\d+)_(\d+)\.jpg$')


def foolbox_samples():
    """(path, class) of the 20 labelled samples, in name order."""
    folder = paths.media_dir() / 'imagenet_samples'
    found = []
    for path in sorted(folder.glob('imagenet_*.jpg')):
        match = _NAME.match(path.name)
        if match:
            found.append((path, int(match.group(2))))
    return found


def frame_of(image_path):
    """A BGR frame holding the image in the centre of a grey canvas (the robot's view)."""
    width, height = FRAME_SIZE
    canvas = np.full((height, width, 3), 110, np.uint8)
    image = cv2.resize(cv2.imread(str(image_path)), (height, height),
                       interpolation=cv2.INTER_AREA)
    left = (width - height) // 2
    canvas[:, left:left + height] = image
    return canvas


def write_clip(path, samples, hold=3, fps=10.0):
    """Write an MJPG .avi holding each sample for ``hold`` frames; return its frame count."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, FRAME_SIZE)
    assert writer.isOpened(), 'OpenCV cannot write MJPG .avi files here'
    count = 0
    for image_path, _ in samples:
        frame = frame_of(image_path)
        for _ in range(hold):
            writer.write(frame)
            count += 1
    writer.release()
    return count


def clip_label_sets(samples, hold=3, unlabelled=(2, 5, 8, 11), extra=None):
    """Label set of every frame: the sample's class, plus ``extra`` {sample: classes};
    frames listed in ``unlabelled`` get an empty set."""
    extra = extra or {}
    sets = []
    for i, (_, cls) in enumerate(samples):
        for _ in range(hold):
            sets.append(frozenset({cls, *extra.get(i, ())}))
    for frame in unlabelled:
        sets[frame] = frozenset()
    return sets


def make_labelled_clip(folder, name='clip', samples=None, hold=3, unlabelled=(2, 5, 8, 11),
                       extra=None, sibling=True):
    """Write ``<name>.avi`` and its labels; return (video, labels file, label sets)."""
    folder = Path(folder)
    samples = samples if samples is not None else foolbox_samples()
    video = folder / f'{name}.avi'
    count = write_clip(video, samples, hold)
    sets = clip_label_sets(samples, hold, unlabelled, extra)
    assert len(sets) == count
    labels = folder / (f'{name}.labels.csv' if sibling else f'{name}_truth.csv')
    write_frame_labels(labels, sets)
    return video, labels, sets


def make_tiny_benchmark(folder, per_clip=4, hold=2):
    """A manifest.json with object-disjoint calibration/evaluation splits of small clips."""
    folder = Path(folder)
    samples = foolbox_samples()
    splits = {'calibration': [], 'evaluation': []}
    for number in range(len(samples) // per_clip):
        chunk = samples[number * per_clip:(number + 1) * per_clip]
        split = 'calibration' if number % 2 == 0 else 'evaluation'
        clip = f'clip_{number:02d}'
        (folder / 'clips').mkdir(parents=True, exist_ok=True)
        video, labels, _ = make_labelled_clip(folder / 'clips', clip, chunk, hold,
                                              unlabelled=(1,))
        splits[split].append({
            'clip': clip, 'video': f'clips/{video.name}', 'labels': f'clips/{labels.name}',
            'meta': f'clips/{clip}.meta.json', 'object': f'object_{number}',
            'category': 'foolbox', 'tier': 'strict', 'frames': per_clip * hold})
    manifest = folder / 'manifest.json'
    manifest.write_text(json.dumps({'version': 1, 'seed': 0, 'splits': splits}, indent=1))
    return manifest
