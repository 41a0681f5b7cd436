"""network_monitor_node: estimate the robot -> server link and publish ``network_quality``.

Inputs:
  ``offload_transfers`` (cbo_interfaces/msg/TransferSample)        every offload call of the planner
  ``external_network_quality`` (cbo_interfaces/msg/NetworkQuality)  an external link monitor;
      takes precedence for goodput/RTT/loss while fresh (``external_timeout_s``)
  Both are taken only from the nodes named in ``trusted_transfer_publishers`` /
  ``trusted_external_publishers`` (others are ignored, logged and counted on /diagnostics).
  light active probes of the server's ``probe`` service (cbo_interfaces/srv/Probe): a small
      payload every ``probe_period_s`` for the RTT, and a ``bandwidth_probe_bytes`` payload at most
      every ``bandwidth_probe_period_s`` while no offload transfer large enough to be a goodput
      sample (``min_bandwidth_payload_bytes``) was seen for ``bandwidth_probe_idle_s`` (a planner
      sending only small frames would otherwise never learn that the link got faster). One probe
      in flight at a time; no answer within ``probe_timeout_s`` counts as lost; an absent
      service makes the server unreachable. A server that appears in the graph (also a
      restarted one, while the killed one is still there until its lease ends) is probed at
      once, and a probe still in flight to the old one is dropped uncounted; until the new
      server answers (for up to 5 s), an unanswered probe is sent again every 0.25 s (it may
      have arrived before the server had matched this node, and such a request is never
      answered). While the service is absent, silent or newly appeared, the graph is checked
      every 0.1 s.

Outputs:
  ``network_quality`` (cbo_interfaces/msg/NetworkQuality) at ``publish_rate_hz``
  ``/diagnostics`` (diagnostic_msgs/msg/DiagnosticArray) every ``diagnostics_period_s``

The estimation itself is ROS-free: :mod:`cbo_ros.core.network_estimator`.
"""

import threading
import time
from dataclasses import asdict, dataclass

from cbo_interfaces.msg import NetworkQuality, TransferSample
from cbo_interfaces.srv import Probe
from rclpy.node import Node

from cbo_ros.core.network_estimator import NetworkEstimator
from cbo_ros.nodes.ros_common import (Diagnostics, load_settings, Param, RESULT_QOS,
                                      SimClockWatch, spin_node, stamp_to_ns, TrustedPublishers)


@dataclass(frozen=True)
class EstimatorSettings:
    """Parameters of the NetworkEstimator (keyword arguments of its constructor)."""

    window_s: float
    stale_after_s: float
    rtt_alpha: float
    min_bandwidth_payload_bytes: int
    unreachable_after_s: float
    max_consecutive_failures: int
    external_timeout_s: float
    rate_percentile: float
    change_samples: int
    change_ratio: float
    change_min_s: float


@dataclass(frozen=True)
class MonitorSettings:
    """The monitor's own parameters (all read-only: loaded once)."""

    probe_enabled: bool
    probe_period_s: float
    probe_timeout_s: float
    probe_payload_bytes: int
    bandwidth_probe_bytes: int
    bandwidth_probe_period_s: float
    bandwidth_probe_idle_s: float
    publish_rate_hz: float
    diagnostics_period_s: float
    trusted_transfer_publishers: tuple
    trusted_external_publishers: tuple


# After a server appears, a probe without an answer after this long is sent again (for up to
# NEW_SERVER_REPROBE_FOR_S): the server may not yet have matched this node's request writer,
# and a request it received before that is dropped, never answered.
NEW_SERVER_REPROBE_S = 0.25
NEW_SERVER_REPROBE_FOR_S = 5.0

PARAMS = (
    Param('probe_enabled', True, 'Send active probes to the server probe service.'),
    Param('probe_period_s', 0.5, 'Period of the small RTT probes (seconds).', minimum=0.05,
          maximum=60.0),
    Param('probe_timeout_s', 1.0, 'A probe without an answer after this long is lost.',
          minimum=0.01, maximum=60.0),
    Param('probe_payload_bytes', 64, 'Payload of the small RTT probes (bytes).', minimum=0,
          maximum=4096),
    Param('bandwidth_probe_bytes', 16384,
          'Payload of the occasional goodput probe (bytes; 0 disables it).', minimum=0,
          maximum=16 * 1024 * 1024),
    Param('bandwidth_probe_period_s', 2.0, 'At most one goodput probe per this many seconds.',
          minimum=0.1, maximum=3600.0),
    Param('bandwidth_probe_idle_s', 1.0,
          'Goodput probes only when no offload transfer of at least min_bandwidth_payload_bytes '
          'was seen for this long.', minimum=0.0, maximum=3600.0),
    Param('publish_rate_hz', 5.0, 'Rate of network_quality messages (Hz).', minimum=0.1,
          maximum=100.0),
    Param('diagnostics_period_s', 1.0, 'Period of /diagnostics (seconds).', minimum=0.1,
          maximum=60.0),
    Param('trusted_transfer_publishers', ['offload_planner_node', 'early_exit_node'],
          "Nodes whose offload_transfers are used (relative names: this namespace; '*': any); "
          'samples of other publishers are ignored and reported.', convert=tuple),
    Param('trusted_external_publishers', [''],
          "Nodes whose external_network_quality is used (relative names: this namespace; '*': "
          "any; [''] (default): external estimates are ignored and reported).", convert=tuple),
)
ESTIMATOR_PARAMS = (
    Param('window_s', 3.0, 'Sliding window of the goodput, loss and sample count (seconds).',
          minimum=0.5, maximum=600.0),
    Param('stale_after_s', 2.0,
          'The estimate is stale when no measurement arrived for this long (seconds).',
          minimum=0.05, maximum=600.0),
    Param('rtt_alpha', 0.3, 'EWMA weight of a new RTT sample.', minimum=0.01, maximum=1.0),
    Param('min_bandwidth_payload_bytes', 4096,
          'Smallest transfer/probe used as a goodput sample (bytes).', minimum=1,
          maximum=16 * 1024 * 1024),
    Param('unreachable_after_s', 3.0,
          'The server is unreachable when nothing was answered for this long (seconds).',
          minimum=0.1, maximum=600.0),
    Param('max_consecutive_failures', 2,
          'This many failed probes/transfers in a row make the server unreachable.', minimum=1,
          maximum=1000),
    Param('external_timeout_s', 2.0,
          'An external estimate overrides the own one for this long after receipt.',
          minimum=0.05, maximum=600.0),
    Param('rate_percentile', 50.0,
          "Goodput = this percentile of the window's rate samples (timing noise only lowers a "
          'sample; a TBF burst raises it: the median by default).', minimum=1.0, maximum=100.0),
    Param('change_samples', 4,
          'Rate change detection: when this many newest goodput samples all lie beyond '
          "change_ratio of the older ones' median, the older ones are dropped (0: off).",
          minimum=0, maximum=100),
    Param('change_ratio', 1.5, 'Factor a new rate must differ by to count as a change.',
          minimum=1.05, maximum=100.0),
    Param('change_min_s', 0.1,
          'The change_samples must span at least this long (seconds): a burst of slow '
          'transfers is not a new rate.', minimum=0.0, maximum=60.0),
)


class NetworkMonitorNode(Node):
    """Turns transfer samples, probes and external estimates into ``network_quality``.

    Executor: its own process under ``spin_node`` (single-threaded), or the
    MultiThreadedExecutor of ``robot_bringup --single-process``, where a probe's done callback
    runs as an executor task beside the timers: ``_lock`` guards the estimator and the probe
    in flight for that case.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__('network_monitor_node', **kwargs)
        self.settings: MonitorSettings = load_settings(self, MonitorSettings, PARAMS)
        s = self.settings
        self.estimator_settings = load_settings(self, EstimatorSettings, ESTIMATOR_PARAMS)
        self.estimator = NetworkEstimator(**asdict(self.estimator_settings),
                                          start_time=time.monotonic())

        self.probe_client = self.create_client(Probe, 'probe')
        self.probe_service = self.resolve_service_name('probe')      # after remaps/namespace
        self.quality_pub = self.create_publisher(NetworkQuality, 'network_quality', 10)
        self.create_subscription(TransferSample, 'offload_transfers', self.on_transfer,
                                 RESULT_QOS)
        self.create_subscription(NetworkQuality, 'external_network_quality', self.on_external, 10)
        self.transfer_source = TrustedPublishers(self, 'offload_transfers',
                                                 s.trusted_transfer_publishers)
        self.external_source = TrustedPublishers(self, 'external_network_quality',
                                                 s.trusted_external_publishers)
        if not self.external_source.any and not self.external_source.trusted:
            self.get_logger().info('external_network_quality: no publisher trusted '
                                   '(trusted_external_publishers): external estimates are '
                                   'ignored')
        self.diagnostics = Diagnostics(self, hardware_id='robot_link')
        self.clock_watch = SimClockWatch(self, self.diagnostics)
        self.probe_timer = self.create_timer(s.probe_period_s, self.on_probe_timer)
        # While the probe service is absent (server down or not yet discovered), not answering
        # or newly appeared, look at the graph every 0.1 s so that a probe goes out as soon as
        # a server is back (cancelled otherwise: no extra wake-ups while it answers).
        self.service_watch = self.create_timer(0.1, self.on_service_watch)
        self.service_watch.cancel()
        self.publish_timer = self.create_timer(1.0 / s.publish_rate_hz, self.on_publish_timer)
        self.diagnostics_timer = self.create_timer(s.diagnostics_period_s, self.on_diagnostics)

        # Probe state, shared with the probe's done callback (see the class docstring).
        self._lock = threading.Lock()
        self._pending = None            # (future, sent monotonic, payload bytes, token)
        self._token = 0
        self._payloads = {}
        self._last_goodput_transfer = None
        self._last_bandwidth_probe = float('-inf')
        self._service_absent = False
        self._server_silent = False     # the last probe was lost; no answer since
        self._servers_seen = 0          # probe servers in the graph at the last look
        self._server_appeared = float('-inf')     # when the last new one appeared (monotonic)
        self._last_answer = float('-inf')         # when the last probe was answered
        self.probes_sent = 0
        self.probes_lost = 0
        self.transfers_seen = 0
        self.externals_seen = 0
        self.last = None
        self.get_logger().info(
            f"probing '{self.probe_service}' every {s.probe_period_s:g} s "
            f"({s.probe_payload_bytes} B; {s.bandwidth_probe_bytes} B goodput probes "
            f"when idle), publishing '{self.quality_pub.topic_name}' at {s.publish_rate_hz:g} Hz")

    # ------------------------------------------------------------------ inputs
    def on_transfer(self, msg, info):
        """Feed one offload transfer measured by the planner (a trusted one)."""
        if not self.transfer_source.accepts(info):
            return
        now = time.monotonic()
        if msg.payload_bytes >= self.estimator.min_bandwidth_payload_bytes:
            self._last_goodput_transfer = now
        self.transfers_seen += 1
        # The header stamp is the send time (ROS clock): map it onto the monotonic clock.
        sent_ns = stamp_to_ns(msg.header.stamp)
        sent = now - (self.get_clock().now().nanoseconds - sent_ns) / 1e9 if sent_ns else None
        if sent is not None and now - sent < msg.round_trip_ms / 1e3 - 0.005:
            sent = None         # not a send time (the answer needed round_trip_ms after it)
        with self._lock:
            self.estimator.add_transfer(now, msg.payload_bytes, msg.round_trip_ms, msg.server_ms,
                                        msg.success, msg.timed_out, sent=sent)

    def on_external(self, msg, info):
        """Take an external link estimate of a trusted publisher."""
        if not self.external_source.accepts(info):
            return
        self.externals_seen += 1
        with self._lock:
            self.estimator.set_external(time.monotonic(), msg.bandwidth_bps, msg.rtt_ms,
                                        msg.loss_rate, msg.server_reachable,
                                        msg.estimate_age_s, msg.stale, msg.samples)

    # ------------------------------------------------------------------ probes
    def _payload(self, size):
        if size not in self._payloads:
            self._payloads[size] = bytes(size)
        return self._payloads[size]

    def _expire_probe(self, now):
        """Count the in-flight probe as lost once it is older than the timeout."""
        with self._lock:
            if self._pending is None:
                return
            future, sent, size, _ = self._pending
            if now - sent < self.settings.probe_timeout_s:
                return
            self._pending = None
            self.estimator.add_probe(now, size, None)
        future.cancel()
        self.probe_client.remove_pending_request(future)
        self.probes_lost += 1
        self.get_logger().warning(f'probe of {size} B lost (no answer in '
                                  f'{self.settings.probe_timeout_s:g} s)',
                                  throttle_duration_sec=5.0)
        with self._lock:
            was_silent, self._server_silent = self._server_silent, True
        if not was_silent:
            self.service_watch.reset()

    def _new_server_appeared(self):
        """Whether the graph has more probe servers than at the last look.

        A killed server stays in the graph until its lease ends (20 s by default), so its
        restarted successor shows as one more server, not as the service coming back.
        """
        servers = self.count_services(self.probe_client.srv_name)
        appeared = servers > self._servers_seen
        self._servers_seen = servers
        return appeared

    def _drop_pending_probe(self):
        """Forget the probe in flight without counting it lost (a new server gets a new one)."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending[0].cancel()
            self.probe_client.remove_pending_request(pending[0])

    def on_probe_timer(self):
        """Send the next probe unless one is still in flight."""
        if not self.settings.probe_enabled:
            return
        now = time.monotonic()
        self._expire_probe(now)
        if self._new_server_appeared():
            self._server_appeared = now
            self.get_logger().info(f"a server of '{self.probe_service}' appeared "
                                   f'({self._servers_seen} in the graph): probing it')
            self._drop_pending_probe()
            self.service_watch.reset()
        with self._lock:
            pending = self._pending
        if (pending is not None and self._awaiting_new_server(now)
                and now - pending[1] >= NEW_SERVER_REPROBE_S):
            self._drop_pending_probe()          # maybe sent before the server matched us
        if self._pending is not None:
            return
        if not self.probe_client.service_is_ready():
            with self._lock:
                self.estimator.add_unreachable(now)
            if not self._service_absent:
                self.get_logger().warning(f"service '{self.probe_service}' not "
                                          'available: server unreachable')
                self.service_watch.reset()
            self._service_absent = True
            return
        if self._service_absent:              # the watch stops itself unless still silent
            self.get_logger().info(f"service '{self.probe_service}' available")
            self._service_absent = False
        size = self.settings.probe_payload_bytes
        idle = (self._last_goodput_transfer is None
                or now - self._last_goodput_transfer >= self.settings.bandwidth_probe_idle_s)
        # A goodput sample needs the base RTT first: the wire time is measured RTT minus it.
        with self._lock:
            have_base_rtt = self.estimator.base_rtt_ms(now) > 0
        if (self.settings.bandwidth_probe_bytes > 0 and idle and have_base_rtt
                and now - self._last_bandwidth_probe >= self.settings.bandwidth_probe_period_s):
            size = self.settings.bandwidth_probe_bytes
            self._last_bandwidth_probe = now
        request = Probe.Request()
        request.payload = self._payload(size)
        self._token += 1
        token = self._token
        with self._lock:
            sent = time.monotonic()
            future = self.probe_client.call_async(request)
            self._pending = (future, sent, size, token)
        self.probes_sent += 1
        future.add_done_callback(lambda f: self._on_probe_done(f, sent, size, token))

    def _awaiting_new_server(self, now):
        """Whether a server appeared in the last NEW_SERVER_REPROBE_FOR_S and has not answered."""
        with self._lock:
            last_answer = self._last_answer
        return (now - self._server_appeared < NEW_SERVER_REPROBE_FOR_S
                and last_answer < self._server_appeared)

    def on_service_watch(self):
        """Probe at once when the absent or silent server is back (or a new one appeared)."""
        with self._lock:
            silent = self._server_silent
        if (not self._service_absent and not silent
                and not self._awaiting_new_server(time.monotonic())):
            self.service_watch.cancel()
        elif self.probe_client.service_is_ready():
            self.on_probe_timer()

    def _on_probe_done(self, future, sent, size, token):
        now = time.monotonic()
        with self._lock:
            if self._pending is None or self._pending[3] != token or future.cancelled():
                return                      # already counted as lost
            self._pending = None
            if future.exception() is not None:
                self.probes_lost += 1
                self.estimator.add_probe(now, size, None)
                return
            self._server_silent = False
            first_of_new_server = self._last_answer < self._server_appeared
            self._last_answer = now
            rtt_ms = 1e3 * (now - sent)
            self.estimator.add_probe(now, size, rtt_ms)
        if first_of_new_server:
            self.get_logger().info(f'the new server answered {now - self._server_appeared:.2f} s '
                                   'after it appeared')
        received = future.result().received_bytes
        if received != size:
            self.get_logger().warning(f'server received {received} of {size} probe bytes',
                                      throttle_duration_sec=10.0)
        self.get_logger().debug(f'probe {size} B: {rtt_ms:.2f} ms')

    # ------------------------------------------------------------------ outputs
    def on_publish_timer(self):
        """Publish the current estimate."""
        now = time.monotonic()
        self._expire_probe(now)
        with self._lock:
            est = self.estimator.estimate(now)
        self.last = est
        msg = NetworkQuality()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.bandwidth_bps = float(est.bandwidth_bps)
        msg.rtt_ms = float(est.rtt_ms)
        msg.loss_rate = float(est.loss_rate)
        msg.server_reachable = bool(est.server_reachable)
        msg.estimate_age_s = float(est.estimate_age_s)
        msg.stale = bool(est.stale)
        msg.samples = int(est.samples)
        msg.source = est.source
        self.quality_pub.publish(msg)

    def on_diagnostics(self):
        """Publish the link state on /diagnostics."""
        est = self.last
        if est is None:
            return
        if not est.server_reachable:
            level, message = Diagnostics.ERROR, 'server unreachable'
            if self._service_absent:
                message += f" (service '{self.probe_service}' absent)"
        elif est.stale:
            level, message = Diagnostics.WARN, f'estimate stale ({est.estimate_age_s:.1f} s old)'
        elif est.loss_rate > 0.2:
            level, message = Diagnostics.WARN, f'high loss ({100 * est.loss_rate:.0f} %)'
        else:
            level, message = Diagnostics.OK, (f'{est.bandwidth_bps / 1e6:.1f} Mbit/s, '
                                              f'RTT {est.rtt_ms:.1f} ms')
        untrusted = '; '.join(filter(None, (self.transfer_source.report(),
                                            self.external_source.report())))
        if untrusted:
            level, message = max(level, Diagnostics.WARN), f'{message}; {untrusted}'
        self.diagnostics.publish(level, message, {
            'bandwidth_mbps': f'{est.bandwidth_bps / 1e6:.3f}',
            'rtt_ms': f'{est.rtt_ms:.2f}',
            'loss_rate': f'{est.loss_rate:.3f}',
            'server_reachable': est.server_reachable,
            'estimate_age_s': f'{est.estimate_age_s:.2f}',
            'stale': est.stale,
            'source': est.source,
            'samples_in_window': est.samples,
            'probe_service': self.probe_service,
            'probes_sent': self.probes_sent,
            'probes_lost': self.probes_lost,
            'transfers_seen': self.transfers_seen,
            'external_estimates_seen': self.externals_seen,
            'untrusted_transfers_ignored': self.transfer_source.rejected,
            'untrusted_externals_ignored': self.external_source.rejected,
        })


def main(args=None) -> None:
    """Run the node until SIGINT/SIGTERM."""
    spin_node(NetworkMonitorNode, 'network_monitor_node', startup_errors=(), args=args)


if __name__ == '__main__':
    main()
