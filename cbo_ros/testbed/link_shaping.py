"""Emulate a constrained robot -> server link on one machine (no ROS imports).

The server runs in its own network namespace, joined to the root namespace (the robot) by a veth
pair. The robot -> server uplink is shaped on the robot end of the veth:

- rate: a TBF qdisc with a large queue (``queue_latency_s``, default 2 s), because a short queue
  drops fragments of the 64 KB UDP datagrams that DDS sends, which Fast DDS repairs slowly;
  one FIFO queue for all traffic (``queue='fifo'``, the default);
- per-flow fair queueing (``queue='fair'``): the kernel here has no sfq, fq or fq_codel, so an
  HTB qdisc with :data:`FAIR_QUEUE_FLOWS` leaf classes, each with its own FIFO and a fair share
  of the rate that it may exceed while the others are idle (HTB serves backlogged classes in
  turn); an nftables output rule hashes each UDP/TCP flow (addresses, protocol, ports) onto
  one class, for per-flow fairness as sfq/fq_codel give on most Linux hosts (without CoDel's
  queue-delay control). Flows that hash to the same class share its queue (stochastic, as in
  sfq; the hash seed differs per link);
- loss: an nftables rule ``numgen random mod 10000 < N drop`` on the ingress of the far end, so
  lost packets have already used their share of the link rate, as on a real link;
- delay (``rtt_ms``): the kernel here has no netem (nor fq/etf), so an added round-trip time
  comes from a user-space relay (:mod:`cbo_ros.testbed.link_relay`) in a third namespace
  between the two veth pairs (robot -- relay -- server), holding every frame for half the RTT
  in each direction; without ``rtt_ms`` the robot and server ends are one veth pair.

The downlink (server -> robot) can be shaped the same way (``downlink_rate_bps``,
``downlink_loss_pct``); by default it is unshaped.

Fast DDS must not use shared memory between the two sides (the traffic would bypass the veth):
:meth:`ShapedLink.env_for_server` selects a UDP-only profile, while robot processes keep their
shared-memory transport for robot-local traffic and reach the server over UDP.

Typical use::

    with ShapedLink(rate_bps=8e6, loss_pct=1.0) as link:
        server = subprocess.Popen(link.wrap_command(['offload_server']),
                                  env={**os.environ, **link.env_for_server()})
        robot = subprocess.Popen(['robot_bringup'], env={**os.environ, **link.env_for_robot()})
        link.set_rate(2e6)

Command line: ``cbo_link check``, ``cbo_link run --rate 8M --loss 1 -- <server command>``,
``cbo_link cleanup`` (removes what a killed run left behind).
"""

import argparse
import atexit
import contextlib
import ipaddress
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ['ShapedLink', 'parse_rate', 'format_rate', 'cleanup_stale', 'main']

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# /30 subnets for the veth pairs are taken from this block.
_SUBNET_POOL = ipaddress.ip_network('10.213.0.0/16')
_NAME_RE = re.compile(r'^[a-z0-9]{1,4}$')
_counter = itertools.count()
_live_links = set()
_live_lock = threading.Lock()
# The netns name is <prefix>-<pid>-<n>: cleanup_stale() uses the pid to find dead owners.
_NETNS_RE = re.compile(r'^(?P<prefix>[a-z0-9]{1,4})-(?P<pid>\d+)-(?P<n>\d+)(?P<relay>d?)$')
_NFT_TABLE_RE = re.compile(
    r'^(?P<prefix>[a-z0-9]{1,4})_(?P<pid>\d+)_(?P<n>\d+)_(?P<kind>down|fq)$')


class ShapingError(RuntimeError):
    """A tc/ip/nft command failed."""


# Largest RTPS datagram on the shaped link (fits one 1500-byte Ethernet frame with room for
# tunnels); larger samples are fragmented by DDS, not by IP (config/fastdds_shaped_link.xml).
DDS_MESSAGE_BYTES = 1400
# Bytes a datagram costs on the shaped link beyond its UDP payload: UDP 8, IPv4 20, Ethernet 14.
WIRE_OVERHEAD = 42
# Per-flow queues of queue='fair' (HTB leaf classes 1:10 .. 1:1f; flows hashed onto them).
FAIR_QUEUE_FLOWS = 16
QUEUES = ('fifo', 'fair')

# Both sides of the link: SUBNET with the peer in ROS_STATIC_PEERS, never LOCALHOST. For LOCALHOST
# rmw_fastrtps (Kilted) registers a UDPv4 transport of its own beside the profile's, with the
# system's default 212 KB send buffer and blocking sends, and reaches the static peer through it:
# when the uplink congests, that socket fills, the send blocks while holding the participant's
# send lock, and every other send and receive of the process waits, robot-local shared-memory
# frames included (cbo_demo: 40-77 deadline misses after the drop to 2 Mbit/s, planner frozen
# for ~3 s; with SUBNET none). Multicast stays on this host: the profile's TTL is 0.
LINK_DISCOVERY_RANGE = 'SUBNET'


def _run(args, check=True, input_text=None, timeout=10.0):
    """Run one command, return CompletedProcess; raise ShapingError on failure when check."""
    try:
        result = subprocess.run(args, input=input_text, capture_output=True, text=True,
                                timeout=timeout)
    except FileNotFoundError as error:
        raise ShapingError(f'{args[0]} not found: {error}') from error
    except subprocess.TimeoutExpired as error:
        raise ShapingError(f'timed out: {" ".join(args)}') from error
    if check and result.returncode != 0:
        raise ShapingError(f'`{" ".join(args)}` failed ({result.returncode}): '
                           f'{(result.stderr or result.stdout).strip()}')
    return result


def parse_rate(text):
    """Parse a rate in bits per second: ``8M``, ``8Mbit``, ``500k``, ``20e6``, ``1.5G``."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r'\s*([0-9.]+(?:e[0-9]+)?)\s*([kmg]?)(?:bit|bps|b/s)?\s*', text.lower())
    if not match:
        raise ValueError(f'not a rate: {text!r} (examples: 8M, 500k, 20e6)')
    scale = {'': 1.0, 'k': 1e3, 'm': 1e6, 'g': 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def format_rate(bps):
    """Human-readable rate, e.g. ``8.0 Mbit/s``."""
    if bps is None:
        return 'unshaped'
    if bps >= 1e9:
        return f'{bps / 1e9:.2f} Gbit/s'
    if bps >= 1e6:
        return f'{bps / 1e6:.1f} Mbit/s'
    return f'{bps / 1e3:.0f} kbit/s'


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def flow_budget(rate_bps, message_bytes, periods_ms=range(5, 1001),
                wire_overhead=WIRE_OVERHEAD):
    """Whole datagrams per period and the period (ms) of a Fast DDS flow controller.

    The controller paces large samples so they do not burst into the link queue; the link
    (TBF) stays the bottleneck. Its budget counts whole datagrams; on the wire each also costs
    UDP/IP/Ethernet headers. The shortest period (smallest bursts) whose wire budget is at
    least ``rate_bps`` and at most 2 % above it is chosen, else the period closest above it.
    Pacing below the link wastes its capacity (repairs after loss then compete with new data:
    goodput at 1 % loss fell from 79 % to 75 %); far above it, bursts queue in the TBF.
    """
    wire = message_bytes + wire_overhead
    best = None
    for period_ms in periods_ms:
        count = max(1, math.ceil(rate_bps * period_ms / 1000.0 / 8.0 / wire))
        pace = count * wire * 8.0 / (period_ms / 1000.0)
        if pace <= 1.02 * rate_bps:
            return count, period_ms
        if best is None or pace < best[0]:
            best = (pace, count, period_ms)
    return best[1], best[2]


class ShapedLink:
    """A server network namespace behind a shaped veth pair (a context manager).

    Args:
        rate_bps: uplink (robot -> server) rate in bit/s; None leaves it unshaped.
        loss_pct: uplink random packet loss in percent (0.01 % resolution).
        name: up to 4 lowercase letters/digits; names are ``<name>-<pid>-<n>`` (netns) and
            ``<name><pid><n>r``/``...s`` (robot/server veth ends), so parallel runs never collide.
        downlink_rate_bps: server -> robot rate in bit/s (None: unshaped).
        downlink_loss_pct: server -> robot loss in percent.
        queue_latency_s: TBF queue length expressed as time at the configured rate.
        flow_control_bps: rate of the Fast DDS flow controller written into the per-link profiles
            (default None: follow the uplink rate, 100 Mbit/s when unshaped). Fast DDS reads the
            profile when a process starts: :meth:`set_rate` rewrites the profiles for processes
            started later, but running processes keep pacing at their old rate. Pacing faster
            than the link makes Fast DDS repeat fragments that are only queued (measured: 8 ->
            2 Mbit/s mid-run gave 0.5-1.5 Mbit/s goodput); pacing slower caps the goodput.
        mtu: MTU of the veth pair.
        rtt_ms: round-trip time added by a delay relay (half per direction; 0: no relay). Set
            at construction; :meth:`set_rtt` changes it while the link is up.
        multicast_ttl: TTL of DDS multicast in the profiles: 0 (default) keeps multicast
            discovery on this host and the peers find each other through ROS_STATIC_PEERS; 1
            lets it cross the veth (multicast discovery between the two sides).
        queue: ``'fifo'`` (default: one TBF queue for all traffic) or ``'fair'`` (per-flow
            queues served in turn, like sfq/fq_codel; see the module docstring). Each flow's
            queue holds ``queue_latency_s`` at the full rate.
    """

    def __init__(self, rate_bps=20e6, loss_pct=0.0, name='cbo', downlink_rate_bps=None,
                 downlink_loss_pct=0.0, queue_latency_s=2.0, flow_control_bps=None, mtu=1500,
                 rtt_ms=0.0, multicast_ttl=0, queue='fifo'):
        if not _NAME_RE.match(name):
            raise ValueError(f'name must be 1-4 lowercase letters/digits, got {name!r}')
        self.name = name
        self.rate_bps = None if rate_bps is None else float(rate_bps)
        self.loss_pct = float(loss_pct)
        self.downlink_rate_bps = None if downlink_rate_bps is None else float(downlink_rate_bps)
        self.downlink_loss_pct = float(downlink_loss_pct)
        self.queue_latency_s = float(queue_latency_s)
        self.mtu = int(mtu)
        if not 0.0 <= float(rtt_ms) <= 60000.0:
            raise ValueError(f'rtt_ms must be in [0, 60000], got {rtt_ms}')
        self.rtt_ms = float(rtt_ms)
        if multicast_ttl not in (0, 1):
            raise ValueError(f'multicast_ttl must be 0 or 1, got {multicast_ttl}')
        self.multicast_ttl = int(multicast_ttl)
        if queue not in QUEUES:
            raise ValueError(f'queue must be one of {QUEUES}, got {queue!r}')
        self.queue = queue
        self._fair_devs = set()            # devices whose HTB classes exist (queue='fair')
        self._fair_table = None            # robot side nftables table that hashes flows
        self.relay_netns = None
        self._relay = None
        # None: the flow controller follows the uplink rate (also through set_rate, for
        # processes started afterwards).
        self._flow_follows_rate = flow_control_bps is None
        self.flow_control_bps = float(flow_control_bps or self.rate_bps or 100e6)
        for pct in (self.loss_pct, self.downlink_loss_pct):
            if not 0.0 <= pct <= 100.0:
                raise ValueError(f'loss must be in [0, 100] %, got {pct}')
        self.netns = None
        self.robot_dev = None
        self.server_dev = None
        self.robot_ip = None
        self.server_ip = None
        self.prefix_len = 30
        self._down_table = None
        self._profile_dir = None
        self._active = False

    # ------------------------------------------------------------------ probing
    @staticmethod
    def available():
        """Return ``(True, 'ok ...')`` when shaping works here, else ``(False, reason)``.

        Checks root, ip/tc/nft, and creates and deletes a throw-away namespace with a veth pair,
        a TBF qdisc and an nftables table; nothing is left behind.
        """
        if sys.platform != 'linux':
            return False, f'network namespaces need Linux (this is {sys.platform})'
        if os.geteuid() != 0:
            return False, 'needs root (network namespaces, tc and nftables)'
        for tool, package in (('ip', 'iproute2'), ('tc', 'iproute2'), ('nft', 'nftables')):
            if shutil.which(tool) is None:
                return False, f'`{tool}` not found (apt install {package})'
        probe = f'cbp-{os.getpid()}-{next(_counter)}'
        dev = f'cbp{os.getpid() % 10**7}{next(_counter) % 100}'
        steps = [
            (['ip', 'netns', 'add', probe], 'cannot create a network namespace'),
            (['ip', 'link', 'add', dev + 'a', 'type', 'veth', 'peer', 'name', dev + 'b',
              'netns', probe], 'cannot create a veth pair'),
            (['tc', 'qdisc', 'add', 'dev', dev + 'a', 'root', 'tbf', 'rate', '8mbit',
              'burst', '32kb', 'latency', '1s'], 'TBF qdisc unavailable'),
            (['ip', 'netns', 'exec', probe, 'nft', '-f', '-'], 'nftables unavailable'),
        ]
        nft_probe = (f'table netdev probe {{\n chain c {{ type filter hook ingress device '
                     f'"{dev}b" priority 0; policy accept;\n'
                     f'  numgen random mod 100 < 1 counter drop\n }}\n}}\n')
        try:
            for args, reason in steps:
                result = _run(args, check=False,
                              input_text=nft_probe if args[-1] == '-' else None)
                if result.returncode != 0:
                    return False, f'{reason}: {(result.stderr or result.stdout).strip()}'
        except ShapingError as error:
            return False, str(error)
        finally:
            _run(['ip', 'link', 'del', dev + 'a'], check=False)
            _run(['ip', 'netns', 'del', probe], check=False)
        return True, 'ok: root, ip/tc/nft present, netns + veth + TBF + nftables work'

    # ------------------------------------------------------------------ set-up / tear-down
    def __enter__(self):
        """Create the namespace, the veth pair, the shaping and the Fast DDS profiles."""
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        """Tear everything down (also after errors and KeyboardInterrupt)."""
        self.close()
        return False

    def _setup(self):
        pid = os.getpid() % 10**7
        for _ in range(20):
            n = next(_counter)
            netns = f'{self.name}-{pid}-{n}'
            base = f'{self.name}{pid}{n % 100}'
            if len(base) + 1 > 15:
                base = f'{self.name}{pid % 10**5}{n % 100}'
            if os.path.exists(f'/run/netns/{netns}'):
                continue
            result = _run(['ip', 'netns', 'add', netns], check=False)
            if result.returncode != 0:
                if 'exists' in result.stderr:
                    continue
                raise ShapingError(f'ip netns add {netns}: {result.stderr.strip()}')
            self.netns = netns
            with _live_lock:
                _live_links.add(self)
            if self.rtt_ms > 0:
                result = self._add_relay_pairs(base, netns)
            else:
                result = _run(['ip', 'link', 'add', base + 'r', 'mtu', str(self.mtu), 'type',
                               'veth', 'peer', 'name', base + 's', 'mtu', str(self.mtu),
                               'netns', netns], check=False)
            if result.returncode != 0:
                _run(['ip', 'netns', 'del', netns], check=False)
                if self.relay_netns:
                    _run(['ip', 'netns', 'del', self.relay_netns], check=False)
                    self.relay_netns = None
                self.netns = None
                if 'exists' in result.stderr:
                    continue
                raise ShapingError(f'veth {base}r: {result.stderr.strip()}')
            self.robot_dev, self.server_dev = base + 'r', base + 's'
            self._down_table = f'{self.name}_{pid}_{n}_down'
            if self.queue == 'fair':
                self._fair_table = f'{self.name}_{pid}_{n}_fq'
            break
        else:
            raise ShapingError('could not find a free namespace/veth name')
        self._active = True
        subnet = self._pick_subnet()
        hosts = list(subnet.hosts())
        self.robot_ip, self.server_ip = str(hosts[0]), str(hosts[1])
        ns = ['ip', '-n', self.netns]
        _run(['ip', 'addr', 'add', f'{self.robot_ip}/{self.prefix_len}', 'dev', self.robot_dev])
        _run(['ip', 'link', 'set', self.robot_dev, 'up'])
        _run(ns + ['addr', 'add', f'{self.server_ip}/{self.prefix_len}', 'dev', self.server_dev])
        _run(ns + ['link', 'set', 'lo', 'up'])
        _run(ns + ['link', 'set', self.server_dev, 'up'])
        # DDS discovery uses multicast (239.255.0.1): route it over the veth on both sides.
        _run(ns + ['route', 'add', '224.0.0.0/4', 'dev', self.server_dev])
        _run(ns + ['route', 'add', 'default', 'via', self.robot_ip], check=False)
        self._apply_rate(self.robot_dev, self.rate_bps, root_ns=True)
        self._apply_rate(self.server_dev, self.downlink_rate_bps, root_ns=False)
        if self.queue == 'fair':
            self._write_flow_hash_tables()
        self._write_loss_tables()
        self._write_profiles()
        if self.relay_netns:
            self._start_relay(base)

    def _add_relay_pairs(self, base, netns):
        """Create robot end <-> relay namespace <-> server end: two veth pairs (rtt_ms > 0)."""
        self.relay_netns = netns + 'd'
        result = _run(['ip', 'netns', 'add', self.relay_netns], check=False)
        if result.returncode != 0:
            return result
        mtu = str(self.mtu)
        result = _run(['ip', 'link', 'add', base + 'r', 'mtu', mtu, 'type', 'veth', 'peer',
                       'name', base + 'a', 'mtu', mtu, 'netns', self.relay_netns], check=False)
        if result.returncode != 0:
            return result
        result = _run(['ip', '-n', self.relay_netns, 'link', 'add', base + 'b', 'mtu', mtu,
                       'type', 'veth', 'peer', 'name', base + 's', 'mtu', mtu, 'netns', netns],
                      check=False)
        if result.returncode != 0:
            _run(['ip', 'link', 'del', base + 'r'], check=False)     # ours: created above
        return result

    def _start_relay(self, base):
        """Start the delay relay in its namespace and wait until it listens."""
        relay_ns = ['ip', '-n', self.relay_netns]
        for dev in (base + 'a', base + 'b'):
            # No IPv6 link-local addresses (nor their neighbour discovery) in the relay.
            _run(['ip', 'netns', 'exec', self.relay_netns, 'sh', '-c',
                  f'echo 1 > /proc/sys/net/ipv6/conf/{dev}/disable_ipv6'], check=False)
            _run(relay_ns + ['link', 'set', dev, 'up'])
        # The relay captures frames before the kernel fills in offloaded checksums: the ends
        # that send into it must compute them in software.
        from cbo_ros.testbed.link_relay import disable_tx_checksum_offload
        disable_tx_checksum_offload(self.robot_dev)
        _run(['ip', 'netns', 'exec', self.netns, sys.executable, '-c',
              'import sys; from cbo_ros.testbed.link_relay import '
              'disable_tx_checksum_offload as off; off(sys.argv[1])', self.server_dev])
        ready = os.path.join(self._profile_dir, 'relay.ready')
        self._relay = subprocess.Popen(
            ['ip', 'netns', 'exec', self.relay_netns, sys.executable, '-m',
             'cbo_ros.testbed.link_relay', base + 'a', base + 'b',
             '--delay-ms', str(self.rtt_ms / 2.0), '--ready-file', ready],
            stdin=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, 'PYTHONPATH': os.pathsep.join(
                p for p in (_ROOT, os.environ.get('PYTHONPATH')) if p)})
        end = time.monotonic() + 10.0
        while not os.path.exists(ready):
            if self._relay.poll() is not None or time.monotonic() > end:
                raise ShapingError(f'delay relay did not start (exit {self._relay.poll()})')
            time.sleep(0.02)

    def set_rtt(self, rtt_ms):
        """Change the added round-trip time live (needs a link built with ``rtt_ms`` > 0)."""
        self._require_active()
        if self._relay is None:
            raise RuntimeError('no delay relay: build the ShapedLink with rtt_ms > 0')
        if not 0.0 <= float(rtt_ms) <= 60000.0:
            raise ValueError(f'rtt_ms must be in [0, 60000], got {rtt_ms}')
        self._relay.stdin.write(f'delay_ms {float(rtt_ms) / 2.0}\n')
        self._relay.stdin.flush()
        self.rtt_ms = float(rtt_ms)

    def _stop_relay(self):
        if self._relay is None:
            return
        with contextlib.suppress(OSError):
            self._relay.stdin.close()           # end of control input: the relay exits
        try:
            self._relay.wait(3.0)
        except subprocess.TimeoutExpired:
            self._relay.kill()
            self._relay.wait()
        self._relay = None

    def _pick_subnet(self):
        used = []
        out = _run(['ip', '-o', '-4', 'addr', 'show']).stdout
        for match in re.finditer(r'inet (\d+\.\d+\.\d+\.\d+/\d+)', out):
            used.append(ipaddress.ip_network(match.group(1), strict=False))
        blocks = _SUBNET_POOL.num_addresses // 4
        start = (os.getpid() * 7919 + int(self.netns.rsplit('-', 1)[1]) * 104729) % blocks
        for offset in range(blocks):
            index = (start + offset) % blocks
            candidate = ipaddress.ip_network(
                (int(_SUBNET_POOL.network_address) + 4 * index, 30))
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise ShapingError(f'no free /30 in {_SUBNET_POOL}')

    def close(self):
        """Tear down: stop processes left in the namespace, delete veth, netns, nft, files."""
        if self.netns is None and self._profile_dir is None:
            return
        if self.netns is not None:
            self._stop_namespace_processes()
            self._stop_relay()
            if self.robot_dev:
                _run(['ip', 'link', 'del', self.robot_dev], check=False)
            if self._down_table:
                _run(['nft', 'delete', 'table', 'netdev', self._down_table], check=False)
            if self._fair_table:
                _run(['nft', 'delete', 'table', 'inet', self._fair_table], check=False)
            _run(['ip', 'netns', 'del', self.netns], check=False)
            if self.relay_netns:
                _run(['ip', 'netns', 'del', self.relay_netns], check=False)
                self.relay_netns = None
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        with _live_lock:
            _live_links.discard(self)
        self.netns = None
        self._active = False

    def _stop_namespace_processes(self, grace_s=3.0):
        pids = self.namespace_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + grace_s
        while pids and time.monotonic() < end:
            pids = [pid for pid in pids if _pid_alive(pid)]
            time.sleep(0.05)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def namespace_pids(self):
        """Process ids running in the server namespace."""
        if self.netns is None:
            return []
        result = _run(['ip', 'netns', 'pids', self.netns], check=False)
        return [int(p) for p in result.stdout.split() if p.isdigit() and int(p) != os.getpid()]

    # ------------------------------------------------------------------ shaping
    def _tc(self, root_ns):
        return ['tc'] if root_ns else ['ip', 'netns', 'exec', self.netns, 'tc']

    def _apply_rate(self, dev, bps, root_ns):
        tc = self._tc(root_ns)
        if bps is None:
            _run(tc + ['qdisc', 'del', 'dev', dev, 'root'], check=False)
            self._fair_devs.discard(dev)
            return
        if bps < 8e3:
            raise ValueError(f'rate too low: {bps} bit/s')
        rate_bytes = bps / 8.0
        # Bucket: 2 ms at the rate, at least two full-size packets (TBF needs >= MTU). A small
        # bucket keeps single requests from crossing at line speed, so transfer times (what the
        # network monitor measures) reflect the configured rate.
        burst = int(max(rate_bytes * 0.002, 2 * (self.mtu + 100)))
        limit = int(max(rate_bytes * self.queue_latency_s, 2 * 1024 * 1024)) + burst
        if self.queue == 'fair':
            self._apply_fair_rate(tc, dev, bps, burst, limit)
            return
        _run(tc + ['qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', f'{int(bps)}bit',
                   'burst', str(burst), 'limit', str(limit)])

    def _apply_fair_rate(self, tc, dev, bps, burst, limit):
        """HTB: class 1:1 at the rate, FAIR_QUEUE_FLOWS leaves (1:10..) sharing it in turn.

        A leaf's guaranteed rate is its fair share; it may borrow up to the whole rate (ceil)
        while the others are idle. A rate change changes the classes in place (queues kept).
        """
        rate, share = f'{int(bps)}bit', f'{max(int(bps / FAIR_QUEUE_FLOWS), 8000)}bit'
        shaping = ['burst', str(burst), 'cburst', str(burst)]
        verb = 'change' if dev in self._fair_devs else 'add'
        if verb == 'add':
            _run(tc + ['qdisc', 'del', 'dev', dev, 'root'], check=False)
            # Unhashed packets (ARP, IPv6, other protocols) go to the first leaf.
            _run(tc + ['qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default',
                       '10'])
        _run(tc + ['class', verb, 'dev', dev, 'parent', '1:', 'classid', '1:1', 'htb',
                   'rate', rate, 'ceil', rate] + shaping)
        for index in range(FAIR_QUEUE_FLOWS):
            classid = f'1:{0x10 + index:x}'
            _run(tc + ['class', verb, 'dev', dev, 'parent', '1:1', 'classid', classid, 'htb',
                       'rate', share, 'ceil', rate, 'quantum', str(self.mtu + 100)] + shaping)
            _run(tc + ['qdisc', 'add' if verb == 'add' else 'change', 'dev', dev, 'parent',
                       classid, 'handle', f'{0x100 + index:x}:', 'bfifo', 'limit', str(limit)])
        self._fair_devs.add(dev)

    def _write_flow_hash_tables(self):
        """Write the output rules that put each flow leaving a shaped end on an HTB leaf.

        HTB takes a packet's class from its priority when that names one of its classes. The
        hash runs before IP fragmentation, so a datagram's fragments share its flow's class.
        """
        _run(['nft', '-f', '-'], input_text=_flow_hash_table(self._fair_table, self.robot_dev))
        _run(['ip', 'netns', 'exec', self.netns, 'nft', '-f', '-'],
             input_text=_flow_hash_table('cbo_fq', self.server_dev))

    def _loss_rule(self, pct):
        threshold = int(round(pct * 100))
        if threshold <= 0:
            return ''
        return f'numgen random mod 10000 < {threshold} counter drop'

    def _write_loss_tables(self):
        up = (f'table netdev cbo_loss {{\n chain up {{ type filter hook ingress device '
              f'"{self.server_dev}" priority 0; policy accept;\n'
              f'  {self._loss_rule(self.loss_pct)}\n }}\n}}\n')
        _run(['ip', 'netns', 'exec', self.netns, 'nft', '-f', '-'], input_text=up)
        down = (f'table netdev {self._down_table} {{\n chain down {{ type filter hook ingress '
                f'device "{self.robot_dev}" priority 0; policy accept;\n'
                f'  {self._loss_rule(self.downlink_loss_pct)}\n }}\n}}\n')
        _run(['nft', '-f', '-'], input_text=down)

    def _set_loss_rule(self, pct, uplink):
        rule = self._loss_rule(pct)
        if uplink:
            script = 'flush chain netdev cbo_loss up\n'
            if rule:
                script += f'add rule netdev cbo_loss up {rule}\n'
            _run(['ip', 'netns', 'exec', self.netns, 'nft', '-f', '-'], input_text=script)
        else:
            script = f'flush chain netdev {self._down_table} down\n'
            if rule:
                script += f'add rule netdev {self._down_table} down {rule}\n'
            _run(['nft', '-f', '-'], input_text=script)

    def _require_active(self):
        if not self._active:
            raise RuntimeError('ShapedLink is not set up: use it as a context manager')

    def set_rate(self, bps):
        """Change the uplink (robot -> server) rate live; None removes the limit."""
        self._require_active()
        self._apply_rate(self.robot_dev, None if bps is None else float(bps), root_ns=True)
        self.rate_bps = None if bps is None else float(bps)
        if self._flow_follows_rate:
            self.flow_control_bps = self.rate_bps or 100e6
            self._write_profiles()

    def set_loss(self, pct):
        """Change the uplink random loss (percent) live."""
        self._require_active()
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f'loss must be in [0, 100] %, got {pct}')
        self._set_loss_rule(pct, uplink=True)
        self.loss_pct = float(pct)

    def set_downlink_rate(self, bps):
        """Change the downlink (server -> robot) rate live; None removes the limit."""
        self._require_active()
        self._apply_rate(self.server_dev, None if bps is None else float(bps), root_ns=False)
        self.downlink_rate_bps = None if bps is None else float(bps)

    def set_downlink_loss(self, pct):
        """Change the downlink random loss (percent) live."""
        self._require_active()
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f'loss must be in [0, 100] %, got {pct}')
        self._set_loss_rule(pct, uplink=False)
        self.downlink_loss_pct = float(pct)

    # ------------------------------------------------------------------ counters
    def stats(self):
        """Counters: bytes/packets sent into each direction, TBF drops, nft loss drops."""
        self._require_active()
        result = {}
        for direction, dev, root_ns in (('up', self.robot_dev, True),
                                        ('down', self.server_dev, False)):
            out = _run(self._tc(root_ns) + ['-s', 'qdisc', 'show', 'dev', dev]).stdout
            match = re.search(r'Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)',
                              out)
            if match:
                result[f'{direction}_bytes'] = int(match.group(1))
                result[f'{direction}_packets'] = int(match.group(2))
                result[f'{direction}_queue_drops'] = int(match.group(3))
        up = _run(['ip', 'netns', 'exec', self.netns, 'nft', 'list', 'chain', 'netdev',
                   'cbo_loss', 'up']).stdout
        down = _run(['nft', 'list', 'chain', 'netdev', self._down_table, 'down']).stdout
        for direction, out in (('up', up), ('down', down)):
            match = re.search(r'counter packets (\d+) bytes (\d+) drop', out)
            result[f'{direction}_loss_drops'] = int(match.group(1)) if match else 0
        return result

    # ------------------------------------------------------------------ processes / DDS
    def wrap_command(self, cmd):
        """Prefix ``cmd`` (a list) so that it runs in the server namespace."""
        self._require_active()
        return ['ip', 'netns', 'exec', self.netns] + [str(part) for part in cmd]

    def _write_profiles(self):
        if self._profile_dir is None:
            self._profile_dir = tempfile.mkdtemp(prefix=f'{self.netns}-fastdds-')
        # Datagrams of at most `message` bytes across the link (fastdds.max_message_size: no
        # IP fragmentation, see the template); the flow controller sends whole datagrams only,
        # so its budget is a whole number of them per period (flow_budget).
        message = min(DDS_MESSAGE_BYTES, self.mtu - 100)
        per_period, period_ms = flow_budget(self.flow_control_bps, message)
        bytes_per_period = per_period * message
        template_path = os.path.join(_ROOT, 'config', 'fastdds_shaped_link.xml')
        with open(template_path) as handle:
            template = handle.read()
        for side, shm in (('server', False), ('robot', True)):
            text = re.sub(r'<max_bytes_per_period>\d+</max_bytes_per_period>',
                          f'<max_bytes_per_period>{bytes_per_period}</max_bytes_per_period>',
                          template)
            text = re.sub(r'<period_ms>\d+</period_ms>', f'<period_ms>{period_ms}</period_ms>',
                          text)
            text = re.sub(r'(<name>fastdds.max_message_size</name>\s*<value>)\d+(</value>)',
                          rf'\g<1>{message}\g<2>', text)
            text = re.sub(r'<TTL>\d+</TTL>', f'<TTL>{self.multicast_ttl}</TTL>', text)
            if shm:
                # Robot side: keep shared memory (32 MiB segments) for robot-local images and
                # do not pace robot-local topics (only service requests/responses are paced).
                text = re.sub(r'<!-- DEFAULT_WRITER_QOS_BEGIN -->.*<!-- DEFAULT_WRITER_QOS_END -->',
                              '', text, flags=re.S)
                # Robot side: only the writers that cross the link (service requests and
                # responses) send datagrams below the MTU (their fastdds.max_message_size); a
                # participant- or transport-wide limit would also cut robot-local frames into
                # 1,400-byte fragments, even over shared memory (a 4K frame then took 1.6-2.4 s
                # and delayed its neighbours by as much).
                text = re.sub(r'\s*<!-- SERVER_MAX_MESSAGE_SIZE_BEGIN -->.*'
                              r'<!-- SERVER_MAX_MESSAGE_SIZE_END -->', '', text, flags=re.S)
                text = text.replace('<!-- ROBOT_SHM_TRANSPORT -->', _ROBOT_SHM_DESCRIPTOR)
                text = text.replace('<!-- ROBOT_DISCOVERY -->', _ROBOT_DISCOVERY)
                text = text.replace('<!-- ROBOT_SHM_USER_TRANSPORT -->',
                                    '<transport_id>cbo_shm</transport_id>')
            path = os.path.join(self._profile_dir, f'fastdds_{side}.xml')
            with open(path + '.tmp', 'w') as handle:
                handle.write(text)
            os.replace(path + '.tmp', path)  # a process starting now reads a whole file

    def profile_path(self, side):
        """Path of the generated Fast DDS profile for ``'server'`` or ``'robot'``."""
        self._require_active()
        return os.path.join(self._profile_dir, f'fastdds_{side}.xml')

    def env_for_server(self):
        """Extra environment for processes in the server namespace (UDP-only Fast DDS)."""
        self._require_active()
        return {
            'FASTDDS_DEFAULT_PROFILES_FILE': self.profile_path('server'),
            'FASTDDS_BUILTIN_TRANSPORTS': 'UDPv4',
            'RMW_FASTRTPS_PUBLICATION_MODE': 'AUTO',
            'ROS_STATIC_PEERS': self.robot_ip,
            'ROS_AUTOMATIC_DISCOVERY_RANGE': LINK_DISCOVERY_RANGE,
            'CBO_LINK_NETNS': self.netns,
        }

    def env_for_robot(self):
        """Extra environment for robot processes (root namespace): SHM locally, UDP to server."""
        self._require_active()
        return {
            'FASTDDS_DEFAULT_PROFILES_FILE': self.profile_path('robot'),
            'RMW_FASTRTPS_PUBLICATION_MODE': 'AUTO',
            'ROS_STATIC_PEERS': self.server_ip,
            'ROS_AUTOMATIC_DISCOVERY_RANGE': LINK_DISCOVERY_RANGE,
        }

    def describe(self):
        """One line: devices, shaping and namespace."""
        if not self._active:
            return f'ShapedLink {self.name} (not set up)'
        text = (f'veth {self.robot_dev} ({self.robot_ip}) <-> {self.server_dev} '
                f'({self.server_ip}) shaped: uplink {format_rate(self.rate_bps)}'
                f'{self._queue_words() if self.rate_bps else ""}, loss {self.loss_pct:.1f} %')
        if self.downlink_rate_bps is not None or self.downlink_loss_pct:
            text += (f'; downlink {format_rate(self.downlink_rate_bps)}, '
                     f'loss {self.downlink_loss_pct:.1f} %')
        delay = (f'RTT +{self.rtt_ms:g} ms (user-space relay)' if self._relay is not None
                 else 'no added delay')
        return text + f', {delay}; server netns {self.netns}'

    def _queue_words(self):
        if self.queue == 'fair':
            return f' HTB, {FAIR_QUEUE_FLOWS} per-flow queues'
        return ' TBF'

    def __repr__(self):
        return f'<ShapedLink {self.describe()}>'


# Robot side: announce every second, so that a restarted server finds the robot's processes
# (and answers them) within ~1 s instead of up to the default 3 s (see the template).
_ROBOT_DISCOVERY = """<builtin>
          <discovery_config>
            <leaseAnnouncement>
              <sec>1</sec>
            </leaseAnnouncement>
          </discovery_config>
        </builtin>"""


def _flow_hash_table(table, dev):
    """Return an nftables table putting each UDP/TCP flow leaving ``dev`` on an HTB leaf."""
    flow = 'ip saddr . ip daddr . meta l4proto . th sport . th dport'
    return (f'table inet {table} {{\n'
            f' chain out {{ type filter hook output priority 0; policy accept;\n'
            f'  oifname "{dev}" meta l4proto {{ udp, tcp }} meta priority set jhash {flow} '
            f'mod {FAIR_QUEUE_FLOWS} offset {0x10010} counter\n'
            f' }}\n}}\n')


_ROBOT_SHM_DESCRIPTOR = """<transport_descriptor>
        <transport_id>cbo_shm</transport_id>
        <type>SHM</type>
        <segment_size>33554432</segment_size>
      </transport_descriptor>"""


@atexit.register
def _close_live_links():
    with _live_lock:
        links = list(_live_links)
    for link in links:
        link.close()


def cleanup_stale(verbose=True):
    """Remove namespaces/veths/nft tables left by ShapedLink owners that no longer run."""
    removed = []
    out = _run(['ip', 'netns', 'list'], check=False).stdout
    for line in out.splitlines():
        netns = line.split()[0] if line.split() else ''
        match = _NETNS_RE.match(netns)
        if match and not _pid_alive(int(match.group('pid'))):
            for pid in _run(['ip', 'netns', 'pids', netns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(['ip', 'netns', 'del', netns], check=False)
            removed.append(f'netns {netns}')
    out = _run(['nft', 'list', 'tables'], check=False).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) != 3 or words[1] not in ('netdev', 'inet'):
            continue
        family, table = words[1], words[2]
        match = _NFT_TABLE_RE.match(table)
        if match and not _pid_alive(int(match.group('pid'))):
            _run(['nft', 'delete', 'table', family, table], check=False)
            removed.append(f'nft table {family} {table}')
    if verbose:
        print('removed: ' + (', '.join(removed) if removed else 'nothing'))
    return removed


def _run_command(args):
    link = ShapedLink(rate_bps=args.rate, loss_pct=args.loss, name=args.name,
                      downlink_rate_bps=args.down_rate, downlink_loss_pct=args.down_loss,
                      queue_latency_s=args.queue_latency, rtt_ms=args.rtt_ms,
                      queue=args.queue)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        print('cbo_link run: give the server command after --', file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with link:
        print(f'[cbo_link] {link.describe()}', flush=True)
        print('[cbo_link] run robot processes with:', flush=True)
        for key, value in link.env_for_robot().items():
            print(f'  export {key}="{value}"', flush=True)
        env = dict(os.environ)
        env.update(link.env_for_server())
        child = subprocess.Popen(link.wrap_command(command), env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            return 130


def main(argv=None):
    """Command line: ``cbo_link check | run | cleanup``."""
    parser = argparse.ArgumentParser(
        prog='cbo_link', description='Run the offload server behind an emulated network link '
        '(own network namespace, TBF rate, nftables loss, user-space delay relay).')
    sub = parser.add_subparsers(dest='action', required=True)
    sub.add_parser('check', help='can shaping work here? (root, ip/tc/nft, netns)')
    sub.add_parser('cleanup', help='remove namespaces/tables of ShapedLink runs that died')
    run = sub.add_parser('run', help='keep a shaped link up while a server command runs in it')
    run.add_argument('--rate', type=parse_rate, default=20e6,
                     help='uplink rate, e.g. 8M, 500k (default 20M)')
    run.add_argument('--loss', type=float, default=0.0, help='uplink loss in percent')
    run.add_argument('--down-rate', type=parse_rate, default=None,
                     help='downlink rate (default unshaped)')
    run.add_argument('--down-loss', type=float, default=0.0, help='downlink loss in percent')
    run.add_argument('--rtt-ms', type=float, default=0.0,
                     help='added round-trip time in ms (user-space relay; default 0: none)')
    run.add_argument('--queue-latency', type=float, default=2.0,
                     help='TBF queue length in seconds at the rate (default 2)')
    run.add_argument('--queue', choices=QUEUES, default='fifo',
                     help='fifo: one queue (default); fair: per-flow queues served in turn')
    run.add_argument('--name', default='cbo', help='name prefix (1-4 chars, default cbo)')
    run.add_argument('command', nargs=argparse.REMAINDER, help='-- server command')
    args = parser.parse_args(argv)
    if args.action == 'check':
        ok, reason = ShapedLink.available()
        print(('available: ' if ok else 'unavailable: ') + reason)
        return 0 if ok else 1
    if args.action == 'cleanup':
        cleanup_stale()
        return 0
    return _run_command(args)


if __name__ == '__main__':
    sys.exit(main())
