"""Helpers shared by the robot nodes: parameters, QoS, time stamps, diagnostics, class names.

Executors: each robot node runs in its own process under :func:`spin_node`, i.e. ``rclpy.spin``
(a SingleThreadedExecutor: a node's callbacks never overlap). ``robot_bringup
--single-process`` instead adds all four nodes to one MultiThreadedExecutor (or the
single-threaded EventsExecutor): only there can callbacks of one node run concurrently.
"""

import copy
import dataclasses
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

# Shared with server_node (package cbo_common); re-exported for the robot nodes.
from cbo_common.ros_helpers import (class_name, Diagnostics, ns_to_stamp,  # noqa: F401
                                    shutdown_executor, SimClockWatch, stamp_to_ns,
                                    steady_clock, system_stamp)
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions

from cbo_ros.assets import paths

RELIABILITY = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
               'reliable': ReliabilityPolicy.RELIABLE}
# Frame transports of the readers (image_transport names): sensor_msgs/Image on image_raw, or
# sensor_msgs/CompressedImage (JPEG/PNG) on image_raw/compressed.
TRANSPORTS = ('raw', 'compressed')

# Final results, decisions and transfer samples are small: keep them reliable so a recorder or
# an evaluator sees every one.
RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                        reliability=ReliabilityPolicy.RELIABLE)
# Their writers also offer transient-local: a recorder (cbo_record, ros2 bag, the test bed's
# Recorder) or tool that subscribes with this profile after the run started still gets the
# last 100 of each topic. Readers of RESULT_QOS (volatile) are compatible and get no history.
RESULT_HISTORY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
# local_result (classifier -> planner): also transient-local, so results published before the
# planner's reader was matched (processes start at their own pace) still reach it. A volatile
# reader (recorder, tools) is compatible with it.
LOCAL_RESULT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                              reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def declare(node, name, default, description, minimum=None, maximum=None, step=None,
            read_only=True, array_of=None):
    """Declare a parameter with a descriptor (and a range for numbers); return its value.

    Read-only unless the node applies changes at run time (``read_only=False``), so that
    ``ros2 param set`` of a parameter read only at start-up is refused instead of ignored.

    An empty list default has no type of its own: pass ``array_of`` (``str``, ``int`` or
    ``float``) to declare it as a typed array.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if isinstance(default, bool):
        pass
    elif isinstance(default, int) and (minimum is not None or maximum is not None):
        descriptor.integer_range = [IntegerRange(
            from_value=int(minimum if minimum is not None else -2 ** 31),
            to_value=int(maximum if maximum is not None else 2 ** 31 - 1),
            step=int(step or 0))]
    elif isinstance(default, float) and (minimum is not None or maximum is not None):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(minimum if minimum is not None else -1e300),
            to_value=float(maximum if maximum is not None else 1e300),
            step=float(step or 0.0))]
    if isinstance(default, list) and not default:
        # An empty list has no type of its own: declare it by its intended element type.
        kind = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY}.get(
            array_of, Parameter.Type.INTEGER_ARRAY)
        return node.declare_parameter(name, kind, descriptor).value or []
    return node.declare_parameter(name, default, descriptor).value


# Unit conversions of parameter values into settings fields (the one place they happen).
def ms_to_ns(value: float) -> int:
    """Milliseconds -> integer nanoseconds."""
    return int(value * 1e6)


def s_to_ns(value: float) -> int:
    """Seconds -> integer nanoseconds."""
    return int(value * 1e9)


def ms_to_s(value: float) -> float:
    """Milliseconds -> seconds."""
    return value / 1e3


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a node: how it is declared and which settings field it fills.

    ``field`` defaults to the parameter name; ``convert`` turns the parameter value into the
    field's value (units). ``read_only=False`` marks a parameter the node applies at run time.
    """

    name: str
    default: Any
    description: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    read_only: bool = True
    array_of: Optional[type] = None
    field: Optional[str] = None
    convert: Optional[Callable[[Any], Any]] = None

    def value(self, raw: Any) -> Any:
        """Return the settings value of the parameter value ``raw``."""
        return self.convert(raw) if self.convert is not None else raw


def load_settings(node: Node, settings_class: type, params: Sequence[Param]):
    """Declare ``params`` on ``node`` and return them as one frozen ``settings_class``.

    The settings class validates itself (``__post_init__`` raising ValueError with the reason).
    """
    values = {}
    for p in params:
        raw = declare(node, p.name, p.default, p.description, p.minimum, p.maximum,
                      read_only=p.read_only, array_of=p.array_of)
        values[p.field or p.name] = p.value(raw)
    return settings_class(**values)


def updated_settings(settings, params: Sequence[Param], parameters: Iterable[Parameter]):
    """Return ``settings`` with the values of ``parameters`` (others ignored; may raise)."""
    by_name = {p.name: p for p in params}
    changes = {(by_name[q.name].field or q.name): by_name[q.name].value(q.value)
               for q in parameters if q.name in by_name}
    return dataclasses.replace(settings, **changes) if changes else settings


def validate_parameters(settings_of: Callable[[], Any], params: Sequence[Param]):
    """Return an on-set parameters callback that refuses values the settings would reject.

    Convention of the robot nodes: validate in the on-set callback (this), apply in a post-set
    callback (``add_post_set_parameters_callback``), which swaps in ``updated_settings``.
    """
    def on_set(parameters):
        try:
            updated_settings(settings_of(), params, parameters)
        except (ValueError, TypeError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)
    return on_set


def frame_qos(reliability='reliable', depth=30):
    """Return the QoS of camera frames (``image_raw``): KEEP_LAST ``depth``, volatile.

    Robot-local frames default to reliable with a depth of 30 (1 s at 30 fps) on the writer and
    the readers: a reader whose executor stalls gets the frames from its own history or by a
    repair from the writer's, instead of losing them (with best effort, or a writer depth of 5,
    a stalled reader lost frames, and a frame no robot node saw can never be answered). A
    KEEP_LAST writer never blocks on a slow reliable reader. 'best_effort' remains available
    (e.g. for frames crossing a lossy radio link, where waiting for repairs is pointless).
    """
    if reliability not in RELIABILITY:
        raise ValueError(f"reliability must be one of {', '.join(RELIABILITY)}, got "
                         f"'{reliability}'")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=RELIABILITY[reliability],
                      durability=qos_profile_sensor_data.durability)


class FrameSubscription:
    """The ``image_raw`` subscription of a robot node; copes with a best-effort camera writer.

    ``transport``: ``'raw'`` subscribes ``image_raw`` (sensor_msgs/Image); ``'compressed'``
    follows image_transport's ``compressed`` convention: sensor_msgs/CompressedImage on
    ``<image_raw>/compressed``, where ``<image_raw>`` is the resolved (namespaced, remapped)
    name, so ``-r image_raw:=/camera/image_raw`` reads ``/camera/image_raw/compressed``.
    Convert either message with ``cbo_ros.perception.media.frame_msg_to_rgb``.

    ``reliability``: ``'auto'`` (default) starts reliable (``frame_qos``: a briefly stalled
    reader loses nothing from a reliable camera such as camera_node) and, when a best-effort
    writer appears (``SensorDataQoS``, common for real camera drivers; it cannot match a
    reliable reader and no frame would arrive), re-creates the subscription best effort and
    says so. ``'reliable'`` or ``'best_effort'`` fix the policy: an incompatible writer is then
    logged as an error with the fix, and ``problem`` holds it for the node's diagnostics.
    ``note`` describes an automatic switch.

    The standard QoS overrides apply on top (``QoSOverridingOptions.with_default_policies``:
    read-only parameters ``qos_overrides.<resolved topic>.subscription.{history,depth,
    reliability}``, e.g. ``qos_overrides./robot1/image_raw.subscription.reliability:
    best_effort``). The automatic switch starts from the overridden profile; the re-created
    best-effort subscription keeps its history and depth, and the override parameters keep
    describing the start-up profile (the switch is in ``note`` and the node's diagnostics).
    """

    def __init__(self, node: Node, callback: Callable[[Any], None], reliability: str = 'auto',
                 depth: int = 30, callback_group=None, transport: str = 'raw') -> None:
        if reliability not in ('auto',) + tuple(RELIABILITY):
            raise ValueError(f"reliability must be auto, {' or '.join(RELIABILITY)}, got "
                             f"'{reliability}'")
        if transport not in TRANSPORTS:
            raise ValueError(f"input_transport must be {' or '.join(TRANSPORTS)}, got "
                             f"'{transport}'")
        self.node = node
        self.transport = transport
        self.topic = ('image_raw' if transport == 'raw'
                      else node.resolve_topic_name('image_raw') + '/compressed')
        self.callback = callback
        self.callback_group = callback_group
        self.auto = reliability == 'auto'
        self.problem = ''
        self.note = ''
        self._switch_timer = None
        self.subscription = self._subscribe(
            frame_qos('reliable' if self.auto else reliability, depth),
            QoSOverridingOptions.with_default_policies())

    @property
    def qos(self) -> QoSProfile:
        """The QoS profile of the subscription (overrides applied)."""
        return self.subscription.qos_profile

    def _subscribe(self, qos: QoSProfile, overriding: Optional[QoSOverridingOptions] = None):
        from rclpy.event_handler import SubscriptionEventCallbacks
        from sensor_msgs.msg import CompressedImage, Image
        return self.node.create_subscription(
            Image if self.transport == 'raw' else CompressedImage, self.topic, self.callback,
            qos, callback_group=self.callback_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self.on_incompatible_qos),
            qos_overriding_options=overriding)

    def on_incompatible_qos(self, info) -> None:
        """Switch to best effort (auto) or report a writer this reader cannot match."""
        policy = getattr(info.last_policy_kind, 'name', str(info.last_policy_kind))
        policy = policy.replace('RMW_QOS_POLICY_', '')
        if (self.auto and policy == 'RELIABILITY'
                and self.qos.reliability == ReliabilityPolicy.RELIABLE):
            if self._switch_timer is None:     # not from inside the subscription's own event
                self._switch_timer = self.node.create_timer(0.0, self._switch_to_best_effort)
            return
        self.problem = (f'an {self.topic} publisher offers QoS incompatible with this reader '
                        f'({policy}): no frames arrive from it')
        hint = (' A camera publishing best effort (SensorDataQoS) needs `reliability: '
                'best_effort` (or auto) for npu_classifier_node and offload_planner_node '
                '(config/robot.yaml).' if policy == 'RELIABILITY' else '')
        self.node.get_logger().error(f'{self.problem}.{hint}')

    def _switch_to_best_effort(self) -> None:
        self.node.destroy_timer(self._switch_timer)
        qos = copy.copy(self.qos)
        qos.reliability = ReliabilityPolicy.BEST_EFFORT
        self.node.destroy_subscription(self.subscription)
        self.subscription = self._subscribe(qos)
        self.note = f'{self.topic}: best effort (a best-effort camera writer was seen)'
        self.node.get_logger().warning(
            f'an {self.topic} publisher is best effort (SensorDataQoS): this reader switched to '
            'best effort to receive its frames (reliability: auto); frames dropped under load '
            'can no longer be repaired')


class RateMeter:
    """Events per second over a sliding window of timestamps (seconds)."""

    def __init__(self, window_s=5.0):
        self.window_s = float(window_s)
        self._times = []

    def tick(self, now_s: float) -> None:
        """Count one event at ``now_s``."""
        self._times.append(now_s)
        self._trim(now_s)

    def rate(self, now_s: float) -> float:
        """Return the events per second of the window ending at ``now_s``."""
        self._trim(now_s)
        if not self._times:
            return 0.0
        return len(self._times) / self.window_s

    def _trim(self, now_s):
        cutoff = now_s - self.window_s
        drop = 0
        while drop < len(self._times) and self._times[drop] < cutoff:
            drop += 1
        if drop:
            del self._times[:drop]


# The calibration bundle's default offload resolutions (cbo_ros.core.calibration).
DEFAULT_OFFLOAD_RESOLUTIONS = list(paths.OFFLOAD_RESOLUTIONS)


def load_bundle(logger, calibration_file, offload_resolutions=None):
    """Load the calibration bundle, or fall back to the explicit identity calibration.

    Returns ``(bundle, calibrated, message)``; ``calibrated`` is False for the fallback (the
    message says why, and is logged as a warning).
    """
    from cbo_ros.assets.paths import default_calibration_file, install_hint
    from cbo_ros.core.calibration import CalibrationBundle, CalibrationError, load_calibration
    path = calibration_file or str(default_calibration_file())
    try:
        bundle = load_calibration(path)
        return bundle, True, f'calibration {path}'
    except (CalibrationError, OSError, ValueError, KeyError) as error:
        resolutions = list(offload_resolutions or DEFAULT_OFFLOAD_RESOLUTIONS)
        message = (f'calibration file {path} not usable ({error}); using the UNCALIBRATED '
                   f'identity fallback (confidence = max softmax, resolutions {resolutions}); '
                   'fix: run `cbo_calibrate` (in a checkout `make calibrate`), set the '
                   f'calibration_file parameter, or {install_hint()}')
        logger.warning(message)
        return CalibrationBundle.identity(resolutions), False, message


def spin_node(node_class: Callable[[], Node], name: str,
              startup_errors: Tuple[type, ...] = (), args: Optional[list] = None) -> None:
    """Run one node in its own process until SIGINT/SIGTERM; exit 1 when it cannot start.

    The executor is ``rclpy.spin``'s SingleThreadedExecutor: the node's callbacks never run
    concurrently. A node with a ``finished`` attribute (an rclpy Future, e.g. camera_node with
    ``exit_when_done``) is spun until that future completes, and the process then exits 0.

    ``startup_errors`` are the exceptions that mean a configuration problem (bad parameter,
    missing model file): raised while the node is constructed they are logged as fatal with the
    reason instead of a traceback, like a parameter of the wrong type or out of its range. An
    exception escaping a callback later is a bug, not a start-up problem: it is logged as such
    (with its traceback) and the process exits 1 too, unless SIGINT/SIGTERM had already shut
    the context down (e.g. during a publish).
    """
    logger = rclpy.logging.get_logger(name)
    code = 0
    try:
        with rclpy.init(args=args):
            try:
                node = node_class()
            except (ParameterException,) + tuple(startup_errors) as error:
                logger.fatal(f'cannot start: {error}')
                code = 1
            else:
                code = _spin(node, name, logger)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    sys.exit(code)


def _spin(node: Node, name: str, logger) -> int:
    try:
        finished = getattr(node, 'finished', None)
        if finished is None:
            rclpy.spin(node)
        else:
            rclpy.spin_until_future_complete(node, finished)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:  # noqa: BLE001 - report the crash with its traceback, exit non-zero
        if rclpy.ok():      # else SIGINT/SIGTERM shut the context down under a callback
            logger.fatal(f'{name} stopped by an unexpected error:\n{traceback.format_exc()}')
            return 1
    finally:
        node.destroy_node()
    return 0


class TrustedPublishers:
    """Accept a topic's messages only from publishers of named nodes (the graph's identity).

    ``trusted`` holds node names: relative (``network_monitor_node``: in this node's namespace)
    or fully qualified (``/robot1/network_monitor_node``); ``'*'`` accepts every publisher.
    A message is accepted when its publisher GID (rclpy message info) belongs to an endpoint
    of a trusted node in the ROS graph (``get_publishers_info_by_topic``). Without SROS2, node
    names are not authenticated: this stops a stray or foreign node with another name (the
    common case: a tool, a second robot, a test publisher), not one that impersonates the
    trusted node's name; a second publisher under the trusted name is reported as such.
    """

    def __init__(self, node: Node, topic: str, trusted: Sequence[str],
                 refresh_s: float = 0.1) -> None:
        self.node = node
        self.topic = node.resolve_topic_name(topic)
        namespace = node.get_namespace().rstrip('/')
        self.any = '*' in trusted
        self.trusted = {name if name.startswith('/') else f'{namespace}/{name}'
                        for name in trusted if name and name != '*'}
        self.refresh_ns = int(refresh_s * 1e9)
        self._gids = {}                  # GID bytes -> fully qualified node name
        self._refreshed_ns = None
        self.accepted = 0
        self.rejected = 0
        self.last_rejected = ''          # fully qualified name of the last refused publisher
        self.last_rejected_ns = 0
        self.impersonated = ''           # a trusted name with more than one publisher

    def _refresh(self, now_ns: int) -> None:
        self._refreshed_ns = now_ns
        gids, by_name = {}, {}
        for info in self.node.get_publishers_info_by_topic(self.topic):
            name = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            gids[bytes(info.endpoint_gid)] = name
            by_name[name] = by_name.get(name, 0) + 1
        self._gids = gids
        doubled = [n for n in self.trusted if by_name.get(n, 0) > 1]
        self.impersonated = ', '.join(sorted(doubled))

    def accepts(self, info) -> bool:
        """Return whether the message with rclpy message info ``info`` comes from a trusted node."""
        if self.any:
            self.accepted += 1
            return True
        gid = bytes((info or {}).get('publisher_gid', {}).get('data', b'') or b'')
        now_ns = time.monotonic_ns()
        stale = (self._refreshed_ns is None
                 or now_ns - self._refreshed_ns >= self.refresh_ns)
        if self._gids.get(gid) not in self.trusted and stale:
            # A publisher not seen yet, or not trusted at the last look: the graph may have
            # listed its endpoint before its node's name was known (rate limited).
            self._refresh(now_ns)
        name = self._gids.get(gid, '')
        if name in self.trusted:
            self.accepted += 1
            return True
        self.rejected += 1
        self.last_rejected_ns = now_ns
        self.last_rejected = name or f'unknown publisher (GID {gid.hex()[:16]})'
        self.node.get_logger().warning(
            f'{self.topic}: message from {self.last_rejected} ignored: not a trusted publisher '
            f'({", ".join(sorted(self.trusted)) or "none trusted"})', throttle_duration_sec=5.0)
        return False

    def report(self, recent_s: float = 10.0) -> str:
        """Return a diagnostic line ('' when none): recent refusals, a doubled trusted name.

        Refusals older than ``recent_s`` seconds stay in the counts only, so the warning clears.
        """
        parts = []
        if self.rejected and time.monotonic_ns() - self.last_rejected_ns < recent_s * 1e9:
            parts.append(f'{self.rejected} {self.topic} messages from untrusted publishers '
                         f'ignored (last: {self.last_rejected})')
        if self.impersonated:
            parts.append(f'{self.topic}: more than one publisher named {self.impersonated}')
        return '; '.join(parts)


class SequenceGaps:
    """Messages a reader never received, from gaps in each writer's publication sequence numbers.

    ``observe`` takes the rclpy message info of every message received (subscription callback
    with two arguments). A writer numbers its samples 1, 2, 3, ...; a sample it published that
    did not reach this reader (best-effort loss, or a history that overflowed) leaves a gap.
    """

    def __init__(self) -> None:
        self.last = {}                 # writer GID -> last sequence number received
        self.received = 0
        self.missing = 0
        self.last_gap_s = None

    def observe(self, info) -> int:
        """Account for one received message; return how many before it were missed."""
        self.received += 1
        info = info or {}
        number = info.get('publication_sequence_number')
        if not number:
            return 0
        gid = bytes((info.get('publisher_gid') or {}).get('data', b'') or b'')
        previous = self.last.get(gid)
        self.last[gid] = max(number, previous or 0)
        gap = number - previous - 1 if previous is not None and number > previous else 0
        if gap:
            self.missing += gap
            self.last_gap_s = time.monotonic()
        return gap

    def recent(self, now_s: float, window_s: float) -> bool:
        """Whether a gap was seen in the last ``window_s`` seconds."""
        return self.last_gap_s is not None and now_s - self.last_gap_s <= window_s
