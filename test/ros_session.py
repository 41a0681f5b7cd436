"""An in-process rclpy client node on its own context and DDS domain, for integration tests."""

import copy
import time

import rclpy
from rclpy.qos import qos_profile_services_default
from rclpy.executors import SingleThreadedExecutor


class RosSession:
    """A node in a private context on ``domain_id`` with helpers to spin until something holds."""

    def __init__(self, domain_id, name='test_client', namespace=None):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context, namespace=namespace)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def client(self, srv_type, name, depth=100):
        """A service client whose response queue holds a burst of ``depth`` answers."""
        qos = copy.copy(qos_profile_services_default)
        qos.depth = depth
        return self.node.create_client(srv_type, name, qos_profile=qos)

    def spin_until(self, predicate, timeout):
        """Spin until predicate() is truthy or timeout seconds pass; return its last value."""
        end = time.monotonic() + timeout
        value = predicate()
        while not value and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
            value = predicate()
        return value

    def spin_for(self, seconds):
        """Spin for a fixed time."""
        self.spin_until(lambda: False, seconds)

    def call(self, client, request, timeout=10.0):
        """Call a service and wait for the response (None on timeout)."""
        future = client.call_async(request)
        self.spin_until(future.done, timeout)
        if not future.done():
            client.remove_pending_request(future)
            return None
        return future.result()

    def call_many(self, client, requests, timeout=20.0):
        """Send all requests at once; return the responses (None where none arrived)."""
        futures = [client.call_async(r) for r in requests]
        self.spin_until(lambda: all(f.done() for f in futures), timeout)
        return [f.result() if f.done() else None for f in futures]

    def close(self):
        """Destroy the node and shut the context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
