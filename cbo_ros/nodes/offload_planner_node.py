"""offload_planner_node: decide per frame whether to offload, and publish one final answer.

Inputs: ``image_raw`` (frames; with ``input_transport: compressed`` sensor_msgs/CompressedImage
on ``image_raw/compressed``), ``local_result`` (robot answers, joined to frames by
``header.stamp``) and ``network_quality`` (link estimate of network_monitor_node). Outputs, for
every frame exactly once: ``result`` (FrameClassification, ``is_final`` true) by the frame's
deadline (``deadline_ms`` after its stamp): the server's answer when it came back in time, else
the local answer (``note`` says why), or an empty class when no local answer arrived either;
``offload_decision`` (OffloadDecision). For every offload call: ``offload_transfers``
(TransferSample). Diagnostics on ``/diagnostics``.

A shell around the ROS-free planning (:class:`cbo_ros.core.offload_planning.FramePlanner`: the
strategy, real JPEG sizes, the server-time model) and the sending side
(:class:`cbo_ros.nodes.offload_client.OffloadClient`). Nothing blocks the executor: the server
is called with ``call_async``; one timer, re-armed for the nearest due frame, answers frames
whose deadline is near. Timing, QoS and the server-time model: docs/live_system.md.
"""

import collections
import threading
import time
from typing import Optional

import numpy as np
from cbo_interfaces.msg import FrameClassification, NetworkQuality, OffloadDecision
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from std_msgs.msg import UInt64

from cbo_ros.core.offload_planning import FramePlanner, link_view
from cbo_ros.core.payload_sizing import PayloadSizer
from cbo_ros.core.server_time import ServerOccupancy, ServerTimeModel, ServerTimeProbe
from cbo_ros.nodes.offload_client import OffloadClient, PendingCall
from cbo_ros.nodes.planner_frames import (final_result, FrameBook, FrameStage, FrameState,
                                          LATE_NOTE)
from cbo_ros.nodes.planner_settings import PARAMS, PlannerSettings
from cbo_ros.nodes.planner_status import PlannerHealth
from cbo_ros.nodes.ros_common import (Diagnostics, FrameSubscription, LATCHED_QOS,
                                      load_bundle, load_settings, LOCAL_RESULT_QOS, RateMeter,
                                      RESULT_HISTORY_QOS, SequenceGaps, SimClockWatch, spin_node,
                                      TrustedPublishers, updated_settings, validate_parameters)
from cbo_ros.perception.image_ops import decimate_for
from cbo_ros.perception.media import frame_msg_to_rgb

NS = 1_000_000_000
RUN_TIME_PARAMETERS = {p.name for p in PARAMS if not p.read_only}
RECENT_S = 10.0          # misses and drops this recent raise the diagnostic level to WARN


class OffloadPlannerNode(Node):
    """Confidence-based offloading of frames to the offload server.

    Executor: its own process under ``spin_node`` (rclpy.spin, single-threaded), or the
    MultiThreadedExecutor of ``robot_bringup --single-process``. ``lock`` guards the frame
    and call state against that executor's threads (service responses reach ``on_response``
    as executor tasks outside any callback group) and against parameter updates; the payload
    sizer's thread is concurrent under any executor and has its own lock.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__('offload_planner_node', **kwargs)
        self.settings: PlannerSettings = load_settings(self, PlannerSettings, PARAMS)
        s = self.settings
        self.bundle, self.calibrated, self.calibration_message = load_bundle(
            self.get_logger(), s.calibration_file, list(s.offload_resolutions))
        self.resolutions = list(s.offload_resolutions) or list(self.bundle.offload_resolutions)
        self.sizer = PayloadSizer(self.resolutions, s.jpeg_quality, s.size_refresh_frames,
                                  on_error=self.warn_sizes)
        self.planning = FramePlanner(
            s.strategy, self.bundle, self.resolutions, self.sizer,
            ServerTimeModel(self.bundle.server_time_s, s.adapt_server_time,
                            s.server_time_percentile, s.server_time_window_s),
            ServerOccupancy(),
            ServerTimeProbe(s.server_time_probe_s if s.adapt_server_time else 0.0),
            premodel=self.load_premodel(s))

        self.lock = threading.RLock()
        self.frames = FrameBook(started_ns=self.now_ns())
        self.quality: Optional[NetworkQuality] = None
        self.quality_ns = 0
        self.stats = collections.Counter()
        self.last_miss_s = -float('inf')
        self.local_rate = RateMeter()
        self.offload_rate = RateMeter()
        self.decision_window = collections.deque(maxlen=100)

        # Under a MultiThreadedExecutor, responses are taken without waiting for the node's
        # (mutually exclusive) default group; spin_node's executor runs one callback anyway.
        self.sender = OffloadClient(self, s.offload_service, s.service_queue_depth,
                                    s.max_timeouts, s.backoff_ns, s.late_grace_ns,
                                    self.on_response, callback_group=ReentrantCallbackGroup())
        self.frames_in = FrameSubscription(self, self.on_image, s.reliability, s.depth,
                                           transport=s.input_transport)
        self.create_subscription(FrameClassification, 'local_result', self.on_local,
                                 LOCAL_RESULT_QOS)
        self.create_subscription(NetworkQuality, 'network_quality', self.on_quality, 10)
        self.quality_source = TrustedPublishers(self, 'network_quality',
                                                s.trusted_quality_publishers)
        self.frame_gaps = SequenceGaps()
        self.camera_published = 0
        self.create_subscription(UInt64, 'frames_published', self.on_camera_count, LATCHED_QOS)
        self.result_pub = self.create_publisher(FrameClassification, 'result',
                                                RESULT_HISTORY_QOS)
        self.decision_pub = self.create_publisher(OffloadDecision, 'offload_decision',
                                                  RESULT_HISTORY_QOS)
        self.diagnostics = Diagnostics(self)
        self.clock_watch = SimClockWatch(self, self.diagnostics)
        # One timer, re-armed for the nearest due frame (not a fixed 5 ms poll: 200 wake-ups/s
        # cost ~16 % of a core per idle planner process on the 2-core machine).
        self.timer_due_ns: Optional[int] = None
        self.deadline_timer = self.create_timer(s.max_check_ns / NS, self.on_deadline_timer)
        self.create_timer(s.diagnostics_period_s, self.on_diagnostics)
        self.add_on_set_parameters_callback(validate_parameters(lambda: self.settings, PARAMS))
        self.add_post_set_parameters_callback(self.on_parameters_set)
        self.get_logger().info(
            f"strategy '{s.strategy}', deadline {s.deadline_ns / 1e6:.0f} ms, resolutions "
            f'{self.resolutions}, server {self.sender.client.srv_name}; '
            f'{self.calibration_message}')

    def load_premodel(self, s):
        """Load the premodel of strategy premodel_cbo (None for the others)."""
        if s.strategy != 'premodel_cbo':
            return None
        from cbo_ros.assets.premodel_models import resolve_premodel
        from cbo_ros.core.premodel import Premodel
        path = resolve_premodel(s.premodel_file)
        premodel = Premodel.load(path)          # PremodelError (ValueError) names the fix
        self.get_logger().info(f'premodel_cbo: server profiles of {", ".join(premodel.candidates)}'
                               f' from {path}')
        return premodel

    # ------------------------------------------------------------------ inputs
    def on_parameters_set(self, parameters) -> None:
        """Apply run-time parameters (validated by the on-set callback and rclpy's ranges)."""
        with self.lock:
            self.settings = updated_settings(self.settings, PARAMS, parameters)
            if self.sizer.quality != self.settings.jpeg_quality:
                self.sizer.set_quality(self.settings.jpeg_quality)
        for parameter in parameters:
            if parameter.name in RUN_TIME_PARAMETERS:
                self.get_logger().info(f'{parameter.name} set to {parameter.value}')

    def now_ns(self) -> int:
        """Return the node clock's time in nanoseconds."""
        return self.get_clock().now().nanoseconds

    def warn_sizes(self, text: str) -> None:
        """Log a failed JPEG size measurement (throttled)."""
        self.get_logger().warning(text, throttle_duration_sec=10.0)

    def frame_for(self, header, info=None) -> Optional[FrameState]:
        """Return the FrameState of a header's stamp (made on first sight); None once answered."""
        s, now_ns = self.settings, self.now_ns()
        published_ns = (info or {}).get('source_timestamp') or None
        state, why = self.frames.frame_for(header, s.deadline_ns, now_ns,
                                           s.deadline_ns - s.margin_ns, published_ns)
        if why == 'due_before_start':
            self.stats[why] += 1
        if why == 'late':
            self.stats['late_on_arrival'] += 1
            self.get_logger().warning(
                f'frame {state.seq} (stamp {state.key / NS:.3f} s) arrived '
                f'{(now_ns - state.deadline_ns) / 1e6:.0f} ms after its deadline: answered '
                'late', throttle_duration_sec=5.0)
        if why not in ('new', 'late'):
            return state
        due_ns = self.frames.due_ns(state, s.margin_ns)
        if self.timer_due_ns is None or due_ns < self.timer_due_ns:
            self.arm_deadline_timer(now_ns)
        while len(self.frames) > self.settings.max_pending:
            self.finalize(self.frames.oldest(), 'too many frames in flight')
        return state

    def on_image(self, msg, info) -> None:
        """Keep a frame's pixels; decide it once its local answer is known too."""
        with self.lock:
            self.frame_gaps.observe(info)
            state = self.frame_for(msg.header, info)
            if state is None or state.image_seen:
                if state is not None or self.frames.image_answered(msg.header):
                    # Frames are told apart by header.stamp: a second image with the same
                    # stamp (a driver that stamps 0, a duplicated frame) cannot be answered.
                    self.stats['repeated_stamps'] += 1
                    self.get_logger().warning(
                        'an image_raw frame repeats the header.stamp of an earlier frame '
                        f'({msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}): frames are '
                        'identified by their stamp, so it gets no answer of its own (fix the '
                        "camera driver's stamps)", throttle_duration_sec=5.0)
                return
            state.image_seen = True
            try:
                # Kept until decided; frames of 8x the largest offload side or more are kept
                # subsampled (bounded cost and memory).
                state.rgb = decimate_for(frame_msg_to_rgb(msg), max(self.resolutions))
            except ValueError as error:
                state.image_error = str(error)
            if state.local is not None:
                self.decide(state)

    def on_local(self, msg: FrameClassification, info) -> None:
        """Keep a frame's local answer; decide it once its image is known too."""
        with self.lock:
            self.local_rate.tick(time.monotonic())
            state = self.frame_for(msg.header, info)
            if state is None or state.local is not None:
                return
            state.local = msg
            if state.rgb is not None or state.image_error or not msg.class_id:
                self.decide(state)

    def on_quality(self, msg: NetworkQuality, info) -> None:
        """Keep the latest link estimate of a trusted network monitor (others: ignored)."""
        with self.lock:
            if not self.quality_source.accepts(info):
                return
            now_ns = self.now_ns()
            if (msg.server_reachable and self.quality is not None
                    and not self.quality.server_reachable):
                # The monitor hears the server again after an outage: calls given up during
                # the outage need not hold offloading back any longer.
                self.sender.server_seen_again(now_ns)
            self.quality = msg
            self.quality_ns = now_ns

    # ------------------------------------------------------------------ decisions
    def link_state(self, now_ns: int):
        """Return the planner's view of the link: ``(LinkState, why unreachable, source)``."""
        s = self.settings
        fresh = self.quality is not None and now_ns - self.quality_ns < s.quality_timeout_ns
        return link_view(self.quality if fresh else None, s.initial_bandwidth_bps,
                         s.initial_rtt_s, s.bandwidth_cap_bps, self.planning.busy_until_s,
                         self.sender.unreachable_why(now_ns))

    def decide(self, state: FrameState) -> None:
        """Plan a frame whose local answer (and image) are known; send it or answer locally."""
        if state.stage is not FrameStage.WAITING:
            return
        state.stage = FrameStage.DECIDED
        start = time.perf_counter()
        now_ns = self.now_ns()
        s, local = self.settings, state.local
        link, unreachable_why, _ = self.link_state(now_ns)
        msg = OffloadDecision(header=state.header, frame_seq=state.seq,
                              local_confidence=float(local.calibrated_confidence),
                              deadline_ms=s.deadline_ns / 1e6,
                              bandwidth_bps=link.bandwidth_bps, strategy=s.strategy)
        state.decision = msg
        # A frame the overloaded classifier skipped has no local answer but may still be
        # offloaded in time (confidence 0: anything the server gets right is a gain).
        skipped = not local.class_id and local.note.startswith('skipped:')
        if state.late:
            msg.reason = LATE_NOTE
            self.publish_decision(msg)
            self.finalize(state, 'local answer' if local.class_id else local.note or 'no answer')
            return
        if (not local.class_id and not skipped) or state.image_error or state.rgb is None:
            msg.reason = f'not offloadable ({local.note or f"invalid frame: {state.image_error}"})'
            self.publish_decision(msg)
            self.finalize(state, 'invalid frame')
            return
        if not link.reachable or s.strategy in ('local_only', 'premodel'):
            msg.reason = unreachable_why or f'{s.strategy} strategy'
            self.publish_decision(msg)
            state.latency['planning_ms'] = (time.perf_counter() - start) * 1e3
            self.finalize(state, msg.reason)
            return
        plan = self.planning.plan(
            state.seq, state.rgb, float(local.calibrated_confidence),
            float(local.raw_confidence), int(local.class_id) if local.class_id else None,
            (state.deadline_ns - s.margin_ns) / NS, link, now_ns / NS, local.model or None)
        decision = plan.decision
        if decision.confidence is not None:
            state.confidence = msg.local_confidence = float(decision.confidence)
        state.rgb = None
        state.latency['planning_ms'] = (time.perf_counter() - start) * 1e3 - plan.encode_ms
        state.latency['encode_ms'] = plan.encode_ms
        msg.offload = bool(decision.offload)
        msg.expected_gain = float(decision.expected_gain)
        msg.reason = decision.reason or ('offload' if decision.offload else 'local')
        msg.expected_accuracy_offload = float(decision.expected_accuracy)
        if not decision.offload:
            self.publish_decision(msg)
            self.finalize(state, f'local answer: {msg.reason}')
            return
        msg.resolution, msg.payload_bytes = int(decision.resolution), len(plan.payload)
        msg.expected_finish_ms = (decision.expected_finish_s * NS - state.key) / 1e6
        self.publish_decision(msg)
        call = self.sender.send(state.header, state.seq, state.key, state.deadline_ns,
                                plan.payload, msg.resolution, s.top_k, link.bandwidth_bps,
                                link.rtt_s, plan.measure_only)
        state.stage = FrameStage.OFFLOADED
        self.stats['offloads'] += 1
        self.planning.offload_sent(call.send_ns / NS)
        self.offload_rate.tick(time.monotonic())
        if plan.measure_only:
            # The strategy chose the local answer: it stands, now; the answer only measures.
            self.finalize(state, f'local answer ({decision.reason})')

    def publish_decision(self, msg: OffloadDecision) -> None:
        """Publish a frame's OffloadDecision (and log it, throttled)."""
        self.decision_pub.publish(msg)
        self.decision_window.append((msg.offload, msg.resolution))
        self.get_logger().info(
            f'frame {msg.frame_seq}: conf {msg.local_confidence:.2f} -> '
            f'{"offload @%dpx" % msg.resolution if msg.offload else "local"} ({msg.reason}, '
            f'bw {msg.bandwidth_bps / 1e6:.1f} Mbit/s)', throttle_duration_sec=2.0)

    def on_response(self, call: PendingCall, future: Future) -> None:
        """Take a server response: learn from it, answer the frame if it still waits."""
        with self.lock:
            now_ns = self.now_ns()
            done = self.sender.complete(call, future, now_ns)
            if done is None:
                return                     # already given up and reported
            response, error_text, round_trip_ms = done
            if response is not None and response.success:
                self.planning.observe_answer(now_ns / NS, call.seq, call.resolution,
                                             round_trip_ms / 1e3, call.transfer_s, call.rtt_s,
                                             response)
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

    # ------------------------------------------------------------------ answers
    def finalize(self, state: FrameState, note: str, response=None) -> None:
        """Publish the frame's only final result and forget the frame."""
        result = final_result(state, note, self.now_ns(), response)
        self.result_pub.publish(result)
        self.stats['answered'] += 1
        self.stats['server_answers' if response is not None else 'local_answers'] += 1
        if response is None and not (state.local is not None and state.local.class_id):
            self.stats['empty_answers'] += 1
        if not result.deadline_met:
            self.stats['deadline_misses'] += 1
            self.last_miss_s = time.monotonic()
        if state.decision is None:
            # Answered without a planner decision (no local result in time): still say so.
            self.publish_decision(OffloadDecision(
                header=state.header, frame_seq=state.seq,
                deadline_ms=self.settings.deadline_ns / 1e6, strategy=self.settings.strategy,
                reason=note))
        self.frames.forget(state, keep_answered=2 * self.settings.max_pending + 100)

    def arm_deadline_timer(self, now_ns: int) -> None:
        """Re-arm the deadline timer for the nearest due frame or give-up time of a call."""
        max_check_ns = self.settings.max_check_ns
        due = self.frames.due_times_ns(self.settings.margin_ns) + self.sender.give_up_times_ns()
        next_ns = min(due) if due else now_ns + max_check_ns
        delay_ns = min(max(next_ns - now_ns, 1_000_000), max_check_ns)
        self.deadline_timer.timer_period_ns = delay_ns
        self.deadline_timer.reset()
        self.timer_due_ns = now_ns + delay_ns

    def on_deadline_timer(self) -> None:
        """Answer the frames due now, give up late calls, re-arm."""
        with self.lock:
            now_ns = self.now_ns()
            for state in self.frames.due(now_ns, self.settings.margin_ns):
                if state.stage is FrameStage.OFFLOADED:
                    self.stats['server_late'] += 1
                    self.finalize(state, 'server late: local answer')
                elif state.local is None:
                    self.finalize(state, 'local result missing at deadline')
                else:
                    self.finalize(state, 'deadline: local answer')
            self.stats['timeouts'] += len(self.sender.give_up_late(now_ns))
            self.arm_deadline_timer(self.now_ns())

    def on_camera_count(self, msg) -> None:
        """Keep camera_node's count of published frames (latched)."""
        with self.lock:
            self.camera_published = max(self.camera_published, int(msg.data))

    def on_diagnostics(self) -> None:
        """Publish the planner's state on /diagnostics."""
        with self.lock:
            link, why, source = self.link_state(self.now_ns())
            offloaded = sum(1 for offload, _ in self.decision_window if offload)
            share = offloaded / len(self.decision_window) if self.decision_window else 0.0
            round_trips = self.sender.round_trips_ms
            rtt = float(np.mean(round_trips)) if round_trips else 0.0
            level, message = PlannerHealth(
                link.reachable, why, self.stats['deadline_misses'],
                time.monotonic() - self.last_miss_s < RECENT_S, self.calibrated,
                self.clock_watch.problem, self.frame_gaps.missing,
                self.frame_gaps.recent(time.monotonic(), RECENT_S), self.quality_source.report(),
                self.frames_in.problem, self.frames_in.note).level_and_message()
            self.diagnostics.publish(bytes((level,)), message, {
                'strategy': self.settings.strategy,
                'inference_rate_hz': f'{self.local_rate.rate(time.monotonic()):.2f}',
                'offload_rate_hz': f'{self.offload_rate.rate(time.monotonic()):.2f}',
                'offload_share_recent': f'{share:.2f}',
                'server_reachable': link.reachable,
                'rtt_ms': f'{rtt:.1f}',
                'bandwidth_bps': f'{link.bandwidth_bps:.0f}',
                'bandwidth_source': source,
                'frames_in_flight': len(self.frames),
                'offloads_in_flight': len(self.sender.pending),
                'answered': self.stats['answered'],
                'server_answers': self.stats['server_answers'],
                'server_late': self.stats['server_late'],
                'deadline_misses': self.stats['deadline_misses'],
                'late_on_arrival': self.stats['late_on_arrival'],
                'repeated_stamps': self.stats['repeated_stamps'],
                'frames_received': self.frame_gaps.received,
                'frames_dropped_in_transport': self.frame_gaps.missing,
                'camera_frames_published': self.camera_published,
                'untrusted_quality_ignored': self.quality_source.rejected,
                'server_busy_refusals': self.sender.busy_refusals,
                'calibration': self.calibration_message})

    def destroy_node(self) -> None:
        """Stop the size-measuring thread, then destroy the node."""
        self.sizer.close()
        super().destroy_node()


def main(args=None) -> None:
    """Run the node until SIGINT/SIGTERM."""
    spin_node(OffloadPlannerNode, 'offload_planner_node',
              startup_errors=(ImportError, ValueError, KeyError), args=args)


if __name__ == '__main__':
    main()
