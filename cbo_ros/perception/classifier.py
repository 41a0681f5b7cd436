"""ONNX Runtime image classifier: your model, its class names and its preprocessing.

A model is given by its ONNX file, an optional labels file (one class name per line: line ``i``,
counted from 0, names class id ``i``; without one, ImageNet-1k names) and a ``Preprocessing``:
input size, resize mode, mean/std, tensor layout and colour order. The defaults are those of the
shipped EfficientNet-Lite models (centre square, ``(rgb / 255 - 0.5) / 0.5``, NCHW, RGB).
"""

import os
import time
from dataclasses import asdict, dataclass
from typing import Tuple

import cv2
import numpy as np
import onnxruntime as ort

from cbo_common.class_names import imagenet_class_names

from cbo_ros.assets import paths
from cbo_ros.perception.image_ops import center_square

# Short names users may write in a parameter file -> ONNX Runtime provider names.
PROVIDER_ALIASES = {
    'cpu': 'CPUExecutionProvider',
    'cuda': 'CUDAExecutionProvider',
    'tensorrt': 'TensorrtExecutionProvider',
    'trt': 'TensorrtExecutionProvider',
    'openvino': 'OpenVINOExecutionProvider',
    'qnn': 'QNNExecutionProvider',
    'nnapi': 'NnapiExecutionProvider',
    'coreml': 'CoreMLExecutionProvider',
    'dml': 'DmlExecutionProvider',
    'rocm': 'ROCMExecutionProvider',
    'migraphx': 'MIGraphXExecutionProvider',
    'acl': 'ACLExecutionProvider',
    'armnn': 'ArmNNExecutionProvider',
    'xnnpack': 'XnnpackExecutionProvider',
}


def resolve_providers(requested):
    """Map requested provider names to those available here.

    Returns ``(providers, warnings)``: the available providers in the requested order (CPU
    appended as the fallback when missing) and one message per requested provider that is
    unknown or not available in this onnxruntime build.
    """
    available = ort.get_available_providers()
    chosen, warnings = [], []
    for name in requested or ['CPUExecutionProvider']:
        full = PROVIDER_ALIASES.get(str(name).strip().lower(), str(name).strip())
        if full not in ort.get_all_providers():
            warnings.append(f"unknown execution provider '{name}'")
        elif full not in available:
            warnings.append(f"execution provider '{full}' is not available in this onnxruntime "
                            f"build (available: {', '.join(available)})")
        elif full not in chosen:
            chosen.append(full)
    if 'CPUExecutionProvider' not in chosen:
        chosen.append('CPUExecutionProvider')
    return chosen, warnings


RESIZE_MODES = ('center_crop', 'stretch')
LAYOUTS = ('NCHW', 'NHWC')
COLOR_ORDERS = ('RGB', 'BGR')


@dataclass(frozen=True)
class Preprocessing:
    """How a frame becomes the model's input tensor (defaults: the shipped models).

    ``resize``: ``center_crop`` takes the central square (``crop_fraction`` of the short side,
    1.0: all of it) and resizes it to ``input_size``; ``stretch`` resizes the whole frame to
    ``input_size`` x ``input_size`` (aspect ratio not kept). ``mean`` and ``std`` are per channel
    in the model's colour order on the 0..1 scale: ``(pixel / 255 - mean) / std``.
    """

    input_size: int = paths.ROBOT_INPUT_SIZE
    resize: str = 'center_crop'
    crop_fraction: float = 1.0
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    layout: str = 'NCHW'
    color_order: str = 'RGB'

    def __post_init__(self):
        object.__setattr__(self, 'input_size', int(self.input_size))
        object.__setattr__(self, 'crop_fraction', float(self.crop_fraction))
        object.__setattr__(self, 'mean', tuple(float(v) for v in self.mean))
        object.__setattr__(self, 'std', tuple(float(v) for v in self.std))
        object.__setattr__(self, 'layout', str(self.layout).upper())
        object.__setattr__(self, 'color_order', str(self.color_order).upper())
        if not 8 <= self.input_size <= 4096:
            raise ValueError(f'input size {self.input_size} outside 8..4096 pixels')
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.resize!r} unknown (choose from "
                             f"{', '.join(RESIZE_MODES)})")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f'crop fraction {self.crop_fraction} outside (0, 1]')
        for name in ('mean', 'std'):
            if len(getattr(self, name)) != 3:
                raise ValueError(f'{name} needs 3 values (one per colour channel), got '
                                 f'{list(getattr(self, name))}')
        if min(self.std) <= 0.0:
            raise ValueError(f'std values must be positive, got {list(self.std)}')
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} unknown (choose from {', '.join(LAYOUTS)})")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"colour order {self.color_order!r} unknown (choose from "
                             f"{', '.join(COLOR_ORDERS)})")

    @property
    def is_default(self):
        """True for the shipped models' preprocessing (any input size)."""
        return self.with_size(Preprocessing().input_size) == Preprocessing()

    def with_size(self, input_size):
        """Return the same preprocessing at another input size."""
        return Preprocessing(**{**asdict(self), 'input_size': int(input_size)})

    def as_dict(self):
        """Plain dict (JSON, cache keys)."""
        out = asdict(self)
        out['mean'], out['std'] = list(self.mean), list(self.std)
        return out

    def resized(self, rgb, input_size=None):
        """RGB uint8 frame -> ``input_size`` x ``input_size`` RGB uint8 (the resize mode)."""
        side = int(input_size or self.input_size)
        if self.resize == 'stretch':
            if rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.size:
                raise ValueError(f'expected a non-empty HxWx3 image, got shape {rgb.shape}')
            if rgb.shape[:2] == (side, side):
                return np.ascontiguousarray(rgb)
            shrink = rgb.shape[0] > side or rgb.shape[1] > side
            return cv2.resize(rgb, (side, side),
                              interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if self.crop_fraction < 1.0:
            height, width = rgb.shape[:2]
            crop = max(1, int(round(min(height, width) * self.crop_fraction)))
            top, left = (height - crop) // 2, (width - crop) // 2
            rgb = rgb[top:top + crop, left:left + crop]
        return center_square(rgb, side)

    def to_tensor(self, images):
        """Stack resized RGB uint8 images into the model's float32 batch."""
        batch = np.stack(images)
        if self.color_order == 'BGR':
            batch = batch[..., ::-1]
        if self.mean[0] == self.mean[1] == self.mean[2] and self.std[0] == self.std[1] == \
                self.std[2]:
            # One scale and offset (for the defaults: exactly x * 2/255 - 1, as before).
            batch = batch.astype(np.float32) * (1.0 / (255.0 * self.std[0])) - \
                self.mean[0] / self.std[0]
        else:
            scale = (1.0 / (255.0 * np.asarray(self.std))).astype(np.float32)
            offset = (np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)
            batch = batch.astype(np.float32) * scale - offset
        if self.layout == 'NCHW':
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)


def describe(preprocessing):
    """One line describing a ``Preprocessing`` (logs, diagnostics)."""
    p = preprocessing
    crop = f' {p.crop_fraction:g}' if p.resize == 'center_crop' and p.crop_fraction < 1 else ''
    return (f'{p.input_size} px {p.resize}{crop}, mean {list(p.mean)}, std {list(p.std)}, '
            f'{p.layout}, {p.color_order}')


def read_class_names(path):
    """Class names of a labels file: one per line, line i (from 0) is class id i.

    Trailing empty lines are ignored; an empty line between names is an error (it would shift
    every following class id).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'labels file {path} not found (one class name per line; '
                                'line 1 is class id 0)')
    with open(path, encoding='utf-8') as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f'labels file {path} is empty (one class name per line)')
    for number, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f'{path}:{number}: empty line between class names (line '
                             f'{number} would be class id {number - 1}; name it or remove it)')
    return tuple(lines)


class OnnxClassifier:
    """An image classifier exported to ONNX (float input, one logits/scores output).

    ``preprocessing`` (a ``Preprocessing``; default: the shipped models' at ``input_size``) and
    ``labels_file`` (class names, one per line; default: ImageNet-1k names) describe your own
    model; the number of names must equal the model's number of outputs.
    """

    def __init__(self, model_path, input_size=None, providers=('CPUExecutionProvider',),
                 intra_op_threads=0, name=None, preprocessing=None, labels_file=''):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(paths.not_found_message('model file', model_path, 'models'))
        self.model_path = model_path
        if preprocessing is None:
            preprocessing = Preprocessing(input_size=input_size or paths.ROBOT_INPUT_SIZE)
        elif input_size:
            preprocessing = preprocessing.with_size(input_size)
        self.preprocessing = preprocessing
        self.input_size = preprocessing.input_size
        self.labels_file = labels_file or ''
        self.class_names = read_class_names(labels_file) if labels_file else None
        self.name = name or os.path.splitext(os.path.basename(model_path))[0]
        self.providers, self.provider_warnings = resolve_providers(list(providers))
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(model_path, sess_options=options,
                                            providers=self.providers)
        self.active_providers = self.session.get_providers()
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self._check_input(model_input)
        outputs = self.session.get_outputs()[0].shape
        self.num_classes = outputs[-1] if outputs and isinstance(outputs[-1], int) else None
        if self.class_names is not None and self.num_classes is not None:
            self._check_names(self.num_classes)

    def _check_input(self, model_input):
        """Refuse a model whose input cannot take this preprocessing (with the reason)."""
        if 'float' not in model_input.type:
            raise ValueError(f'{self.model_path}: input {model_input.name!r} is '
                             f'{model_input.type}; only float inputs are supported (the '
                             'preprocessing normalises with mean/std)')
        shape = model_input.shape
        if len(shape) != 4:
            raise ValueError(f'{self.model_path}: input {model_input.name!r} has shape {shape}; '
                             'expected a 4-d image batch (NCHW or NHWC)')
        nchw = self.preprocessing.layout == 'NCHW'
        channels, other_channels = (shape[1], shape[3]) if nchw else (shape[3], shape[1])
        if channels != 3 and (other_channels == 3 or isinstance(channels, int)):
            other = 'NHWC' if nchw else 'NCHW'
            raise ValueError(f'{self.model_path}: input shape {shape} has no 3 colour channels '
                             f'where layout {self.preprocessing.layout} puts them; is the '
                             f'model {other}? (set the layout)')
        spatial = shape[2:] if nchw else shape[1:3]
        fixed = [d for d in spatial if isinstance(d, int)]
        if fixed and any(d != self.input_size for d in fixed):
            raise ValueError(f'{self.model_path}: the model takes {spatial} pixels but the '
                             f'input size is {self.input_size}; set input_size to match')

    def _check_names(self, num_classes):
        if len(self.class_names) != num_classes:
            raise ValueError(f'labels file {self.labels_file} names {len(self.class_names)} '
                             f'classes but the model {self.name} outputs {num_classes} scores')

    def class_name(self, index):
        """Name of class id ``index`` (labels file, else ImageNet-1k; '' when unknown)."""
        names = self.class_names if self.class_names is not None else imagenet_class_names()
        index = int(index)
        return names[index] if 0 <= index < len(names) else ''

    def preprocess(self, frames, input_size=None):
        """Turn RGB uint8 frames (any size) into the model's normalised input batch."""
        pre = self.preprocessing
        return pre.to_tensor([pre.resized(frame, input_size) for frame in frames])

    def infer(self, batch):
        """Run the model on a preprocessed batch; return logits (N, classes) as float32."""
        logits = self.session.run(None, {self.input_name: batch})[0]
        if self.num_classes is None:
            self.num_classes = int(logits.shape[-1])
            if self.class_names is not None:
                self._check_names(self.num_classes)
        return logits

    def logits(self, frames, input_size=None):
        """Classify RGB frames (preprocessing included); return (N, classes) scores."""
        return self.infer(self.preprocess(frames, input_size))

    def latency_ms(self, repeats=30, input_size=None):
        """Median single-image latency in milliseconds on a random frame."""
        side = int(input_size or self.input_size)
        frame = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
        batch = self.preprocess([frame], side)
        self.infer(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.infer(batch)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))
