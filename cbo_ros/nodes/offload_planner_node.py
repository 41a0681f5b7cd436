"""offload_planner_node: decide per frame whether to offload, and publish one final answer.

Inputs: ``image_raw`` (frames), ``local_result`` (robot answers, joined to frames by
``header.stamp``) and ``network_quality`` (link estimate of network_monitor_node). For each frame
the shared planner (``cbo_ros.core.planner.make_planner``) chooses between the local answer and an
offload at one of the calibrated resolutions; the payload sizes it weighs are the real JPEG sizes
of the frame's centre square at each resolution.

Outputs, for every frame exactly once: ``result`` (FrameClassification, ``is_final`` true) by the
frame's deadline (``deadline_ms`` after its stamp): the server's answer when it came back in time,
else the local answer (``note`` says why), or an empty class when no local answer arrived either;
``offload_decision`` (OffloadDecision). For every offload call: ``offload_transfers``
(TransferSample), which the network monitor learns bandwidth from. Diagnostics on
``/diagnostics``.

Nothing blocks the executor: the server is called with ``call_async`` and a timer, re-armed for the
nearest due frame, answers frames whose deadline is near. Timing, QoS and the server-time model:
docs/live_system.md. ``frame_seq`` is a counter of this node (order of first sight).
"""

import collections
import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Time
from cbo_interfaces.msg import (FrameClassification, NetworkQuality, OffloadDecision,
                                TransferSample)
from cbo_interfaces.srv import Offload
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_services_default
from sensor_msgs.msg import CompressedImage

from cbo_ros.perception.image_ops import center_square, encode_jpeg
from cbo_ros.perception.media import image_msg_to_rgb
from cbo_ros.nodes.ros_common import (declare, Diagnostics, FrameSubscription, load_bundle,
                                      LOCAL_RESULT_QOS, ns_to_stamp, RateMeter, RESULT_QOS,
                                      spin_node, stamp_to_ns)
from cbo_ros.core.planner import Decision, FrameCandidate, LinkState, OffloadOption, make_planner

NS = 1_000_000_000


@dataclass
class FrameState:
    """Bookkeeping of one frame until its final answer is published."""

    key: int                       # header.stamp in ns (the join key)
    seq: int
    header: object
    deadline_ns: int
    rgb: object = None             # RGB frame (dropped once the decision is made)
    image_error: str = ''
    local: object = None           # FrameClassification from npu_classifier_node
    decided: bool = False
    decision: object = None        # OffloadDecision published for this frame
    offloaded: bool = False
    confidence: float = None       # local confidence the planner used (cbo_adaptive: adapted)
    latency: dict = field(default_factory=dict)


@dataclass
class PendingCall:
    """An offload call whose TransferSample is not yet published."""

    future: object
    key: int
    seq: int
    send_ns: int
    deadline_ns: int
    payload_bytes: int
    resolution: int
    transfer_s: float = 0.0        # planned transfer time (payload / bandwidth)
    rtt_s: float = 0.0             # link RTT the plan used
    measure_only: bool = False     # a server-time probe: the frame kept its local answer


class OffloadPlannerNode(Node):
    """Confidence-based offloading of frames to the offload server."""

    def __init__(self, **kwargs):
        super().__init__('offload_planner_node', **kwargs)
        self.strategy = declare(self, 'strategy', 'cbo',
                                'Planner strategy: cbo, cbo_adaptive, cbo_uncalibrated, '
                                'local_only, server_only_<r>, raw_threshold, '
                                'calibrated_threshold or bandwidth_driven (oracle and '
                                'cbo_exact need hindsight: evaluator only).',
                                read_only=True)
        calibration_file = declare(self, 'calibration_file', '',
                                   'Calibration bundle (empty: the default path).')
        resolutions = declare(self, 'offload_resolutions', [0],
                              'Offload resolutions in pixels ([0]: those of the calibration).')
        self.deadline_ns = int(declare(
            self, 'deadline_ms', 300.0, 'Answer deadline of a frame, ms after its stamp '
            '(run-time settable: applies to frames that arrive afterwards).',
            minimum=10.0, maximum=60000.0, read_only=False) * 1e6)
        self.margin_ns = int(declare(
            self, 'deadline_margin_ms', 25.0,
            'Publish the fallback answer this long before the deadline (run-time settable).',
            minimum=0.0, maximum=1000.0, read_only=False) * 1e6)
        check_ms = declare(self, 'deadline_check_ms', 50.0,
                           'Longest period of the deadline timer: it is re-armed for the '
                           'nearest due frame, and wakes at least this often.', minimum=1.0,
                           maximum=1000.0)
        self.jpeg_quality = declare(self, 'jpeg_quality', 90,
                                    'JPEG quality of offloads (run-time settable).',
                                    minimum=1, maximum=100, read_only=False)
        self.top_k = declare(self, 'top_k', 5, 'Classes the server returns (run-time settable).',
                             minimum=1, maximum=255, read_only=False)
        service = declare(self, 'offload_service', 'offload', 'Offload service name.')
        self.initial_bandwidth_bps = declare(
            self, 'initial_bandwidth_bps', 10e6,
            'Bandwidth assumed until network_quality arrives (bit/s).', minimum=0.0,
            maximum=1e12)
        self.initial_rtt_s = declare(self, 'initial_rtt_ms', 5.0,
                                     'RTT assumed until network_quality arrives.',
                                     minimum=0.0, maximum=60000.0) / 1e3
        declare(self, 'bandwidth_cap_bps', 0.0,
                'Upper bound on the bandwidth the planner may use (bit/s; 0: no cap). Can be '
                'changed at run time.', minimum=0.0, maximum=1e12, read_only=False)
        self.quality_timeout_ns = int(declare(
            self, 'network_quality_timeout_s', 5.0,
            'A network_quality message older than this is ignored.', minimum=0.1,
            maximum=3600.0) * NS)
        self.max_timeouts = declare(self, 'max_consecutive_timeouts', 3,
                                    'Offloads in a row without an answer before the server is '
                                    'treated as unreachable.', minimum=1, maximum=1000)
        self.backoff_ns = int(declare(
            self, 'server_backoff_s', 2.0,
            'How long an unresponsive server is not offloaded to.', minimum=0.0,
            maximum=3600.0) * NS)
        self.late_grace_ns = int(declare(
            self, 'late_response_grace_s', 3.0,
            'Wait this long after a deadline for a late response before giving the call up.',
            minimum=0.0, maximum=600.0) * NS)
        self.adapt_server_time = declare(
            self, 'adapt_server_time', True,
            'Plan with the measured server time instead of the calibration profile: profile + '
            'a percentile of (round trip - planned transfer - RTT - server queue_ms - profile) '
            'over recent calls; '
            'the profile again when no call was measured for server_time_window_s.')
        self.explore_period_ns = int(declare(
            self, 'server_time_probe_s', 3.0,
            'With adapt_server_time and no offload for this long, offload one '
            'frame at the smallest resolution at most this often to measure the server (the '
            'frame keeps its local answer; 0: never).', minimum=0.0, maximum=3600.0) * NS)
        self.server_time_percentile = declare(
            self, 'server_time_percentile', 75.0,
            'Percentile of the measured server times the planner plans with.', minimum=0.0,
            maximum=100.0)
        self.server_window_ns = int(declare(
            self, 'server_time_window_s', 5.0,
            'Measured server times older than this are forgotten.', minimum=0.5,
            maximum=3600.0) * NS)
        self.size_refresh_frames = declare(
            self, 'size_refresh_frames', 5,
            'Measure the JPEG size of every offload resolution on every this many frames (1: '
            'every frame), in a background thread; the planner plans with the latest sizes and '
            'encodes only the chosen resolution.', minimum=1, maximum=1000)
        self.max_pending = declare(self, 'max_pending_frames', 200,
                                   'Frames tracked at once; the oldest are answered early '
                                   'beyond this.', minimum=1, maximum=100000)
        reliability = declare(self, 'reliability', 'auto',
                              "QoS reliability of the image_raw subscription: 'auto' (reliable, "
                              "best effort once a best-effort camera is seen), 'reliable' or "
                              "'best_effort'.")
        depth = declare(self, 'depth', 30, 'QoS history depth of image_raw.', minimum=1,
                        maximum=1000)
        diag_period = declare(self, 'diagnostics_period_s', 1.0,
                              'Period of the /diagnostics status.', minimum=0.1, maximum=60.0)

        resolutions = [int(r) for r in resolutions if int(r) > 0]
        self.bundle, self.calibrated, self.calibration_message = load_bundle(
            self.get_logger(), calibration_file, resolutions)
        self.resolutions = resolutions or list(self.bundle.offload_resolutions)
        self.planner = make_planner(self.strategy, self.bundle)

        self.lock = threading.RLock()
        self.frames = collections.OrderedDict()          # key -> FrameState
        self.answered = collections.OrderedDict()        # recently answered keys
        self.pending = {}                                # key -> PendingCall
        self.seq = 0
        # Frames due before this planner started were a previous instance's (local_result is
        # transient-local): answering them again would duplicate their final results.
        self.started_ns = self.now_ns()
        self.busy_until_s = 0.0
        self.quality = None
        self.quality_ns = 0
        self.consecutive_timeouts = 0
        self.backoff_until_ns = 0
        self.stats = collections.Counter()
        self.round_trips_ms = collections.deque(maxlen=50)
        self.local_rate = RateMeter()
        self.offload_rate = RateMeter()
        self.decision_window = collections.deque(maxlen=100)
        self.server_excess = collections.deque(maxlen=30)   # (when ns, measured - profiled s)
        self.last_explore_ns = 0
        self.server_free_s = 0.0               # when the server ends this planner's offloads
        self.server_occupancy_s = 0.0          # learnt from the first response
        self.last_offload_ns = 0
        self.occupancy_measured = False
        self.payload_sizes = {}                  # resolution -> bytes of its latest JPEG
        self.frames_since_sizes = 0
        # Measuring the sizes (an encoding per resolution, 5-28 ms on a loaded CPU) must not
        # hold up the executor: the deadline timer would answer frames late.
        self.size_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='jpeg_sizes')
        self.size_job = None

        self.add_post_set_parameters_callback(self.on_parameters_set)
        group = MutuallyExclusiveCallbackGroup()
        # Responses of one server batch arrive together: the services default depth (10)
        # drops bursts, like the server's request queue (service_queue_depth).
        client_qos = copy.copy(qos_profile_services_default)
        client_qos.depth = declare(self, 'service_queue_depth', 100,
                                   'History depth of the Offload client (responses).',
                                   minimum=1, maximum=10000, read_only=True)
        self.client = self.create_client(Offload, service, qos_profile=client_qos,
                                         callback_group=ReentrantCallbackGroup())
        self.frames_in = FrameSubscription(self, self.on_image, reliability, depth, group)
        self.local_sub = self.create_subscription(FrameClassification, 'local_result',
                                                  self.on_local, LOCAL_RESULT_QOS,
                                                  callback_group=group)
        self.quality_sub = self.create_subscription(NetworkQuality, 'network_quality',
                                                    self.on_quality, 10, callback_group=group)
        self.result_pub = self.create_publisher(FrameClassification, 'result', RESULT_QOS)
        self.decision_pub = self.create_publisher(OffloadDecision, 'offload_decision', RESULT_QOS)
        self.transfer_pub = self.create_publisher(TransferSample, 'offload_transfers', RESULT_QOS)
        self.diagnostics = Diagnostics(self)
        # One timer, re-armed for the nearest due frame (not a fixed 5 ms poll: 200 wake-ups/s
        # cost ~16 % of a core per idle planner process on the 2-core machine).
        self.max_check_ns = int(check_ms * 1e6)
        self.timer_due_ns = None
        self.deadline_timer = self.create_timer(check_ms / 1e3, self.on_deadline_timer,
                                                callback_group=group)
        self.diag_timer = self.create_timer(diag_period, self.on_diagnostics,
                                            callback_group=group)
        self.get_logger().info(
            f"strategy '{self.strategy}', deadline {self.deadline_ns / 1e6:.0f} ms, resolutions "
            f'{self.resolutions}, server {self.client.srv_name}; {self.calibration_message}')

    # ------------------------------------------------------------------ inputs
    def on_parameters_set(self, parameters):
        """Apply the run-time settable parameters (their ranges were checked by rclpy)."""
        with self.lock:
            for parameter in parameters:
                if parameter.name == 'deadline_ms':
                    self.deadline_ns = int(parameter.value * 1e6)
                elif parameter.name == 'deadline_margin_ms':
                    self.margin_ns = int(parameter.value * 1e6)
                elif parameter.name == 'jpeg_quality':
                    self.jpeg_quality = int(parameter.value)
                    self.payload_sizes.clear()      # sizes at the old quality no longer hold
                elif parameter.name == 'top_k':
                    self.top_k = int(parameter.value)
                else:
                    continue
                self.get_logger().info(f'{parameter.name} set to {parameter.value}')

    def now_ns(self):
        return self.get_clock().now().nanoseconds

    def frame_for(self, header):
        """Return the FrameState of a header's stamp (made on first sight); None once answered."""
        key = stamp_to_ns(header.stamp)
        if key in self.answered:
            return None
        if key + self.deadline_ns < self.started_ns:
            self.stats['due_before_start'] += 1
            return None
        state = self.frames.get(key)
        if state is None:
            state = FrameState(key=key, seq=self.seq, header=header,
                               deadline_ns=key + self.deadline_ns)
            self.seq += 1
            self.frames[key] = state
            due_ns = state.deadline_ns - self.margin_ns
            if self.timer_due_ns is None or due_ns < self.timer_due_ns:
                self.arm_deadline_timer(self.now_ns())
            while len(self.frames) > self.max_pending:
                oldest = next(iter(self.frames.values()))
                self.finalize(oldest, 'too many frames in flight')
        return state

    def on_image(self, msg):
        with self.lock:
            state = self.frame_for(msg.header)
            if state is None or state.rgb is not None:
                return
            try:
                state.rgb = image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                             msg.data, bool(msg.is_bigendian))
            except ValueError as error:
                state.image_error = str(error)
            if state.local is not None:
                self.decide(state)

    def on_local(self, msg):
        with self.lock:
            self.local_rate.tick(time.monotonic())
            state = self.frame_for(msg.header)
            if state is None or state.local is not None:
                return
            state.local = msg
            if state.rgb is not None or state.image_error or not msg.class_id:
                self.decide(state)

    def on_quality(self, msg):
        with self.lock:
            self.quality = msg
            self.quality_ns = self.now_ns()

    # ------------------------------------------------------------------ decisions
    def link_state(self, now_ns):
        """Return the planner's view of the link: estimate, cap, reachability, queued transfers."""
        quality = self.quality
        fresh = quality is not None and now_ns - self.quality_ns < self.quality_timeout_ns
        if fresh and quality.bandwidth_bps > 0:
            bandwidth, rtt = quality.bandwidth_bps, quality.rtt_ms / 1e3
            loss, source = quality.loss_rate, quality.source or 'network_quality'
        else:
            bandwidth, rtt, loss, source = (self.initial_bandwidth_bps, self.initial_rtt_s, 0.0,
                                            'initial')
        cap = self.get_parameter('bandwidth_cap_bps').value
        if cap > 0 and (bandwidth <= 0 or cap < bandwidth):
            bandwidth, source = cap, f'{source}, capped'
        reachable, why = True, ''
        if not self.client.service_is_ready():
            reachable, why = False, 'server unavailable'
        elif now_ns < self.backoff_until_ns:
            reachable, why = False, 'server unresponsive (backing off)'
        elif fresh and not quality.server_reachable:
            reachable, why = False, 'server unreachable (network monitor)'
        link = LinkState(bandwidth_bps=float(bandwidth), rtt_s=float(rtt),
                         loss_rate=float(loss), reachable=reachable,
                         busy_until_s=self.busy_until_s)
        return link, why, source

    def decide(self, state):
        """Run the planner on a frame whose local answer (and image) are known."""
        if state.decided:
            return
        state.decided = True
        start = time.perf_counter()
        now_ns = self.now_ns()
        local = state.local
        link, unreachable_why, source = self.link_state(now_ns)
        decision_msg = OffloadDecision(header=state.header, frame_seq=state.seq,
                                       local_confidence=float(local.calibrated_confidence),
                                       deadline_ms=self.deadline_ns / 1e6,
                                       bandwidth_bps=link.bandwidth_bps, strategy=self.strategy)
        state.decision = decision_msg
        # A frame the overloaded classifier skipped has no local answer but may still be
        # offloaded in time (confidence 0: anything the server gets right is a gain).
        skipped = not local.class_id and local.note.startswith('skipped:')
        if (not local.class_id and not skipped) or state.image_error or state.rgb is None:
            why = local.note or f'invalid frame: {state.image_error}'
            decision_msg.reason = f'not offloadable ({why})'
            self.publish_decision(decision_msg)
            self.finalize(state, 'invalid frame')
            return
        if not link.reachable or self.strategy == 'local_only':
            decision_msg.reason = unreachable_why or 'local_only strategy'
            self.publish_decision(decision_msg)
            state.latency['planning_ms'] = (time.perf_counter() - start) * 1e3
            self.finalize(state, decision_msg.reason)
            return

        encode_start = time.perf_counter()
        payloads = self.encode_payloads(state.rgb)
        encode_ms = (time.perf_counter() - encode_start) * 1e3
        confidence = float(local.calibrated_confidence)
        options = [OffloadOption(resolution=r, payload_bytes=self.payload_size(r, payloads),
                                 server_accuracy=float(self.bundle.server_accuracy(r, confidence)),
                                 server_time_s=self.server_time_s(r) + self.server_wait_s(
                                     now_ns, self.payload_size(r, payloads), link))
                   for r in self.resolutions]
        candidate = FrameCandidate(seq=state.seq, arrival_s=now_ns / NS,
                                   deadline_s=(state.deadline_ns - self.margin_ns) / NS,
                                   confidence=confidence,
                                   options=options)
        candidate.raw_confidence = float(local.raw_confidence)
        candidate.local_class = int(local.class_id) if local.class_id else None
        decision = self.planner.decide(candidate, link, now_ns / NS)
        if decision.confidence is not None:
            state.confidence = float(decision.confidence)
            decision_msg.local_confidence = state.confidence
        measure_only = False
        if not decision.offload:
            probe = self.explore_server_time(candidate, link, now_ns)
            if probe is not None:
                decision, measure_only = probe, True
        if decision.offload and int(decision.resolution) not in payloads:
            encode_start = time.perf_counter()
            payloads[int(decision.resolution)] = self.encode(state.rgb, int(decision.resolution))
            encode_ms += (time.perf_counter() - encode_start) * 1e3
        state.rgb = None
        state.latency['planning_ms'] = (time.perf_counter() - start) * 1e3 - encode_ms
        state.latency['encode_ms'] = encode_ms
        decision_msg.offload = bool(decision.offload)
        decision_msg.expected_gain = float(decision.expected_gain)
        decision_msg.reason = decision.reason or ('offload' if decision.offload else 'local')
        decision_msg.bandwidth_bps = link.bandwidth_bps
        if not decision.offload:
            decision_msg.expected_accuracy_offload = float(decision.expected_accuracy)
            self.publish_decision(decision_msg)
            self.finalize(state, f'local answer: {decision_msg.reason}')
            return
        resolution = int(decision.resolution)
        payload = payloads[resolution]
        decision_msg.resolution = resolution
        decision_msg.payload_bytes = len(payload)
        decision_msg.expected_accuracy_offload = float(decision.expected_accuracy)
        decision_msg.expected_finish_ms = (decision.expected_finish_s * NS - state.key) / 1e6
        self.publish_decision(decision_msg)
        self.busy_until_s = max(self.busy_until_s, float(decision.link_free_after_s))
        # The server is a FIFO resource too: this request occupies it after it arrived there.
        arrives_s = float(decision.link_free_after_s) + link.rtt_s / 2.0
        self.server_free_s = max(self.server_free_s, arrives_s) + self.server_occupancy_s

        request = Offload.Request(header=state.header, frame_seq=state.seq, top_k=self.top_k,
                                  return_scores=False)
        request.image = CompressedImage(header=state.header, format='jpeg', data=payload)
        request.deadline = ns_to_stamp(state.deadline_ns, Time)
        send_ns = self.now_ns()
        future = self.client.call_async(request)
        state.offloaded = True
        call = PendingCall(future=future, key=state.key, seq=state.seq, send_ns=send_ns,
                           deadline_ns=state.deadline_ns, payload_bytes=len(payload),
                           resolution=resolution,
                           transfer_s=len(payload) * 8.0 / max(link.bandwidth_bps, 1.0),
                           rtt_s=link.rtt_s, measure_only=measure_only)
        self.pending[state.key] = call
        future.add_done_callback(lambda done, call=call: self.on_response(call, done))
        self.stats['offloads'] += 1
        self.last_offload_ns = send_ns
        self.offload_rate.tick(time.monotonic())
        if measure_only:
            # The strategy chose the local answer: it stands, now; the answer only measures.
            self.finalize(state, f'local answer ({decision.reason})')

    def encode(self, rgb, resolution):
        payload = encode_jpeg(center_square(rgb, resolution), self.jpeg_quality)
        self.payload_sizes[resolution] = len(payload)
        return payload

    def encode_payloads(self, rgb):
        """Return the payloads encoded now: every resolution while a size is unknown, else none.

        Consecutive video frames compress alike: the planner weighs the sizes of the latest
        measurement and encodes only the resolution it chose. Every ``size_refresh_frames``
        frames the sizes are measured again on the current frame in a background thread (5
        encodings cost 5-28 ms of a loaded 2-core CPU at 25 fps).
        """
        if any(r not in self.payload_sizes for r in self.resolutions):
            self.frames_since_sizes = 0
            return {r: self.encode(rgb, r) for r in self.resolutions}
        self.frames_since_sizes += 1
        if self.frames_since_sizes >= self.size_refresh_frames and (
                self.size_job is None or self.size_job.done()):
            if self.size_job is not None and self.size_job.exception() is not None:
                self.get_logger().warning(f'JPEG size measurement failed: '
                                          f'{self.size_job.exception()}',
                                          throttle_duration_sec=10.0)
            self.frames_since_sizes = 0
            self.size_job = self.size_worker.submit(self.measure_sizes, rgb, self.jpeg_quality)
        return {}

    def measure_sizes(self, rgb, quality):
        """Background thread: record the JPEG size of ``rgb`` at every offload resolution."""
        sizes = {r: len(encode_jpeg(center_square(rgb, r), quality)) for r in self.resolutions}
        with self.lock:
            if quality == self.jpeg_quality:        # not measured at a quality since replaced
                self.payload_sizes.update(sizes)

    def payload_size(self, resolution, payloads):
        return len(payloads[resolution]) if resolution in payloads else \
            self.payload_sizes[resolution]

    def server_time_s(self, resolution):
        """Server time to plan with at ``resolution`` (seconds).

        The calibration profile measures the model alone on an idle machine; what a call really
        costs beyond its transfer and the link RTT (request queueing, executor wake-ups on both
        sides, decode, batching, inference on a busy CPU, the response) is measured per call.
        Plan with profile + the ``server_time_percentile`` of (measured - profile) over the
        calls of the last ``server_time_window_s`` (the profile alone when there are none, so an
        overloaded server is tried again later).
        """
        profiled = float(self.bundle.server_time_s(resolution))
        if not self.adapt_server_time:
            return profiled
        now_ns = self.now_ns()
        while self.server_excess and now_ns - self.server_excess[0][0] > self.server_window_ns:
            self.server_excess.popleft()
        if not self.server_excess:
            return profiled
        excess = float(np.percentile([e for _, e in self.server_excess],
                                     self.server_time_percentile))
        return max(1e-3, profiled + excess)

    def explore_server_time(self, candidate, link, now_ns):
        """Return an offload of the smallest option that only measures the server, or None.

        When nothing was offloaded for ``server_time_probe_s``, the planner's server time (the
        calibration profile, or a few slow measurements) may be too pessimistic: it would never
        offload and never learn better. The frame keeps its local answer (the strategy chose
        it; the server's answer only measures), so this costs link time only.
        """
        if (not self.adapt_server_time or not self.explore_period_ns
                or now_ns - max(self.last_explore_ns, self.last_offload_ns)
                < self.explore_period_ns):
            return None
        option = min(candidate.options, key=lambda o: o.payload_bytes)
        start = max(now_ns / NS, link.busy_until_s)
        free = start + option.payload_bytes * 8.0 / max(link.bandwidth_bps, 1.0)
        if free + link.rtt_s >= candidate.deadline_s:
            return None
        self.last_explore_ns = now_ns
        return Decision(seq=candidate.seq, offload=True, resolution=option.resolution,
                        payload_bytes=option.payload_bytes,
                        expected_accuracy=candidate.confidence, expected_gain=0.0,
                        expected_finish_s=free + link.rtt_s + option.server_time_s,
                        link_free_after_s=free,
                        reason='measure server time (no recent measurement)')

    def server_wait_s(self, now_ns, payload_bytes, link):
        """Return the expected wait in the server queue behind this planner's offloads."""
        start = max(now_ns / NS, link.busy_until_s)
        arrives = start + payload_bytes * 8.0 / max(link.bandwidth_bps, 1.0) + link.rtt_s / 2.0
        return max(0.0, self.server_free_s - arrives)

    def observe_server_time(self, call, round_trip_s, queue_s=0.0):
        """Record what a call cost beyond its planned transfer, the RTT and its queueing."""
        measured = round_trip_s - call.transfer_s - call.rtt_s - queue_s
        profiled = float(self.bundle.server_time_s(call.resolution))
        self.server_excess.append((self.now_ns(), measured - profiled))

    def publish_decision(self, msg):
        self.decision_pub.publish(msg)
        self.decision_window.append((msg.offload, msg.resolution))
        self.get_logger().info(
            f'frame {msg.frame_seq}: conf {msg.local_confidence:.2f} -> '
            f'{"offload @%dpx" % msg.resolution if msg.offload else "local"} ({msg.reason}, '
            f'bw {msg.bandwidth_bps / 1e6:.1f} Mbit/s)', throttle_duration_sec=2.0)

    def on_response(self, call, future):
        with self.lock:
            if self.pending.pop(call.key, None) is None:
                return                     # already given up and reported
            now_ns = self.now_ns()
            round_trip_ms = (now_ns - call.send_ns) / 1e6
            try:
                response = future.result()
            except Exception as error:  # noqa: BLE001 - a failed call is reported, not raised
                response, error_text = None, str(error)
            else:
                error_text = '' if response is not None else 'no response'
            self.publish_transfer(call, success=response is not None,
                                  round_trip_ms=round_trip_ms if response is not None else 0.0,
                                  server_ms=response.server_ms if response is not None else 0.0,
                                  timed_out=now_ns > call.deadline_ns)
            if response is not None:
                self.consecutive_timeouts = 0
                self.round_trips_ms.append(round_trip_ms)
                if response.success:
                    self.observe_server_time(call, round_trip_ms / 1e3, response.queue_ms / 1e3)
                    # The server's time per request, batching included.
                    occupancy = (response.inference_ms / max(response.batch_size, 1)
                                 + response.decode_ms) / 1e3
                    self.server_occupancy_s = occupancy if not self.occupancy_measured else \
                        self.server_occupancy_s + 0.3 * (occupancy - self.server_occupancy_s)
                    self.occupancy_measured = True
                    # Late answers teach the planner too (server profile, online calibration).
                    self.planner.observe_server_answer(
                        call.seq, call.resolution, float(response.score), now_ns / NS,
                        server_class=int(response.class_id) if response.class_id else None)
            state = self.frames.get(call.key)
            if state is None:
                if not call.measure_only:
                    self.stats['late_server_answers'] += 1
                return
            state.latency['round_trip_ms'] = round_trip_ms
            if response is None or not response.success:
                self.stats['server_errors'] += 1
                reason = error_text or response.error or 'unknown error'
                self.get_logger().warning(f'frame {call.seq}: server error: {reason}',
                                          throttle_duration_sec=2.0)
                self.finalize(state, f'server error ({reason}): local answer')
                return
            state.latency['server_ms'] = response.server_ms
            self.finalize(state, 'server answer', response=response)

    def publish_transfer(self, call, success, round_trip_ms, server_ms, timed_out):
        sample = TransferSample(frame_seq=call.seq, payload_bytes=call.payload_bytes,
                                round_trip_ms=float(round_trip_ms), server_ms=float(server_ms),
                                success=bool(success), timed_out=bool(timed_out))
        sample.header.stamp = ns_to_stamp(call.send_ns, Time)
        self.transfer_pub.publish(sample)

    # ------------------------------------------------------------------ answers
    def finalize(self, state, note, response=None):
        """Publish the frame's only final result and forget the frame."""
        now_ns = self.now_ns()
        local = state.local
        result = FrameClassification(header=state.header, frame_seq=state.seq, is_final=True)
        if local is not None:
            result.calibrated_confidence = (local.calibrated_confidence if state.confidence is None
                                            else state.confidence)
            result.raw_confidence = local.raw_confidence
            result.latency.capture_to_local_ms = local.latency.capture_to_local_ms
            result.latency.local_inference_ms = local.latency.local_inference_ms
        if response is not None:
            result.class_id, result.class_name = response.class_id, response.class_name
            result.score, result.top_k = response.score, response.top_k
            result.source = FrameClassification.SOURCE_SERVER
            result.model, result.resolution = response.model, response.resolution
            result.note = (f'server answer (offloaded at '
                           f'{state.decision.resolution if state.decision else 0} px)')
        elif local is not None and local.class_id:
            result.class_id, result.class_name = local.class_id, local.class_name
            result.score, result.top_k = local.score, local.top_k
            if state.confidence is not None:       # the robot answer's own calibrated score
                result.score = state.confidence
            result.source = FrameClassification.SOURCE_ROBOT
            result.model, result.resolution = local.model, local.resolution
            result.note = note
        else:
            result.source = FrameClassification.SOURCE_ROBOT
            result.note = (local.note if local is not None and local.note
                           else f'no local result: {note}')
            self.stats['empty_answers'] += 1
        for name, value in state.latency.items():
            setattr(result.latency, name, float(value))
        result.latency.total_ms = (now_ns - state.key) / 1e6
        result.deadline = ns_to_stamp(state.deadline_ns, Time)
        result.deadline_met = now_ns <= state.deadline_ns
        self.result_pub.publish(result)
        self.stats['answered'] += 1
        self.stats['server_answers' if response is not None else 'local_answers'] += 1
        if not result.deadline_met:
            self.stats['deadline_misses'] += 1
        if state.decision is None:
            # Answered without a planner decision (no local result in time): still say so.
            self.publish_decision(OffloadDecision(
                header=state.header, frame_seq=state.seq, deadline_ms=self.deadline_ns / 1e6,
                strategy=self.strategy, reason=note))
        self.frames.pop(state.key, None)
        self.answered[state.key] = True
        while len(self.answered) > 2 * self.max_pending + 100:
            self.answered.popitem(last=False)

    def arm_deadline_timer(self, now_ns):
        """Re-arm the deadline timer for the nearest due frame or give-up time of a call."""
        due = [s.deadline_ns - self.margin_ns for s in self.frames.values()]
        due += [c.deadline_ns + self.late_grace_ns for c in self.pending.values()]
        next_ns = min(due) if due else now_ns + self.max_check_ns
        delay_ns = min(max(next_ns - now_ns, 1_000_000), self.max_check_ns)
        self.deadline_timer.timer_period_ns = delay_ns
        self.deadline_timer.reset()
        self.timer_due_ns = now_ns + delay_ns

    def on_deadline_timer(self):
        with self.lock:
            now_ns = self.now_ns()
            due = [s for s in self.frames.values() if now_ns >= s.deadline_ns - self.margin_ns]
            for state in due:
                if state.offloaded:
                    self.stats['server_late'] += 1
                    self.finalize(state, 'server late: local answer')
                elif state.local is None:
                    self.finalize(state, 'local result missing at deadline')
                else:
                    self.finalize(state, 'deadline: local answer')
            for call in [c for c in self.pending.values()
                         if now_ns > c.deadline_ns + self.late_grace_ns]:
                self.pending.pop(call.key, None)
                self.client.remove_pending_request(call.future)
                self.publish_transfer(call, success=False, round_trip_ms=0.0, server_ms=0.0,
                                      timed_out=True)
                self.stats['timeouts'] += 1
                self.consecutive_timeouts += 1
                if self.consecutive_timeouts >= self.max_timeouts:
                    self.backoff_until_ns = now_ns + self.backoff_ns
                    self.consecutive_timeouts = 0
                    self.get_logger().warning(
                        f'server did not answer {self.max_timeouts} offloads in a row: local '
                        f'answers for {self.backoff_ns / NS:.1f} s', throttle_duration_sec=5.0)
            self.arm_deadline_timer(self.now_ns())

    def on_diagnostics(self):
        with self.lock:
            now_ns = self.now_ns()
            link, why, source = self.link_state(now_ns)
            offloaded = sum(1 for offload, _ in self.decision_window if offload)
            share = offloaded / len(self.decision_window) if self.decision_window else 0.0
            rtt = float(np.mean(self.round_trips_ms)) if self.round_trips_ms else 0.0
            level = Diagnostics.OK if link.reachable else Diagnostics.WARN
            message = 'ok' if link.reachable else why
            if self.stats['deadline_misses']:
                message += f"; {self.stats['deadline_misses']} deadline misses"
            if not self.calibrated:
                level, message = Diagnostics.WARN, message + '; uncalibrated fallback in use'
            if self.frames_in.problem:
                level, message = Diagnostics.ERROR, f'{self.frames_in.problem}; {message}'
            elif self.frames_in.note:
                message = f'{message}; {self.frames_in.note}'
            self.diagnostics.publish(level, message, {
                'strategy': self.strategy,
                'inference_rate_hz': f'{self.local_rate.rate(time.monotonic()):.2f}',
                'offload_rate_hz': f'{self.offload_rate.rate(time.monotonic()):.2f}',
                'offload_share_recent': f'{share:.2f}',
                'server_reachable': link.reachable,
                'rtt_ms': f'{rtt:.1f}',
                'bandwidth_bps': f'{link.bandwidth_bps:.0f}',
                'bandwidth_source': source,
                'frames_in_flight': len(self.frames),
                'offloads_in_flight': len(self.pending),
                'answered': self.stats['answered'],
                'server_answers': self.stats['server_answers'],
                'server_late': self.stats['server_late'],
                'deadline_misses': self.stats['deadline_misses'],
                'calibration': self.calibration_message})

    def destroy_node(self):
        """Stop the size-measuring thread, then destroy the node."""
        self.size_worker.shutdown(wait=False, cancel_futures=True)
        return super().destroy_node()


def main():
    """Run the node until SIGINT/SIGTERM."""
    spin_node(OffloadPlannerNode, 'offload_planner_node',
              startup_errors=(ImportError, ValueError, KeyError))


if __name__ == '__main__':
    main()
