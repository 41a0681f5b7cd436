"""ShapedLink: a real netns + veth + TBF + nftables link, with a real ROS 2 Probe service across it.

Skipped (with the reason from ShapedLink.available()) where namespaces/tc/nft cannot be used.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from cbo_ros.testbed.link_shaping import ShapedLink
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id

AVAILABLE, REASON = ShapedLink.available()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not AVAILABLE, reason=f'link shaping unavailable: {REASON}')]


def _system_state():
    netns = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout
    links = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True).stdout
    tables = subprocess.run(['nft', 'list', 'tables'], capture_output=True, text=True).stdout
    return netns, links, tables


def _mine(text, link_names):
    return [line for line in text.splitlines() if any(name in line for name in link_names)]


def test_setup_and_teardown_leave_nothing_behind():
    with ShapedLink(rate_bps=4e6, loss_pct=2.5, name='cbt') as link:
        names = [link.netns, link.robot_dev, link.server_dev, link._down_table]
        netns, links, tables = _system_state()
        assert link.netns in netns.split()
        assert link.robot_dev in links
        qdisc = subprocess.run(['tc', 'qdisc', 'show', 'dev', link.robot_dev],
                               capture_output=True, text=True).stdout
        assert 'tbf' in qdisc and '4Mbit' in qdisc
        rules = subprocess.run(link.wrap_command(['nft', 'list', 'ruleset']),
                               capture_output=True, text=True).stdout
        assert 'numgen random mod 10000 < 250' in rules
        link.set_rate(1e6)
        link.set_loss(0.0)
        qdisc = subprocess.run(['tc', 'qdisc', 'show', 'dev', link.robot_dev],
                               capture_output=True, text=True).stdout
        assert '1Mbit' in qdisc
        rules = subprocess.run(link.wrap_command(['nft', 'list', 'ruleset']),
                               capture_output=True, text=True).stdout
        assert 'numgen' not in rules
        assert '1.0 Mbit/s' in link.describe() and link.netns in link.describe()
        profiles = [link.profile_path('server'), link.profile_path('robot')]
        assert all(os.path.exists(path) for path in profiles)
        sleeper = subprocess.Popen(link.wrap_command(['sleep', '60']))
        deadline = time.monotonic() + 10
        while sleeper.pid not in link.namespace_pids() and time.monotonic() < deadline:
            time.sleep(0.05)  # `ip netns exec` has not entered the namespace yet
    assert sleeper.wait(timeout=5) is not None, 'process left in the namespace'
    netns, links, tables = _system_state()
    assert not _mine(netns + links + tables, names)
    assert not any(os.path.exists(path) for path in profiles)


_UDP_ECHO = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.bind(('0.0.0.0', 9999))\nwhile True:\n"
             "    data, peer = s.recvfrom(65535)\n    s.sendto(data[:16], peer)\n")


def _udp_rtt_ms(ip, size=32, count=15):
    """Median round trip of ``count`` UDP requests of ``size`` bytes to the echo (None: lost)."""
    import socket
    import statistics
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendto(bytes(size), (ip, 9999))
            try:
                sock.recvfrom(100)
                rtts.append((time.perf_counter() - start) * 1e3)
            except OSError:
                pass
            time.sleep(0.01)
    return statistics.median(rtts) if len(rtts) == count else None


def test_added_round_trip_time_through_the_delay_relay():
    with ShapedLink(rate_bps=8e6, rtt_ms=40.0, name='cbt') as link:
        names = [link.netns, link.relay_netns, link.robot_dev, link.server_dev]
        assert 'RTT +40 ms' in link.describe()
        echo = subprocess.Popen(link.wrap_command([sys.executable, '-c', _UDP_ECHO]))
        time.sleep(0.5)
        small = _udp_rtt_ms(link.server_ip)
        # 20 kB at 8 Mbit/s spend 20 ms more on the (rate-shaped) wire: rate and delay combine.
        large = _udp_rtt_ms(link.server_ip, size=20_000)
        link.set_rtt(100.0)             # two changes at once: the last one holds
        link.set_rtt(10.0)
        time.sleep(0.2)
        shorter = _udp_rtt_ms(link.server_ip)
        echo.terminate()
    assert small is not None and 40.0 <= small <= 50.0, small
    # 20 kB at 8 Mbit/s add up to 20 ms of wire time (less what the TBF burst lets through at
    # once: 57.98 ms was measured once): rate and delay combine.
    assert large is not None and small + 10.0 <= large <= 75.0, (small, large)
    assert shorter is not None and 10.0 <= shorter <= 18.0, shorter
    netns, links, tables = _system_state()
    assert not _mine(netns + links, names)


def _flood(ip, rate_bps, stop, size=1400):
    """Send ``size``-byte UDP datagrams to ``ip``:9998 at ``rate_bps`` until ``stop`` is set."""
    import socket
    interval = size * 8.0 / rate_bps
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        due = time.perf_counter()
        while not stop.is_set():
            sock.sendto(bytes(size), (ip, 9998))
            due += interval
            time.sleep(max(0.0, due - time.perf_counter()))


@pytest.mark.parametrize('queue', ['fifo', 'fair'])
def test_fair_queue_keeps_a_steady_flow_fast_beside_a_flood(queue):
    """A flood at twice the uplink rate: one FIFO delays every flow by the flood's backlog; per-flow
    queues keep another flow's round trip short (and the nftables table goes with the link)."""
    with ShapedLink(rate_bps=4e6, name='cbt', queue=queue) as link:
        names = [link.netns, link.robot_dev, link.server_dev, link._down_table]
        qdisc = subprocess.run(['tc', 'qdisc', 'show', 'dev', link.robot_dev],
                               capture_output=True, text=True).stdout
        assert ('htb' in qdisc) == (queue == 'fair'), qdisc
        echo = subprocess.Popen(link.wrap_command([sys.executable, '-c', _UDP_ECHO]))
        time.sleep(0.5)
        idle = _udp_rtt_ms(link.server_ip, count=5)
        stop = threading.Event()
        flooder = threading.Thread(target=_flood, args=(link.server_ip, 8e6, stop))
        flooder.start()
        try:
            time.sleep(1.5)                 # the flood's backlog: its socket's send buffer
            # Three probe sockets (three source ports): flows are hashed onto 16 queues, so one
            # may share the flood's queue (1 in 16); all three only 1 in 4096.
            rtts = [_udp_rtt_ms(link.server_ip, count=5) for _ in range(3)]
            during = min((r for r in rtts if r is not None), default=None)
        finally:
            stop.set()
            flooder.join()
            echo.terminate()
        sent = link.stats()['up_bytes']
        if queue == 'fair':
            names.append(link._fair_table)
            tables = subprocess.run(['nft', 'list', 'table', 'inet', link._fair_table],
                                    capture_output=True, text=True).stdout
            assert 'meta priority set jhash' in tables, tables
    assert idle is not None and idle < 20.0, idle
    # The flood's datagrams went through at about the link rate (it is not starved either).
    assert sent > 4e6 / 8 * 1.5 * 0.8, sent
    if queue == 'fair':
        assert during is not None and during < 60.0, (idle, during)
    else:
        assert during is None or during > 150.0, (idle, during)
    netns, links, tables = _system_state()
    assert not _mine(netns + links + tables, names)


def test_teardown_after_an_error_inside_the_block():
    with pytest.raises(RuntimeError, match='boom'):
        with ShapedLink(rate_bps=2e6, name='cbt') as link:
            names = [link.netns, link.robot_dev, link._down_table]
            raise RuntimeError('boom')
    netns, links, tables = _system_state()
    assert not _mine(netns + links + tables, names)


class _Client:
    """A probe client process in the robot (root) namespace; JSON events on stdout."""

    def __init__(self, link, domain, payload, window, duration):
        args = [sys.executable, '-m', 'cbo_ros.tools.probe_link', 'client',
                '--payload', str(payload), '--window', str(window), '--duration', str(duration),
                '--interval', '0.5', '--wait', '15', '--drain', '3']
        self.process = subprocess.Popen(args, env=ros_env(domain, **link.env_for_robot()),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        self.events, self.other = [], []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.other.append(line)

    def wait(self, timeout=40):
        try:
            self.process.wait(timeout)
        finally:
            stop_process(self.process)
            self._reader.join(5)
        return self

    def event(self, kind):
        found = [e for e in self.events if e.get('event') == kind]
        assert found, f'no {kind!r} event; output: {self.events} {"".join(self.other)[-2000:]}'
        return found[-1]

    def intervals(self):
        return [e for e in self.events if e.get('event') == 'interval']


@pytest.fixture(scope='module')
def served_link(tmp_path_factory):
    """A 2 Mbit/s link with the Probe server running in the server namespace."""
    domain = unique_domain_id()
    with ShapedLink(rate_bps=2e6, name='cbt') as link:
        log = tmp_path_factory.mktemp('link') / 'probe_server.log'
        server = start_process(link.wrap_command([sys.executable, '-m',
                                                  'cbo_ros.tools.probe_link', 'server']),
                               ros_env(domain, **link.env_for_server()), log_path=str(log))
        try:
            yield link, domain
        finally:
            stop_process(server)


def _mean(values):
    return sum(values) / len(values) if values else 0.0


def test_probe_round_trip_and_goodput_at_low_rate(served_link):
    link, domain = served_link
    link.set_rate(2e6)
    client = _Client(link, domain, payload=65536, window=4, duration=5.0).wait()
    assert client.event('discovered')['discovery_s'] < 15
    done = client.event('done')
    assert done['calls'] >= 5 and done['lost'] == 0
    # Skip the first interval (discovery of the reply path, window ramp-up).
    goodput = _mean([e['goodput_bps'] for e in client.intervals()[2:]])
    assert 0.5 * 2e6 <= goodput <= 1.3 * 2e6, client.intervals()
    stats = link.stats()
    assert stats['up_bytes'] >= done['calls'] * 65536


def test_set_rate_changes_goodput(served_link):
    link, domain = served_link
    link.set_rate(8e6)  # the new client process paces its requests at 8 Mbit/s
    client = _Client(link, domain, payload=65536, window=4, duration=9.0)
    assert client.process.poll() is None
    deadline = time.monotonic() + 20
    while len(client.intervals()) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    link.set_rate(2e6)
    switched = time.time()
    client.wait()
    before = [e['goodput_bps'] for e in client.intervals()[2:8]]
    after = [e['goodput_bps'] for e in client.intervals() if e['wall'] > switched + 1.0]
    assert 0.5 * 8e6 <= _mean(before) <= 1.3 * 8e6, client.intervals()
    assert after and _mean(after) < 0.5 * _mean(before), client.intervals()


def test_loss_drops_packets_and_dds_repairs_them(served_link):
    link, domain = served_link
    link.set_rate(8e6)
    client = _Client(link, domain, payload=28000, window=4, duration=6.0)
    deadline = time.monotonic() + 15
    while not any(e.get('event') == 'discovered' for e in client.events):
        assert time.monotonic() < deadline and client.process.poll() is None, client.events
        time.sleep(0.05)
    # Loss starts after discovery: lost discovery announcements are re-sent only every few s.
    link.set_loss(5.0)
    try:
        drops_before = link.stats()['up_loss_drops']
        client.wait()
        done = client.event('done')
        drops = link.stats()['up_loss_drops'] - drops_before
    finally:
        link.set_loss(0.0)
    assert drops > 0
    assert done['calls'] >= 5 and done['lost'] == 0, client.intervals()


def test_only_the_writers_that_cross_the_link_are_limited_on_the_robot_side():
    """Server: every datagram <= DDS_MESSAGE_BYTES. Robot: only service requests/responses, so
    robot-local frames keep large fragments over shared memory."""
    import xml.etree.ElementTree as ElementTree
    from cbo_ros.testbed.link_shaping import DDS_MESSAGE_BYTES
    ns = {'d': 'http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles'}
    with ShapedLink(rate_bps=8e6) as link:
        robot = ElementTree.parse(link.profile_path('robot')).getroot()
        server = ElementTree.parse(link.profile_path('server')).getroot()
    # No transport-wide limit (it would also cap what each side can receive).
    assert not robot.findall('.//d:maxMessageSize', ns)
    assert not server.findall('.//d:maxMessageSize', ns)

    def limited(elements):
        return {e.get('profile_name') for e in elements
                if any(p.findtext('d:name', namespaces=ns) == 'fastdds.max_message_size'
                       and p.findtext('d:value', namespaces=ns) == str(DDS_MESSAGE_BYTES)
                       for p in e.findall('.//d:property', ns))}
    for root in (robot, server):
        assert limited(root.findall('.//d:data_writer', ns)) == {'client', 'service'}
    assert limited(server.findall('.//d:participant', ns)) == {'cbo_shaped_participant'}
    assert limited(robot.findall('.//d:participant', ns)) == set()
    assert robot.find(".//d:transport_descriptor[d:type='SHM']", ns) is not None
    # Robot processes announce themselves every second (a restarted server finds them sooner);
    # the server keeps Fast DDS's default.
    assert robot.findtext('.//d:discovery_config/d:leaseAnnouncement/d:sec', namespaces=ns) == '1'
    assert server.find('.//d:discovery_config', ns) is None


_SOCKET_PROBE = """
import time
import rclpy
from cbo_interfaces.srv import Probe
rclpy.init()
node = rclpy.create_node('socket_probe')
client = node.create_client(Probe, 'probe')
while True:                      # until the test kills it
    rclpy.spin_once(node, timeout_sec=0.1)
"""


def _udp_sockets(pid):
    """(local address, receive buffer, send buffer, non-blocking) of each UDP socket of pid."""
    flags = {}
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
            if not target.startswith('socket:['):
                continue
            with open(f'/proc/{pid}/fdinfo/{fd}') as handle:
                octal = re.search(r'flags:\s*(\d+)', handle.read()).group(1)
        except FileNotFoundError:
            continue                      # closed meanwhile
        flags[target[8:-1]] = bool(int(octal, 8) & os.O_NONBLOCK)
    out = subprocess.run(['ss', '-uampne'], capture_output=True, text=True, check=True).stdout
    sockets = []
    for entry in re.split(r'\n(?=\S)', out):
        if f'pid={pid},' not in entry:
            continue
        buffers = re.search(r'skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)', entry)
        inode = re.search(r'ino:(\d+)', entry).group(1)
        sockets.append((entry.split()[3], int(buffers.group(1)), int(buffers.group(2)),
                        flags.get(inode)))
    return sockets


def test_robot_side_reaches_the_server_only_through_the_profiles_sockets():
    """No UDP socket of a robot process may have the system's default buffers: a blocking socket
    with a 212 KB send buffer (which rmw_fastrtps adds for ROS_AUTOMATIC_DISCOVERY_RANGE=
    LOCALHOST) fills on a congested uplink and its blocked send stalls the whole participant."""
    from cbo_ros.testbed.link_shaping import LINK_DISCOVERY_RANGE
    with ShapedLink(rate_bps=8e6) as link:
        env = link.env_for_robot()
        assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == LINK_DISCOVERY_RANGE != 'LOCALHOST'
        assert link.env_for_server()['ROS_AUTOMATIC_DISCOVERY_RANGE'] == LINK_DISCOVERY_RANGE
        probe = subprocess.Popen([sys.executable, '-c', _SOCKET_PROBE],
                                 env=ros_env(unique_domain_id(), **env))
        try:
            deadline = time.monotonic() + 20
            sockets = []
            while time.monotonic() < deadline and probe.poll() is None:
                time.sleep(0.5)
                sockets = _udp_sockets(probe.pid)
                if any(address.startswith(link.robot_ip) for address, *_ in sockets):
                    break   # the output socket on the link's interface exists: all are open
        finally:
            probe.kill()
            probe.wait()
    # The profile asks for 4 MB buffers; the kernel grants twice min(4 MB, [rw]mem_max), always
    # more than the [rw]mem_default a socket without the profile's settings has.
    with open('/proc/sys/net/core/wmem_default') as handle:
        send_default = int(handle.read())
    with open('/proc/sys/net/core/rmem_default') as handle:
        receive_default = int(handle.read())
    assert any(address.startswith(link.robot_ip) for address, *_ in sockets), sockets
    for address, receive, send, non_blocking in sockets:
        assert receive > receive_default or send > send_default, (address, sockets)
        if send > send_default:        # an output socket of the profile's UDP transport
            assert non_blocking, (address, sockets)
