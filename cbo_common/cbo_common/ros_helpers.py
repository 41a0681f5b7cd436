"""ROS helpers both sides use: stamps, class names, diagnostics, the /clock watch, shutdown.

(Class names live in the ROS-free ``cbo_common.class_names``, re-exported here.)

This package sits below cbo_ros (robot) and server_node (workstation): both declare it in their
package.xml, and neither imports the other's nodes.
"""

import contextlib
import threading
import time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType

from cbo_common.class_names import class_name, imagenet_class_names  # noqa: F401

NS_PER_S = 1_000_000_000
# With use_sim_time, a node whose clock has not started this long after start-up says so.
SIM_CLOCK_TIMEOUT_S = 5.0


def stamp_to_ns(stamp):
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns, stamp_type):
    """Integer nanoseconds -> a builtin_interfaces/Time instance of ``stamp_type``."""
    stamp = stamp_type()
    stamp.sec, stamp.nanosec = divmod(int(ns), NS_PER_S)
    return stamp


def stamp_problem(stamp):
    """Return why a received builtin_interfaces/Time is malformed, or '' when it is not.

    A message field accepts any uint32 ``nanosec``; a value of 1e9 or more is not a time.
    """
    if not 0 <= int(stamp.nanosec) < NS_PER_S:
        return f'nanosec {int(stamp.nanosec)} is not below 1e9'
    return ''


class Diagnostics:
    """Publishes one DiagnosticStatus of a node on /diagnostics (diagnostic_updater-like)."""

    OK = DiagnosticStatus.OK
    WARN = DiagnosticStatus.WARN
    ERROR = DiagnosticStatus.ERROR

    def __init__(self, node, hardware_id='robot'):
        self._node = node
        self._hardware_id = hardware_id
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def publish(self, level, message, values, stamp=None):
        """Publish ``values`` (a dict) with a level and a one-line summary."""
        status = DiagnosticStatus(level=level, name=f'{self._node.get_fully_qualified_name()}',
                                  message=message, hardware_id=self._hardware_id)
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = stamp if stamp is not None else self._node.get_clock().now().to_msg()
        array.status = [status]
        self._publisher.publish(array)


def shutdown_executor(executor, timeout_sec: float = 5.0, threads: int = 0) -> None:
    """Stop an executor after the callbacks already handed to its threads have finished.

    MultiThreadedExecutor.shutdown (rclpy Kilted) destroys its guard condition before it drains
    its thread pool, and each queued callback still triggers that guard condition ("cannot use
    Destroyable because destruction was requested", printed at exit as an exception never
    retrieved). With ``threads`` (its ``num_threads``) the pool is drained first, through the
    public API: the nodes leave the executor (nothing new is queued), then ``threads`` tasks
    that wait for one another are spun; they all run at once only when every pool thread has
    finished what was queued before them (only while the context is valid: after SIGINT has
    shut it down nothing can be spun, and the executor is just shut down). Destroy the nodes
    only after this.
    """
    if threads > 1 and executor.context.ok():
        for node in executor.get_nodes():
            executor.remove_node(node)
        all_running = threading.Barrier(threads)

        def hold() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                all_running.wait(timeout_sec)
        holds = [executor.create_task(hold) for _ in range(threads)]
        give_up = time.monotonic() + timeout_sec
        while not all(task.done() for task in holds) and time.monotonic() < give_up:
            executor.spin_once(timeout_sec=0.05)
    executor.shutdown(timeout_sec=timeout_sec)


def steady_clock() -> Clock:
    """Return a steady clock, for timers that must run whatever ``use_sim_time`` says."""
    return Clock(clock_type=ClockType.STEADY_TIME)


class SimClockWatch:
    """With ``use_sim_time``, report loudly when no ``/clock`` arrives instead of hanging.

    Under simulated time a node's clock reads 0 until the first ``/clock`` message, and its
    ROS-time timers (deadlines, diagnostics) never fire: the node would wait silently. This
    watch runs on a steady timer: once ``timeout_s`` has passed with the clock still at 0 it
    logs an error with the fix (every 10 s while it lasts) and publishes an ERROR status on
    ``/diagnostics`` itself; ``problem`` holds the text for the node's own diagnostics. When
    the clock starts it says so once and stops watching. Without ``use_sim_time``: nothing.
    """

    def __init__(self, node, diagnostics, timeout_s: float = SIM_CLOCK_TIMEOUT_S) -> None:
        self.node = node
        self.diagnostics = diagnostics
        self.timeout_s = float(timeout_s)
        self.problem = ''
        self.enabled = bool(node.get_parameter('use_sim_time').value)
        self.started_s = time.monotonic()
        self.timer = (node.create_timer(min(1.0, self.timeout_s), self.check,
                                        clock=steady_clock()) if self.enabled else None)

    def clock_started(self) -> bool:
        """Tell whether the node's clock runs (always true without use_sim_time)."""
        return not self.enabled or self.node.get_clock().now().nanoseconds > 0

    def check(self) -> None:
        """Report a clock that has not started after the timeout; stop once it runs."""
        if self.clock_started():
            if self.problem:
                self.node.get_logger().info('/clock arrived: simulated time runs')
            self.problem = ''
            self.node.destroy_timer(self.timer)
            return
        waited = time.monotonic() - self.started_s
        if waited < self.timeout_s:
            return
        self.problem = (f'use_sim_time is true but no /clock message has arrived in '
                        f'{waited:.0f} s: the node\'s time stands at 0, so frames cannot be '
                        'stamped or answered by their deadline. Fix: start a /clock source '
                        '(camera_node with publish_clock: true, or a bag player with --clock) '
                        'or set use_sim_time: false')
        self.node.get_logger().error(self.problem, throttle_duration_sec=10.0)
        self.diagnostics.publish(Diagnostics.ERROR, self.problem,
                                 {'use_sim_time': True, 'clock_started': False,
                                  'waited_s': f'{waited:.0f}'},
                                 stamp=system_stamp())


def system_stamp():
    """Return a stamp of the system clock (for messages sent while ROS time stands at 0)."""
    return Clock(clock_type=ClockType.SYSTEM_TIME).now().to_msg()
