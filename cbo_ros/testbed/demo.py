"""cbo_demo: the whole live system on a labelled benchmark clip, with the link rate changing.

Starts the offload server (``server_node``, its own process; inside a network namespace behind a
shaped veth when :class:`cbo_ros.testbed.link_shaping.ShapedLink` is available) and the robot
(``robot_bringup``: camera in ``once`` mode, classifier, network monitor, planner; another
process). A recorder node in this process collects the final results, decisions and transfers.
The uplink rate goes through phases (default high -> low -> medium); on plain loopback the phases
are applied as the planner's ``bandwidth_cap_bps`` instead, and the demo says so.

At the end it prints and writes (``artifacts/results/demo_<time>.json``) a summary: frames captured
and answered, deadline misses, offload share per phase and per resolution, accuracy, latency
percentiles and bytes sent. Accuracy is against the TRUE label sets when the video has labels
(``--labels FILE`` or its sibling ``<stem>.labels.csv``; ``labels: true``): each answer is matched
to its source frame by the camera's ``image_raw/source_frame``. Without labels it is the
agreement with reference labels (top-1 of the server model at its native resolution on the
frame, the evaluator's reference; ``labels: reference``), not accuracy.
"""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from cbo_ros.assets import paths

DEFAULT_PHASES = '40M,2M,8M'
PHASE_NAMES = {0: 'high', 1: 'low', 2: 'medium'}


def parse_rate(text):
    """'8M' / '500k' / '2e6' -> bit/s."""
    text = str(text).strip()
    scale = {'k': 1e3, 'K': 1e3, 'm': 1e6, 'M': 1e6, 'g': 1e9, 'G': 1e9}
    if text and text[-1] in scale:
        return float(text[:-1]) * scale[text[-1]]
    return float(text)


def parse_args(argv):
    """Parse the cbo_demo command line."""
    parser = argparse.ArgumentParser(prog='cbo_demo', description=__doc__.split('\n')[0])
    parser.add_argument('--video', default=None,
                        help='video (default: the true-label benchmark\'s demo clip, held-out '
                             'evaluation objects back to back; bikes.mp4 when it is not built)')
    parser.add_argument('--max-frames', type=int, default=0, help='frames to use (0: all)')
    parser.add_argument('--labels', default=None,
                        help='true labels of the video (CSV "frame,labels"; default: its '
                             'sibling <stem>.labels.csv when present)')
    parser.add_argument('--phases', default=DEFAULT_PHASES,
                        help=f'uplink rates of the phases, comma-separated (default '
                             f'{DEFAULT_PHASES})')
    parser.add_argument('--loss-pct', type=float, default=0.0, help='uplink loss in percent')
    parser.add_argument('--rtt-ms', type=float, default=0.0,
                        help='round-trip time added by the link (user-space delay relay; '
                             'default 0)')
    parser.add_argument('--strategy', default='cbo', help='planner strategy')
    parser.add_argument('--deadline-ms', type=float, default=None,
                        help='answer deadline (default: config/robot.yaml)')
    parser.add_argument('--no-shaping', action='store_true',
                        help='run on plain loopback even when shaping is available')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: a fresh one for this run)')
    parser.add_argument('--params-file', default=str(paths.config_dir() / 'robot.yaml'))
    parser.add_argument('--server-params-file', default=str(paths.config_dir() / 'server.yaml'))
    parser.add_argument('--output', default=None, help='summary JSON path')
    parser.add_argument('--timeout', type=float, default=150.0, help='overall time limit (s)')
    parser.add_argument('--log-dir', default=None, help='keep the process logs here')
    return parser.parse_args(argv)


def executable(name):
    """Path of a console script of this installation (next to the interpreter when possible)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def stop(process, timeout=10.0):
    """SIGINT the process group, then SIGKILL; return the exit code."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


class BandwidthControl:
    """Applies a phase's rate: to the shaped link, or to the planner's bandwidth cap."""

    def __init__(self, link, node, namespace=''):
        self.link = link
        self.node = node
        self.client = None
        if link is None:
            from rcl_interfaces.srv import SetParameters
            self.client = node.create_client(
                SetParameters, f'{namespace}/offload_planner_node/set_parameters')

    def apply(self, rate_bps):
        """Apply ``rate_bps`` to the link or the planner's cap; return whether it was applied."""
        if self.link is not None:
            self.link.set_rate(rate_bps)
            return True
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters
        if not self.client.wait_for_service(timeout_sec=5.0):
            return False
        request = SetParameters.Request(parameters=[Parameter(
            name='bandwidth_cap_bps', value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                           double_value=float(rate_bps)))])
        future = self.client.call_async(request)
        end = time.monotonic() + 5.0
        while not future.done() and time.monotonic() < end:
            time.sleep(0.01)
        return future.done() and future.result() is not None and \
            all(r.successful for r in future.result().results)


def reference_labels(frames):
    """Compute the evaluator's reference: server model top-1 at its native resolution."""
    from cbo_ros.perception.classifier import OnnxClassifier
    model = OnnxClassifier(str(paths.resolve_model(paths.SERVER_MODEL_FP32)),
                           paths.SERVER_INPUT_SIZE)
    labels = []
    for start in range(0, len(frames), 16):
        labels.extend(int(i) for i in model.logits(frames[start:start + 16]).argmax(axis=1))
    return labels


def percentile(values, q):
    """Return the ``q``-th percentile of ``values`` (0 for none)."""
    return float(np.percentile(values, q)) if len(values) else 0.0


def summarize(recorder, frames_captured, labels, phases, link_text, args, wall_s, truth=None):
    """Build the summary dict from what the recorder saw.

    ``truth`` = (label set by source frame name, frame names in source order, labels file) of a
    labelled video: answers are scored against the set of their source frame (found from the
    camera's ``image_raw/source_frame``, else from the capture order when every frame was
    answered), unlabelled frames left out. Without it, ``labels`` holds the reference label of
    each captured frame (capture order) and the figures are agreement with reference labels.
    """
    from cbo_ros.nodes.ros_common import stamp_to_ns
    results = recorder.snapshot('results')
    decisions = recorder.snapshot('decisions')
    transfers = recorder.snapshot('transfers')
    locals_ = recorder.snapshot('local_results')
    stamps = [stamp_to_ns(msg.header.stamp) for _, _, msg in results]
    unique = sorted(set(stamps))
    index_of = {stamp: i for i, stamp in enumerate(unique)}
    aligned = len(unique) == frames_captured == len(labels)
    sets, names, labels_file = truth or ({}, [], None)
    source_frames = recorder.source_frame_names() \
        if hasattr(recorder, 'source_frame_names') else {}
    by_order = len(unique) == frames_captured and frames_captured <= len(names)
    left_out = set()

    def true_set(stamp):
        name = source_frames.get(stamp)
        if name is None and by_order and stamp in index_of:
            name = names[index_of[stamp]]
        return sets.get(name)

    def accuracy(messages):
        if truth is not None:
            hits = []
            for msg in messages:
                stamp = stamp_to_ns(msg.header.stamp)
                classes = true_set(stamp)
                if classes is None or not classes:
                    left_out.add(stamp)
                    continue
                hits.append(msg.class_id.strip().isdigit() and int(msg.class_id) in classes)
            return float(np.mean(hits)) if hits else None
        if not aligned or not messages:
            return None
        hits = [msg.class_id == str(labels[index_of[stamp_to_ns(msg.header.stamp)]])
                for msg in messages if stamp_to_ns(msg.header.stamp) in index_of]
        return float(np.mean(hits)) if hits else None

    final_msgs = [msg for _, _, msg in results]
    planner_status = recorder.status('offload_planner_node') \
        if hasattr(recorder, 'status') else {}

    def planner_count(key):
        value = planner_status.get(key)
        return int(value) if value is not None and str(value).isdigit() else None
    totals = [msg.latency.total_ms for msg in final_msgs]
    per_phase = {}
    for _, phase, msg in decisions:
        entry = per_phase.setdefault(phase, {'frames': 0, 'offloaded': 0, 'resolutions': {},
                                             'bandwidth_used_bps': []})
        entry['frames'] += 1
        entry['bandwidth_used_bps'].append(msg.bandwidth_bps)
        if msg.offload:
            entry['offloaded'] += 1
            key = str(msg.resolution)
            entry['resolutions'][key] = entry['resolutions'].get(key, 0) + 1
    for entry in per_phase.values():
        entry['bandwidth_used_bps'] = float(np.median(entry['bandwidth_used_bps']))
        entry['offload_share'] = entry['offloaded'] / entry['frames'] if entry['frames'] else 0.0
        entry['resolution_shares'] = {r: n / entry['frames']
                                      for r, n in sorted(entry['resolutions'].items(),
                                                         key=lambda kv: int(kv[0]))}
    resolutions = {}
    for _, _, msg in decisions:
        key = str(msg.resolution) if msg.offload else 'local'
        resolutions[key] = resolutions.get(key, 0) + 1
    sources = {'server': sum(1 for m in final_msgs if m.source == m.SOURCE_SERVER)}
    sources['robot'] = len(final_msgs) - sources['server']
    accuracy_final = accuracy(final_msgs)
    accuracy_local = accuracy([msg for _, _, msg in locals_])
    if truth is not None:
        scoring = {
            'labels': 'true', 'labels_file': labels_file, 'score': 'accuracy',
            'accuracy_reference': 'true label sets: top-1 in the set of the source frame',
            'frames_matched_by_source_frame': sum(1 for s in unique if s in source_frames),
            'unlabelled_or_unmatched_left_out': len(left_out)}
    else:
        scoring = {
            'labels': 'reference', 'score': 'agreement with reference labels',
            'accuracy_reference': 'AGREEMENT with the top-1 of server_lite2_fp32 at 260 px on '
                                  'each frame (reference labels), not accuracy'}
    return {
        'video': str(args.video),
        'link': link_text,
        'strategy': args.strategy,
        'phases': phases,
        'frames_captured': frames_captured,
        'frames_answered': len(unique),
        'duplicate_answers': len(stamps) - len(unique),
        'all_answered_once': len(unique) == frames_captured and len(stamps) == len(unique),
        'deadline_misses': sum(1 for m in final_msgs if not m.deadline_met),
        # Frames the camera published that no final result answers (never reached the
        # planner), and the planner's own count of sequence gaps on image_raw.
        'frames_never_seen': max(0, frames_captured - len(unique)),
        'frames_dropped_in_transport': planner_count('frames_dropped_in_transport'),
        'late_on_arrival': planner_count('late_on_arrival'),
        'answer_sources': sources,
        'empty_answers': sum(1 for m in final_msgs if not m.class_id),
        'offload_share': (sum(1 for _, _, m in decisions if m.offload) / len(decisions)
                          if decisions else 0.0),
        'decisions_per_resolution': resolutions,
        'per_phase': per_phase,
        'accuracy_final': accuracy_final,
        'accuracy_local_only': accuracy_local,
        **scoring,
        'latency_ms': {'p50': percentile(totals, 50), 'p99': percentile(totals, 99),
                       'max': max(totals) if totals else 0.0},
        'offload_calls': len(transfers),
        'offload_calls_answered': sum(1 for _, _, t in transfers if t.success),
        'offload_calls_late_or_lost': sum(1 for _, _, t in transfers if t.timed_out),
        'bytes_sent': int(sum(t.payload_bytes for _, _, t in transfers)),
        'wall_time_s': wall_s,
    }


def print_summary(summary, path):
    """Print the demo summary and where its JSON was written."""
    out = print
    out('\n================ cbo_demo summary ================')
    out(f"link:              {summary['link']}")
    out(f"strategy:          {summary['strategy']}")
    out(f"frames captured:   {summary['frames_captured']}")
    out(f"frames answered:   {summary['frames_answered']}  (duplicates "
        f"{summary['duplicate_answers']}; "
        f"{'OK' if summary['all_answered_once'] else 'MISMATCH'})")
    out(f"deadline misses:   {summary['deadline_misses']}")
    dropped = summary.get('frames_dropped_in_transport')
    out(f"frames lost:       {summary.get('frames_never_seen', 0)} never reached the planner "
        f"(its image_raw sequence gaps: {'n/a' if dropped is None else dropped}); "
        f"{summary.get('late_on_arrival') or 0} arrived after their deadline")
    out(f"answers:           {summary['answer_sources']['server']} server, "
        f"{summary['answer_sources']['robot']} robot ({summary['empty_answers']} empty)")
    out(f"offloaded overall: {summary['offload_share']:.0%}  per resolution: "
        f"{summary['decisions_per_resolution']}")
    for phase in summary['phases']:
        entry = summary['per_phase'].get(phase['name'])
        if not entry:
            continue
        shares = ', '.join(f'{r}px {s:.0%}' for r, s in entry['resolution_shares'].items())
        out(f"  phase {phase['name']:<7} {phase['rate_bps'] / 1e6:6.1f} Mbit/s: "
            f"{entry['frames']:4d} frames, planner's estimate "
            f"{entry['bandwidth_used_bps'] / 1e6:5.1f} Mbit/s, "
            f"offloaded {entry['offload_share']:.0%}"
            f"{' (' + shares + ')' if shares else ''}")

    def pct(value):
        return 'n/a' if value is None else f'{value:.1%}'
    if summary.get('labels') == 'true':
        left_out = summary.get('unlabelled_or_unmatched_left_out', 0)
        out(f"accuracy (labels: true, {summary['labels_file']}"
            f"{f', {left_out} unlabelled frames left out' if left_out else ''}): "
            f"final {pct(summary['accuracy_final'])}, "
            f"robot only {pct(summary['accuracy_local_only'])}")
    else:
        out(f"agreement with reference labels (labels: reference, server@260; not accuracy): "
            f"final {pct(summary['accuracy_final'])}, "
            f"robot only {pct(summary['accuracy_local_only'])}")
    out(f"latency:           p50 {summary['latency_ms']['p50']:.0f} ms, "
        f"p99 {summary['latency_ms']['p99']:.0f} ms")
    out(f"offload calls:     {summary['offload_calls']} "
        f"({summary['offload_calls_answered']} answered, "
        f"{summary['offload_calls_late_or_lost']} late/lost), "
        f"{summary['bytes_sent'] / 1e6:.2f} MB sent")
    out(f'summary written to {path}')


def default_video():
    """Return the benchmark's labelled demo clip when built, else the embedded bikes.mp4."""
    from cbo_ros.benchmark.build import demo_clip
    clip = demo_clip()
    return str(clip) if clip.is_file() else 'bikes.mp4'


def run(args):
    """Run the demo; return the exit code."""
    if args.video is None:
        args.video = default_video()
    from cbo_ros.perception.media import MediaError, read_frames
    try:
        frames_list, source = read_frames(args.video, max_frames=args.max_frames,
                                          labels_file=args.labels)
    except (MediaError, ValueError) as error:      # an unusable labels file is an error
        print(f'cbo_demo: {error}', file=sys.stderr)
        return 1
    truth = None
    if getattr(source, 'has_labels', False):
        truth = ({f.name: f.label_set for f in frames_list}, [f.name for f in frames_list],
                 getattr(source, 'labels_file', None) or source.labels.path)
        print(f'labels: true, from {truth[2]}')
    else:
        print('labels: reference (no labels file: the demo reports agreement with the '
              'server\'s reference labels, not accuracy)')
    frames = [frame.rgb for frame in frames_list]
    fps = float(getattr(source, 'fps', 25.0) or 25.0)
    duration_s = len(frames) / fps
    rates = [parse_rate(r) for r in args.phases.split(',') if r.strip()]
    phases = [{'name': PHASE_NAMES.get(i, f'phase{i}'), 'rate_bps': rate}
              for i, rate in enumerate(rates)]
    domain = args.domain_id if args.domain_id is not None else random.randrange(110, 230)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix='cbo_demo_'))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f'cbo_demo: {args.video} ({len(frames)} frames, {fps:.0f} fps, ~{duration_s:.0f} s), '
          f'ROS_DOMAIN_ID={domain}, logs in {log_dir}')

    from cbo_ros.testbed.link_shaping import ShapedLink
    shaping_ok, reason = (False, 'disabled with --no-shaping') if args.no_shaping else \
        ShapedLink.available()
    with contextlib.ExitStack() as stack:
        link = None
        if shaping_ok:
            # Fast DDS reads its flow controller when a process starts and the phases change the
            # rate live: pace at the highest phase rate (docs/live_system.md, measured there).
            link = stack.enter_context(ShapedLink(rate_bps=rates[0], loss_pct=args.loss_pct,
                                                  flow_control_bps=max(rates),
                                                  rtt_ms=args.rtt_ms))
            link_text = f'shaped veth: {link.describe()}'
        else:
            link_text = (f'plain loopback, NOT shaped ({reason}); phases applied as the '
                         "planner's bandwidth_cap_bps")
        print(f'link: {link_text}')
        base_env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED='1')
        # One machine: nothing outside it is discovered; a value of your own is kept. The shaped
        # link sets its own (SUBNET with the peer in ROS_STATIC_PEERS, multicast TTL 0: see
        # link_shaping.LINK_DISCOVERY_RANGE for why not LOCALHOST).
        base_env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
        server_env = dict(base_env, **(link.env_for_server() if link else {}))
        robot_env = dict(base_env, **(link.env_for_robot() if link else {}))
        os.environ.update(robot_env)     # this process (the recorder) is on the robot side

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from cbo_interfaces.srv import Offload
        from cbo_ros.testbed.recorder import Recorder
        server_cmd = [executable('server_node'), '--ros-args', '--params-file',
                      args.server_params_file]
        if link is not None:
            server_cmd = link.wrap_command(server_cmd)
        server = subprocess.Popen(server_cmd, env=server_env, start_new_session=True,
                                  stdout=open(log_dir / 'server.log', 'w'),
                                  stderr=subprocess.STDOUT)
        stack.callback(stop, server)
        rclpy.init(args=['cbo_demo'])
        stack.callback(rclpy.try_shutdown)
        recorder = Recorder(record_local=True)
        executor = SingleThreadedExecutor()
        executor.add_node(recorder)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        stack.callback(executor.shutdown)
        control = BandwidthControl(link, recorder)
        offload_client = recorder.create_client(Offload, 'offload')
        start = time.monotonic()
        if not offload_client.wait_for_service(timeout_sec=30.0):
            print('cbo_demo: WARNING: the offload server did not come up in 30 s '
                  f'(see {log_dir / "server.log"}); the robot will answer locally')
        else:
            print(f'server ready after {time.monotonic() - start:.1f} s')

        robot_cmd = [executable('robot_bringup'), '--params-file', args.params_file,
                     '--video', str(args.video), '--mode', 'once', '--start-delay', '3.0',
                     '--strategy', args.strategy]
        if args.max_frames:
            robot_cmd += ['--max-frames', str(args.max_frames)]
        if args.deadline_ms:
            robot_cmd += ['--deadline-ms', str(args.deadline_ms)]
        robot = subprocess.Popen(robot_cmd, env=robot_env, start_new_session=True,
                                 stdout=open(log_dir / 'robot.log', 'w'),
                                 stderr=subprocess.STDOUT)
        stack.callback(stop, robot)

        limit = start + args.timeout
        recorder.set_phase(phases[0]['name'])
        while recorder.count('decisions') == 0 and time.monotonic() < limit:
            if robot.poll() is not None:
                raise RuntimeError(f'robot_bringup exited ({robot.returncode}); see '
                                   f'{log_dir / "robot.log"}')
            time.sleep(0.05)
        if link is None:
            control.apply(rates[0])
        first = time.monotonic()
        print(f"phase {phases[0]['name']}: {rates[0] / 1e6:.1f} Mbit/s")
        for index, phase in enumerate(phases[1:], start=1):
            switch_at = first + duration_s * index / len(phases)
            while time.monotonic() < switch_at and time.monotonic() < limit:
                time.sleep(0.05)
            ok = control.apply(phase['rate_bps'])
            recorder.set_phase(phase['name'])
            print(f"phase {phase['name']}: {phase['rate_bps'] / 1e6:.1f} Mbit/s"
                  f"{'' if ok else ' (could not apply!)'}")

        # Wait until the camera is done and every captured frame has its final answer.
        idle_since, last = None, -1
        while time.monotonic() < limit:
            captured = recorder.frames_published
            answered = len(set(recorder.answered_stamps()))
            if captured != last:
                idle_since, last = time.monotonic(), captured
            if captured >= len(frames) and answered >= captured:
                break
            if time.monotonic() - idle_since > 10.0 and answered >= captured:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        wall_s = time.monotonic() - start
        robot_code, server_code = stop(robot), stop(server)
        print(f'robot_bringup exited with {robot_code}, server_node with {server_code}')
        frames_captured = recorder.frames_published

    if truth is None:
        print('computing reference labels (server model at 260 px) ...')
        labels = reference_labels(frames[:frames_captured] if frames_captured else frames)
    else:
        labels = []
    summary = summarize(recorder, frames_captured, labels, phases, link_text, args, wall_s,
                        truth)
    summary['domain_id'] = domain
    summary['logs'] = str(log_dir)
    output = Path(args.output) if args.output else (
        paths.results_dir() / f"demo_{time.strftime('%Y%m%d_%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    print_summary(summary, output)
    return 0 if summary['all_answered_once'] else 1


def main(argv=None):
    """Run the demo from the command line; return the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print('cbo_demo: interrupted')
        return 130


if __name__ == '__main__':
    sys.exit(main())
