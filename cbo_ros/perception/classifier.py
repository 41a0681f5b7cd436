"""ONNX Runtime image classifier with a configurable list of execution providers."""

import os
import time

import numpy as np
import onnxruntime as ort

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


class OnnxClassifier:
    """An ImageNet classifier exported to ONNX (NCHW float input, logits output)."""

    def __init__(self, model_path, input_size, providers=('CPUExecutionProvider',),
                 intra_op_threads=0, name=None):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(paths.not_found_message('model file', model_path, 'models'))
        self.model_path = model_path
        self.input_size = int(input_size)
        self.name = name or os.path.splitext(os.path.basename(model_path))[0]
        self.providers, self.provider_warnings = resolve_providers(list(providers))
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        self.session = ort.InferenceSession(model_path, sess_options=options,
                                            providers=self.providers)
        self.active_providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, frames, input_size=None):
        """Turn RGB uint8 frames (any size) into the model's normalised NCHW batch."""
        side = int(input_size or self.input_size)
        squares = np.stack([center_square(frame, side) for frame in frames])
        batch = squares.astype(np.float32) * (2.0 / 255.0) - 1.0
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def infer(self, batch):
        """Run the model on a preprocessed batch; return logits (N, classes) as float32."""
        return self.session.run(None, {self.input_name: batch})[0]

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
