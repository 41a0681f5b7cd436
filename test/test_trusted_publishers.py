"""TrustedPublishers: the publisher-GID check behind the planner's and monitor's trusted inputs.

The graph is a stand-in here (a class with rclpy's graph-query methods), so that the order in
which DDS discovery fills it in can be set: the live behaviour is covered by the spoofing tests.
"""

import time
from types import SimpleNamespace

from cbo_ros.nodes.ros_common import TrustedPublishers

MONITOR_GID = bytes(range(16))
FOREIGN_GID = bytes(range(16, 32))


class GraphStandIn:
    """The node methods TrustedPublishers calls, over a settable list of publishers."""

    def __init__(self):
        self.publishers = []           # (namespace, node name, GID)
        self.queries = 0

    def resolve_topic_name(self, topic):
        return '/robot/' + topic

    def get_namespace(self):
        return '/robot'

    def get_publishers_info_by_topic(self, topic):
        self.queries += 1
        return [SimpleNamespace(node_namespace=ns, node_name=name, endpoint_gid=list(gid))
                for ns, name, gid in self.publishers]

    def get_logger(self):
        return SimpleNamespace(warning=lambda *args, **kwargs: None)


def message_from(gid):
    return {'publisher_gid': {'data': gid}}


def test_only_the_named_nodes_publisher_is_accepted():
    graph = GraphStandIn()
    graph.publishers = [('/robot', 'network_monitor_node', MONITOR_GID),
                        ('/robot', 'spoofer', FOREIGN_GID)]
    trusted = TrustedPublishers(graph, 'network_quality', ['network_monitor_node'], refresh_s=0)
    assert trusted.accepts(message_from(MONITOR_GID))
    assert not trusted.accepts(message_from(FOREIGN_GID))
    assert trusted.last_rejected == '/robot/spoofer'
    assert (trusted.accepted, trusted.rejected) == (1, 1)


def test_a_publisher_listed_before_its_node_name_is_accepted_once_the_name_is_known():
    """Discovery can list an endpoint before the node that owns it ('_NODE_NAME_UNKNOWN_'):
    the first look must not pin that publisher as untrusted."""
    graph = GraphStandIn()
    graph.publishers = [('_NODE_NAMESPACE_UNKNOWN_', '_NODE_NAME_UNKNOWN_', MONITOR_GID)]
    trusted = TrustedPublishers(graph, 'network_quality', ['network_monitor_node'],
                                refresh_s=0.05)
    assert not trusted.accepts(message_from(MONITOR_GID))
    graph.publishers = [('/robot', 'network_monitor_node', MONITOR_GID)]
    assert not trusted.accepts(message_from(MONITOR_GID)), 'looked again within refresh_s'
    time.sleep(0.06)
    assert trusted.accepts(message_from(MONITOR_GID))
    queries = graph.queries
    for _ in range(5):                 # trusted and cached: no more graph queries
        assert trusted.accepts(message_from(MONITOR_GID))
    assert graph.queries == queries
