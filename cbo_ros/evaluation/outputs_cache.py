"""Real model outputs of a video, computed once and cached (artifacts/cache).

Per frame of a source (video file, image folder with optional labels, rosbag2):

- the robot model's logits at each robot input resolution (int8 "NPU" model and its fp32 twin),
- the server's reference answer: the server model at its native resolution on the full frame,
  no JPEG (the most expensive configuration, used as the label when the source has no true
  labels: Chameleon/DDS/Reducto methodology),
- for each offload resolution r: the real JPEG size of the centre square resized to r x r, and
  the server's top-1 and its softmax probability (the score the server returns to the robot) on
  that JPEG after decoding (the server resizes it to its native size).

Each component is cached in its own file under a directory keyed by the source (path, size, mtime,
stride, frame limit, labels file, view) and the model files, so adding a resolution only computes
what is missing.

A *view* (``VIEWS``) crops every frame before anything else: ``center`` (the default: the frame as
the robot sees it in operation), ``left``/``right`` (the leftmost/rightmost square of a wide frame)
and ``zoom`` (the central 60 % of the centre square, upscaled by the models). Views other than
``center`` multiply the scene content available to calibrate the confidence (cbo_calibrate); the
reference label of a view is the server's answer on that view.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.image_ops import center_square, decode_image, encode_jpeg, softmax
from cbo_ros.perception.media import MediaError, open_source

ROBOT_MODELS = {'int8': paths.ROBOT_MODEL_INT8, 'fp32': paths.ROBOT_MODEL_FP32}
DEFAULT_OFFLOAD_RESOLUTIONS = (96, 128, 176, 224, 260)
DEFAULT_ROBOT_RESOLUTIONS = (paths.ROBOT_INPUT_SIZE,)
NUM_CLASSES = 1000
VIEWS = ('center', 'left', 'right', 'zoom')
ZOOM_FRACTION = 0.6
LABELS_TRUE = 'true'
LABELS_REFERENCE = 'reference'
_CLASSIFIERS = {}


@dataclass
class VideoOutputs:
    """Cached model outputs of one source, indexed by frame."""

    name: str
    source: str
    fps: float
    times: np.ndarray                      # media time of each frame (s)
    labels: np.ndarray                     # label used for scoring (true or reference)
    label_source: str                      # 'true' or 'reference'
    reference: np.ndarray                  # server top-1 at native resolution, no JPEG
    frame_names: list
    robot_logits: dict = field(default_factory=dict)    # (tag, resolution) -> (N, C) float32
    server_pred: dict = field(default_factory=dict)     # offload resolution -> (N,) int
    server_score: dict = field(default_factory=dict)    # offload resolution -> (N,) max softmax
    payload_bytes: dict = field(default_factory=dict)   # offload resolution -> (N,) int
    jpeg_quality: int = 90
    stride: int = 1

    def __len__(self):
        return len(self.labels)

    def local_correct(self, tag='int8', resolution=paths.ROBOT_INPUT_SIZE):
        """1.0 where the robot model's top-1 equals the label."""
        return (self.robot_logits[(tag, int(resolution))].argmax(axis=1) == self.labels) \
            .astype(np.float64)

    def server_correct(self, resolution):
        """1.0 where the server's top-1 on the offloaded JPEG equals the label."""
        return (self.server_pred[int(resolution)] == self.labels).astype(np.float64)

    def subset(self, indices):
        """Return the outputs of some frames only (e.g. a short clip for tests)."""
        idx = np.asarray(indices)
        out = VideoOutputs(
            self.name, self.source, self.fps, self.times[idx], self.labels[idx],
            self.label_source, self.reference[idx], [self.frame_names[i] for i in idx],
            {k: v[idx] for k, v in self.robot_logits.items()},
            {k: v[idx] for k, v in self.server_pred.items()},
            {k: v[idx] for k, v in self.payload_bytes.items()}, self.jpeg_quality, self.stride)
        out.server_score = {k: v[idx] for k, v in self.server_score.items()}
        return out


def _signature(path):
    """Cheap identity of a file or directory: names, sizes and modification times."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [path.name, stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                for p in sorted(path.iterdir()) if p.is_file()]
    return [str(path)]


def _classifier(model_file, input_size):
    path = str(paths.resolve_model(model_file))
    if path not in _CLASSIFIERS:
        _CLASSIFIERS[path] = OnnxClassifier(path, input_size)
    return _CLASSIFIERS[path]


def crop_view(rgb, view='center'):
    """Crop an RGB frame to one of ``VIEWS`` (``center`` returns the frame unchanged)."""
    if view == 'center':
        return rgb
    height, width = rgb.shape[:2]
    side = min(height, width)
    if view == 'left':
        return rgb[:side, :side]
    if view == 'right':
        return rgb[height - side:, width - side:]
    if view == 'zoom':
        crop = max(1, int(round(side * ZOOM_FRACTION)))
        top, left = (height - crop) // 2, (width - crop) // 2
        return rgb[top:top + crop, left:left + crop]
    raise ValueError(f'unknown view {view!r} (choose from {", ".join(VIEWS)})')


def cache_key(spec, stride=1, max_frames=0, labels_file=None, topic=None, view='center'):
    """Directory name of a source's cache."""
    resolved = paths.resolve_media(spec)
    models = [_signature(paths.resolve_model(m)) for m in
              (paths.ROBOT_MODEL_INT8, paths.ROBOT_MODEL_FP32, paths.SERVER_MODEL_FP32)]
    parts = [str(Path(resolved).resolve()), _signature(resolved), int(stride),
             int(max_frames), labels_file and _signature(labels_file), topic, models]
    if view != 'center':          # the centre view keeps the keys of existing caches
        parts.append(view)
    key = json.dumps(parts, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = Path(str(resolved).rstrip('/')).name.replace('.', '_') or 'source'
    suffix = '' if view == 'center' else f'-{view}'
    return f'{stem}{suffix}-{digest}'


def _iter_frames(source, stride, max_frames):
    kept = 0
    for index, frame in enumerate(source):
        if index % stride:
            continue
        yield frame
        kept += 1
        if max_frames and kept >= max_frames:
            return


def _expected_total(source, stride, max_frames):
    total = None
    if hasattr(source, 'files'):
        total = len(source.files)
    elif hasattr(source, '_capture'):
        import cv2
        count = int(source._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        total = count if count > 0 else None
    if total is not None:
        total = -(-total // stride)
        if max_frames:
            total = min(total, max_frames)
    return total


def load_outputs(spec, robot_tags=('int8', 'fp32'), robot_resolutions=DEFAULT_ROBOT_RESOLUTIONS,
                 offload_resolutions=DEFAULT_OFFLOAD_RESOLUTIONS, jpeg_quality=90, stride=1,
                 max_frames=0, labels_file=None, topic=None, cache_dir=None, progress=True,
                 batch_size=16, view='center'):
    """Return the ``VideoOutputs`` of ``spec``, computing (and caching) what is missing.

    ``view`` (one of ``VIEWS``) crops every frame first; its outputs are cached separately.

    Raises ``MediaError`` when the source cannot be read or holds no frame, and ``ValueError``
    when its labels are not ImageNet class ids.
    """
    stride = max(1, int(stride))
    if view not in VIEWS:
        raise ValueError(f'unknown view {view!r} (choose from {", ".join(VIEWS)})')
    key = cache_key(spec, stride, max_frames, labels_file, topic, view)
    directory = Path(cache_dir or paths.cache_dir()) / key
    robot_tags = tuple(robot_tags)
    unknown = [t for t in robot_tags if t not in ROBOT_MODELS]
    if unknown:
        raise ValueError(f'unknown robot model {unknown[0]!r} (choose from {list(ROBOT_MODELS)})')
    wanted_robot = [(t, int(r)) for t in robot_tags for r in robot_resolutions]
    wanted_server = [int(r) for r in offload_resolutions]
    q = int(jpeg_quality)

    def robot_file(tag, res):
        return directory / f'robot_{tag}_{res}.npy'

    def server_file(res):
        return directory / f'server_{res}_q{q}.npz'

    meta_file = directory / 'meta.json'
    need_meta = not (meta_file.is_file() and (directory / 'reference.npy').is_file())
    need_robot = [k for k in wanted_robot if not robot_file(*k).is_file()]
    need_server = [r for r in wanted_server if not _has_scores(server_file(r))]
    if need_meta or need_robot or need_server:
        _compute(spec, directory, stride, max_frames, labels_file, topic, need_meta, need_robot,
                 need_server, q, progress, batch_size, robot_file, server_file, view)
    meta = json.loads(meta_file.read_text())
    outputs = VideoOutputs(
        name=meta['name'], source=meta['source'], fps=meta['fps'],
        times=np.asarray(meta['times'], dtype=np.float64),
        labels=np.load(directory / 'labels.npy'), label_source=meta['label_source'],
        reference=np.load(directory / 'reference.npy'), frame_names=meta['frame_names'],
        jpeg_quality=q, stride=stride)
    for key in wanted_robot:
        outputs.robot_logits[key] = np.load(robot_file(*key))
    for res in wanted_server:
        with np.load(server_file(res)) as data:
            outputs.server_pred[res] = data['pred']
            outputs.payload_bytes[res] = data['bytes']
            outputs.server_score[res] = data['score']
    return outputs


def _has_scores(path):
    """Tell whether a cached server file exists and holds the server's scores (newer format)."""
    if not path.is_file():
        return False
    with np.load(path) as data:
        return 'score' in data.files


def _compute(spec, directory, stride, max_frames, labels_file, topic, need_meta, need_robot,
             need_server, quality, progress, batch_size, robot_file, server_file, view='center'):
    source = open_source(spec, labels_file=labels_file, topic=topic)
    server = _classifier(paths.SERVER_MODEL_FP32, paths.SERVER_INPUT_SIZE)
    robots = {tag: _classifier(ROBOT_MODELS[tag], paths.ROBOT_INPUT_SIZE)
              for tag in {t for t, _ in need_robot}}
    times, names, true_labels, reference = [], [], [], []
    robot_out = {key: [] for key in need_robot}
    server_pred = {r: [] for r in need_server}
    server_score = {r: [] for r in need_server}
    server_bytes = {r: [] for r in need_server}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=_expected_total(source, stride, max_frames), unit='frame',
                   desc=f'model outputs of {Path(str(spec)).name} ({view})', leave=False)

    def flush(batch):
        rgbs = [crop_view(f.rgb, view) for f in batch]
        if need_meta:
            reference.extend(server.logits(rgbs, paths.SERVER_INPUT_SIZE).argmax(axis=1))
        for tag, res in need_robot:
            robot_out[(tag, res)].append(robots[tag].logits(rgbs, res).astype(np.float32))
        for res in need_server:
            jpegs = [encode_jpeg(center_square(rgb, res), quality) for rgb in rgbs]
            decoded = [decode_image(j) for j in jpegs]
            logits = server.logits(decoded, paths.SERVER_INPUT_SIZE)
            server_pred[res].extend(logits.argmax(axis=1))
            server_score[res].extend(softmax(logits).max(axis=1))
            server_bytes[res].extend(len(j) for j in jpegs)
        if bar is not None:
            bar.update(len(batch))

    batch = []
    try:
        for frame in _iter_frames(source, stride, max_frames):
            times.append(float(frame.time_s))
            names.append(frame.name)
            true_labels.append(-1 if frame.label is None else int(frame.label))
            batch.append(frame)
            if len(batch) >= batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    except (ValueError, OSError) as error:
        raise MediaError(f'cannot read frames of {spec!r}: {error}') from error
    finally:
        source.close()
        if bar is not None:
            bar.close()
    if not times:
        raise MediaError(f'no frames could be read from {spec!r} (unreadable or empty media)')
    directory.mkdir(parents=True, exist_ok=True)
    if need_meta:
        labels = np.asarray(true_labels, dtype=np.int64)
        has_true = bool(getattr(source, 'has_labels', False)) and (labels >= 0).all()
        if has_true and (labels.max() >= NUM_CLASSES):
            raise ValueError(f'labels of {spec!r} go up to {labels.max()}: not ImageNet-1k class '
                             f'ids (0..{NUM_CLASSES - 1}); mismatched labels file?')
        reference_arr = np.asarray(reference, dtype=np.int64)
        _save_npy(directory / 'labels.npy', labels if has_true else reference_arr)
        _save_npy(directory / 'reference.npy', reference_arr)
        meta = {'name': Path(str(paths.resolve_media(spec)).rstrip('/')).name,
                'source': str(paths.resolve_media(spec)),
                'fps': float(source.fps) / stride, 'times': times, 'frame_names': names,
                'label_source': LABELS_TRUE if has_true else LABELS_REFERENCE,
                'stride': stride, 'max_frames': int(max_frames), 'view': view}
        _atomic_write(directory / 'meta.json', json.dumps(meta).encode())
    elif len(times) != len(json.loads((directory / 'meta.json').read_text())['times']):
        raise MediaError(f'{spec!r} changed since it was cached: delete {directory}')
    for key, chunks in robot_out.items():
        _save_npy(robot_file(*key), np.concatenate(chunks))
    for res in need_server:
        tmp = server_file(res).with_suffix('.tmp.npz')
        np.savez(tmp, pred=np.asarray(server_pred[res], dtype=np.int64),
                 bytes=np.asarray(server_bytes[res], dtype=np.int64),
                 score=np.asarray(server_score[res], dtype=np.float32))
        os.replace(tmp, server_file(res))


def _save_npy(path, array):
    tmp = path.with_suffix('.tmp.npy')
    np.save(tmp, array)
    os.replace(tmp, path)


def _atomic_write(path, data):
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)
