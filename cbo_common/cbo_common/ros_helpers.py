"""ROS helpers both sides use: stamps, class names, the diagnostics publisher, executor shutdown.

(Class names live in the ROS-free ``cbo_common.class_names``, re-exported here.)

This package sits below cbo_ros (robot) and server_node (workstation): both declare it in their
package.xml, and neither imports the other's nodes.
"""

import contextlib
import threading
import time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from cbo_common.class_names import class_name, imagenet_class_names  # noqa: F401

NS_PER_S = 1_000_000_000


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
