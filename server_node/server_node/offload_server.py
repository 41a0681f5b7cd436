"""Workstation offload server: classifies offloaded frames with the large model, in batches.

Services (relative names, so namespaces and remaps apply):
  ``offload`` (cbo_interfaces/srv/Offload)  classify one compressed frame
  ``probe``   (cbo_interfaces/srv/Probe)    echo the payload size and the server time
  ``offload_features`` (cbo_interfaces/srv/OffloadFeatures)  finish a partitioned inference:
              the early-exit model's tail on the robot's intermediate tensor (when the parts
              are built; else every request is refused with the reason)

Topics:
  ``server_load`` (cbo_interfaces/msg/ServerLoad)        every ``load_period_s``
  ``/diagnostics`` (diagnostic_msgs/msg/DiagnosticArray)  every ``load_period_s``

Every request gets an answer: a result, a refusal with the reason, or, when the server holds
``max_queue_size`` requests (or the client its ``max_queue_per_client``), a quick refusal whose
error starts with ``busy:`` and says when to retry. A client is a robot namespace's service plus
the request's ``client_id`` (the caller's fully qualified node name), so a flooding caller on
one robot's service fills only its own share. rclpy does not hand a callback the caller's
writer GUID, so the id is declared by the caller: it separates honest clients, not a hostile
one that forges or rotates ids (access control for that is SROS2's, docs/security.md). Checks
run cheapest first and nothing is decoded before the file header's size passed
``max_image_pixels`` (see :mod:`server_node.validation`).

Executor: a SingleThreadedExecutor (``executor_threads`` 1, the default; more threads give a
MultiThreadedExecutor). Each service callback is a coroutine: it validates its request, *awaits*
its decode (an image, or a partitioned model's compressed tensor) in a pool of
``max_concurrent_decodes`` threads (Pillow, OpenCV and zlib release the GIL), hands the
preprocessed tensor to the :class:`~server_node.batcher.Batcher` and *awaits* the result while
one batching thread runs onnxruntime on up to ``max_batch_size`` requests at a time; ``_lock``
guards the counters the callbacks and those threads share. The executor thread only takes
requests, validates and answers, so it keeps up with a flood: measured on the 2-core machine,
1,000 concurrent requests were all answered (results or ``busy:``) in 1.5 s with one thread and
in 14 s with 16 (rclpy's MultiThreadedExecutor scans every in-flight callback on each wake-up,
and a coroutine awaiting its batch stays in flight), and a request of another client queued
behind such a flood in the service's DDS reader waited for it to drain. Blocking waits (before
the callbacks were coroutines) tied up one executor thread per request in progress: with 4
threads and ~5 offloads in flight, round trip minus ``server_ms`` was 133 ms (p50) instead of 6
ms. With rclpy 9 (Kilted) a coroutine awaiting a Future completed from another thread is resumed
only at the executor's next wake-up; the batch thread therefore completes a future that has a
done callback, which makes the executor's guard condition fire (see ``_result_of``).
"""

import collections
import concurrent.futures
import copy
import ctypes
import ctypes.util
import functools
import math
import socket
import threading
import time
import weakref

from cbo_common.ros_helpers import (class_name, Diagnostics, shutdown_executor, SimClockWatch,
                                    stamp_problem, stamp_to_ns)
from cbo_interfaces.msg import ClassHypothesis, ServerLoad
from cbo_interfaces.srv import Offload, OffloadFeatures, Probe
from cbo_ros.assets import paths
from cbo_ros.perception.classifier import describe, OnnxClassifier
import numpy as np
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, qos_profile_services_default
from rcl_interfaces.msg import SetParametersResult

from server_node.batcher import (Batcher, BatcherClosedError, ExpiredError, QueueFullError)
from server_node.settings import changed_fields, declare_parameters, ServerSettings
from server_node.validation import (check_dimensions, check_features, check_payload,
                                    decode_checked, read_image_header, RequestError)

# A request whose deadline passed this long before it arrived points at unsynchronised clocks.
CLOCK_SKEW_HINT_S = 2.0
# Longest wait for the decode of a request without a deadline (a safety net: never reached by
# an image within max_image_pixels on a working machine).
DECODE_TIMEOUT_S = 30.0
# How often freed heap memory is handed back to the operating system (see _trim_heap).
TRIM_PERIOD_S = 10.0
# Per-image inference time assumed for a retry hint before any batch was measured.
DEFAULT_ITEM_MS = 50.0
# A request's client_id is cut to this length before it becomes a queue key.
MAX_CLIENT_ID_CHARS = 128


def _service_prefixes(namespaces):
    """Name prefixes of the services: '' (relative) or '/<namespace>/' per robot."""
    prefixes = []
    for namespace in namespaces or ['']:
        namespace = str(namespace).strip().strip('/')
        prefix = f'/{namespace}/' if namespace else ''
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _heap_trimmer():
    """Return glibc's ``malloc_trim`` (or None elsewhere).

    Decoded frames of different sizes in several threads leave freed but unreturned pages in
    glibc's per-thread arenas; trimming now and then keeps the resident size from creeping up.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def provider_health(requested, active, warnings):
    """Diagnostic level and note for the execution providers.

    A missing accelerator is expected on a machine without one when the list also names cpu
    (the shipped ``[tensorrt, cuda, cpu]`` means "the best one present"): that is OK and the
    missing ones are only listed. WARN when a name is unknown (a typo), or when the list names
    no cpu (the user asked for an accelerator only) and none of those accelerators is active.
    """
    names = [str(name).strip().lower() for name in requested]
    accelerators = [name for name in active if name != 'CPUExecutionProvider']
    unknown = [w for w in warnings if w.startswith('unknown')]
    if unknown:
        return Diagnostics.WARN, '; '.join(unknown)
    wants_cpu = any(name in ('cpu', 'cpuexecutionprovider') for name in names)
    if warnings and not wants_cpu and not accelerators:
        return Diagnostics.WARN, ('none of the requested providers is available, running on '
                                  'the CPU fallback: ' + '; '.join(warnings))
    return Diagnostics.OK, ''


class OffloadServer(Node):
    """Serve ``offload`` and ``probe``; publish ``server_load`` and diagnostics."""

    def __init__(self, **kwargs):
        super().__init__('offload_server', **kwargs)
        declare_parameters(self)
        self.settings = settings = ServerSettings.from_node(self)

        model_path = paths.resolve_model(settings.model)
        self.classifier = OnnxClassifier(str(model_path),
                                         preprocessing=settings.preprocessing(),
                                         providers=list(settings.providers),
                                         intra_op_threads=settings.intra_op_threads,
                                         labels_file=settings.labels_file)
        self.provider_level, self.provider_note = provider_health(
            settings.providers, self.classifier.active_providers,
            self.classifier.provider_warnings)
        log = (self.get_logger().warning if self.provider_level != Diagnostics.OK
               else self.get_logger().info)
        for warning in self.classifier.provider_warnings:
            log(warning)
        self.model_name = self.classifier.name
        self.input_size = self.classifier.input_size
        if settings.warmup:
            self.classifier.latency_ms(repeats=1)
        self.get_logger().info(
            f"model '{self.model_name}' ({model_path}), input "
            f"{describe(self.classifier.preprocessing)}, classes "
            f"{settings.labels_file or 'ImageNet-1k'}, providers "
            f"{', '.join(self.classifier.active_providers)} (requested "
            f"{', '.join(settings.providers)})")

        self.batcher = Batcher(self._infer_batch, settings.max_batch_size,
                               settings.batch_timeout_s, settings.max_queue_size,
                               name='offload_batcher',
                               max_queue_per_client=settings.max_queue_per_client)
        self.early_exit = self._load_early_exit(settings)
        self.features_batcher = Batcher(self._infer_features, settings.max_batch_size,
                                        settings.batch_timeout_s, settings.max_queue_size,
                                        name='features_batcher',
                                        max_queue_per_client=settings.max_queue_per_client)
        # Decoding runs in its own small pool, awaited like the batch: executor threads stay
        # free to take (and quickly refuse) requests while large frames decode.
        self._decoder = concurrent.futures.ThreadPoolExecutor(
            settings.max_concurrent_decodes, thread_name_prefix='decode')
        self._lock = threading.Lock()
        self._in_progress = collections.Counter()      # client -> requests admitted, not done
        self.served = 0
        self.rejected = 0
        self.busy = 0
        self.probes = 0
        self.probes_refused = 0
        self.last_error = ''
        self._done_times = collections.deque()         # trimmed to stats_window_s
        self._busy_times = collections.deque()

        group = ReentrantCallbackGroup()
        # KEEP_ALL (service_queue_depth 0): a request reader or response writer that keeps only
        # the last N drops the older ones of a burst without an answer (with KEEP_LAST 100, 132
        # of 2,000 flood requests were answered); KEEP_ALL applies DDS flow control instead.
        service_qos = copy.copy(qos_profile_services_default)
        if settings.service_queue_depth:
            service_qos.depth = settings.service_queue_depth
        else:
            service_qos.history = HistoryPolicy.KEEP_ALL
        self.offload_services, self.probe_services = [], []
        for prefix in _service_prefixes(settings.robot_namespaces):
            self.offload_services.append(self.create_service(
                Offload, prefix + 'offload', functools.partial(self.on_offload, prefix or '.'),
                qos_profile=service_qos, callback_group=group))
            self.offload_services.append(self.create_service(
                OffloadFeatures, prefix + 'offload_features',
                functools.partial(self.on_offload_features, prefix or '.'),
                qos_profile=service_qos, callback_group=group))
            self.probe_services.append(self.create_service(
                Probe, prefix + 'probe', self.on_probe, qos_profile=service_qos,
                callback_group=group))
        self.get_logger().info('serving ' + ', '.join(
            srv.srv_name for srv in self.offload_services + self.probe_services))
        self.hostname = socket.gethostname()
        self.load_pub = self.create_publisher(ServerLoad, 'server_load', 10)
        self.diagnostics = Diagnostics(self, hardware_id=self.hostname)
        # With use_sim_time (a replay on recorded time) deadlines are checked on /clock: the
        # watch says so itself (log, ERROR on /diagnostics from a steady timer) when it never
        # comes, since the load timer, on ROS time, then never fires.
        self.clock_watch = SimClockWatch(self, self.diagnostics)
        self.load_timer = self.create_timer(settings.load_period_s, self.on_load_timer)
        # Batch waits that must give up: {finish callback: monotonic expiry}, checked by one
        # timer (instead of a thread per request) that runs only while there are waits.
        self._waits = {}
        self._trim_heap, self._last_trim = _heap_trimmer(), time.monotonic()
        self.wait_timer = self.create_timer(0.05, self.on_wait_timer)
        self.wait_timer.cancel()
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self.add_post_set_parameters_callback(self.on_parameters_set)

    # ------------------------------------------------------------------ inference (worker)
    def _infer_batch(self, tensors):
        """Batcher worker: one onnxruntime run over the stacked tensors; softmax rows."""
        logits = self.classifier.infer(np.stack(tensors))
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return list(probs)

    def _load_early_exit(self, settings):
        """Load the early-exit model's tails (None when its parts are not built here)."""
        try:
            from cbo_ros.perception.early_exit import EarlyExitModel
            model = EarlyExitModel(providers=list(settings.providers),
                                   intra_op_threads=settings.intra_op_threads)
        except (FileNotFoundError, ValueError, KeyError) as error:
            self.get_logger().info(f'offload_features disabled: {error}')
            return None
        if settings.warmup:               # open every tail now, not on its first request
            for blocks in model.blocks:
                model.tail(blocks, np.zeros(model.tensor_shape(blocks), np.float32))
        self.get_logger().info(f'offload_features: early-exit tails for partitions '
                               f'{model.blocks} ({model.directory}), providers '
                               f'{", ".join(model.providers)}')
        return model

    def _infer_features(self, items):
        """Batcher worker: each partition's tail over its stacked tensors; softmax rows."""
        out = [None] * len(items)
        for blocks in sorted({b for b, _ in items}):
            index = [i for i, (b, _) in enumerate(items) if b == blocks]
            logits = self.early_exit.tail(blocks, np.stack([items[i][1] for i in index]))
            logits = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            for i, row in zip(index, probs):
                out[i] = row
        return out

    # ------------------------------------------------------------------ services
    async def on_offload(self, client, request, response):
        """Validate, decode, queue for batched inference and fill ``response``.

        ``client`` identifies the service the request arrived on (its robot namespace); with
        the request's ``client_id`` it is the unit of the per-client queue limit and of the
        batches' round robin.
        """
        response.model = self.model_name
        response.resolution = self.input_size
        return await self._handle(client, request, response, self._serve)

    async def on_offload_features(self, client, request, response):
        """Finish a partitioned inference: validate the tensor, run the tail, answer.

        Same admission, deadline, limits and response fields as ``on_offload``.
        """
        if self.early_exit is not None:
            response.model = 'early-exit lite0 tail'
            response.resolution = self.early_exit.input_size
        return await self._handle(client, request, response, self._serve_features)

    async def _handle(self, client, request, response, serve):
        """Admit, serve and count one request; every failure becomes a reason."""
        received = time.monotonic()
        queue_key = (client, str(request.client_id)[:MAX_CLIENT_ID_CHARS])
        admitted = False
        try:
            self._admit(queue_key)
            admitted = True
            await serve(queue_key, request, response, received)
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
        finally:
            if admitted:
                with self._lock:
                    self._in_progress[queue_key] -= 1
                    if self._in_progress[queue_key] <= 0:
                        del self._in_progress[queue_key]
        response.server_ms = 1e3 * (time.monotonic() - received)
        self._count(response)
        return response

    def _count(self, response):
        now = time.monotonic()
        with self._lock:
            if response.success:
                self.served += 1
                self._done_times.append(now)
            elif response.error.startswith('busy:'):
                self.busy += 1
                self._busy_times.append(now)
            else:
                self.rejected += 1
                self.last_error = response.error
            cutoff = now - self.settings.stats_window_s
            for times in (self._done_times, self._busy_times):
                while times and times[0] < cutoff:
                    times.popleft()
        if response.success:
            self.get_logger().info(
                f'served {self.served} requests (last: batch {response.batch_size}, '
                f'queue {response.queue_ms:.1f} ms, inference {response.inference_ms:.1f} ms, '
                f'server {response.server_ms:.1f} ms)', throttle_duration_sec=10.0)
        elif response.error.startswith('busy:'):
            self.get_logger().warning(f'refusing requests: {response.error} ({self.busy} busy '
                                      'refusals so far)', throttle_duration_sec=2.0)
        else:
            self.get_logger().warning(f'refused a request: {response.error}',
                                      throttle_duration_sec=2.0)

    def _retry_hint_ms(self, waiting):
        """How long ``waiting`` requests take to clear at the recent inference rate."""
        _, _, mean_batch, mean_infer_ms = self.batcher.stats(self.settings.stats_window_s)
        item_ms = mean_infer_ms / mean_batch if mean_batch > 0 else DEFAULT_ITEM_MS
        return max(10, int(math.ceil(waiting * item_ms / 10.0)) * 10)

    def _admit(self, client):
        """Count a request in, or refuse it at once with a ``busy:`` error and a retry hint."""
        settings = self.settings
        per_client = min(settings.max_queue_per_client, settings.max_queue_size)
        with self._lock:
            total = sum(self._in_progress.values())
            mine = self._in_progress[client]
            if total < settings.max_queue_size and mine < per_client:
                self._in_progress[client] += 1
                return
        if mine >= per_client:
            raise RequestError(
                f'busy: this client has {mine} requests in progress (max_queue_per_client '
                f'{per_client}); retry in {self._retry_hint_ms(mine)} ms')
        raise RequestError(
            f'busy: {total} requests in progress (max_queue_size {settings.max_queue_size}); '
            f'retry in {self._retry_hint_ms(total)} ms')

    def _check_deadline(self, request, received):
        """Return the monotonic expiry of the request (None: no deadline); RequestError."""
        problem = stamp_problem(request.deadline)
        if problem:
            raise RequestError(f'invalid deadline: {problem}')
        deadline_ns = stamp_to_ns(request.deadline)
        if not deadline_ns or not self.settings.enforce_deadlines:
            return None
        remaining_s = (deadline_ns - self.get_clock().now().nanoseconds) / 1e9
        if remaining_s <= 0.0:
            hint = ('; far beyond any transfer time: are the robot\'s and this machine\'s '
                    'clocks synchronised (chrony/PTP)? Otherwise set enforce_deadlines '
                    'false' if remaining_s < -CLOCK_SKEW_HINT_S else '')
            raise RequestError(f'deadline already passed {-1e3 * remaining_s:.1f} ms ago'
                               f'{hint}')
        return received + remaining_s

    def _decode(self, data, header):
        """Decode (in the decode pool) and preprocess; return the model tensor."""
        return self.classifier.preprocess([decode_checked(data, header)])[0]

    async def _serve(self, client, request, response, received):
        expires = self._check_deadline(request, received)
        data = request.image.data
        kind = check_payload(data, request.image.format, self.settings.max_payload_bytes)
        data = data if isinstance(data, (bytes, bytearray)) else bytes(data)

        header = read_image_header(data, kind)
        check_dimensions(header, self.settings.max_image_pixels)
        response.image_height, response.image_width = header.height, header.width

        start = time.monotonic()
        tensor = await self._in_decode_pool(expires, self._decode, data, header)
        response.decode_ms = 1e3 * (time.monotonic() - start)
        await self._finish(client, request, response, tensor, expires, self.batcher)

    async def _in_decode_pool(self, expires, function, *args):
        """Run ``function(*args)`` in the decode pool and await it (RequestError on failure).

        The decode (bounded by max_image_pixels / max_payload_bytes) is waited for up to the
        deadline, or DECODE_TIMEOUT_S without one; request_timeout_s bounds only inference.
        The one executor thread meanwhile takes, validates and answers other requests.
        """
        wait_s = (DECODE_TIMEOUT_S if expires is None
                  else max(0.0, expires - time.monotonic()) + 0.05)
        try:
            decoding = self._decoder.submit(function, *args)
        except RuntimeError:                                # the pool was shut down
            raise RequestError('server shutting down') from None
        try:
            return await self._result_of(decoding, wait_s)
        except concurrent.futures.TimeoutError:
            raise RequestError(f'not decoded within {1e3 * wait_s:.0f} ms') from None
        except concurrent.futures.CancelledError:
            raise RequestError('server shutting down') from None

    async def _finish(self, client, request, response, item, expires, batcher,
                      class_name=None):
        """Queue ``item`` for batched inference and fill the response's answer fields."""
        now = time.monotonic()
        if expires is not None:
            if now >= expires:
                raise RequestError('deadline passed while decoding')
            wait_s = expires - now + 0.05
        else:
            wait_s = self.settings.request_timeout_s
        try:
            future = batcher.submit(item, expires=expires, client=client)
        except QueueFullError as error:
            raise RequestError(f'busy: {error}; retry in '
                               f'{self._retry_hint_ms(batcher.depth)} ms') from None
        except BatcherClosedError:
            raise RequestError('server shutting down') from None
        try:
            result = await self._result_of(future, wait_s)
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
        top_k = min(int(request.top_k) or self.settings.default_top_k, probs.shape[0])
        best = np.argsort(probs)[::-1][:top_k]
        class_name = class_name or self.classifier.class_name
        response.top_k = [ClassHypothesis(class_id=str(int(i)),
                                          class_name=class_name(i) or str(int(i)),
                                          score=float(probs[i])) for i in best]
        response.class_id = response.top_k[0].class_id
        response.class_name = response.top_k[0].class_name
        response.score = response.top_k[0].score
        if request.return_scores:
            response.scores = probs.astype(np.float32).tolist()

    async def _serve_features(self, client, request, response, received):
        expires = self._check_deadline(request, received)
        shapes = {} if self.early_exit is None else {
            b: self.early_exit.tensor_shape(b) for b in self.early_exit.blocks}
        start = time.monotonic()
        tensor = await self._in_decode_pool(           # decompression and dequantisation
            expires, check_features, request.partition, request.shape, request.dtype,
            request.scale, request.zero_point, request.data, shapes,
            self.settings.max_payload_bytes)
        response.decode_ms = 1e3 * (time.monotonic() - start)
        # The tails finish the robot's Lite0: ImageNet-1k names, whatever the server model's.
        await self._finish(client, request, response, (int(request.partition), tensor[0]),
                           expires, self.features_batcher, class_name)

    async def _result_of(self, future, timeout_s):
        """Await a concurrent future (decode pool, batcher) without holding an executor thread.

        The coroutine yields its executor thread while the batch runs, so ``executor_threads``
        no longer bounds the requests in progress (measured with 4 threads and ~5 offloads in
        flight: round trip minus server_ms p50 133 ms with blocking waits, 6 ms without). The
        rclpy future is completed from the batching thread; giving it a done callback makes
        ``set_result`` schedule a task on the executor, which triggers the executor's guard
        condition, so the waiting coroutine is resumed at once (without it, a coroutine awaiting
        a future completed from another thread resumes only at the executor's next unrelated
        wake-up).

        ``finish`` holds the waiter weakly: the waiter's result is the future, whose done
        callback is ``finish``, and a strong reference closed a cycle that kept every request's
        tensor (0.8 MB) alive until Python's cyclic garbage collection (server RSS rose and fell
        by 150 MB in a soak).
        """
        waiter = self.executor.create_future()
        waiter.add_done_callback(lambda _: None)       # set_result then wakes the executor
        waiter_ref = weakref.ref(waiter)
        lock = threading.Lock()

        def finish(value):
            with lock:
                waiting = waiter_ref()
                if waiting is None or waiting.done():
                    return
                waiting.set_result(value)
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
            future.cancel()
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

    def on_probe(self, request, response):
        """Answer a link probe: the server time and the size of the received payload.

        A payload over ``max_probe_bytes`` is refused: ``received_bytes`` 0 and a zero
        ``server_stamp`` (the Probe response has no error field).
        """
        size = len(request.payload)
        if size > self.settings.max_probe_bytes:
            with self._lock:
                self.probes_refused += 1
                self.last_error = (f'probe payload of {size} bytes exceeds max_probe_bytes '
                                   f'({self.settings.max_probe_bytes})')
            self.get_logger().warning(f'refused a probe: {self.last_error}',
                                      throttle_duration_sec=2.0)
            return response
        response.server_stamp = self.get_clock().now().to_msg()
        response.received_bytes = size
        with self._lock:
            self.probes += 1
        return response

    # ------------------------------------------------------------------ load, diagnostics
    def load_snapshot(self):
        """Return a ServerLoad message for now."""
        now = time.monotonic()
        window = self.settings.stats_window_s
        _, _, mean_batch, mean_infer_ms = self.batcher.stats(window, now)
        with self._lock:
            recent = sum(1 for t in self._done_times if now - t <= window)
            served, rejected = self.served, self.rejected + self.busy
        msg = ServerLoad()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.model = self.model_name
        msg.queue_depth = self.batcher.depth
        msg.requests_per_s = recent / window
        msg.mean_batch_size = mean_batch
        msg.mean_inference_ms = mean_infer_ms
        msg.served = served
        msg.rejected = rejected
        return msg

    def health(self, load):
        """Diagnostic level and message from providers, queue, busy refusals and the worker."""
        active = self.classifier.active_providers
        level, notes = self.provider_level, []
        if self.provider_note:
            notes.append(self.provider_note)
        now = time.monotonic()
        with self._lock:
            busy_recent = sum(1 for t in self._busy_times
                              if now - t <= self.settings.stats_window_s)
            in_progress = sum(self._in_progress.values())
        if not self.batcher.alive:
            level = Diagnostics.ERROR
            notes.insert(0, 'batching thread stopped: no inference')
        if busy_recent:
            level = max(level, Diagnostics.WARN)
            notes.insert(0, f'{busy_recent} busy refusals in the last '
                            f'{self.settings.stats_window_s:.0f} s')
        elif in_progress >= 0.8 * self.settings.max_queue_size:
            level = max(level, Diagnostics.WARN)
            notes.insert(0, f'queue nearly full ({in_progress} in progress)')
        message = f'running on {active[0] if active else "?"}'
        return level, '; '.join(notes + [message]) if notes else message

    def on_load_timer(self):
        """Publish server_load and the diagnostics."""
        load = self.load_snapshot()
        self.load_pub.publish(load)
        level, message = self.health(load)
        settings = self.settings
        with self._lock:
            values = {
                'model': self.model_name,
                'input_size': self.input_size,
                'providers_requested': ', '.join(settings.providers),
                'providers_active': ', '.join(self.classifier.active_providers),
                'providers_missing': ' | '.join(self.classifier.provider_warnings) or 'none',
                'queue_depth': load.queue_depth,
                'in_progress': sum(self._in_progress.values()),
                'requests_per_s': f'{load.requests_per_s:.2f}',
                'mean_batch_size': f'{load.mean_batch_size:.2f}',
                'mean_inference_ms': f'{load.mean_inference_ms:.1f}',
                'served': self.served,
                'rejected': self.rejected,
                'busy_refusals': self.busy,
                'expired_in_queue': self.batcher.expired,
                'probes': self.probes,
                'probes_refused': self.probes_refused,
                'max_batch_size': settings.max_batch_size,
                'batch_timeout_ms': f'{1e3 * settings.batch_timeout_s:.1f}',
                'limits_remotely_settable': settings.allow_remote_limit_changes,
                'last_error': self.last_error or 'none',
            }
        self.diagnostics.publish(level, message, values, stamp=load.header.stamp)
        if self._trim_heap is not None and time.monotonic() - self._last_trim >= TRIM_PERIOD_S:
            self._last_trim = time.monotonic()
            self._trim_heap(0)

    # ------------------------------------------------------------------ parameters
    def on_set_parameters(self, params):
        """Validate run-time changes (ranges and read-only are checked by rclpy)."""
        reason = self.settings.validate_changes(params)
        return SetParametersResult(successful=not reason, reason=reason)

    def on_parameters_set(self, params):
        """Apply validated run-time changes: a new settings object, then the batcher."""
        old, self.settings = self.settings, self.settings.with_changes(params)
        new = self.settings
        for batcher in (self.batcher, self.features_batcher):
            batcher.configure(max_batch_size=new.max_batch_size,
                              batch_timeout_s=new.batch_timeout_s)
            batcher.max_queue_size = new.max_queue_size
            batcher.max_queue_per_client = new.max_queue_per_client
        changed = changed_fields(old, new)
        if changed:
            self.get_logger().info('parameters changed: ' + ', '.join(
                f'{name} {getattr(old, name)} -> {getattr(new, name)}' for name in changed))

    def destroy_node(self):
        """Stop the decode pool and the batching thread (waiting requests are refused)."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()
        self.features_batcher.close()
        return super().destroy_node()


def main(args=None):
    """Run the offload server until SIGINT/SIGTERM."""
    try:
        with rclpy.init(args=args):
            node = OffloadServer()
            threads = node.settings.executor_threads
            executor = (SingleThreadedExecutor() if threads == 1
                        else MultiThreadedExecutor(num_threads=threads))
            executor.add_node(node)
            try:
                executor.spin()
            finally:
                # Stop the executor (its threads finish their callbacks) before the node.
                shutdown_executor(executor, timeout_sec=1.0, threads=threads)
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


if __name__ == '__main__':
    main()
