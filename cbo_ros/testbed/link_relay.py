"""Delay emulation without netem: a user-space Ethernet relay between two interfaces (no ROS).

``ShapedLink(rtt_ms=...)`` puts a relay network namespace between the robot's and the server's
veth ends; this program runs there, reads every frame arriving on either interface through an
``AF_PACKET`` socket and sends it out of the other one ``delay`` later (half the added RTT per
direction). Frames keep their order (one FIFO per direction: a constant delay never reorders;
after a delay change, frames wait behind older ones rather than overtake them). The relay
namespace has no IPv4 addresses and IPv6 is off there, so its own IP stack ignores the frames.

Control: one line per change on stdin, ``delay_ms <one-way milliseconds>``; end of stdin (or
SIGTERM) stops the relay; SIGINT is ignored (the owner of the link stops it, after its other
processes, e.g. on Ctrl-C in a terminal). Frames that cannot be sent (e.g. the interface went
away) are counted and dropped, like a link that loses them.

Transmit checksum offload must be off on the veth ends that the relay's frames come from: a
frame captured before its checksum was filled in would be dropped by the receiver.
:func:`disable_tx_checksum_offload` does that through the ethtool ioctl.
"""

import argparse
import array
import collections
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4          # frames this host sent out of the interface (not to relay)
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x00000017
MAX_FRAME = 65536
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def disable_tx_checksum_offload(device):
    """Turn transmit checksum offload off on ``device`` (``ethtool -K dev tx off``)."""
    value = array.array('I', [ETHTOOL_STXCSUM, 0])
    address, _ = value.buffer_info()
    request = struct.pack('16sP', device.encode()[:15], address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def open_raw(device):
    """Open a non-blocking AF_PACKET socket receiving every frame of ``device``."""
    # Protocol 0 until bound: an ETH_P_ALL socket would see every interface's frames until then.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    for option, forced in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, 8 * 1024 * 1024)   # beyond rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, 8 * 1024 * 1024)
    sock.bind((device, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class DelayRelay:
    """Forward frames between two interfaces, each after ``delay_s``."""

    def __init__(self, device_a, device_b, delay_s):
        self.delay_s = max(float(delay_s), 0.0)
        self.sockets = (open_raw(device_a), open_raw(device_b))
        # frames read from one socket wait here for their release time, then leave by the other
        self.queues = {sock: collections.deque() for sock in self.sockets}
        self.peer = {self.sockets[0]: self.sockets[1], self.sockets[1]: self.sockets[0]}
        self.forwarded = 0
        self.dropped = 0

    def _receive(self, sock):
        queue = self.queues[sock]
        while True:
            try:
                frame, address = sock.recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            if address[2] != PACKET_OUTGOING:
                queue.append((time.monotonic() + self.delay_s, frame))

    def _release(self, now):
        for sock, queue in self.queues.items():
            out = self.peer[sock]
            while queue and queue[0][0] <= now:
                frame = queue.popleft()[1]
                try:
                    out.send(frame)
                    self.forwarded += 1
                except OSError:
                    self.dropped += 1

    def _next_due(self):
        due = [queue[0][0] for queue in self.queues.values() if queue]
        return min(due) if due else None

    def run(self, control_fd=None):
        """Relay until the ``control_fd`` pipe (``delay_ms`` lines) ends, or SIGTERM."""
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            selector.register(sock, selectors.EVENT_READ)
        if control_fd is not None:
            try:
                selector.register(control_fd, selectors.EVENT_READ)
            except (OSError, ValueError):       # not a pipe/terminal (e.g. /dev/null)
                control_fd = None
        running = [True]
        signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
        pending = b''
        while running[0]:
            self._release(time.monotonic())
            due = self._next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            for key, _ in selector.select(min(timeout, 0.5) if timeout is not None else 0.5):
                if key.fileobj == control_fd:
                    # Raw reads: every complete line is applied, however many arrived at once.
                    data = os.read(control_fd, 4096)
                    if not data:
                        return
                    *lines, pending = (pending + data).split(b'\n')
                    for line in lines:
                        self._command(line.decode(errors='replace'))
                else:
                    self._receive(key.fileobj)

    def _command(self, line):
        parts = line.split()
        if len(parts) == 2 and parts[0] == 'delay_ms':
            try:
                self.delay_s = max(float(parts[1]), 0.0) / 1e3
            except ValueError:
                print(f'link_relay: bad delay {parts[1]!r}', file=sys.stderr)
        elif parts:
            print(f'link_relay: unknown command {line.strip()!r}', file=sys.stderr)


def main(argv=None):
    """Relay frames between two interfaces with a delay until stdin ends or SIGTERM."""
    parser = argparse.ArgumentParser(prog='cbo_link_relay', description=__doc__.splitlines()[0])
    parser.add_argument('device_a')
    parser.add_argument('device_b')
    parser.add_argument('--delay-ms', type=float, default=0.0, help='one-way delay per direction')
    parser.add_argument('--ready-file', default=None,
                        help='written once both sockets are open (for the parent to wait on)')
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    relay = DelayRelay(args.device_a, args.device_b, args.delay_ms / 1e3)
    if args.ready_file:
        with open(args.ready_file, 'w') as handle:
            handle.write('ready\n')
    relay.run(sys.stdin.fileno())
    return 0


if __name__ == '__main__':
    sys.exit(main())
