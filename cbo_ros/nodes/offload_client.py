"""The sending half of offload_planner_node: Offload calls, their transfer samples, give-ups.

:class:`OffloadClient` sends a planned payload with ``call_async``, keeps the calls in flight,
publishes one ``TransferSample`` per call (answered, failed or given up ``late_grace_ns`` after
its deadline), backs off from a server that left ``max_timeouts`` calls in a row unanswered,
and honours a server's ``busy: … retry in N ms`` refusal (no offload until then, at most
``backoff_ns``).
It holds no lock of its own: the node calls it under its lock.
"""

import collections
import copy
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Tuple

from builtin_interfaces.msg import Time
from cbo_interfaces.msg import TransferSample
from cbo_interfaces.srv import Offload
from rclpy.node import Node
from rclpy.qos import qos_profile_services_default
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage

from cbo_ros.core.server_busy import BusyBackoff
from cbo_ros.nodes.ros_common import ns_to_stamp, RESULT_HISTORY_QOS


@dataclass
class PendingCall:
    """An offload call whose TransferSample is not yet published."""

    future: Future
    key: int                       # the frame's stamp in ns
    seq: int
    send_ns: int
    deadline_ns: int
    payload_bytes: int
    resolution: int
    transfer_s: float = 0.0        # planned transfer time (payload / bandwidth)
    rtt_s: float = 0.0             # link RTT the plan used
    measure_only: bool = False     # a server-time probe: the frame kept its local answer


class OffloadClient:
    """Offload calls to the server and what they measured of it."""

    def __init__(self, node: Node, service: str, queue_depth: int, max_timeouts: int,
                 backoff_ns: int, late_grace_ns: int,
                 on_done: Callable[[PendingCall, Future], None], callback_group=None) -> None:
        self.node = node
        self.max_timeouts = max_timeouts
        self.backoff_ns = backoff_ns
        self.late_grace_ns = late_grace_ns
        self.on_done = on_done
        # Responses of one server batch arrive together: the services default depth (10)
        # drops bursts, like the server's request queue (service_queue_depth).
        qos = copy.copy(qos_profile_services_default)
        qos.depth = queue_depth
        self.client = node.create_client(Offload, service, qos_profile=qos,
                                         callback_group=callback_group)
        self.transfer_pub = node.create_publisher(TransferSample, 'offload_transfers',
                                                  RESULT_HISTORY_QOS)
        self.pending: Dict[int, PendingCall] = {}       # frame key -> call
        self.round_trips_ms: Deque[float] = collections.deque(maxlen=50)
        self.consecutive_timeouts = 0
        self.backoff_until_ns = 0
        # Unanswered calls sent before this time are not counted as timeouts in a row: their
        # outage is already handled (a back-off began, the server was heard again, or a later
        # call was answered).
        self.counted_from_ns = 0
        self.busy = BusyBackoff(max_wait_s=max(backoff_ns / 1e9, 0.1))

    def unreachable_why(self, now_ns: int) -> str:
        """Return why the server is unreachable as far as this client knows ('': it is not)."""
        if not self.client.service_is_ready():
            return 'server unavailable'
        if now_ns < self.backoff_until_ns:
            return 'server unresponsive (backing off)'
        return self.busy.why(now_ns / 1e9)

    @property
    def busy_refusals(self) -> int:
        """How many ``busy:`` refusals the server sent."""
        return self.busy.refusals

    def send(self, header, seq: int, key: int, deadline_ns: int, payload: bytes,
             resolution: int, top_k: int, bandwidth_bps: float, rtt_s: float,
             measure_only: bool) -> PendingCall:
        """Send one payload to the server; the response comes to ``on_done``."""
        request = Offload.Request(header=header, frame_seq=seq, top_k=top_k,
                                  return_scores=False,
                                  client_id=self.node.get_fully_qualified_name())
        request.image = CompressedImage(header=header, format='jpeg', data=payload)
        request.deadline = ns_to_stamp(deadline_ns, Time)
        send_ns = self.node.get_clock().now().nanoseconds
        future = self.client.call_async(request)
        call = PendingCall(future=future, key=key, seq=seq, send_ns=send_ns,
                           deadline_ns=deadline_ns, payload_bytes=len(payload),
                           resolution=resolution,
                           transfer_s=len(payload) * 8.0 / max(bandwidth_bps, 1.0),
                           rtt_s=rtt_s, measure_only=measure_only)
        self.pending[key] = call
        future.add_done_callback(lambda done, call=call: self.on_done(call, done))
        return call

    def complete(self, call: PendingCall, future: Future,
                 now_ns: int) -> Optional[Tuple[object, str, float]]:
        """Account for a finished call: ``(response or None, error text, round trip ms)``.

        None when the call was already given up (and reported).
        """
        if self.pending.pop(call.key, None) is None:
            return None
        round_trip_ms = (now_ns - call.send_ns) / 1e6
        try:
            response = future.result()
        except Exception as error:  # noqa: BLE001 - a failed call is reported, not raised
            response, error_text = None, str(error)
        else:
            error_text = '' if response is not None else 'no response'
        answered = response is not None
        self.publish_transfer(call, success=answered,
                              round_trip_ms=round_trip_ms if answered else 0.0,
                              server_ms=response.server_ms if answered else 0.0,
                              timed_out=now_ns > call.deadline_ns)
        if answered:
            self.consecutive_timeouts = 0
            self.counted_from_ns = max(self.counted_from_ns, call.send_ns)
            if response.success:
                self.backoff_until_ns = 0       # it answers again: no need to wait
            self.round_trips_ms.append(round_trip_ms)
            if not response.success and self.busy.observe(response.error, now_ns / 1e9):
                self.node.get_logger().warning(
                    f'server refused an offload: {response.error}; local answers until then',
                    throttle_duration_sec=2.0)
        return response, error_text, round_trip_ms

    def server_seen_again(self, now_ns: int) -> None:
        """End a back-off early: the server answers again after an outage (monitor's probe).

        Calls sent before now belong to that outage: when they are given up later they do not
        start another back-off.
        """
        self.backoff_until_ns = 0
        self.consecutive_timeouts = 0
        self.counted_from_ns = max(self.counted_from_ns, now_ns)

    def give_up_late(self, now_ns: int) -> List[PendingCall]:
        """Give up the calls unanswered ``late_grace_ns`` after their deadline; return them."""
        late = [c for c in self.pending.values() if now_ns > c.deadline_ns + self.late_grace_ns]
        for call in late:
            self.pending.pop(call.key, None)
            self.client.remove_pending_request(call.future)
            self.publish_transfer(call, success=False, round_trip_ms=0.0, server_ms=0.0,
                                  timed_out=True)
            if call.send_ns < self.counted_from_ns:
                continue
            self.consecutive_timeouts += 1
            if self.consecutive_timeouts >= self.max_timeouts:
                self.backoff_until_ns = now_ns + self.backoff_ns
                self.counted_from_ns = now_ns
                self.consecutive_timeouts = 0
                self.node.get_logger().warning(
                    f'server did not answer {self.max_timeouts} offloads in a row: local '
                    f'answers for {self.backoff_ns / 1e9:.1f} s', throttle_duration_sec=5.0)
        return late

    def give_up_times_ns(self) -> List[int]:
        """Return when each call in flight will be given up."""
        return [c.deadline_ns + self.late_grace_ns for c in self.pending.values()]

    def publish_transfer(self, call: PendingCall, success: bool, round_trip_ms: float,
                         server_ms: float, timed_out: bool) -> None:
        """Publish the TransferSample of one call (stamped with its send time)."""
        sample = TransferSample(frame_seq=call.seq, payload_bytes=call.payload_bytes,
                                round_trip_ms=float(round_trip_ms), server_ms=float(server_ms),
                                success=bool(success), timed_out=bool(timed_out))
        sample.header.stamp = ns_to_stamp(call.send_ns, Time)
        self.transfer_pub.publish(sample)
