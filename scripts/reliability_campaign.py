#!/usr/bin/env python3
"""Reliability campaign against the real nodes: hostile input, faults, a soak; prints one table.

Starts server_node and the robot nodes (``robot_bringup --no-camera``: this script is the
camera) on a fresh DDS domain and namespace of their own, on loopback, or with ``--link`` behind
the project's shaped link (``cbo_ros.testbed.link_shaping.ShapedLink``: a network namespace,
veth, TBF, nftables; root only). Then, each phase bounded in count and time:

- ``malformed``: a mix of ``--frames`` frames (valid, unknown encoding, truncated, zero size,
  short step, 4K, stamps of 0, negative, an hour old): every frame must be answered once;
- ``big_frames``: ``--big-s`` seconds of 640x480 frames at 15 fps, then as long with every
  tenth frame 3840x2160: deadline misses of the 4K frames and of their 640x480 neighbours;
- ``flood``: ``--flood`` concurrent Offload calls (valid, garbage, truncated JPEG + end marker,
  deadline nanosec >= 1e9, PNG claiming 16000x16000) while frames flow: every call answered;
- ``bombs``: rounds of 8 concurrent 631-byte JPEGs claiming 16000x16000: refused undecoded;
- ``spoof``: a foreign node publishes ``network_quality`` "server unreachable", a tiny
  ``external_network_quality`` and failed ``offload_transfers``: offload share unchanged;
- ``server_restart``: server_node SIGKILLed mid-stream and started again;
- ``link_cut``, ``loss_10``, ``bw_drop_10x`` (``--link`` only): the link cut for a while, 10 %
  loss, a 10x bandwidth drop;
- ``soak``: ``--soak-s`` seconds of frames; RSS growth per process after warm-up.

Per phase: frames captured (published) / answered, duplicates, frames never answered,
deadline misses, offload share, time until offloading resumed after the fault cleared; per
process: peak RSS (VmHWM) and soak growth. ``--quick``: fewer frames and a 20 s soak, under 3
minutes on loopback. Run after ``source cbo_env.sh``:
``python scripts/reliability_campaign.py --quick [--json out.json]``.
"""

import argparse
import collections
import contextlib
import copy
import functools
import json
import os
import signal
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'test'))

import numpy as np  # noqa: E402

from cbo_ros.assets import paths  # noqa: E402
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id  # noqa: E402
from test_server_hostile import jpeg_claiming, png_claiming  # noqa: E402

NS = 1_000_000_000
CONFIG = os.path.join(ROOT, 'config')


# ----------------------------------------------------------------------------- processes
def proc_status_kb(pid, key):
    """A ``/proc/<pid>/status`` value in kB (VmRSS, VmHWM); None when the process is gone."""
    try:
        with open(f'/proc/{pid}/status') as status:
            for line in status:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid):
    """{pid: node module name} of the direct children of ``pid`` (robot_bringup's nodes)."""
    found = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as stat:
                ppid = int(stat.read().rsplit(')', 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f'/proc/{entry}/cmdline', 'rb') as cmdline:
                args = cmdline.read().decode(errors='replace').split('\0')
        except (OSError, IndexError, ValueError):
            continue
        module = next((a for a in args if a.startswith('cbo_ros.nodes.')), '')
        found[int(entry)] = module.rsplit('.', 1)[-1] or 'child'
    return found


class Processes:
    """The server and robot processes, their peak RSS and RSS samples."""

    def __init__(self, namespace, domain, link, log_dir):
        self.namespace, self.domain, self.link, self.log_dir = namespace, domain, link, log_dir
        self.server = self.robot = None
        self.peak_kb = {}
        self.samples = {}            # name -> [(monotonic s, RSS kB)]
        self.soak_trend = {}         # name -> RSS MB at five even points of the soak
        self.server_starts = 0
        self.robot_args = []
        self.server_args = []

    def env(self, side):
        extra = {}
        if self.link is not None:
            extra = self.link.env_for_server() if side == 'server' else self.link.env_for_robot()
        # One machine: LOCALHOST unless set; the link's own range wins (see link_shaping).
        extra = {'ROS_AUTOMATIC_DISCOVERY_RANGE': os.environ.get(
            'ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST'), **extra}
        return ros_env(self.domain, **extra)

    def start_server(self):
        cmd = [sys.executable, '-m', 'server_node.offload_server', '--ros-args',
               '--params-file', os.path.join(CONFIG, 'server.yaml'),
               '-r', f'__ns:={self.namespace}'] + self.server_args
        if self.link is not None:
            cmd = self.link.wrap_command(cmd)
        self.server_starts += 1
        self.server = start_process(cmd, self.env('server'),
                                    os.path.join(self.log_dir,
                                                 f'server{self.server_starts}.log'))

    def kill_server(self):
        self.sample()
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()

    def server_serving(self):
        """Whether the current server process logged that it serves requests."""
        path = os.path.join(self.log_dir, f'server{self.server_starts}.log')
        with contextlib.suppress(OSError), open(path) as log:
            return 'serving offload' in log.read()
        return False

    def start_robot(self):
        cmd = [sys.executable, '-m', 'cbo_ros.nodes.bringup', '--no-camera',
               '--params-file', os.path.join(CONFIG, 'robot.yaml'),
               '--namespace', self.namespace]
        if self.robot_args:
            cmd += ['--ros-args'] + self.robot_args
        self.robot = start_process(cmd, self.env('robot'),
                                   os.path.join(self.log_dir, 'robot.log'))

    def pids(self):
        """{name: pid} of the running processes."""
        found = {}
        if self.server is not None and self.server.poll() is None:
            found['server_node'] = self.server.pid
            if self.link is not None:      # wrapped: the server is a child of `ip netns exec`
                for pid in children_of(self.server.pid):
                    found['server_node'] = pid
        if self.robot is not None and self.robot.poll() is None:
            for pid, name in children_of(self.robot.pid).items():
                found[name] = pid
        return found

    def sample(self):
        """Record each process's RSS and peak RSS now."""
        now = time.monotonic()
        for name, pid in self.pids().items():
            rss, hwm = proc_status_kb(pid, 'VmRSS'), proc_status_kb(pid, 'VmHWM')
            if rss is None:
                continue
            self.samples.setdefault(name, []).append((now, rss))
            self.peak_kb[name] = max(self.peak_kb.get(name, 0), hwm or rss)

    def stop(self):
        self.sample()
        codes = {}
        for name, process in (('robot', self.robot), ('server', self.server)):
            if process is not None:
                codes[name] = stop_process(process, timeout=10.0)
        return codes


# ----------------------------------------------------------------------------- frames
def load_frames(count=30):
    """Real 640x480 RGB frames of an embedded video (box.mp4), else noise."""
    import cv2
    frames = []
    with contextlib.suppress(Exception):
        capture = cv2.VideoCapture(str(paths.resolve_media('box.mp4')))
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(cv2.resize(frame, (640, 480)), cv2.COLOR_BGR2RGB))
        capture.release()
    rng = np.random.default_rng(0)
    while len(frames) < count:
        frames.append(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    return [f.tobytes() for f in frames]


@functools.lru_cache(maxsize=4)
def upscaled_4k(frame_bytes):
    """A real 640x480 frame upscaled to 3840x2160 (real content, so JPEG encoding costs)."""
    import cv2
    frame = np.frombuffer(frame_bytes, np.uint8).reshape(480, 640, 3)
    return cv2.resize(frame, (3840, 2160), interpolation=cv2.INTER_LINEAR).tobytes()


MALFORMED_KINDS = (['valid'] * 11 + ['bad_encoding', 'truncated', 'zero_size', 'short_step',
                                     'stamp_zero', 'negative_stamp', 'hour_old', 'valid_bgr8']
                   + ['valid'] * 5)


def make_image(kind, index, frames, now_ns):
    """An Image of ``kind``; returns (msg, stamp ns)."""
    from sensor_msgs.msg import Image
    msg = Image(height=480, width=640, encoding='rgb8', step=1920,
                data=frames[index % len(frames)])
    stamp = now_ns
    if kind == '4k':
        msg.height, msg.width, msg.step = 2160, 3840, 3840 * 3
        msg.data = upscaled_4k(frames[index % len(frames)])
    elif kind == 'bad_encoding':
        msg.encoding = 'foo8'
    elif kind == 'truncated':
        msg.data = frames[index % len(frames)][:1920 * 100]
    elif kind == 'zero_size':
        msg.height = msg.width = msg.step = 0
        msg.data = b''
    elif kind == 'short_step':
        msg.step = 100
    elif kind == 'valid_bgr8':
        msg.encoding = 'bgr8'
    elif kind == 'stamp_zero':
        stamp = index               # 0 for the first, then a few ns: unique and long past
    elif kind == 'negative_stamp':
        stamp = -(index + 1) * NS - 1000
    elif kind == 'hour_old':
        stamp = now_ns - 3600 * NS + index
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp), NS)
    msg.header.frame_id = 'campaign'
    return msg, int(stamp)


# ----------------------------------------------------------------------------- campaign
class Campaign:
    """The campaign's own ROS side: the camera stand-in, a recorder, a spoofer, a client."""

    def __init__(self, namespace, domain):
        import rclpy
        from cbo_interfaces.msg import NetworkQuality, TransferSample
        from cbo_interfaces.srv import Offload
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import qos_profile_services_default
        from sensor_msgs.msg import Image
        from cbo_ros.nodes.ros_common import frame_qos, RESULT_HISTORY_QOS
        from cbo_ros.testbed.recorder import Recorder
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.recorder = Recorder(name='campaign_recorder', namespace=namespace,
                                 context=self.context)
        self.camera = self.recorder.create_publisher(Image, 'image_raw', frame_qos())
        self.spoofer = rclpy.create_node('campaign_spoofer', namespace=namespace,
                                         context=self.context)
        self.spoof_quality = self.spoofer.create_publisher(NetworkQuality, 'network_quality', 10)
        self.spoof_external = self.spoofer.create_publisher(NetworkQuality,
                                                            'external_network_quality', 10)
        # The planner's own QoS (transient local), so the recorder, which asks for history,
        # matches it too.
        self.spoof_transfers = self.spoofer.create_publisher(TransferSample, 'offload_transfers',
                                                             RESULT_HISTORY_QOS)
        qos = copy.copy(qos_profile_services_default)
        qos.depth = 10000            # the responses of a whole flood
        self.client = self.spoofer.create_client(Offload, 'offload', qos_profile=qos)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.recorder)
        self.executor.add_node(self.spoofer)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.frames = load_frames()
        self.sent = 0
        self.kinds = {}              # stamp -> kind of frame

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=2.0)
        self.recorder.destroy_node()
        self.spoofer.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def publish(self, kind='valid'):
        """Publish one frame of ``kind``; return its stamp."""
        msg, stamp = make_image(kind, self.sent, self.frames, time.time_ns())
        self.camera.publish(msg)
        self.sent += 1
        self.kinds[stamp] = kind
        return stamp

    def stream(self, seconds, rate_hz, kinds=('valid',), during=None, count=None):
        """Publish frames at ``rate_hz`` for ``seconds`` (or ``count`` frames); return stamps.

        ``during(elapsed_s)`` runs between frames (faults, spoofing).
        """
        stamps, start = [], time.monotonic()
        index = 0
        while True:
            elapsed = time.monotonic() - start
            if (count is not None and index >= count) or (count is None and elapsed >= seconds):
                break
            if during is not None:
                during(elapsed)
            stamps.append(self.publish(kinds[index % len(kinds)]))
            index += 1
            next_at = start + index / rate_hz
            time.sleep(max(0.0, next_at - time.monotonic()))
        return stamps

    def wait_answered(self, stamps, timeout_s=15.0):
        """Wait until every stamp has a final result (or the timeout); return the wait."""
        start, wanted = time.monotonic(), set(stamps)
        while time.monotonic() - start < timeout_s:
            if wanted <= set(self.recorder.answered_stamps()):
                break
            time.sleep(0.1)
        time.sleep(0.5)            # a duplicate would arrive now
        return time.monotonic() - start

    def measure(self, stamps, since=None):
        """Figures of the frames ``stamps``: answered, duplicates, misses, offload share."""
        from cbo_ros.nodes.ros_common import stamp_to_ns
        wanted = set(stamps)
        results = [(t, m) for t, _, m in self.recorder.snapshot('results')
                   if stamp_to_ns(m.header.stamp) in wanted]
        decisions = [m for _, _, m in self.recorder.snapshot('decisions')
                     if stamp_to_ns(m.header.stamp) in wanted]
        keys = [stamp_to_ns(m.header.stamp) for _, m in results]
        notes = collections.Counter(m.note.split(':')[0][:40] for _, m in results
                                    if m.source != m.SOURCE_SERVER)
        missing_kinds = {}
        for stamp in wanted - set(keys):
            kind = self.kinds.get(stamp, '?')
            missing_kinds[kind] = missing_kinds.get(kind, 0) + 1

        def p95(values):
            return float(np.percentile(values, 95)) if values else float('nan')
        return {'missing_kinds': missing_kinds, 'local_notes': dict(notes.most_common(3)),
                'total_ms_p95': p95([m.latency.total_ms for _, m in results]),
                'local_ms_p95': p95([m.latency.capture_to_local_ms for _, m in results]),
                'captured': len(wanted), 'answered': len(set(keys)),
                'duplicates': len(keys) - len(set(keys)),
                'missing': len(wanted - set(keys)),
                'deadline_misses': sum(1 for _, m in results if not m.deadline_met
                                       and not m.note.startswith('deadline passed before')),
                'late_on_arrival': sum(1 for _, m in results
                                       if m.note.startswith('deadline passed before')),
                'server_answers': sum(1 for _, m in results if m.source == m.SOURCE_SERVER),
                'offload_share': (sum(1 for d in decisions if d.offload) / len(decisions)
                                  if decisions else 0.0)}

    def resume_steps(self, t0):
        """When, after ``t0``, the monitor said reachable and the planner offloaded again."""
        reachable = next((t - t0 for t, _, q in self.recorder.snapshot('qualities')
                          if t >= t0 and q.server_reachable), None)
        offload = next((t - t0 for t, _, d in self.recorder.snapshot('decisions')
                        if t >= t0 and d.offload), None)

        until = t0 + (offload if offload is not None else 1e9)
        reasons = collections.Counter(
            d.reason.split('(')[0].strip()[:40] for t, _, d in self.recorder.snapshot('decisions')
            if t0 <= t < until)

        def text(value):
            return 'never' if value is None else f'{value:.1f} s'
        return (f'monitor reachable after {text(reachable)}, first offload {text(offload)}; '
                f'local until then: {dict(reasons.most_common(3))}')

    def first_server_answer_after(self, t0):
        """Monotonic receipt time of the first server answer received after ``t0``."""
        for t, _, m in self.recorder.snapshot('results'):
            if t >= t0 and m.source == m.SOURCE_SERVER:
                return t
        return None

    def call_all(self, requests, timeout_s):
        """Send all requests at once; return the responses (None: no answer in time)."""
        futures = [self.client.call_async(r) for r in requests]
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not all(f.done() for f in futures):
            time.sleep(0.05)
        out = []
        for future in futures:
            if future.done():
                out.append(future.result())
            else:
                self.client.remove_pending_request(future)
                out.append(None)
        return out


def offload_request(data, deadline_ns=None, nanosec=None, seq=0, fmt='jpeg'):
    from cbo_interfaces.srv import Offload
    request = Offload.Request(frame_seq=seq, top_k=5)
    request.image.format = fmt
    request.image.data = bytes(data)
    if deadline_ns is not None:
        request.deadline.sec, request.deadline.nanosec = divmod(int(deadline_ns), NS)
    if nanosec is not None:
        request.deadline.sec, request.deadline.nanosec = int(time.time()) + 5, int(nanosec)
    return request


def service_calls_row(name, responses, extra=''):
    answered = [r for r in responses if r is not None]
    ok = sum(1 for r in answered if r.success)
    busy = sum(1 for r in answered if not r.success and r.error.startswith('busy:'))
    return {'phase': name, 'captured': len(responses), 'answered': len(answered),
            'duplicates': 0, 'missing': len(responses) - len(answered), 'deadline_misses': '',
            'offload_share': '', 'resume_s': '',
            'note': f'{ok} classified, {busy} busy, {len(answered) - ok - busy} refused with a '
                    f'reason{extra}'}


def frames_row(name, figures, resume_s=None, note=''):
    return {'phase': name, 'captured': figures['captured'], 'answered': figures['answered'],
            'duplicates': figures['duplicates'], 'missing': figures['missing'],
            'deadline_misses': figures['deadline_misses'],
            'offload_share': f"{figures['offload_share']:.0%}",
            'resume_s': '' if resume_s is None else (f'{resume_s:.1f}' if resume_s >= 0
                                                     else 'never'),
            'note': note + (f"; never answered: {figures['missing_kinds']}"
                            if figures['missing_kinds'] else '')}


def resume_time(campaign, cleared_at, limit_s):
    """Seconds from ``cleared_at`` until a server answer arrived (-1: none within limit_s)."""
    end = cleared_at + limit_s
    while time.monotonic() < end:
        found = campaign.first_server_answer_after(cleared_at)
        if found is not None:
            return found - cleared_at
        time.sleep(0.1)
    found = campaign.first_server_answer_after(cleared_at)
    return -1.0 if found is None else found - cleared_at


# ----------------------------------------------------------------------------- phases
def phase_malformed(c, procs, args, rows):
    kinds = list(MALFORMED_KINDS)
    stamps = []
    for start in range(0, args.frames, 100):
        batch = [kinds[i % len(kinds)] for i in range(start, min(start + 100, args.frames))]
        if batch and start % 500 == 0:
            batch[len(batch) // 2] = '4k'
        stamps += c.stream(0, args.rate, kinds=batch, count=len(batch))
        procs.sample()
    c.wait_answered(stamps, 20.0)
    time.sleep(1.5)                         # the planner's next diagnostics
    f = c.measure(stamps)
    status = c.recorder.status('offload_planner_node')
    rows.append(frames_row('malformed', f, note=(
        f"{f['late_on_arrival']} answered late ('deadline passed before planning': stamps 0, "
        f"negative, an hour old, or frames that waited too long); 4K frames included; "
        f"planner counts {status.get('frames_dropped_in_transport', '?')} frames dropped in "
        f"transport (sequence gaps), camera stand-in published {c.sent}")))


def phase_big_frames(c, procs, args, rows):
    """4K frames among 640x480 ones: do they push their neighbours past the deadline?"""
    control = c.stream(args.big_s, 15.0)
    c.wait_answered(control, 20.0)
    f = c.measure(control)

    def latency(figures):
        return (f"p95 stamp->robot answer {figures['local_ms_p95']:.0f} ms, ->final "
                f"{figures['total_ms_p95']:.0f} ms")
    rows.append(frames_row('big_frames: control', f, note=f'640x480 only, 15 fps; {latency(f)}'))
    kinds = ['valid'] * 9 + ['4k']
    mixed = c.stream(args.big_s, 15.0, kinds=kinds)
    procs.sample()
    c.wait_answered(mixed, 30.0)
    big = [s for s in mixed if c.kinds.get(s) == '4k']
    neighbours = [s for s in mixed if c.kinds.get(s) != '4k']
    f_big, f_neighbours = c.measure(big), c.measure(neighbours)
    rows.append(frames_row('big_frames: 4K', f_big,
                           note=f'3840x2160 (24.9 MB), 1 in 10; {latency(f_big)}'))
    rows.append(frames_row('big_frames: neighbours', f_neighbours,
                           note=f'640x480 among them; {latency(f_neighbours)}'))


def phase_flood(c, procs, args, rows):
    import cv2
    jpeg = cv2.imencode('.jpg', np.frombuffer(c.frames[0], np.uint8).reshape(480, 640, 3)[
        ::2, ::2])[1].tobytes()
    truncated = jpeg[:len(jpeg) // 2] + b'\xff\xd9'
    now = time.time_ns()
    makers = [lambda i: offload_request(jpeg, now + 10 * NS, seq=i)] * 4 + [
        lambda i: offload_request(os.urandom(2000), now + 10 * NS, seq=i),
        lambda i: offload_request(truncated, now + 10 * NS, seq=i),
        lambda i: offload_request(jpeg, nanosec=2_000_000_000, seq=i),
        lambda i: offload_request(png_claiming(16000, 16000), now + 10 * NS, seq=i,
                                  fmt='png')]
    requests = [makers[i % len(makers)](i) for i in range(args.flood)]
    result = {}

    def flood():
        result['responses'] = c.call_all(requests, args.flood_timeout)
    thread = threading.Thread(target=flood)
    thread.start()
    stamps = c.stream(0, 15.0, count=int(15 * 6))
    thread.join()
    procs.sample()
    c.wait_answered(stamps)
    rows.append(service_calls_row('flood (calls)', result['responses']))
    f = c.measure(stamps)
    rows.append(frames_row('flood (robot)', f,
                           note=f"robot frames during the flood: {f['server_answers']} server "
                                f"answers; local answers: {f['local_notes']}"))


def phase_bombs(c, procs, args, rows):
    bomb = jpeg_claiming(16000, 16000)
    responses = []
    before = procs.peak_kb.get('server_node', 0)
    for _ in range(args.bomb_rounds):
        responses += c.call_all([offload_request(bomb, time.time_ns() + 10 * NS, seq=i)
                                 for i in range(8)], 20.0)
        procs.sample()
    refused = sum(1 for r in responses if r is not None and not r.success)
    reason = next((r.error for r in responses if r is not None and not r.success), '')
    rows.append(service_calls_row(
        'bombs (16000x16000)', responses,
        f"; {refused} refused, e.g. '{reason[:60]}'; server peak RSS "
        f"{before / 1024:.0f} -> {procs.peak_kb.get('server_node', 0) / 1024:.0f} MB"))


def phase_spoof(c, procs, args, rows):
    from cbo_interfaces.msg import NetworkQuality, TransferSample
    before = c.stream(args.spoof_s, 15.0)
    c.wait_answered(before)
    lie = NetworkQuality(bandwidth_bps=1e3, rtt_ms=5000.0, server_reachable=False,
                         source='spoof')
    last = [0.0]

    def spoof(_elapsed):
        if time.monotonic() - last[0] >= 0.05:
            last[0] = time.monotonic()
            c.spoof_quality.publish(lie)
            c.spoof_external.publish(lie)
            c.spoof_transfers.publish(TransferSample(payload_bytes=50000, success=False,
                                                     timed_out=True))
    during = c.stream(args.spoof_s, 15.0, during=spoof)
    c.wait_answered(during)
    procs.sample()
    a, b = c.measure(before), c.measure(during)
    status = c.recorder.status('offload_planner_node')
    monitor = c.recorder.status('network_monitor_node')
    rows.append(frames_row('spoof', b, note=(
        f"offload share {a['offload_share']:.0%} before, {b['offload_share']:.0%} during; "
        f"ignored: planner {status.get('untrusted_quality_ignored', '?')} quality, monitor "
        f"{monitor.get('untrusted_externals_ignored', '?')} external + "
        f"{monitor.get('untrusted_transfers_ignored', '?')} transfers")))


def phase_server_restart(c, procs, args, rows):
    state = {}

    def fault(elapsed):
        if elapsed >= 3.0 and 'killed' not in state:
            procs.kill_server()
            state['killed'] = time.monotonic()
        if elapsed >= 6.0 and 'restarted' not in state:
            procs.start_server()
            state['restarted'] = time.monotonic()
        if 'restarted' in state and 'ready' not in state and procs.server_serving():
            state['ready'] = time.monotonic()
    stamps = c.stream(args.restart_s, 15.0, during=fault)
    while 'ready' not in state and time.monotonic() - state['restarted'] < 60.0:
        if procs.server_serving():
            state['ready'] = time.monotonic()
        time.sleep(0.05)
    ready = state.get('ready', state['restarted'])
    extra = c.stream(4.0, 15.0)                   # frames that may be offloaded again
    resume = resume_time(c, ready, 10.0)
    if args.verbose:
        print('  network_quality from the kill (s after the new server served, reachable, '
              'estimate age s): ' + ' '.join(
                  f'{t - ready:+.1f}/{int(q.server_reachable)}/{q.estimate_age_s:.1f}'
                  for t, _, q in c.recorder.snapshot('qualities') if t >= state['killed']),
              flush=True)
    c.wait_answered(stamps + extra)
    procs.sample()
    f = c.measure(stamps + extra)
    rows.append(frames_row('server_restart', f, resume, note=(
        f"SIGKILL, restart after 3 s; new server serving {ready - state['restarted']:.1f} s "
        f"after its start; resume measured from then ({c.resume_steps(ready)})")))


def phase_link_faults(c, procs, link, args, rows):
    from cbo_ros.testbed.link_shaping import format_rate
    rate = link.rate_bps
    for name, apply, clear, seconds in (
            ('link_cut', lambda: link.set_loss(99.99), lambda: link.set_loss(0.0), 5.0),
            ('loss_10', lambda: link.set_loss(10.0), lambda: link.set_loss(0.0), 10.0),
            ('bw_drop_10x', lambda: link.set_rate(rate / 10), lambda: link.set_rate(rate),
             10.0)):
        if 'link' not in args.phases.split(',') and name not in args.phases.split(','):
            continue
        state = {}

        def fault(elapsed, apply=apply, clear=clear, seconds=seconds, state=state):
            if elapsed >= 2.0 and 'applied' not in state:
                apply()
                state['applied'] = time.monotonic()
            if elapsed >= 2.0 + seconds and 'cleared' not in state:
                clear()
                state['cleared'] = time.monotonic()
        stamps = c.stream(2.0 + seconds + args.after_s, 15.0, during=fault)
        resume = resume_time(c, state['cleared'], 1.0)
        if args.verbose:
            print(f'  {name}: link counters {link.stats()}', flush=True)
        c.wait_answered(stamps)
        procs.sample()
        status = c.recorder.status('offload_planner_node')
        rows.append(frames_row(name, c.measure(stamps), resume, note=(
            f'{seconds:.0f} s fault on a {format_rate(rate)} link; after it: '
            f"{c.resume_steps(state['cleared'])}; planner: "
            f"{status.get('frames_dropped_in_transport', '?')} frames dropped in transport")))


def phase_soak(c, procs, args, rows):
    start = time.monotonic()
    warmup = max(5.0, 0.2 * args.soak_s)
    last = [0.0]

    def sample(_elapsed):
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            procs.sample()
    stamps = c.stream(args.soak_s, 15.0, during=sample)
    c.wait_answered(stamps)
    procs.sample()
    growth = {}
    for name, samples in procs.samples.items():
        after = [rss for t, rss in samples if t >= start + warmup]
        if len(after) >= 2:
            growth[name] = (after[-1] - after[0]) / 1024
            # RSS at five even points after warm-up: levelled off, or still climbing?
            procs.soak_trend[name] = [after[round(i * (len(after) - 1) / 4)] / 1024
                                      for i in range(5)]
    f = c.measure(stamps)
    rows.append(frames_row('soak', f, note=f'{args.soak_s:.0f} s at 15 fps; RSS growth after '
                           f'{warmup:.0f} s warm-up in the RSS table'))
    return growth


# ----------------------------------------------------------------------------- main
def print_table(rows, procs, growth, wall_s, codes):
    columns = ('phase', 'captured', 'answered', 'duplicates', 'missing', 'deadline_misses',
               'offload_share', 'resume_s')
    heads = ('phase', 'captured', 'answered', 'dupl.', 'missing', 'misses', 'offload',
             'resume s')
    widths = [max(len(h), *(len(str(r[c])) for r in rows)) for h, c in zip(heads, columns)]
    line = '  '.join(h.ljust(w) for h, w in zip(heads, widths))
    print('\n================ reliability campaign ================')
    print(line + '  note')
    print('-' * len(line))
    for row in rows:
        print('  '.join(str(row[c]).ljust(w) for c, w in zip(columns, widths)) + '  '
              + row['note'])
    print('\nprocess                 peak RSS MB   soak growth MB   RSS MB through the soak')
    for name in sorted(procs.peak_kb):
        grown = growth.get(name)
        trend = ' -> '.join(f'{mb:.0f}' for mb in procs.soak_trend.get(name, ()))
        print(f'{name:<23} {procs.peak_kb[name] / 1024:>11.0f}   '
              f"{'n/a' if grown is None else f'{grown:+.1f}':>14}   {trend}")
    crashed = [n for n, code in codes.items() if code not in (0, -2, 130)]
    print(f'\nexit codes {codes} ({"no crash" if not crashed else "CRASHED: " + str(crashed)});'
          f' server restarts by the campaign: {procs.server_starts - 1}; wall {wall_s:.0f} s')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='fewer calls and a 20 s soak (under 3 minutes on loopback)')
    parser.add_argument('--frames', type=int, default=None,
                        help='frames of the malformed mix (default 2000; quick 1000)')
    parser.add_argument('--rate', type=float, default=30.0, help='malformed mix rate (fps)')
    parser.add_argument('--flood', type=int, default=None,
                        help='concurrent Offload calls (default 5000; quick 1000)')
    parser.add_argument('--flood-timeout', type=float, default=60.0)
    parser.add_argument('--bomb-rounds', type=int, default=None, help='rounds of 8 bombs')
    parser.add_argument('--spoof-s', type=float, default=None)
    parser.add_argument('--restart-s', type=float, default=12.0)
    parser.add_argument('--soak-s', type=float, default=None,
                        help='soak length (default 600 s; quick 20 s)')
    parser.add_argument('--link', action='store_true',
                        help='server behind the shaped link (root; adds the link faults)')
    parser.add_argument('--link-rate', type=float, default=20e6, help='link rate (bit/s)')
    parser.add_argument('--link-queue', choices=('fifo', 'fair'), default='fifo',
                        help='queueing on the shaped link: one FIFO (default) or per-flow '
                             'queues served in turn, like fq_codel on most Linux hosts')
    parser.add_argument('--big-s', type=float, default=None,
                        help='seconds of each big_frames stream (default 20; quick 8)')
    parser.add_argument('--phases', default='malformed,big_frames,flood,bombs,spoof,'
                        'server_restart,link,'
                        'soak', help='comma-separated subset (link: link_cut, loss_10, '
                        'bw_drop_10x; or name those)')
    parser.add_argument('--robot-args', default='',
                        help="extra ROS arguments of the robot nodes, e.g. "
                             "'-p service_queue_depth:=4'")
    parser.add_argument('--server-args', default='',
                        help="extra ROS arguments of server_node, e.g. '-p service_queue_depth:=8'")
    parser.add_argument('--after-s', type=float, default=8.0,
                        help='frames streamed after a link fault clears')
    parser.add_argument('--verbose', action='store_true')
    parser.add_argument('--json', help='also write the table to this file')
    args = parser.parse_args(argv)
    if args.link_queue != 'fifo' and not args.link:
        parser.error('--link-queue needs --link (it sets the queueing of the shaped link)')
    quick = args.quick
    args.frames = args.frames or (1000 if quick else 2000)
    args.flood = args.flood or (1000 if quick else 5000)
    args.bomb_rounds = args.bomb_rounds or (1 if quick else 3)
    args.spoof_s = args.spoof_s or (5.0 if quick else 15.0)
    args.big_s = args.big_s or (8.0 if quick else 20.0)
    args.soak_s = args.soak_s if args.soak_s is not None else (20.0 if quick else 600.0)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    phases = set(args.phases.split(','))
    domain, namespace = unique_domain_id(), f'/campaign{os.getpid()}'
    log_dir = str(paths.results_dir() / f"campaign_{time.strftime('%Y%m%d_%H%M%S')}")
    os.makedirs(log_dir, exist_ok=True)
    start = time.monotonic()
    rows, growth, codes = [], {}, {}
    with contextlib.ExitStack() as stack:
        link = None
        if args.link:
            from cbo_ros.testbed.link_shaping import ShapedLink
            ok, why = ShapedLink.available()
            if not ok:
                print(f'--link: shaped link unavailable ({why}); running on loopback')
            else:
                link = stack.enter_context(ShapedLink(rate_bps=args.link_rate,
                                                      queue=args.link_queue))
                os.environ.update(link.env_for_robot())     # this process is robot side
        os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
        procs = Processes(namespace, domain, link, log_dir)
        procs.robot_args = args.robot_args.split()
        procs.server_args = args.server_args.split()
        print(f'reliability campaign: domain {domain}, namespace {namespace}, '
              f"{'shaped link ' + link.describe() if link else 'loopback'}; logs in {log_dir}",
              flush=True)
        procs.start_server()
        procs.start_robot()
        stack.callback(lambda: codes.update(procs.stop()))
        campaign = Campaign(namespace, domain)
        stack.callback(campaign.close)
        ready = time.monotonic()
        while time.monotonic() - ready < 90 and not (
                campaign.client.service_is_ready()
                and campaign.camera.get_subscription_count() >= 2
                and campaign.recorder.status('offload_planner_node').get('server_reachable')
                == 'True'):
            time.sleep(0.2)
        print(f'system up after {time.monotonic() - start:.1f} s', flush=True)
        warm = campaign.stream(3.0, 15.0)
        campaign.wait_answered(warm)
        rows.append(frames_row('warm-up', campaign.measure(warm)))
        steps = [('malformed', phase_malformed), ('big_frames', phase_big_frames),
                 ('flood', phase_flood),
                 ('bombs', phase_bombs), ('spoof', phase_spoof),
                 ('server_restart', phase_server_restart)]
        for name, phase in steps:
            if name in phases:
                print(f'phase {name} ...', flush=True)
                phase(campaign, procs, args, rows)
        if link is not None and phases & {'link', 'link_cut', 'loss_10', 'bw_drop_10x'}:
            print('phase link faults ...', flush=True)
            phase_link_faults(campaign, procs, link, args, rows)
        if 'soak' in phases and args.soak_s > 0:
            print(f'phase soak ({args.soak_s:.0f} s) ...', flush=True)
            growth = phase_soak(campaign, procs, args, rows)
        procs.sample()
    wall_s = time.monotonic() - start
    print_table(rows, procs, growth, wall_s, codes)
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'rows': rows, 'peak_rss_mb': {n: v / 1024 for n, v in
                                                     procs.peak_kb.items()},
                       'soak_growth_mb': growth, 'soak_rss_mb': procs.soak_trend,
                       'exit_codes': codes, 'wall_s': wall_s,
                       'args': vars(args)}, handle, indent=2)
    return 0 if all(r['missing'] == 0 and r['duplicates'] == 0 for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
