"""Real model outputs of a video, computed once and cached (artifacts/cache).

Per frame of a source (video file, image folder with optional labels, rosbag2):

- the robot model's logits at each robot input resolution (int8 "NPU" model and its fp32 twin),
- the server's reference answer: the server model at its native resolution on the full frame,
  no JPEG (the most expensive configuration; when the source has no true labels, scores are
  *agreement with these reference labels*, never accuracy: Chameleon/DDS/Reducto methodology),
- for each offload resolution r: the real JPEG size of the centre square resized to r x r, and
  the server's top-1 and its softmax probability (the score the server returns to the robot) on
  that JPEG after decoding (the server resizes it to its native size).

Models: the shipped robot models (tags ``int8``, ``fp32``) and server model by default; your own
(``ModelSpec``: ONNX path, preprocessing, class names) with ``robot_models``/``server_model``.

Each component is cached in its own file under a directory keyed by the source (path, size, mtime,
stride, frame limit, view) and the model files (plus your own models' files and preprocessing),
so adding a resolution only computes what is missing. True labels are not cached: they are read
from the source's labels (a ``frame,labels`` CSV, see ``cbo_ros.perception.labels``) at every
load, checked before any model runs, so that a corrected labels file needs no recomputation and
an unusable one is an error, never replaced by reference labels.

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
from cbo_ros.perception.classifier import OnnxClassifier, Preprocessing
from cbo_ros.perception.image_ops import center_square, decode_image, encode_jpeg, softmax
from cbo_ros.perception.labels import LabelsError, label_matrix
from cbo_ros.perception.media import MediaError, open_source


@dataclass(frozen=True)
class ModelSpec:
    """A model as the evaluation runs it: ONNX file, preprocessing, class names file."""

    path: str                       # a path, or a file name in artifacts/models
    preprocessing: Preprocessing
    labels_file: str = ''           # one class name per line ('' : ImageNet-1k)

    def key(self):
        """Return what identifies the model's outputs (cache keys)."""
        return [_signature(paths.resolve_model(self.path)), self.preprocessing.as_dict(),
                _signature(self.labels_file) if self.labels_file else '']


# Robot models by tag; lite1/lite2 are the premodel's larger candidates (premodel_models.py),
# run at the input sizes the premodel asks for.
ROBOT_MODELS = {'int8': ModelSpec(paths.ROBOT_MODEL_INT8, Preprocessing(paths.ROBOT_INPUT_SIZE)),
                'fp32': ModelSpec(paths.ROBOT_MODEL_FP32, Preprocessing(paths.ROBOT_INPUT_SIZE)),
                'lite1': ModelSpec('robot_lite1_fp32.onnx', Preprocessing(paths.ROBOT_INPUT_SIZE)),
                'lite2': ModelSpec(paths.SERVER_MODEL_FP32, Preprocessing(paths.ROBOT_INPUT_SIZE))}
SERVER_MODEL = ModelSpec(paths.SERVER_MODEL_FP32, Preprocessing(paths.SERVER_INPUT_SIZE))
DEFAULT_OFFLOAD_RESOLUTIONS = paths.OFFLOAD_RESOLUTIONS
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
    labels: np.ndarray                     # (N, C) bool: classes counted correct per frame
    label_source: str                      # 'true' or 'reference'
    reference: np.ndarray                  # server top-1 at native resolution, no JPEG
    frame_names: list
    robot_logits: dict = field(default_factory=dict)    # (tag, resolution) -> (N, C) float32
    server_pred: dict = field(default_factory=dict)     # offload resolution -> (N,) int
    server_score: dict = field(default_factory=dict)    # offload resolution -> (N,) max softmax
    payload_bytes: dict = field(default_factory=dict)   # offload resolution -> (N,) int
    jpeg_quality: int = 90
    stride: int = 1
    labels_file: str = None        # the labels file used (None: reference labels or file names)
    group: str = None              # bootstrap / cross-validation unit (benchmark object; name)
    features: np.ndarray = None    # (N, F) premodel image features (None: not loaded)

    def __post_init__(self):
        classes = next((v.shape[1] for v in self.robot_logits.values()), NUM_CLASSES)
        self.labels = as_label_matrix(self.labels, classes)
        if self.group is None:
            self.group = self.name

    def __len__(self):
        return len(self.labels)

    @property
    def labelled(self):
        """(N,) bool: frames with at least one label (the only ones scored)."""
        return self.labels.any(axis=1)

    @property
    def unlabelled_count(self):
        """Frames left out of accuracy and calibration (empty label set)."""
        return int(len(self) - self.labelled.sum())

    def correct(self, predictions):
        """1.0 where a predicted class is in the frame's label set (0.0 on unlabelled frames)."""
        predictions = np.asarray(predictions, dtype=np.int64)
        return self.labels[np.arange(len(predictions)), predictions].astype(np.float64)

    def local_correct(self, tag='int8', resolution=paths.ROBOT_INPUT_SIZE):
        """1.0 where the robot model's top-1 is in the label set."""
        return self.correct(self.robot_logits[(tag, int(resolution))].argmax(axis=1))

    def server_correct(self, resolution):
        """1.0 where the server's top-1 on the offloaded JPEG is in the label set."""
        return self.correct(self.server_pred[int(resolution)])

    def subset(self, indices):
        """Return the outputs of some frames only (e.g. a short clip for tests)."""
        idx = np.asarray(indices)
        out = VideoOutputs(
            self.name, self.source, self.fps, self.times[idx], self.labels[idx],
            self.label_source, self.reference[idx], [self.frame_names[i] for i in idx],
            robot_logits={k: v[idx] for k, v in self.robot_logits.items()},
            server_pred={k: v[idx] for k, v in self.server_pred.items()},
            server_score={k: v[idx] for k, v in self.server_score.items()},
            payload_bytes={k: v[idx] for k, v in self.payload_bytes.items()},
            jpeg_quality=self.jpeg_quality, stride=self.stride, labels_file=self.labels_file,
            group=self.group, features=None if self.features is None else self.features[idx])
        return out

    def labelled_only(self):
        """Keep the labelled frames only (what accuracy and calibration are computed on)."""
        keep = self.labelled
        return self if keep.all() else self.subset(np.flatnonzero(keep))


def as_label_matrix(labels, num_classes=NUM_CLASSES):
    """(N, C) bool label matrix from a matrix or from class ids (-1: unlabelled frame)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(bool, copy=False)
    ids = labels.astype(np.int64).ravel()
    if len(ids) and ids.max() >= num_classes:
        raise ValueError(f'labels go up to {ids.max()}: not ImageNet-1k class ids '
                         f'(0..{num_classes - 1})')
    return label_matrix([frozenset([int(i)]) if i >= 0 else frozenset() for i in ids],
                        num_classes)


def labelled_only(outputs_list):
    """Each ``VideoOutputs`` reduced to its labelled frames (sources with none are dropped)."""
    kept = [o.labelled_only() for o in outputs_list]
    return [o for o in kept if len(o)]


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


def _classifier(model):
    """Return the (shared) ``OnnxClassifier`` of a ``ModelSpec``."""
    path = str(paths.resolve_model(model.path))
    key = (path, model.preprocessing, model.labels_file)
    if key not in _CLASSIFIERS:
        _CLASSIFIERS[key] = OnnxClassifier(path, preprocessing=model.preprocessing,
                                           labels_file=model.labels_file)
    return _CLASSIFIERS[key]


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


def cache_key(spec, stride=1, max_frames=0, labels_file=None, topic=None, view='center',
              own_models=None):
    """Directory name of a source's cache (``own_models``: {tag: key} of non-shipped models)."""
    resolved = paths.resolve_media(spec)
    models = [_signature(paths.resolve_model(m)) for m in
              (paths.ROBOT_MODEL_INT8, paths.ROBOT_MODEL_FP32, paths.SERVER_MODEL_FP32)]
    # True labels are read at every load, not cached: the key ignores the labels file (the
    # slot stays so that existing caches keep their keys).
    parts = [str(Path(resolved).resolve()), _signature(resolved), int(stride),
             int(max_frames), None, topic, models]
    if view != 'center':          # the centre view keeps the keys of existing caches
        parts.append(view)
    if own_models:                # so do the shipped models
        parts.append(own_models)
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
        yield index, frame
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
                 batch_size=16, view='center', robot_models=None, server_model=None):
    """Return the ``VideoOutputs`` of ``spec``, computing (and caching) what is missing.

    ``view`` (one of ``VIEWS``) crops every frame first; its outputs are cached separately.
    ``robot_models`` ({tag: ``ModelSpec``}) adds or replaces robot models (tags of
    ``ROBOT_MODELS`` by default), ``server_model`` replaces the server model; the outputs of
    your own models are cached apart from the shipped models'.
    Labels: ``labels_file``, else the source's own (a video's sibling ``<stem>.labels.csv``, an
    image folder's ``labels.csv`` or file names); true labels are checked before any model
    runs. Without labels the outputs hold reference labels (``label_source`` 'reference').

    Raises ``MediaError`` when the source cannot be read or holds no frame, and ``LabelsError``
    (a ``ValueError``) when its labels file cannot be used.
    """
    stride = max(1, int(stride))
    if view not in VIEWS:
        raise ValueError(f'unknown view {view!r} (choose from {", ".join(VIEWS)})')
    true_labels = source_labels(spec, labels_file, topic)   # fails before any model runs
    robots = {**ROBOT_MODELS, **(robot_models or {})}
    server = server_model or SERVER_MODEL
    robot_tags = tuple(robot_tags)
    unknown = [t for t in robot_tags if t not in robots]
    if unknown:
        raise ValueError(f'unknown robot model {unknown[0]!r} (choose from {list(robots)})')
    own = {tag: model.key() for tag, model in robots.items()
           if ROBOT_MODELS.get(tag) != model and tag in robot_tags}
    if server != SERVER_MODEL:
        own['server'] = server.key()
    key = cache_key(spec, stride, max_frames, labels_file, topic, view, own)
    directory = Path(cache_dir or paths.cache_dir()) / key
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
        models = {'server': server, **{tag: robots[tag] for tag, _ in need_robot}}
        _compute(spec, directory, stride, max_frames, labels_file, topic, need_meta, need_robot,
                 need_server, q, progress, batch_size, robot_file, server_file, view, models)
    meta = json.loads(meta_file.read_text())
    reference = np.load(directory / 'reference.npy')
    if true_labels is None:
        labels, label_source, used_file = reference, LABELS_REFERENCE, None
    else:
        keys = meta['frame_names'] if true_labels.by_name else \
            meta.get('frame_indices') or list(range(0, len(reference) * stride, stride))
        labels, label_source = true_labels.labels.matrix(keys), LABELS_TRUE
        used_file = true_labels.path
    outputs = VideoOutputs(
        name=meta['name'], source=meta['source'], fps=meta['fps'],
        times=np.asarray(meta['times'], dtype=np.float64),
        labels=labels, label_source=label_source,
        reference=reference, frame_names=meta['frame_names'],
        jpeg_quality=q, stride=stride, labels_file=used_file)
    for key in wanted_robot:
        outputs.robot_logits[key] = np.load(robot_file(*key))
    for res in wanted_server:
        with np.load(server_file(res)) as data:
            outputs.server_pred[res] = data['pred']
            outputs.payload_bytes[res] = data['bytes']
            outputs.server_score[res] = data['score']
    return outputs


@dataclass
class SourceLabels:
    """True labels of a source as found by ``source_labels``."""

    labels: object          # FrameLabels
    path: str               # the file (or 'file names of <folder>')
    by_name: bool           # keyed by file name (image folder) rather than frame index


def source_labels(spec, labels_file=None, topic=None):
    """Find the true labels of a source (None: it has none), checked against its frames.

    Raises ``LabelsError`` when ``labels_file`` (or the sibling file) cannot be used.
    """
    try:
        source = open_source(spec, labels_file=labels_file, topic=topic)
    except LabelsError:
        raise
    except MediaError as error:
        if labels_file and 'labels file' in str(error):
            raise LabelsError(str(error)) from error
        raise
    try:
        labels = getattr(source, 'labels', None)
        if labels is None or not getattr(source, 'has_labels', False):
            if labels_file:
                raise LabelsError(f'labels file {labels_file}: no labels could be read')
            return None
        if not labels.labelled_count:
            raise LabelsError(f'{labels.path}: every frame is unlabelled (empty labels cells)')
        return SourceLabels(labels, labels.path, hasattr(source, 'files'))
    finally:
        source.close()


def _has_scores(path):
    """Tell whether a cached server file exists and holds the server's scores (newer format)."""
    if not path.is_file():
        return False
    with np.load(path) as data:
        return 'score' in data.files


def _compute(spec, directory, stride, max_frames, labels_file, topic, need_meta, need_robot,
             need_server, quality, progress, batch_size, robot_file, server_file, view='center',
             models=None):
    models = models or {'server': SERVER_MODEL, **ROBOT_MODELS}
    source = open_source(spec, labels_file=labels_file, topic=topic)   # labels checked before
    server = _classifier(models['server'])
    robots = {tag: _classifier(models[tag]) for tag in {t for t, _ in need_robot}}
    times, names, indices, reference = [], [], [], []
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
            reference.extend(server.logits(rgbs).argmax(axis=1))
        for tag, res in need_robot:
            robot_out[(tag, res)].append(robots[tag].logits(rgbs, res).astype(np.float32))
        for res in need_server:
            jpegs = [encode_jpeg(center_square(rgb, res), quality) for rgb in rgbs]
            decoded = [decode_image(j) for j in jpegs]
            logits = server.logits(decoded)
            server_pred[res].extend(logits.argmax(axis=1))
            server_score[res].extend(softmax(logits).max(axis=1))
            server_bytes[res].extend(len(j) for j in jpegs)
        if bar is not None:
            bar.update(len(batch))

    batch = []
    try:
        for raw_index, frame in _iter_frames(source, stride, max_frames):
            times.append(float(frame.time_s))
            names.append(frame.name)
            indices.append(raw_index)
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
        reference_arr = np.asarray(reference, dtype=np.int64)
        _save_npy(directory / 'reference.npy', reference_arr)
        meta = {'name': Path(str(paths.resolve_media(spec)).rstrip('/')).name,
                'source': str(paths.resolve_media(spec)),
                'fps': float(source.fps) / stride, 'times': times, 'frame_names': names,
                'frame_indices': indices,
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
