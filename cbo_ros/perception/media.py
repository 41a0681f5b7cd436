"""Frame sources: video files, V4L2 cameras, image folders (optionally labelled) and rosbag2 files.

Every source yields ``Frame`` tuples of RGB uint8 images; ``label`` is the true ImageNet class
when the source carries one (image folders with labels), else ``None``.
"""

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cbo_ros.assets.paths import not_found_message, resolve_media

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.ppm', '.pgm'}
VIDEO_SUFFIXES = {'.mp4', '.avi', '.mkv', '.mov', '.webm', '.mpg', '.mpeg', '.m4v'}
# Labelled file names such as foolbox's 'imagenet_07_609.jpg' (class 609).
_LABEL_IN_NAME = re.compile(r'^imagenet_\d+_(\d+)\.\w+$')


class MediaError(RuntimeError):
    """A frame source cannot be opened or read."""


@dataclass
class Frame:
    index: int
    rgb: np.ndarray
    time_s: float          # media time of the frame (seconds from the start)
    label: int = None      # true class when known
    name: str = ''


class VideoSource:
    """Frames of a video file or a V4L2 camera (OpenCV)."""

    def __init__(self, path, max_frames=0, stride=1):
        self.path = str(path)
        device = int(self.path) if self.path.isdigit() else self.path
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise MediaError(f'cannot open video source {self.path!r}')
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.max_frames = int(max_frames)
        self.stride = max(1, int(stride))
        self.has_labels = False

    def __iter__(self):
        self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        produced, raw_index = 0, 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                break
            if raw_index % self.stride == 0:
                yield Frame(produced, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            raw_index / self.fps, None, f'{Path(self.path).name}#{raw_index}')
                produced += 1
                if self.max_frames and produced >= self.max_frames:
                    break
            raw_index += 1

    def close(self):
        self._capture.release()


def read_labels_file(path):
    """Read 'file,class_id' lines (header optional) into a dict."""
    labels = {}
    with open(path, newline='') as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or row[0].startswith('#') or row[1].strip() in ('label', 'class_id'):
                continue
            try:
                labels[row[0].strip()] = int(row[1])
            except ValueError as error:
                raise MediaError(f'{path}: bad label {row[1]!r} for {row[0]!r}') from error
    return labels


class ImageFolderSource:
    """Images of a folder in name order.

    Labels come from labels.csv (or ``labels_file``) or from 'imagenet_<i>_<cls>' file names.
    """

    def __init__(self, folder, labels_file=None, max_frames=0, fps=10.0):
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise MediaError(f'no images in {self.folder}')
        if max_frames:
            self.files = self.files[:int(max_frames)]
        labels_path = Path(labels_file) if labels_file else self.folder / 'labels.csv'
        self.labels = read_labels_file(labels_path) if labels_path.is_file() else {}
        for path in self.files:
            match = _LABEL_IN_NAME.match(path.name)
            if match and path.name not in self.labels:
                self.labels[path.name] = int(match.group(1))
        if labels_file and not self.labels:
            raise MediaError(f'labels file {labels_file} matches no image in {self.folder}')
        missing = [p.name for p in self.files if self.labels and p.name not in self.labels]
        if missing:
            raise MediaError(f'{len(missing)} images have no label (first: {missing[0]})')
        self.has_labels = bool(self.labels)
        self.fps = float(fps)

    def __iter__(self):
        for index, path in enumerate(self.files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise MediaError(f'cannot read image {path}')
            yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index / self.fps,
                        self.labels.get(path.name), path.name)

    def close(self):
        pass


# sensor_msgs/Image encodings understood: bytes per pixel, element type, conversion to RGB.
# 'yuv422' is UYVY (sensor_msgs image_encodings), 'yuv422_yuy2' YUYV (common for USB cameras).
_ENCODINGS = {
    'rgb8': (3, np.uint8, None),
    'bgr8': (3, np.uint8, cv2.COLOR_BGR2RGB),
    'rgba8': (4, np.uint8, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, np.uint8, cv2.COLOR_BGRA2RGB),
    'mono8': (1, np.uint8, cv2.COLOR_GRAY2RGB),
    'mono16': (2, np.uint16, cv2.COLOR_GRAY2RGB),
    'yuv422': (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV),
    'yuyv': (2, np.uint8, cv2.COLOR_YUV2RGB_YUYV),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def image_msg_to_rgb(encoding, height, width, step, data, is_bigendian=False):
    """Convert the fields of a sensor_msgs/Image to RGB uint8; raise ValueError on bad input."""
    if encoding not in _ENCODINGS:
        raise ValueError(f"unsupported encoding '{encoding}' (supported: "
                         f"{', '.join(SUPPORTED_ENCODINGS)})")
    if height == 0 or width == 0:
        raise ValueError('zero-size image')
    row_bytes, dtype, conversion = _ENCODINGS[encoding]
    row_bytes *= width
    if step < row_bytes:
        raise ValueError(f'step {step} is smaller than width * bytes per pixel {row_bytes}')
    if conversion in (cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2RGB_YUYV) and width % 2:
        raise ValueError(f'{encoding} needs an even width, got {width}')
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size < step * height:
        raise ValueError(f'truncated image data: {buffer.size} bytes, expected {step * height}')
    rows = buffer[:step * height].reshape(height, step)[:, :row_bytes]
    if dtype == np.uint16:
        words = rows.copy().view('>u2' if is_bigendian else '<u2')
        image = (words >> 8).astype(np.uint8)          # 16-bit grey to 8 bits
    elif conversion in (cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2RGB_YUYV):
        image = np.ascontiguousarray(rows).reshape(height, width, 2)
    else:
        image = rows.reshape(height, width, -1)
    if conversion is None:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), conversion)


class RosbagSource:
    """sensor_msgs/Image or CompressedImage messages of a rosbag2 (sqlite3 or MCAP) via rosbags."""

    def __init__(self, path, topic=None, max_frames=0):
        from rosbags.highlevel import AnyReader
        self.path = Path(path)
        self.max_frames = int(max_frames)
        self._reader_class = AnyReader
        with AnyReader([self.path]) as reader:
            image_types = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
            topics = {c.topic: c.msgtype for c in reader.connections if c.msgtype in image_types}
            if not topics:
                raise MediaError(f'{self.path}: no sensor_msgs/Image or CompressedImage topic')
            if topic and topic not in topics:
                raise MediaError(f'{self.path}: topic {topic!r} not found (image topics: '
                                 f'{", ".join(sorted(topics))})')
            self.topic = topic or sorted(topics)[0]
            count = sum(c.msgcount for c in reader.connections if c.topic == self.topic)
            duration = max(reader.duration / 1e9, 1e-9)
        self.fps = count / duration if count > 1 else 30.0
        self.has_labels = False

    def __iter__(self):
        from cbo_ros.perception.image_ops import decode_image
        with self._reader_class([self.path]) as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            start = None
            for index, (connection, stamp, raw) in enumerate(reader.messages(connections)):
                msg = reader.deserialize(raw, connection.msgtype)
                if connection.msgtype.endswith('CompressedImage'):
                    rgb = decode_image(bytes(msg.data))
                else:
                    rgb = image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                           bytes(msg.data), bool(msg.is_bigendian))
                start = stamp if start is None else start
                yield Frame(index, rgb, (stamp - start) / 1e9, None, f'{self.topic}#{index}')
                if self.max_frames and index + 1 >= self.max_frames:
                    break

    def close(self):
        pass


def open_source(spec, max_frames=0, labels_file=None, topic=None, stride=1):
    """Open a video file, camera (device number or /dev/video*), image folder or rosbag2."""
    path = resolve_media(spec)
    text = str(spec)
    if text.isdigit() or text.startswith('/dev/video'):
        return VideoSource(text, max_frames=max_frames)
    if not path.exists():
        raise MediaError(not_found_message('media', spec, 'media'))
    if path.is_dir():
        is_bag = (path / 'metadata.yaml').is_file() or any(path.glob('*.mcap')) \
            or any(path.glob('*.db3'))
        if is_bag:
            return RosbagSource(path, topic=topic, max_frames=max_frames)
        return ImageFolderSource(path, labels_file=labels_file, max_frames=max_frames)
    if path.suffix in ('.mcap', '.db3'):
        return RosbagSource(path.parent if path.suffix == '.db3' else path, topic=topic,
                            max_frames=max_frames)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(path.parent, labels_file=labels_file, max_frames=max_frames)
    return VideoSource(path, max_frames=max_frames, stride=stride)


def read_frames(spec, max_frames=0, **kwargs):
    """Read all frames of a source into a list (for evaluation and calibration)."""
    source = open_source(spec, max_frames=max_frames, **kwargs)
    try:
        return list(source), source
    finally:
        source.close()


def media_exists(name):
    return os.path.exists(resolve_media(name))
