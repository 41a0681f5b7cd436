"""Measure a robot -> server link with the cbo_interfaces/srv/Probe service (real DDS).

``python -m cbo_ros.tools.probe_link server`` answers Probe requests (run it in the server
namespace, e.g. through ``ShapedLink.wrap_command``); ``python -m cbo_ros.tools.probe_link client
--payload 65536 --window 4 --duration 10`` keeps ``window`` requests in flight and prints one JSON
line per event on stdout:

- ``{"event": "discovered", "discovery_s": ...}``: the service became available;
- ``{"event": "answered", "first_answer_s": ...}`` (``--first-answer``): a small call was
  answered, so the server has matched this client too; the window starts only then (steady-state
  goodput: under loss the server can take seconds to match a new client's response reader, and
  calls sent before that are never answered);
- ``{"event": "interval", "wall": ..., "goodput_bps": ..., "calls": ..., "rtt_ms": ...}`` every
  ``--interval`` seconds (goodput counts payload bytes the server confirmed receiving);
- ``{"event": "done", "goodput_bps": ..., "calls": ..., "lost": ..., "rtt_ms_p50": ...}``.

Used by test/test_link_shaping.py, scripts/benchmark_pipeline.py and docs/network_shaping.md.
"""

import argparse
import array
import copy
import json
import sys
import time

SERVICE = 'cbo_link_probe'


def _emit(**fields):
    print(json.dumps(fields), flush=True)


def run_server(args):
    """Answer Probe requests until SIGINT/SIGTERM."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from cbo_interfaces.srv import Probe

    rclpy.init()
    node = rclpy.create_node('cbo_link_probe_server')
    served = [0]

    def handle(request, response):
        response.received_bytes = len(request.payload)
        response.server_stamp = node.get_clock().now().to_msg()
        served[0] += 1
        return response

    node.create_service(Probe, args.service, handle)
    _emit(event='ready', service=args.service)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        _emit(event='stopped', served=served[0])
        node.destroy_node()
        rclpy.try_shutdown()


def _percentile(values, q):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_client(args):
    """Keep ``window`` Probe requests in flight; report goodput per interval and in total."""
    import rclpy
    from rclpy.qos import qos_profile_services_default

    from cbo_interfaces.srv import Probe

    start = time.monotonic()
    rclpy.init()
    node = rclpy.create_node('cbo_link_probe_client')
    qos = copy.copy(qos_profile_services_default)
    qos.depth = args.depth          # KEEP_LAST: requests beyond it are no longer repaired
    client = node.create_client(Probe, args.service, qos_profile=qos)
    if not client.wait_for_service(timeout_sec=args.wait):
        _emit(event='error', error=f'service {args.service} not found in {args.wait} s')
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    _emit(event='discovered', discovery_s=round(time.monotonic() - start, 3))
    if args.first_answer:
        if not _first_answer(node, client, time.monotonic() + args.wait):
            _emit(event='error', error=f'no answer from {args.service} in {args.wait} s')
            node.destroy_node()
            rclpy.try_shutdown()
            return 1
        _emit(event='answered', first_answer_s=round(time.monotonic() - start, 3))
    request = Probe.Request()
    request.payload = array.array('B', bytes(args.payload))
    in_flight = {}
    rtts, interval_rtts = [], []
    total_bytes = interval_bytes = calls = interval_calls = lost = 0
    begin = time.monotonic()
    last_report = begin
    end = begin + args.duration
    while True:
        now = time.monotonic()
        if now >= end and (not in_flight or now >= end + args.drain):
            break
        while now < end and len(in_flight) < args.window:
            in_flight[client.call_async(request)] = time.monotonic()
        rclpy.spin_once(node, timeout_sec=0.005)
        now = time.monotonic()
        for future, sent in list(in_flight.items()):
            if future.done():
                del in_flight[future]
                response = future.result()
                if response is None:
                    lost += 1
                    continue
                rtt_ms = (now - sent) * 1000.0
                rtts.append(rtt_ms)
                interval_rtts.append(rtt_ms)
                total_bytes += response.received_bytes
                interval_bytes += response.received_bytes
                calls += 1
                interval_calls += 1
            elif now - sent > args.call_timeout:
                client.remove_pending_request(future)
                del in_flight[future]
                lost += 1
        if now - last_report >= args.interval:
            span = now - last_report
            _emit(event='interval', wall=round(time.time(), 3), t=round(now - begin, 3),
                  goodput_bps=round(interval_bytes * 8 / span), calls=interval_calls,
                  rtt_ms=round(sum(interval_rtts) / len(interval_rtts), 1)
                  if interval_rtts else None)
            interval_bytes = interval_calls = 0
            interval_rtts = []
            last_report = now
    elapsed = min(time.monotonic(), end) - begin
    _emit(event='done', goodput_bps=round(total_bytes * 8 / max(elapsed, 1e-9)), calls=calls,
          lost=lost + len(in_flight), payload=args.payload, window=args.window,
          rtt_ms_p50=round(_percentile(rtts, 0.5), 1), rtt_ms_p99=round(_percentile(rtts, 0.99), 1),
          rtt_ms_max=round(max(rtts), 1) if rtts else 0.0, seconds=round(elapsed, 2))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _first_answer(node, client, give_up_at):
    """Send small calls (one at a time, 1 s each) until one is answered; False at give_up_at."""
    import rclpy
    from cbo_interfaces.srv import Probe

    while time.monotonic() < give_up_at:
        future = client.call_async(Probe.Request())
        sent = time.monotonic()
        while not future.done() and time.monotonic() - sent < 1.0:
            rclpy.spin_once(node, timeout_sec=0.01)
        if future.done() and future.result() is not None:
            return True
        client.remove_pending_request(future)
    return False


def main(argv=None):
    """Entry point: ``server`` or ``client``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='role', required=True)
    server = sub.add_parser('server', help='answer Probe requests')
    server.add_argument('--service', default=SERVICE)
    client = sub.add_parser('client', help='send Probe requests and report goodput')
    client.add_argument('--service', default=SERVICE)
    client.add_argument('--payload', type=int, default=65536, help='request payload bytes')
    client.add_argument('--window', type=int, default=4, help='requests kept in flight')
    client.add_argument('--duration', type=float, default=5.0, help='seconds of sending')
    client.add_argument('--interval', type=float, default=1.0, help='report period (s)')
    client.add_argument('--wait', type=float, default=20.0,
                        help='discovery timeout, then first-answer timeout (s)')
    client.add_argument('--depth', type=int, default=10,
                        help='KEEP_LAST history depth of the client (services default: 10)')
    client.add_argument('--first-answer', action='store_true',
                        help='start the window only once a small call is answered')
    client.add_argument('--call-timeout', type=float, default=15.0,
                        help='a request without answer after this long counts as lost')
    client.add_argument('--drain', type=float, default=5.0,
                        help='after --duration, wait this long for requests in flight')
    args = parser.parse_args(argv)
    return run_server(args) if args.role == 'server' else run_client(args)


if __name__ == '__main__':
    sys.exit(main())
