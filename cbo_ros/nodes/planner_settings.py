"""Parameters of offload_planner_node: declarations and the typed settings they load into.

Units are converted here only (``*_ms``/``*_s`` parameters become ``*_ns`` or seconds fields).
Run-time settable (``read_only=False``): deadline_ms, deadline_margin_ms, jpeg_quality, top_k,
bandwidth_cap_bps; the node validates them in its on-set callback and applies them in its
post-set callback by swapping in a new :class:`PlannerSettings`.
"""

from dataclasses import dataclass
from typing import Tuple

from cbo_ros.nodes.ros_common import ms_to_ns, ms_to_s, Param, s_to_ns, TRANSPORTS

RELIABILITIES = ('auto', 'reliable', 'best_effort')


@dataclass(frozen=True)
class PlannerSettings:
    """The planner's parameters, loaded once (and replaced whole when one is set)."""

    strategy: str
    calibration_file: str
    offload_resolutions: Tuple[int, ...]   # [] or [0]: those of the calibration
    deadline_ns: int
    margin_ns: int
    max_check_ns: int
    jpeg_quality: int
    top_k: int
    offload_service: str
    initial_bandwidth_bps: float
    initial_rtt_s: float
    bandwidth_cap_bps: float
    quality_timeout_ns: int
    max_timeouts: int
    backoff_ns: int
    late_grace_ns: int
    adapt_server_time: bool
    server_time_probe_s: float
    server_time_percentile: float
    server_time_window_s: float
    size_refresh_frames: int
    max_pending: int
    reliability: str
    depth: int
    diagnostics_period_s: float
    service_queue_depth: int
    input_transport: str
    trusted_quality_publishers: Tuple[str, ...]
    premodel_file: str

    def __post_init__(self) -> None:
        """Refuse values no range of the descriptors catches."""
        if self.margin_ns >= self.deadline_ns:
            raise ValueError(f'deadline_margin_ms ({self.margin_ns / 1e6:g}) must be below '
                             f'deadline_ms ({self.deadline_ns / 1e6:g})')
        if self.reliability not in RELIABILITIES:
            raise ValueError(f"reliability must be one of {', '.join(RELIABILITIES)}, got "
                             f"'{self.reliability}'")
        if self.input_transport not in TRANSPORTS:
            raise ValueError(f"input_transport must be {' or '.join(TRANSPORTS)}, got "
                             f"'{self.input_transport}'")


def _resolutions(values) -> Tuple[int, ...]:
    return tuple(int(r) for r in values if int(r) > 0)


PARAMS = (
    Param('strategy', 'cbo',
          'Planner strategy: cbo, cbo_adaptive, cbo_uncalibrated, local_only, server_only_<r>, '
          'raw_threshold, calibrated_threshold, bandwidth_driven, premodel or premodel_cbo '
          '(oracle and cbo_exact need hindsight: evaluator only).'),
    Param('calibration_file', '', 'Calibration bundle (empty: the default path).'),
    Param('offload_resolutions', [0],
          'Offload resolutions in pixels ([0]: those of the calibration).',
          convert=_resolutions),
    Param('deadline_ms', 300.0,
          'Answer deadline of a frame, ms after its stamp (run-time settable: applies to '
          'frames that arrive afterwards).', minimum=10.0, maximum=60000.0, read_only=False,
          field='deadline_ns', convert=ms_to_ns),
    Param('deadline_margin_ms', 25.0,
          'Publish the fallback answer this long before the deadline (below deadline_ms; '
          'run-time settable).',
          minimum=0.0, maximum=1000.0, read_only=False, field='margin_ns', convert=ms_to_ns),
    Param('deadline_check_ms', 50.0,
          'Longest period of the deadline timer: it is re-armed for the nearest due frame, and '
          'wakes at least this often.', minimum=1.0, maximum=1000.0, field='max_check_ns',
          convert=ms_to_ns),
    Param('jpeg_quality', 90, 'JPEG quality of offloads (run-time settable).', minimum=1,
          maximum=100, read_only=False),
    Param('top_k', 5, 'Classes the server returns (run-time settable).', minimum=1,
          maximum=255, read_only=False),
    Param('offload_service', 'offload', 'Offload service name.'),
    Param('initial_bandwidth_bps', 10e6,
          'Bandwidth assumed until network_quality arrives (bit/s).', minimum=0.0,
          maximum=1e12),
    Param('initial_rtt_ms', 5.0, 'RTT assumed until network_quality arrives.', minimum=0.0,
          maximum=60000.0, field='initial_rtt_s', convert=ms_to_s),
    Param('bandwidth_cap_bps', 0.0,
          'Upper bound on the bandwidth the planner may use (bit/s; 0: no cap). Can be changed '
          'at run time.', minimum=0.0, maximum=1e12, read_only=False),
    Param('network_quality_timeout_s', 5.0,
          'A network_quality message older than this is ignored.', minimum=0.1,
          maximum=3600.0, field='quality_timeout_ns', convert=s_to_ns),
    Param('max_consecutive_timeouts', 3,
          'Offloads in a row without an answer before the server is treated as unreachable.',
          minimum=1, maximum=1000, field='max_timeouts'),
    Param('server_backoff_s', 2.0, 'How long an unresponsive server is not offloaded to '
          '(ended early when the network monitor reports the server reachable again).',
          minimum=0.0, maximum=3600.0, field='backoff_ns', convert=s_to_ns),
    Param('late_response_grace_s', 3.0,
          'Wait this long after a deadline for a late response before giving the call up.',
          minimum=0.0, maximum=600.0, field='late_grace_ns', convert=s_to_ns),
    Param('adapt_server_time', True,
          'Plan with the measured server time instead of the calibration profile: profile + a '
          'percentile of (round trip - planned transfer - RTT - server queue_ms - profile) '
          'over recent calls; the profile again when no call was measured for '
          'server_time_window_s.'),
    Param('server_time_probe_s', 3.0,
          'With adapt_server_time and no offload for this long, offload one frame at the '
          'smallest resolution at most this often to measure the server (the frame keeps its '
          'local answer; 0: never).', minimum=0.0, maximum=3600.0),
    Param('server_time_percentile', 75.0,
          'Percentile of the measured server times the planner plans with.', minimum=0.0,
          maximum=100.0),
    Param('server_time_window_s', 5.0, 'Measured server times older than this are forgotten.',
          minimum=0.5, maximum=3600.0),
    Param('size_refresh_frames', 5,
          'Measure the JPEG size of every offload resolution on every this many frames (1: '
          'every frame), in a background thread; the planner plans with the latest sizes and '
          'encodes only the chosen resolution.', minimum=1, maximum=1000),
    Param('max_pending_frames', 200,
          'Frames tracked at once; the oldest are answered early beyond this.', minimum=1,
          maximum=100000, field='max_pending'),
    Param('reliability', 'auto',
          "QoS reliability of the image_raw subscription: 'auto' (reliable, best effort once a "
          "best-effort camera is seen), 'reliable' or 'best_effort'."),
    Param('depth', 30, 'QoS history depth of image_raw.', minimum=1, maximum=1000),
    Param('diagnostics_period_s', 1.0, 'Period of the /diagnostics status.', minimum=0.1,
          maximum=60.0),
    Param('service_queue_depth', 100, 'History depth of the Offload client (responses).',
          minimum=1, maximum=10000),
    Param('input_transport', 'raw',
          "Frames read: 'raw' (sensor_msgs/Image on image_raw) or 'compressed' "
          '(sensor_msgs/CompressedImage, JPEG/PNG, on image_raw/compressed: the image_transport '
          'convention, following a remap of image_raw).'),
    Param('trusted_quality_publishers', ['network_monitor_node'],
          'Nodes whose network_quality is used (relative names: this namespace; '
          "'*': any); messages of other publishers are ignored and reported.",
          convert=tuple),
    Param('premodel_file', 'default',
          'Premodel of strategy premodel_cbo (the server profile of the model each local '
          "result names): 'default' (artifacts/calibration/premodel.npz) or a path; unused by "
          'other strategies.'),
)
