"""Robot and workstation as two machines: DDS discovery across network namespaces.

The workstation (a real server_node) runs in its own network namespace behind a veth pair
(cbo_ros.testbed.link_shaping, unshaped); the robot side (a real rclpy client of the server's
``probe`` service) runs in the root namespace. Each case is one discovery set-up of
docs/two_machines.md: default multicast discovery, ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``
with and without ``ROS_STATIC_PEERS``, ``SUBNET`` with multicast TTL 0 with and without
``ROS_STATIC_PEERS`` (the shaped link's set-up), a Fast DDS discovery server, and a firewall on the
workstation that admits only the documented UDP port range of the domain. The traffic must cross
the veth (its byte counters grow), not shared memory.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from cbo_ros.testbed.link_shaping import ShapedLink
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id

AVAILABLE, REASON = ShapedLink.available()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not AVAILABLE, reason=f'network namespaces unavailable: {REASON}')]

DISCOVERY_SERVER_PORT = 11811
PAYLOAD_BYTES = 30000

# The robot's view: find the workstation's `probe` service, then one round trip with a payload
# (30 kB, an offloaded JPEG's size, crosses as IP fragments).
CLIENT = r'''
import json, sys, time
import rclpy
from cbo_interfaces.srv import Probe
rclpy.init()
node = rclpy.create_node('two_machines_probe')
client = node.create_client(Probe, 'probe')
start = time.monotonic()
found = client.wait_for_service(timeout_sec=float(sys.argv[1]))
out = {'found': found, 'discovery_s': round(time.monotonic() - start, 2)}
if found:
    sent = time.monotonic()
    future = client.call_async(Probe.Request(payload=bytes(int(sys.argv[2]))))
    rclpy.spin_until_future_complete(node, future, timeout_sec=5.0)
    response = future.result()
    out['received_bytes'] = response.received_bytes if response else None
    out['rtt_ms'] = round((time.monotonic() - sent) * 1e3, 1)
print(json.dumps(out), flush=True)
node.destroy_node()
rclpy.try_shutdown()
'''


def dds_port_range(domain_id):
    """UDP ports of one ROS domain under the RTPS defaults: 7400 + 250 * domain, 250 ports."""
    first = 7400 + 250 * domain_id
    return first, first + 249


def veth_bytes(device):
    total = 0
    for direction in ('tx_bytes', 'rx_bytes'):
        with open(f'/sys/class/net/{device}/statistics/{direction}') as handle:
            total += int(handle.read())
    return total


def discovery_server_command(address):
    """``fastdds discovery -l ADDRESS`` without the CLI wrapper (it needs psutil here)."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    binary = os.path.join(venv, 'bin', 'fast-discovery-server')
    if not os.path.exists(binary):
        pytest.skip('fast-discovery-server not installed')
    libraries = [os.path.join(venv, 'lib')] + sorted(
        {os.path.dirname(p) for p in glob.glob(os.path.join(
            venv, 'lib', 'python3*', 'site-packages', '*.libs', '*.so*'))})
    return ['env', 'LD_LIBRARY_PATH=' + ':'.join(libraries), binary, '42', '-l', address,
            '-p', str(DISCOVERY_SERVER_PORT)]


def firewall_script(first_port, last_port):
    """nftables input filter of the workstation: UDP to the domain's DDS ports, nothing else.

    No ``ct state established`` rule: DDS traffic is peer to peer (each side sends to the
    locators the other announced), so admitting "replies" would admit everything.
    """
    return (f'table inet cbo_firewall {{\n chain input {{ type filter hook input priority 0; '
            f'policy drop;\n  iif lo accept\n'
            f'  udp dport {first_port}-{last_port} accept\n }}\n}}\n')


MULTICAST_TTL = 'multicast TTL of the profile'   # not an environment variable: see below

CASES = {
    # name: (workstation env, robot env, discovery server, firewall (None: none; n: admit the
    # ports of domain + n), expect found)
    'multicast': ({}, {}, False, None, True),
    'static_peers': ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                      'ROS_STATIC_PEERS': '{robot_ip}'},
                     {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                      'ROS_STATIC_PEERS': '{server_ip}'}, False, None, True),
    # What the shaped link uses (link_shaping.LINK_DISCOVERY_RANGE): SUBNET with static peers and
    # multicast TTL 0 in the profile; without the peers TTL 0 keeps each side to itself.
    'static_peers_subnet_ttl0': ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                                  'ROS_STATIC_PEERS': '{robot_ip}', MULTICAST_TTL: '0'},
                                 {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET',
                                  'ROS_STATIC_PEERS': '{server_ip}', MULTICAST_TTL: '0'},
                                 False, None, True),
    'subnet_ttl0_no_peers': ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', MULTICAST_TTL: '0'},
                             {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', MULTICAST_TTL: '0'},
                             False, None, False),
    'localhost_only': ({'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'},
                       {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}, False, None, False),
    'discovery_server': ({'ROS_DISCOVERY_SERVER': '{server_ip}:11811'},
                         {'ROS_DISCOVERY_SERVER': '{server_ip}:11811'}, True, None, True),
    'discovery_server_down': ({'ROS_DISCOVERY_SERVER': '{server_ip}:11811'},
                              {'ROS_DISCOVERY_SERVER': '{server_ip}:11811'}, False, None,
                              False),
    'firewall_domain_ports': ({}, {}, False, 0, True),
    'firewall_other_domain_ports': ({}, {}, False, 1, False),   # the firewall is effective
}


@pytest.fixture(scope='module')
def link():
    # multicast_ttl 1: the multicast cases need discovery to cross the veth.
    with ShapedLink(rate_bps=None, name='cb2', multicast_ttl=1) as shaped:
        yield shaped


@pytest.mark.parametrize('case', list(CASES))
def test_discovery_across_two_namespaces(link, case, tmp_path):
    server_extra, robot_extra, with_server, with_firewall, expect_found = CASES[case]
    addresses = {'robot_ip': link.robot_ip, 'server_ip': link.server_ip}
    domain = unique_domain_id()
    # Fast DDS profiles of the link: UDP only on the workstation (shared memory would bypass
    # the veth on one host), shared memory + UDP on the robot.
    server_env = ros_env(domain, FASTDDS_DEFAULT_PROFILES_FILE=link.profile_path('server'),
                         RMW_FASTRTPS_PUBLICATION_MODE='AUTO')
    robot_env = ros_env(domain, FASTDDS_DEFAULT_PROFILES_FILE=link.profile_path('robot'),
                        RMW_FASTRTPS_PUBLICATION_MODE='AUTO')
    for env, extra in ((server_env, server_extra), (robot_env, robot_extra)):
        for name in ('ROS_STATIC_PEERS', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                     'ROS_DISCOVERY_SERVER'):
            env.pop(name, None)
        extra = dict(extra)
        ttl = extra.pop(MULTICAST_TTL, None)
        if ttl is not None:
            with open(env['FASTDDS_DEFAULT_PROFILES_FILE']) as handle:
                text, count = re.subn(r'<TTL>\d+</TTL>', f'<TTL>{ttl}</TTL>', handle.read())
            assert count == 1, env['FASTDDS_DEFAULT_PROFILES_FILE']
            path = tmp_path / f'ttl{ttl}_{"server" if env is server_env else "robot"}.xml'
            path.write_text(text)
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(path)
        env.update({k: v.format(**addresses) for k, v in extra.items()})
    helpers = []
    if with_firewall is not None:
        first, last = dds_port_range(domain + with_firewall)
        subprocess.run(link.wrap_command(['nft', '-f', '-']), input=firewall_script(first, last),
                       text=True, check=True)
    if with_server:
        helpers.append(start_process(link.wrap_command(discovery_server_command(link.server_ip)),
                                     server_env, tmp_path / 'discovery_server.log'))
    server = start_process(
        link.wrap_command([sys.executable, '-m', 'server_node.offload_server', '--ros-args',
                           '-p', 'warmup:=false']),
        server_env, tmp_path / 'server.log')
    before = veth_bytes(link.robot_dev)
    try:
        result = subprocess.run([sys.executable, '-c', CLIENT, '20' if expect_found else '8',
                                 str(PAYLOAD_BYTES)],
                                env=robot_env, capture_output=True, text=True, timeout=90)
    finally:
        stop_process(server)
        for helper in helpers:
            stop_process(helper)
        if with_firewall is not None:
            subprocess.run(link.wrap_command(['nft', 'delete', 'table', 'inet', 'cbo_firewall']),
                           check=False)
    crossed = veth_bytes(link.robot_dev) - before
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    print(f'{case}: {outcome}, {crossed} bytes over the veth')
    assert outcome['found'] == expect_found, (case, outcome,
                                              (tmp_path / 'server.log').read_text()[-2000:])
    if expect_found:
        assert outcome['received_bytes'] == PAYLOAD_BYTES, outcome
        assert crossed > PAYLOAD_BYTES, f'{case}: the request did not cross the veth ({crossed} B)'
