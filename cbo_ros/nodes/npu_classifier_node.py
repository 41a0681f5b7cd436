"""npu_classifier_node: classify every camera frame with the robot's (int8) model.

Subscribes ``image_raw`` (reliable, depth 30 unless overridden; with ``input_transport:
compressed`` sensor_msgs/CompressedImage, JPEG or PNG, on ``image_raw/compressed``) and
publishes ``local_result`` (cbo_interfaces/FrameClassification, ``is_final`` false) for every
frame it receives, with the header copied from the image, the calibrated and raw confidence, the
top-k classes and the latency.

``frame_seq`` is a counter of this node (0, 1, 2, ... in the order frames are received); nodes
downstream join frames by ``header.stamp``, which is unique per frame.

A malformed frame (unsupported encoding, truncated data, zero size, compressed bytes that do
not decode) is answered with an empty ``class_id``, score 0 and the note ``invalid frame:
<reason>``, so it is not silently lost; so is a frame already older than ``max_frame_age_ms``
when its turn comes (note ``skipped: ...``): an overloaded classifier catches up instead of
inferring frames whose deadline has passed.
Premodel mode (``premodel_file`` set; docs/premodel.md): per frame the premodel picks one of
its candidate models from cheap image features and that model answers; ``model`` and
``resolution`` of the local result name the chosen candidate and its input size, the
confidences are that candidate's (its own temperature), and ``note`` says ``premodel: <name>``.
"""

import collections
import time
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from cbo_interfaces.msg import ClassHypothesis, FrameClassification
from rclpy.node import Node

from cbo_ros.assets import paths
from cbo_ros.core.premodel import answer_frame, Premodel
from cbo_ros.nodes.ros_common import (Diagnostics, FrameSubscription, load_bundle,
                                      load_settings, LOCAL_RESULT_QOS, ms_to_ns, Param,
                                      RateMeter, SimClockWatch, spin_node, stamp_to_ns,
                                      TRANSPORTS)
from cbo_ros.perception.classifier import describe, OnnxClassifier, Preprocessing
from cbo_ros.perception.image_features import FEATURE_SIDE, image_features
from cbo_ros.perception.image_ops import decimate_for, softmax
from cbo_ros.perception.media import frame_msg_to_rgb


@dataclass(frozen=True)
class ClassifierSettings:
    """The classifier's parameters (all read-only: loaded once)."""

    model: str
    labels_file: str
    input_size: int
    resize_mode: str
    crop_fraction: float
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    layout: str
    color_order: str
    providers: Tuple[str, ...]
    intra_op_threads: int
    calibration_file: str
    top_k: int
    reliability: str
    depth: int
    max_age_ns: int
    diagnostics_period_s: float
    input_transport: str
    premodel_file: str
    premodel_models: Tuple[str, ...]

    def __post_init__(self) -> None:
        """Refuse values no range of the descriptors catches."""
        if self.input_transport not in TRANSPORTS:
            raise ValueError(f"input_transport must be {' or '.join(TRANSPORTS)}, got "
                             f"'{self.input_transport}'")


PARAMS = (
    Param('model', paths.ROBOT_MODEL_INT8,
          'Robot model: ONNX path or a file name in artifacts/models.'),
    Param('labels_file', '',
          'Class names of the model, one per line (line 1: class id 0); empty: ImageNet-1k.'),
    Param('input_size', paths.ROBOT_INPUT_SIZE, 'Model input side length in pixels.',
          minimum=32, maximum=1024),
    Param('resize_mode', 'center_crop',
          "How a frame becomes input_size x input_size: 'center_crop' (central square, "
          "crop_fraction of the short side, resized) or 'stretch' (whole frame resized)."),
    Param('crop_fraction', 1.0, 'center_crop: share of the short side kept (0.875: the '
          'resize-256-crop-224 convention).', minimum=0.05, maximum=1.0),
    Param('mean', [0.5, 0.5, 0.5], 'Per-channel mean on the 0..1 scale, in the model\'s colour '
          'order: input = (pixel / 255 - mean) / std.', convert=tuple),
    Param('std', [0.5, 0.5, 0.5], 'Per-channel standard deviation on the 0..1 scale.',
          convert=tuple),
    Param('layout', 'NCHW', "Input tensor layout: 'NCHW' or 'NHWC'."),
    Param('color_order', 'RGB', "Channel order the model expects: 'RGB' or 'BGR'."),
    Param('providers', ['cpu'],
          'ONNX Runtime execution providers in order of preference (e.g. [qnn, openvino, '
          'cuda, cpu]); unavailable ones are reported, CPU is the fallback.', convert=tuple),
    Param('intra_op_threads', 1, 'ONNX Runtime intra-op threads (0: onnxruntime default).',
          minimum=0, maximum=256),
    Param('calibration_file', '',
          'Calibration bundle (empty: the default path under artifacts/calibration).'),
    Param('top_k', 5, 'Classes reported in top_k.', minimum=1, maximum=1000),
    Param('reliability', 'auto',
          "QoS reliability of the image_raw subscription: 'auto' (reliable, best effort once a "
          "best-effort camera is seen), 'reliable' or 'best_effort'."),
    Param('depth', 30, 'QoS history depth of image_raw.', minimum=1, maximum=1000),
    Param('max_frame_age_ms', 1000.0,
          'A frame older than this (stamp to now) when its turn comes is not inferred: its '
          'local result says it was skipped, so an overloaded classifier catches up instead of '
          'working through a backlog the planner has already answered (0: never skip).',
          minimum=0.0, maximum=600000.0, field='max_age_ns', convert=ms_to_ns),
    Param('diagnostics_period_s', 1.0, 'Period of the /diagnostics status.', minimum=0.1,
          maximum=60.0),
    Param('input_transport', 'raw',
          "Frames read: 'raw' (sensor_msgs/Image on image_raw) or 'compressed' "
          '(sensor_msgs/CompressedImage, JPEG/PNG, on image_raw/compressed: the image_transport '
          'convention, following a remap of image_raw).'),
    Param('premodel_file', '',
          "Premodel mode: a trained premodel (cbo_premodel build; 'default': "
          'artifacts/calibration/premodel.npz) picks per frame which candidate model answers; '
          "'' : off (the model above answers every frame)."),
    Param('premodel_models', [''],
          "ONNX files of the premodel's candidates in its order (paths or names in "
          "artifacts/models); ['']: the candidates' default files.",
          convert=lambda files: tuple(f for f in files if f)),
)


class NpuClassifierNode(Node):
    """Runs the robot model on each frame and publishes the calibrated local result.

    Executor: its own process under ``spin_node`` (single-threaded), or robot_bringup's; its
    callbacks share the node's default, mutually exclusive callback group, so one runs at a
    time under a MultiThreadedExecutor too, and no lock is needed.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__('npu_classifier_node', **kwargs)
        self.settings: ClassifierSettings = load_settings(self, ClassifierSettings, PARAMS)
        s = self.settings
        self.input_size = s.input_size
        self.top_k = s.top_k
        self.max_age_ns = s.max_age_ns
        preprocessing = Preprocessing(s.input_size, s.resize_mode, s.crop_fraction, s.mean,
                                      s.std, s.layout, s.color_order)
        self.classifier = OnnxClassifier(str(paths.resolve_model(s.model)),
                                         preprocessing=preprocessing,
                                         providers=list(s.providers),
                                         intra_op_threads=s.intra_op_threads,
                                         labels_file=s.labels_file)
        for warning in self.classifier.provider_warnings:
            self.get_logger().warning(f'{warning}: falling back to the next provider')
        self.premodel, self.candidates = self.load_premodel(s)
        # Frames far larger than any input are subsampled on arrival (bounded per-frame cost).
        self.working_side = max([s.input_size] + ([FEATURE_SIDE] + [
            c.input_size for c in self.candidates] if self.premodel is not None else []))
        self.chosen = collections.Counter()
        self.bundle, self.calibrated, self.calibration_message = load_bundle(
            self.get_logger(), s.calibration_file)

        self.result_pub = self.create_publisher(FrameClassification, 'local_result',
                                                LOCAL_RESULT_QOS)
        self.frames_in = FrameSubscription(self, self.on_image, s.reliability, s.depth,
                                           transport=s.input_transport)
        self.diagnostics = Diagnostics(self)
        self.clock_watch = SimClockWatch(self, self.diagnostics)
        self.diag_timer = self.create_timer(s.diagnostics_period_s, self.on_diagnostics)
        self.seq = 0
        self.invalid = 0
        self.skipped = 0
        self.rate_meter = RateMeter()
        self.inference_ms = []
        self.classifier.logits([np.zeros((s.input_size, s.input_size, 3), np.uint8)])
        self.get_logger().info(
            f'{self.classifier.name} on {", ".join(self.classifier.active_providers)}; '
            f'{self.calibration_message}')

    def load_premodel(self, s):
        """Load the premodel and its candidate classifiers (``(None, [])`` when off)."""
        if not s.premodel_file:
            return None, []
        from cbo_ros.assets.premodel_models import candidate_by_name, resolve_premodel
        path = resolve_premodel(s.premodel_file)
        premodel = Premodel.load(path)            # PremodelError (ValueError) names the fix
        specs = [candidate_by_name(name) for name in premodel.candidates]
        files = list(s.premodel_models) or [c.model_file for c in specs]
        if len(files) != len(specs):
            raise ValueError(f'premodel_models lists {len(files)} files; the premodel has '
                             f'{len(specs)} candidates ({", ".join(premodel.candidates)})')
        candidates = [OnnxClassifier(str(paths.resolve_model(f)), c.input_size,
                                     providers=list(s.providers),
                                     intra_op_threads=s.intra_op_threads, name=c.name)
                      for f, c in zip(files, specs)]
        for model in candidates:
            model.logits([np.zeros((model.input_size, model.input_size, 3), np.uint8)])
        self.get_logger().info(f'premodel {path} ({premodel.config.label()}) over '
                               f'{", ".join(premodel.candidates)}')
        return premodel, candidates

    def on_image(self, msg) -> None:
        """Classify one frame (or answer why not) and publish its local result."""
        seq = self.seq
        self.seq += 1
        result = FrameClassification(header=msg.header, frame_seq=seq,
                                     source=FrameClassification.SOURCE_ROBOT,
                                     model=self.classifier.name, resolution=self.input_size,
                                     is_final=False)
        start = time.perf_counter()
        age_ns = self.get_clock().now().nanoseconds - stamp_to_ns(msg.header.stamp)
        if self.max_age_ns and age_ns > self.max_age_ns:
            self.skipped += 1
            result.note = f'skipped: frame {age_ns / 1e6:.0f} ms old (classifier overloaded)'
            self.get_logger().warning(result.note, throttle_duration_sec=2.0)
            self.publish(result, start)
            return
        try:
            rgb = decimate_for(frame_msg_to_rgb(msg), self.working_side)
        except ValueError as error:
            self.invalid += 1
            self.get_logger().error(f'invalid frame (stamp {msg.header.stamp.sec}.'
                                    f'{msg.header.stamp.nanosec:09d}): {error}',
                                    throttle_duration_sec=2.0)
            result.note = f'invalid frame: {error}'
            self.publish(result, start)
            return
        if self.premodel is not None:
            answer = answer_frame(self.premodel, image_features(rgb),
                                  lambda i: self.candidates[i].logits([rgb])[0])
            logits, calibrated, raw = answer.logits, answer.confidence, answer.raw_confidence
            chosen = self.candidates[answer.index]
            result.model, result.resolution = chosen.name, chosen.input_size
            self.chosen[chosen.name] += 1
        else:
            logits = self.classifier.logits([rgb])[0]
            calibrated, raw = self.bundle.confidence(logits, resolution=self.input_size)
        probabilities = softmax(logits)
        # Ties go to the lowest class id, as np.argmax does in the evaluator.
        order = np.argsort(-probabilities, kind='stable')[:self.top_k]
        result.class_id = str(int(order[0]))
        result.class_name = self.classifier.class_name(order[0])
        result.score = float(calibrated)
        result.calibrated_confidence = float(calibrated)
        result.raw_confidence = float(raw)
        result.top_k = [ClassHypothesis(class_id=str(int(i)),
                                        class_name=self.classifier.class_name(i),
                                        score=float(probabilities[i])) for i in order]
        result.note = 'local answer' if self.calibrated else 'local answer (uncalibrated)'
        if self.premodel is not None:
            result.note = f'local answer (premodel: {result.model})'
        self.publish(result, start)

    def publish(self, result: FrameClassification, start: float) -> None:
        """Publish a local result with its latency (``start``: perf_counter at receipt)."""
        inference_ms = (time.perf_counter() - start) * 1e3
        now_ns = self.get_clock().now().nanoseconds
        result.latency.local_inference_ms = inference_ms
        result.latency.capture_to_local_ms = (now_ns - stamp_to_ns(result.header.stamp)) / 1e6
        self.result_pub.publish(result)
        self.rate_meter.tick(time.monotonic())
        self.inference_ms = (self.inference_ms + [inference_ms])[-100:]
        self.get_logger().info(
            f'frame {result.frame_seq}: class {result.class_id or "-"} '
            f'{("(" + result.class_name + ") ") if result.class_name else ""}'
            f'conf {result.calibrated_confidence:.2f} ({inference_ms:.1f} ms)',
            throttle_duration_sec=5.0)

    def on_diagnostics(self) -> None:
        """Publish the classifier's state on /diagnostics."""
        level = Diagnostics.OK if self.calibrated else Diagnostics.WARN
        message = 'ok' if self.calibrated else 'uncalibrated fallback in use'
        if self.classifier.provider_warnings:
            level = Diagnostics.WARN
            message = '; '.join(self.classifier.provider_warnings)
        if self.frames_in.problem or self.clock_watch.problem:
            level = Diagnostics.ERROR
            message = '; '.join(p for p in (self.frames_in.problem, self.clock_watch.problem) if p)
        elif self.frames_in.note:
            message = f'{message}; {self.frames_in.note}'
        mean_ms = float(np.mean(self.inference_ms)) if self.inference_ms else 0.0
        self.diagnostics.publish(level, message, {
            'model': self.classifier.name,
            'labels': self.classifier.labels_file or 'ImageNet-1k',
            'preprocessing': describe(self.classifier.preprocessing),
            'providers': ','.join(self.classifier.active_providers),
            'inference_rate_hz': f'{self.rate_meter.rate(time.monotonic()):.2f}',
            'mean_inference_ms': f'{mean_ms:.2f}',
            'frames': self.seq, 'invalid_frames': self.invalid,
            'skipped_stale_frames': self.skipped,
            'calibration': self.calibration_message,
            'premodel_choices': ', '.join(f'{k}: {v}' for k, v in sorted(self.chosen.items()))
            if self.premodel is not None else 'off'})


def main(args=None) -> None:
    """Run the node until SIGINT/SIGTERM."""
    spin_node(NpuClassifierNode, 'npu_classifier_node',
              startup_errors=(FileNotFoundError, ImportError, ValueError), args=args)


if __name__ == '__main__':
    main()
