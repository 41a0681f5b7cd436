"""Frame sources: video files, V4L2 cameras, image folders and rosbag2 files, optionally labelled.

Every source yields ``Frame`` tuples of RGB uint8 images. A labelled source (see
``cbo_ros.perception.labels``: a ``frame,labels`` CSV, the sibling ``<stem>.labels.csv`` of a
video or rosbag2, an image folder's ``labels.csv`` or ``imagenet_<i>_<cls>`` file names) gives
each frame its true label set ``label_set`` (empty: unlabelled frame); ``label`` is its class
when the set holds exactly one, else ``None``.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cbo_ros.assets.paths import not_found_message, resolve_media
from cbo_ros.perception.image_ops import decode_image
from cbo_ros.perception.labels import (FrameLabels, labels_from_names, read_frame_labels,
                                       read_image_labels, sibling_labels_file)

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.webp', '.ppm', '.pgm'}
VIDEO_SUFFIXES = {'.mp4', '.avi', '.mkv', '.mov', '.webm', '.mpg', '.mpeg', '.m4v'}


class MediaError(RuntimeError):
    """A frame source cannot be opened or read."""


@dataclass
class Frame:
    """One frame of a media source, with its true label when known."""

    index: int
    rgb: np.ndarray
    time_s: float          # media time of the frame (seconds from the start)
    label: int = None      # true class when known (a label set of one class)
    name: str = ''
    label_set: frozenset = None   # true label set (empty: unlabelled); None: no labels
    stamp_ns: int = None   # recorded header stamp (rosbag2 sources; None: not recorded)
    frame_id: str = None   # recorded header frame_id (rosbag2 sources)


def _frame_label(labels, key):
    """(label, label_set) of a frame from ``FrameLabels`` (None, None without labels)."""
    if labels is None:
        return None, None
    classes = labels.sets.get(key, frozenset())
    return (next(iter(classes)) if len(classes) == 1 else None), classes


class VideoSource:
    """Frames of a video file or a V4L2 camera (OpenCV)."""

    def __init__(self, path, max_frames=0, stride=1, labels=None):
        self.path = str(path)
        device = int(self.path) if self.path.isdigit() else self.path
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            raise MediaError(f'cannot open video source {self.path!r}')
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.max_frames = int(max_frames)
        self.stride = max(1, int(stride))
        self.labels = labels
        if labels is not None:
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
            labels.check_frames(count if count > 0 else None)
        self.has_labels = labels is not None

    def __iter__(self):
        self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        produced, raw_index = 0, 0
        while True:
            ok, bgr = self._capture.read()
            if not ok:
                break
            if raw_index % self.stride == 0:
                label, label_set = _frame_label(self.labels, raw_index)
                yield Frame(produced, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            raw_index / self.fps, label, f'{Path(self.path).name}#{raw_index}',
                            label_set)
                produced += 1
                if self.max_frames and produced >= self.max_frames:
                    break
            raw_index += 1

    def close(self):
        """Release the source."""
        self._capture.release()


class ImageFolderSource:
    """Images of a folder in name order.

    Labels come from labels.csv (or ``labels_file``) or from 'imagenet_<i>_<cls>' file names.
    """

    def __init__(self, folder, labels_file=None, max_frames=0, fps=10.0):
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise MediaError(f'no images in {self.folder}')
        names = [p.name for p in self.files]
        if max_frames:
            self.files = self.files[:int(max_frames)]
        labels_path = Path(labels_file) if labels_file else self.folder / 'labels.csv'
        self.labels_file = None
        if labels_file or labels_path.is_file():
            self.labels = read_image_labels(labels_path)
            self.labels_file = str(labels_path)
        else:
            self.labels = FrameLabels(f'file names of {self.folder}', labels_from_names(names))
        if self.labels.sets:
            for name, classes in labels_from_names(names).items():
                self.labels.sets.setdefault(name, classes)
            self.labels.check_names(names)
        else:
            self.labels = None
        self.has_labels = self.labels is not None
        self.fps = float(fps)

    def __iter__(self):
        for index, path in enumerate(self.files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise MediaError(f'cannot read image {path}')
            label, label_set = _frame_label(self.labels, path.name)
            yield Frame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index / self.fps,
                        label, path.name, label_set)

    def close(self):
        """Release the source."""
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


def compressed_msg_to_rgb(image_format, data):
    """Decode a sensor_msgs/CompressedImage (JPEG or PNG) to RGB; raise ValueError on bad input.

    ``image_format`` follows image_transport's ``compressed`` plugin (``jpeg``, ``png``,
    ``rgb8; jpeg compressed bgr8``, ...); the bytes themselves say JPEG or PNG. Depth images
    (``compressedDepth``) are refused.
    """
    text = str(image_format or '')
    if 'compresseddepth' in text.lower().replace(' ', ''):
        raise ValueError(f"compressed depth image (format '{text}') is not a colour frame")
    try:
        return decode_image(data)
    except ValueError as error:
        size = len(data) if hasattr(data, '__len__') else 0
        raise ValueError(f"{error} (format '{text}', {size} bytes)") from None


def frame_msg_to_rgb(msg):
    """Convert a sensor_msgs/Image or CompressedImage message to RGB uint8 (ValueError: bad)."""
    if hasattr(msg, 'encoding'):
        return image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                bool(msg.is_bigendian))
    return compressed_msg_to_rgb(msg.format, msg.data)


def _stamp_ns(header):
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class RosbagSource:
    """sensor_msgs/Image or CompressedImage messages of a rosbag2 (sqlite3 or MCAP) via rosbags.

    ``topic`` chooses among several image topics (default: the first in name order;
    ``image_topics`` lists them all). Frames keep their recorded header (``stamp_ns``,
    ``frame_id``); their media time ``time_s`` follows the recorded header stamps when these
    are set and never go backwards (``timing`` says ``header stamps``), else the bag's receipt
    times. ``fps`` is the mean rate of those times (gaps, not count / duration).
    """

    def __init__(self, path, topic=None, max_frames=0, labels=None):
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
            self.image_topics = sorted(topics)
            self.topic = topic or self.image_topics[0]
            received, stamps = [], []
            for connection, stamp, raw in reader.messages(
                    [c for c in reader.connections if c.topic == self.topic]):
                received.append(int(stamp))
                stamps.append(_stamp_ns(reader.deserialize(raw, connection.msgtype).header))
        count = len(received)
        header_timing = bool(stamps) and stamps[0] > 0 and all(
            later >= earlier for earlier, later in zip(stamps, stamps[1:]))
        self.timing = 'header stamps' if header_timing else 'receipt times'
        times = stamps if header_timing else received
        self._times_ns = [t - times[0] for t in times] if times else []
        span_s = (times[-1] - times[0]) / 1e9 if count > 1 else 0.0
        self.fps = (count - 1) / span_s if span_s > 0 else 30.0
        self.frame_count = count
        self.labels = labels
        if labels is not None:
            labels.check_frames(count)      # frame = index of the message on the topic
        self.has_labels = labels is not None

    def describe(self, option='topic'):
        """Return one line naming the image topic read (and the bag's others, ``option``)."""
        others = [t for t in self.image_topics if t != self.topic]
        return (f'{self.path}: image topic {self.topic} ({self.frame_count} frames, '
                f'{self.fps:.2f} fps from {self.timing})'
                + (f'; other image topics: {", ".join(others)} (choose one with {option})'
                   if others else ''))

    def __iter__(self):
        with self._reader_class([self.path]) as reader:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for index, (connection, _, raw) in enumerate(reader.messages(connections)):
                msg = reader.deserialize(raw, connection.msgtype)
                if connection.msgtype.endswith('CompressedImage'):
                    rgb = compressed_msg_to_rgb(msg.format, bytes(msg.data))
                else:
                    rgb = image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                           bytes(msg.data), bool(msg.is_bigendian))
                label, label_set = _frame_label(self.labels, index)
                time_ns = self._times_ns[index] if index < len(self._times_ns) else 0
                yield Frame(index, rgb, time_ns / 1e9, label, f'{self.topic}#{index}',
                            label_set, _stamp_ns(msg.header), msg.header.frame_id)
                if self.max_frames and index + 1 >= self.max_frames:
                    break

    def close(self):
        """Release the source."""
        pass


def video_labels(path, labels_file=None):
    """Frame labels of a video or rosbag2: ``labels_file``, else its sibling, else None."""
    chosen = labels_file or sibling_labels_file(path)
    return read_frame_labels(chosen) if chosen else None


def open_source(spec, max_frames=0, labels_file=None, topic=None, stride=1, with_labels=True):
    """Open a video file, camera (device number or /dev/video*), image folder or rosbag2.

    Labels: ``labels_file`` when given (an unusable file is a ``LabelsError``), else a video's or
    rosbag2's sibling ``<stem>.labels.csv``, else an image folder's own labels. The source's
    ``labels_file`` says which file was used (None: none). ``with_labels=False`` reads no
    labels at all (a camera publishing frames does not need them).
    """
    path = resolve_media(spec)
    text = str(spec)
    if text.isdigit() or text.startswith('/dev/video'):
        if labels_file:
            raise MediaError('a live camera cannot have a labels file')
        return VideoSource(text, max_frames=max_frames)
    if not path.exists():
        raise MediaError(not_found_message('media', spec, 'media'))
    if labels_file and not Path(labels_file).is_file():
        raise MediaError(f'labels file {labels_file} not found')
    if path.suffix.lower() in IMAGE_SUFFIXES:
        path = path.parent
    if path.is_dir() and not _is_bag(path):
        source = ImageFolderSource(path, labels_file=labels_file, max_frames=max_frames)
        if not with_labels:
            source.labels, source.has_labels = None, False
        return source
    labels = video_labels(path, labels_file) if with_labels else None
    if path.is_dir() or path.suffix in ('.mcap', '.db3'):
        bag = path.parent if path.suffix == '.db3' else path
        source = RosbagSource(bag, topic=topic, max_frames=max_frames, labels=labels)
    else:
        source = VideoSource(path, max_frames=max_frames, stride=stride, labels=labels)
    source.labels_file = labels and labels.path
    return source


def is_rosbag(spec):
    """Tell whether a media name or path is a rosbag2 (directory, .mcap or .db3)."""
    path = resolve_media(spec)
    if not path.exists():
        return False
    return path.suffix in ('.mcap', '.db3') or (path.is_dir() and _is_bag(path))


def _is_bag(path):
    return (path / 'metadata.yaml').is_file() or any(path.glob('*.mcap')) \
        or any(path.glob('*.db3'))


def read_frames(spec, max_frames=0, **kwargs):
    """Read all frames of a source into a list (for evaluation and calibration)."""
    source = open_source(spec, max_frames=max_frames, **kwargs)
    try:
        return list(source), source
    finally:
        source.close()


def media_exists(name):
    """Tell whether a media name or path resolves to an existing file."""
    return os.path.exists(resolve_media(name))
