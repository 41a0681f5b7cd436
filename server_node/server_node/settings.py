"""Offload server parameters: one table, declared with descriptors, read into a frozen object.

Convention (as in every cbo_ros node): each parameter is declared once with a description and
a range (``declare_parameters``); the node reads them once into a typed, frozen
:class:`ServerSettings` (``ServerSettings.from_node``: unit conversions happen there and only
there); a change at run time is validated in the on-set callback (``validate_changes``) and
applied in the post-set callback by building a new settings object (``with_changes``).

Which parameters can change at run time: only the ``RUNTIME`` ones, and only when the read-only
``allow_remote_limit_changes`` is true. It is false in the shipped config/server.yaml: anyone on
the DDS domain can call a node's ``set_parameters`` service (there is no access control without
SROS2), and setting ``max_payload_bytes`` to 1024 from another machine made every offload fail.
"""

import dataclasses
from dataclasses import dataclass
from typing import Tuple

from cbo_ros.assets import paths
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)

# name: (default, description, (low, high) or None); read once at start unless in RUNTIME.
PARAMETERS = {
    'model': (paths.SERVER_MODEL_FP32,
              'ONNX model: a path, or a file name in the artifacts models directory', None),
    'labels_file': ('', 'class names of the model, one per line (line 1: class id 0); empty: '
                        'ImageNet-1k names', None),
    'input_size': (paths.SERVER_INPUT_SIZE, 'model input side length in pixels', (32, 1024)),
    'resize_mode': ('center_crop', "how an offloaded image becomes input_size x input_size: "
                                   "'center_crop' (central square, crop_fraction of the short "
                                   "side, resized) or 'stretch' (whole image resized)", None),
    'crop_fraction': (1.0, "center_crop: share of the short side kept", (0.05, 1.0)),
    'mean': ([0.5, 0.5, 0.5], 'per-channel mean on the 0..1 scale in the model\'s colour order: '
                              'input = (pixel / 255 - mean) / std', None),
    'std': ([0.5, 0.5, 0.5], 'per-channel standard deviation on the 0..1 scale', None),
    'layout': ('NCHW', "input tensor layout: 'NCHW' or 'NHWC'", None),
    'color_order': ('RGB', "channel order the model expects: 'RGB' or 'BGR'", None),
    'providers': (['tensorrt', 'cuda', 'cpu'],
                  'onnxruntime execution providers in order of preference (short names '
                  'cpu/cuda/tensorrt/openvino/... or full names); unavailable ones are skipped '
                  '(listed in the diagnostics), CPU is always the fallback; the diagnostics '
                  'warn only when none of the accelerators listed is present and the list does '
                  'not name cpu', None),
    'intra_op_threads': (1, 'onnxruntime intra-op threads (0: onnxruntime default)', (0, 256)),
    'max_batch_size': (4, 'most requests inferred together (1 turns batching off)', (1, 256)),
    'batch_timeout_ms': (0.0, 'longest wait for more requests after the first of a batch',
                         (0.0, 1000.0)),
    'max_queue_size': (64, 'requests in progress (decoding, queued, inferred) beyond which new '
                           'ones get a quick `busy:` refusal with a retry hint', (1, 4096)),
    'max_queue_per_client': (32, 'requests in progress per client (a request\'s robot '
                                 'namespace and client_id) beyond which that client gets '
                                 '`busy:` refusals; batches take the clients in turn',
                             (1, 4096)),
    'max_payload_bytes': (4 * 1024 * 1024, 'largest accepted compressed image in bytes',
                          (1024, 64 * 1024 * 1024)),
    'max_image_pixels': (10_000_000, 'largest image (width x height, read from the file '
                                     'header before decoding) accepted; bigger ones are refused '
                                     'undecoded (decompression bombs)', (1, 1_000_000_000)),
    'max_probe_bytes': (1024 * 1024, 'largest probe payload; a bigger one is answered with '
                                     'received_bytes 0 and a zero server_stamp (refused)',
                        (0, 64 * 1024 * 1024)),
    'max_concurrent_decodes': (4, 'images decoded at the same time (each holds its full-size '
                                  'pixels; bounds memory under a burst of large frames)',
                               (1, 256)),
    'default_top_k': (5, 'hypotheses returned when the request asks for 0', (1, 100)),
    'request_timeout_s': (10.0, 'longest wait for inference of a request without a deadline',
                          (0.1, 600.0)),
    'enforce_deadlines': (True, 'refuse/drop requests whose deadline (in the robot\'s clock) '
                                'has passed by this machine\'s clock; needs synchronised '
                                'clocks (chrony/PTP): false makes every request wait up to '
                                'request_timeout_s instead', None),
    'load_period_s': (1.0, 'period of server_load and diagnostics', (0.05, 60.0)),
    'stats_window_s': (10.0, 'window of requests_per_s, mean batch size and mean inference '
                             'time', (1.0, 600.0)),
    'warmup': (True, 'run one inference at start so the first request is not slow', None),
    'service_queue_depth': (0, 'history of the offload/probe request and response queues: 0 '
                               'keeps all (DDS flow control, every request answered); N keeps '
                               'the last N, and requests of a burst beyond N that arrive '
                               'faster than the executor takes them are lost without an answer',
                            (0, 100000)),
    'robot_namespaces': ([''], 'serve these robots from one process, one batcher: `offload` '
                               'and `probe` under each namespace (e.g. [robot1, robot2] gives '
                               '/robot1/offload, /robot2/offload, ...); [\'\'] (default): '
                               'relative to this node\'s namespace', None),
    'executor_threads': (1, 'executor threads: 1 (default) a SingleThreadedExecutor, more a '
                            'MultiThreadedExecutor; the callbacks only validate and await, the '
                            'decode pool and the batching thread do the work', (1, 256)),
    'allow_remote_limit_changes': (False, 'let the set_parameters service change the batching '
                                          'and limit parameters at run time (anyone on the DDS '
                                          'domain can call it); false: they are read-only',
                                   None),
}

# Parameters the node applies at run time (when allow_remote_limit_changes is true).
RUNTIME = frozenset({'max_batch_size', 'batch_timeout_ms', 'max_queue_size',
                     'max_queue_per_client', 'max_payload_bytes', 'max_image_pixels',
                     'max_probe_bytes', 'default_top_k', 'request_timeout_s',
                     'stats_window_s'})


def _descriptor(name, default, description, bounds, read_only):
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if isinstance(default, bool):
        descriptor.type = ParameterType.PARAMETER_BOOL
    elif isinstance(default, int):
        descriptor.type = ParameterType.PARAMETER_INTEGER
        if bounds:
            descriptor.integer_range = [IntegerRange(from_value=int(bounds[0]),
                                                     to_value=int(bounds[1]), step=1)]
    elif isinstance(default, float):
        descriptor.type = ParameterType.PARAMETER_DOUBLE
        if bounds:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(bounds[0]), to_value=float(bounds[1]), step=0.0)]
    elif isinstance(default, list) and default and isinstance(default[0], float):
        descriptor.type = ParameterType.PARAMETER_DOUBLE_ARRAY
    elif isinstance(default, list):
        descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
    else:
        descriptor.type = ParameterType.PARAMETER_STRING
    return descriptor


def declare_parameters(node):
    """Declare every server parameter on ``node`` (limits read-only unless allowed)."""
    default, description, _ = PARAMETERS['allow_remote_limit_changes']
    allow = node.declare_parameter('allow_remote_limit_changes', default, _descriptor(
        'allow_remote_limit_changes', default, description, None, True)).value
    for name, (default, description, bounds) in PARAMETERS.items():
        if name == 'allow_remote_limit_changes':
            continue
        read_only = not (allow and name in RUNTIME)
        node.declare_parameter(name, default, _descriptor(name, default, description, bounds,
                                                          read_only))


@dataclass(frozen=True)
class ServerSettings:
    """The server's parameters, typed and in the units the code uses."""

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
    max_batch_size: int
    batch_timeout_s: float
    max_queue_size: int
    max_queue_per_client: int
    max_payload_bytes: int
    max_image_pixels: int
    max_probe_bytes: int
    max_concurrent_decodes: int
    default_top_k: int
    request_timeout_s: float
    enforce_deadlines: bool
    load_period_s: float
    stats_window_s: float
    warmup: bool
    service_queue_depth: int
    robot_namespaces: Tuple[str, ...]
    executor_threads: int
    allow_remote_limit_changes: bool

    @classmethod
    def from_values(cls, values):
        """Build from {parameter name: value} (parameter units, e.g. batch_timeout_ms)."""
        fields = {}
        for name, value in values.items():
            if name == 'batch_timeout_ms':
                fields['batch_timeout_s'] = float(value) / 1e3
            elif name in ('mean', 'std'):
                fields[name] = tuple(float(v) for v in value)
            elif isinstance(value, (list, tuple)):
                fields[name] = tuple(str(v) for v in value)
            else:
                fields[name] = value
        return cls(**fields)

    @classmethod
    def from_node(cls, node):
        """Read every declared server parameter of ``node`` once."""
        return cls.from_values({name: node.get_parameter(name).value for name in PARAMETERS})

    def with_changes(self, params):
        """Return a copy with rclpy ``Parameter`` changes applied (parameter units)."""
        values = {name: getattr(self, name) for name in PARAMETERS if name != 'batch_timeout_ms'}
        values['batch_timeout_ms'] = self.batch_timeout_s * 1e3
        values.update({p.name: p.value for p in params})
        return ServerSettings.from_values(values)

    def validate_changes(self, params):
        """Return '' when ``params`` may be applied together, else the reason they may not."""
        unknown = [p.name for p in params if p.name in PARAMETERS and p.name not in RUNTIME]
        if unknown:
            return f"{', '.join(unknown)} cannot change at run time"
        changed = self.with_changes([p for p in params if p.name in PARAMETERS])
        if changed.max_queue_per_client > changed.max_queue_size:
            return (f'max_queue_per_client ({changed.max_queue_per_client}) must not exceed '
                    f'max_queue_size ({changed.max_queue_size})')
        return ''

    def preprocessing(self):
        """Return the model's ``Preprocessing`` (raises ValueError with the reason when invalid)."""
        from cbo_ros.perception.classifier import Preprocessing
        return Preprocessing(self.input_size, self.resize_mode, self.crop_fraction, self.mean,
                             self.std, self.layout, self.color_order)


def changed_fields(old, new):
    """Names of the settings fields that differ between two ServerSettings."""
    return [f.name for f in dataclasses.fields(old)
            if getattr(old, f.name) != getattr(new, f.name)]
