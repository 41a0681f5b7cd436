"""early_exit_node: early-exit partition offloading on the robot (Pacheco et al.'s scheme).

Replaces npu_classifier_node + offload_planner_node for the strategies
``early_exit_partition`` and ``early_exit_partition_uncalibrated``. Per frame of ``image_raw``:
choose the partition from the link (``network_quality``, else the ``bandwidth_bps``/``rtt_ms``
parameters) and the deadline, run its head (blocks + exit branch) with onnxruntime, and either
answer with the branch (calibrated confidence >= ``p_tar``) or send the quantised, compressed
intermediate tensor to the server's ``offload_features`` service, which runs the tail. Exactly
one ``result`` per frame: the server's answer when it arrives in time, else the branch's answer
at the deadline. The decisions are ``cbo_ros.core.early_exit.EarlyExitPolicy``, as offline.
"""

import threading
import time
from dataclasses import dataclass

from builtin_interfaces.msg import Time

from cbo_common.tensor_codec import encode_tensor
from cbo_interfaces.msg import (ClassHypothesis, FrameClassification, NetworkQuality,
                                TransferSample)
from cbo_interfaces.srv import OffloadFeatures
import numpy as np
from rclpy.node import Node
from std_msgs.msg import Header

from cbo_ros.core.early_exit import EARLY_EXIT_STRATEGIES
from cbo_ros.core.planner import LinkState
from cbo_ros.nodes.ros_common import (class_name, declare, Diagnostics, FrameSubscription,
                                      ns_to_stamp, RESULT_HISTORY_QOS, spin_node,
                                      TrustedPublishers)
from cbo_ros.perception.image_ops import softmax
from cbo_ros.perception.media import image_msg_to_rgb


@dataclass
class InFlight:
    """An offloaded frame waiting for the server's answer."""

    deadline_ns: int
    local: FrameClassification      # the branch's answer, published if the server is late
    sent_perf_s: float
    send_ns: int
    payload_bytes: int
    future: object = None           # the service call (removed from the client when given up)


# An offload answered locally at its deadline is given up this long after it (then reported
# as a failed transfer and removed from the client), as the planner's late_grace_ms does.
LATE_GRACE_NS = 1_000_000_000


def _stamp_ns(stamp):
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class EarlyExitNode(Node):
    """Run early-exit heads on the robot; exit or offload the tensor (see the module doc)."""

    def __init__(self, **kwargs):
        super().__init__('early_exit_node', **kwargs)
        strategy = declare(self, 'strategy', EARLY_EXIT_STRATEGIES[0],
                           f"one of {', '.join(EARLY_EXIT_STRATEGIES)}")
        if strategy not in EARLY_EXIT_STRATEGIES:
            raise ValueError(f"strategy '{strategy}' is not one of "
                             f"{', '.join(EARLY_EXIT_STRATEGIES)}")
        p_tar = declare(self, 'p_tar', 0.7, 'exit when the branch confidence reaches this',
                        0.0, 1.0)
        self.deadline_ns = int(1e6 * declare(self, 'deadline_ms', 200.0,
                                             'answer deadline after the frame stamp', 1.0, 1e4))
        margin_ms = declare(self, 'deadline_margin_ms', 5.0, 'planning safety margin', 0.0, 1e3)
        self.default_bandwidth = declare(self, 'bandwidth_bps', 1e6,
                                         'uplink estimate until network_quality arrives', 0.0)
        self.default_rtt_s = declare(self, 'rtt_ms', 20.0, 'RTT until network_quality arrives',
                                     0.0) / 1e3
        self.top_k = declare(self, 'top_k', 5, 'hypotheses per answer', 1, 1000)
        trusted = declare(self, 'trusted_quality_publishers', ['network_monitor_node'],
                          "nodes whose network_quality is used (relative: this namespace; '*': "
                          'any); messages of other publishers are ignored and reported')
        calibration_file = declare(self, 'calibration_file', '',
                                   'early-exit calibration (empty: the artifacts default)')
        from cbo_ros.evaluation.early_exit_eval import (load_early_exit_calibration,
                                                        make_policy)
        from cbo_ros.perception.early_exit import EarlyExitModel
        self.model = EarlyExitModel()
        calibration = load_early_exit_calibration(calibration_file or None)
        full_ms = float(self.model.manifest['full_ms'])
        # Head times are measured here (scaled from the parts' manifest by this machine's
        # full-model time ratio: make_policy takes the full-model time of this robot).
        self.policy = make_policy(strategy, calibration, self.model, p_tar, full_ms / 1e3,
                                  margin_ms / 1e3)
        self.link = None
        self.busy_until_s = 0.0
        self.margin_ns = int(margin_ms * 1e6)
        # Executor: its own process under spin_node (single-threaded), or the
        # MultiThreadedExecutor of robot_bringup --single-process, where service responses
        # (future callbacks, outside any callback group) can run beside the node's callbacks:
        # the lock guards the frames in flight, the counts and the timer.
        self.lock = threading.RLock()
        self.pending = {}               # seq -> InFlight, waiting for the server
        self.late = {}                  # seq -> InFlight answered locally, answer still due
        self.seq = 0
        self.counts = {'frames': 0, 'exits': 0, 'offloads': 0, 'server': 0, 'late': 0,
                       'failed': 0, 'deadline_misses': 0}
        self.result_pub = self.create_publisher(FrameClassification, 'result',
                                                RESULT_HISTORY_QOS)
        # One sample per offload call, as the planner's, so network_monitor_node learns the
        # uplink from early-exit offloads too.
        self.transfer_pub = self.create_publisher(TransferSample, 'offload_transfers',
                                                  RESULT_HISTORY_QOS)
        self.client = self.create_client(OffloadFeatures, 'offload_features')
        self.quality_source = TrustedPublishers(self, 'network_quality', trusted)
        self.create_subscription(NetworkQuality, 'network_quality', self.on_quality, 10)
        # Reliable, switching to best effort when a best-effort camera appears (as the
        # classifier and the planner do).
        self.frames_in = FrameSubscription(self, self.on_image, 'auto', 30)
        # One timer, armed for the nearest offloaded frame's fallback time (deadline minus
        # margin) and cancelled while nothing is in flight (no polling).
        self.timer = self.create_timer(1.0, self.on_timer)
        self.timer.cancel()
        self.diagnostics = Diagnostics(self)
        self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(f'{self.policy.name}: partitions {self.model.blocks}, p_tar '
                               f'{p_tar:.2f}, deadline {self.deadline_ns / 1e6:.0f} ms')

    def on_quality(self, msg, info):
        """Keep the latest link estimate of a trusted network monitor (others: ignored)."""
        with self.lock:
            if self.quality_source.accepts(info):
                self.link = msg

    def _link_state(self):
        msg = self.link
        if msg is None or msg.stale or msg.bandwidth_bps <= 0:
            return LinkState(self.default_bandwidth, self.default_rtt_s,
                             busy_until_s=self.busy_until_s)
        return LinkState(msg.bandwidth_bps, msg.rtt_ms / 1e3, msg.loss_rate,
                         reachable=msg.server_reachable, busy_until_s=self.busy_until_s)

    def on_image(self, msg):
        """Choose the partition, run the head, exit or offload the tensor."""
        with self.lock:
            seq, self.seq = self.seq, self.seq + 1
            self.counts['frames'] += 1
            deadline_ns = _stamp_ns(msg.header.stamp) + self.deadline_ns
            now_s = self.get_clock().now().nanoseconds / 1e9
            try:
                rgb = image_msg_to_rgb(msg.encoding, msg.height, msg.width, msg.step,
                                       np.frombuffer(msg.data, np.uint8), msg.is_bigendian)
            except ValueError as error:
                self.get_logger().warning(f'invalid frame: {error}', throttle_duration_sec=5.0)
                self._publish(self._message(msg.header, seq, None, 0.0, 0.0, f'invalid frame: '
                                            f'{error}', deadline_ns), deadline_ns)
                return
            try:
                self._process(msg, seq, rgb, now_s, deadline_ns)
            except Exception as error:  # noqa: BLE001 - a frame must never take the node down
                self.get_logger().error(f'frame {seq}: {type(error).__name__}: {error}',
                                        throttle_duration_sec=5.0)
                self.pending.pop(seq, None)
                self._publish(self._message(msg.header, seq, None, 0.0, 0.0,
                                            f'internal error: {error}', deadline_ns), deadline_ns)

    def _process(self, msg, seq, rgb, now_s, deadline_ns):
        link = self._link_state()
        choice = self.policy.choose_partition(link, now_s, deadline_ns / 1e9)
        part = choice.partition
        start = time.perf_counter()
        exit_logits, features = self.model.head(part.blocks, self.model.preprocess([rgb]))
        head_ms = 1e3 * (time.perf_counter() - start)
        confidence = float(self.policy.confidence(part.blocks, exit_logits)[0])
        raw = float(softmax(exit_logits[0]).max())
        payload = encode_tensor(features)
        now_s = self.get_clock().now().nanoseconds / 1e9
        decision = self.policy.decide(seq, part, confidence, len(payload.data), link, now_s,
                                      deadline_ns / 1e9)
        local = self._message(msg.header, seq, exit_logits[0], confidence, raw,
                              decision.reason, deadline_ns, part.blocks)
        local.latency.local_inference_ms = head_ms
        if not decision.offload or not self.client.service_is_ready():
            if decision.offload:
                local.note = f'exit b{part.blocks}: server unavailable'
            self.counts['exits'] += 1
            self._publish(local, deadline_ns)
            return
        self.busy_until_s = max(self.busy_until_s, decision.link_free_after_s)
        request = OffloadFeatures.Request()
        request.header = msg.header
        request.frame_seq = seq
        request.client_id = self.get_fully_qualified_name()   # the server's fairness unit
        request.partition = int(part.blocks)
        request.shape = [int(s) for s in payload.shape]
        request.dtype = payload.dtype
        request.scale = float(payload.scale)
        request.zero_point = int(payload.zero_point)
        request.data = payload.data
        request.deadline = ns_to_stamp(deadline_ns, Time)
        request.top_k = int(self.top_k)
        self.counts['offloads'] += 1
        call = InFlight(deadline_ns, local, time.perf_counter(),
                        self.get_clock().now().nanoseconds, len(payload.data))
        self.pending[seq] = call
        call.future = self.client.call_async(request)
        call.future.add_done_callback(lambda f, s=seq: self.on_response(s, f))
        self.arm_timer()

    def on_response(self, seq, future):
        """Publish the server's answer when it is in time (else the branch's answered)."""
        with self.lock:
            response = future.result() if future.exception() is None else None
            late = self.late.pop(seq, None)
            if late is not None:
                # The frame was answered locally before its deadline; the late answer still
                # tells the network monitor that the server and the link work.
                self.publish_transfer(late, 1e3 * (time.perf_counter() - late.sent_perf_s),
                                      response, timed_out=True)
                return
            entry = self.pending.pop(seq, None)
            if entry is None:
                return                               # given up long ago
            deadline_ns, local = entry.deadline_ns, entry.local
            round_trip_ms = 1e3 * (time.perf_counter() - entry.sent_perf_s)
            self.publish_transfer(entry, round_trip_ms, response)
            if response is None or not response.success:
                why = 'no response' if response is None else response.error
                self.counts['failed'] += 1
                self.get_logger().warning(f'offload_features failed: {why}',
                                          throttle_duration_sec=5.0)
                local.note = f'server refused: local answer ({why})'
                self._publish(local, deadline_ns)
                return
            msg = local
            msg.source = FrameClassification.SOURCE_SERVER
            msg.class_id, msg.class_name, msg.score = (response.class_id, response.class_name,
                                                       response.score)
            msg.top_k = list(response.top_k)
            msg.model = response.model
            msg.note = f'server answer (tail after b{local.resolution})'
            msg.latency.round_trip_ms = round_trip_ms
            msg.latency.server_ms = response.server_ms
            self.counts['server'] += 1
            self._publish(msg, deadline_ns)

    def arm_timer(self):
        """Arm the timer for the nearest fallback time of an offloaded frame (or cancel it)."""
        due = ([call.deadline_ns - self.margin_ns for call in self.pending.values()]
               + [call.deadline_ns + LATE_GRACE_NS for call in self.late.values()])
        if not due:
            self.timer.cancel()
            return
        due_ns = min(due)
        self.timer.timer_period_ns = max(due_ns - self.get_clock().now().nanoseconds,
                                         1_000_000)
        self.timer.reset()

    def on_timer(self):
        """Answer the offloaded frames due now with their branch's answer; re-arm."""
        with self.lock:
            now = self.get_clock().now().nanoseconds
            for seq in [s for s, call in self.pending.items()
                        if call.deadline_ns - self.margin_ns <= now]:
                call = self.pending.pop(seq)
                call.local.note = f'server late: local answer (exit b{call.local.resolution})'
                self.counts['late'] += 1
                self._publish(call.local, call.deadline_ns)
                self.late[seq] = call        # its answer may still come: see on_response
            for seq in [s for s, call in self.late.items()
                        if call.deadline_ns + LATE_GRACE_NS <= now]:
                call = self.late.pop(seq)    # no answer at all: a failed transfer
                self.client.remove_pending_request(call.future)
                self.publish_transfer(call, 0.0, None, timed_out=True)
            self.arm_timer()

    def publish_transfer(self, call, round_trip_ms, response, timed_out=False):
        """Publish the TransferSample of one offload call (stamped with its send time)."""
        self.transfer_pub.publish(TransferSample(
            header=Header(stamp=ns_to_stamp(call.send_ns, Time),
                          frame_id=call.local.header.frame_id),
            frame_seq=call.local.frame_seq, payload_bytes=int(call.payload_bytes),
            round_trip_ms=float(round_trip_ms),
            server_ms=float(response.server_ms) if response is not None else 0.0,
            success=response is not None, timed_out=bool(timed_out)))

    def _message(self, header, seq, logits, confidence, raw, note, deadline_ns, blocks=0):
        msg = FrameClassification()
        msg.header = header
        msg.frame_seq = seq
        msg.source = FrameClassification.SOURCE_ROBOT
        msg.calibrated_confidence = float(confidence)
        msg.raw_confidence = float(raw)
        msg.score = float(confidence)
        msg.model = f'early-exit lite0 b{blocks}' if blocks else 'early-exit lite0'
        msg.resolution = int(blocks)
        msg.is_final = True
        msg.deadline = ns_to_stamp(deadline_ns, Time)
        msg.note = note
        if logits is not None:
            probs = softmax(logits)
            best = np.argsort(probs)[::-1][:int(self.top_k)]
            msg.top_k = [ClassHypothesis(class_id=str(int(i)), class_name=class_name(i),
                                         score=float(probs[i])) for i in best]
            msg.class_id = str(int(best[0]))
            msg.class_name = class_name(int(best[0]))
        return msg

    def _publish(self, msg, deadline_ns):
        now = self.get_clock().now().nanoseconds
        msg.deadline_met = now <= deadline_ns
        if not msg.deadline_met:
            self.counts['deadline_misses'] += 1
        msg.latency.total_ms = (now - _stamp_ns(msg.header.stamp)) / 1e6
        self.result_pub.publish(msg)

    def on_diagnostics(self):
        """Publish the counts on /diagnostics."""
        with self.lock:
            values = {k: str(v) for k, v in self.counts.items()}
            values['strategy'] = self.policy.name
            level, message = Diagnostics.OK, f'{self.policy.name} running'
            untrusted = self.quality_source.report()
            if untrusted:
                level, message = Diagnostics.WARN, f'{message}; {untrusted}'
            if self.frames_in.problem:
                level, message = Diagnostics.ERROR, f'{self.frames_in.problem}; {message}'
            self.diagnostics.publish(level, message, values)


def main(args=None):
    """Run early_exit_node until SIGINT/SIGTERM."""
    spin_node(EarlyExitNode, 'early_exit_node', (FileNotFoundError, ValueError), args)


if __name__ == '__main__':
    main()
