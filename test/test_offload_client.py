"""OffloadClient's back-off: when unanswered calls stop offloading, and what ends it.

A real rclpy node and client on a private domain with no server: calls stay unanswered, as
when a server is killed or has not yet matched the robot's endpoints.
"""

import pytest

from ros_helpers import unique_domain_id
from ros_session import RosSession

MS = 1_000_000
BACKOFF_NS = 2_000 * MS


@pytest.fixture
def offload_client():
    from std_msgs.msg import Header
    from cbo_ros.nodes.offload_client import OffloadClient
    session = RosSession(unique_domain_id(), name='offload_client_test')
    client = OffloadClient(session.node, 'offload', queue_depth=10, max_timeouts=3,
                           backoff_ns=BACKOFF_NS, late_grace_ns=50 * MS,
                           on_done=lambda call, future: None)
    sent = []

    def send(send_ns, deadline_ns):
        call = client.send(Header(), len(sent), key=len(sent) + 1, deadline_ns=deadline_ns,
                           payload=b'\xff\xd8\xff\xd9', resolution=128, top_k=1,
                           bandwidth_bps=1e6, rtt_s=0.01, measure_only=False)
        call.send_ns = send_ns          # as if sent then (the node's clock is real time)
        sent.append(call)
        return call
    yield client, send
    session.close()


def test_three_unanswered_calls_start_a_back_off(offload_client):
    client, send = offload_client
    for i in range(3):
        send(send_ns=i * 100 * MS, deadline_ns=i * 100 * MS + 300 * MS)
    assert len(client.give_up_late(now_ns=460 * MS)) == 2      # two in a row: not yet
    assert client.backoff_until_ns == 0
    assert len(client.give_up_late(now_ns=700 * MS)) == 1
    assert client.backoff_until_ns == 700 * MS + BACKOFF_NS
    assert client.backoff_until_ns > 800 * MS       # no server here: 'server unavailable'


def test_calls_sent_before_a_back_off_do_not_start_another(offload_client):
    """The calls of one outage still in flight when it began are given up later: they must not
    add a second back-off (offloading stayed off ~4 s after a server restart)."""
    client, send = offload_client
    for i in range(6):                   # six calls in flight when the server went away
        send(send_ns=i * 50 * MS, deadline_ns=i * 50 * MS + 300 * MS)
    client.give_up_late(now_ns=460 * MS)            # the first three: back-off starts
    assert client.give_up_late(now_ns=700 * MS)     # the other three, sent before it
    assert client.backoff_until_ns == 460 * MS + BACKOFF_NS, 'a second back-off began'
    assert client.consecutive_timeouts == 0


def test_the_server_heard_again_ends_the_back_off_and_its_outage(offload_client):
    client, send = offload_client
    for i in range(6):
        send(send_ns=i * 50 * MS, deadline_ns=i * 50 * MS + 300 * MS)
    client.give_up_late(now_ns=460 * MS)            # back-off
    client.server_seen_again(500 * MS)              # the monitor hears the server again
    assert client.backoff_until_ns == 0
    client.give_up_late(now_ns=700 * MS)            # the outage's last calls: no new back-off
    assert client.backoff_until_ns == 0 and client.consecutive_timeouts == 0
    for i in range(3):                               # new calls after it that go unanswered
        send(send_ns=800 * MS + i * MS, deadline_ns=1_100 * MS)
    client.give_up_late(now_ns=1_200 * MS)
    assert client.backoff_until_ns == 1_200 * MS + BACKOFF_NS


def test_an_answered_later_call_discounts_earlier_unanswered_ones(offload_client):
    """Give-ups come seconds after the answers of later calls: counting in give-up order would
    start a back-off although the server answers (e.g. one that had not yet matched the first
    calls of a restarted client)."""
    from rclpy.task import Future
    from cbo_interfaces.srv import Offload
    client, send = offload_client
    early = [send(send_ns=i * MS, deadline_ns=300 * MS) for i in range(3)]
    later = send(send_ns=100 * MS, deadline_ns=400 * MS)
    answered = Future()
    answered.set_result(Offload.Response(success=True))
    client.complete(later, answered, now_ns=150 * MS)
    assert len(client.give_up_late(now_ns=500 * MS)) == 3
    assert client.backoff_until_ns == 0 and client.consecutive_timeouts == 0
    assert all(call.key not in client.pending for call in early)
