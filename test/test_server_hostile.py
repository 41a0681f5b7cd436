"""server_node under hostile input: bombs, malformed files and fields, floods, remote settings.

Real server processes over DDS on their own domain. The flood size can be raised with
``CBO_FLOOD_REQUESTS`` (default 1000) to re-measure the figures in
docs/server_and_network_monitor.md.
"""

import os
import struct
import sys
import time

import cv2
import numpy as np
import pytest

from cbo_ros.assets import paths
from ros_helpers import ros_env, start_process, stop_process, unique_domain_id
from ros_session import RosSession

pytestmark = pytest.mark.integration

SAMPLE = paths.media_dir() / 'imagenet_samples' / 'imagenet_00_243.jpg'
NS = f'/hostile{os.getpid()}'
FLOOD_REQUESTS = int(os.environ.get('CBO_FLOOD_REQUESTS', '1000'))


def peak_rss_mb(pid):
    """Peak resident memory (VmHWM) of a process in MB."""
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def jpeg_claiming(width, height):
    """A valid tiny JPEG whose frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(cv2.imencode('.jpg', np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b'\xff\xc0')
    struct.pack_into('>HH', data, sof + 5, height, width)
    return bytes(data)


def png_claiming(width, height):
    """A valid tiny PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC kept)."""
    import zlib
    data = bytearray(cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    struct.pack_into('>II', data, 16, width, height)
    struct.pack_into('>I', data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def request(data, fmt='jpeg', deadline=None, seq=0, client_id=''):
    from cbo_interfaces.srv import Offload
    req = Offload.Request()
    req.frame_seq = seq
    req.client_id = client_id
    req.image.format = fmt
    req.image.data = bytes(data)
    if deadline is not None:
        req.deadline = deadline
    return req


def start_server(tmp_path, domain, *params):
    args = [sys.executable, '-m', 'server_node.offload_server', '--ros-args',
            '--params-file', str(paths.SOURCE_ROOT / 'config' / 'server.yaml')]
    for param in params:
        args += ['-p', param]
    log = tmp_path / 'server.log'
    return start_process(args, ros_env(domain), log), log


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """A server with the shipped configuration (remote limit changes off) and a client."""
    from cbo_interfaces.srv import Offload, Probe
    from diagnostic_msgs.msg import DiagnosticArray
    domain = unique_domain_id()
    tmp = tmp_path_factory.mktemp('hostile')
    process, log = start_server(tmp, domain, f'robot_namespaces:=[{NS}]', 'load_period_s:=0.5')
    session = RosSession(domain)
    diagnostics = []
    session.node.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 50)
    offload = session.client(Offload, f'{NS}/offload')
    probe = session.client(Probe, f'{NS}/probe', depth=10)
    try:
        if not session.spin_until(offload.service_is_ready, 30):
            pytest.fail('offload service did not appear:\n' + log.read_text())
        yield {'session': session, 'offload': offload, 'probe': probe, 'process': process,
               'log': log, 'diagnostics': diagnostics}
    finally:
        session.close()
        assert stop_process(process) == 0, log.read_text()


def test_decompression_bombs_are_refused_undecoded(server):
    session, offload = server['session'], server['offload']
    jpeg_bomb, png_bomb = jpeg_claiming(16000, 16000), png_claiming(20000, 20000)
    assert len(jpeg_bomb) < 1000
    rss_before = peak_rss_mb(server['process'].pid)
    start = time.monotonic()
    # Eight at once (eight decoded at once took 11 GB before the header check).
    responses = session.call_many(offload, [request(jpeg_bomb, seq=i) for i in range(8)]
                                  + [request(png_bomb, fmt='png', seq=8)], timeout=10)
    elapsed = time.monotonic() - start
    assert all(r is not None for r in responses)
    for r in responses[:8]:
        assert not r.success
        assert '16000x16000' in r.error and 'max_image_pixels' in r.error, r.error
    assert '20000x20000' in responses[8].error, responses[8].error
    assert elapsed < 2.0, elapsed                  # a single decode of one bomb took 3.9 s
    rss_after = peak_rss_mb(server['process'].pid)
    # One 16000x16000 decode alone needs 768 MB: the peak did not move by a fraction of that.
    assert rss_after - rss_before < 50 and rss_after < 800, (rss_before, rss_after)
    assert session.call(offload, request(SAMPLE.read_bytes())).success


def test_truncated_jpeg_with_an_end_marker_appended_is_refused(server):
    session, offload = server['session'], server['offload']
    jpeg = SAMPLE.read_bytes()
    for fraction in (0.3, 0.6, 0.95):
        res = session.call(offload, request(jpeg[:int(len(jpeg) * fraction)] + b'\xff\xd9'))
        assert res is not None and not res.success
        assert res.error.startswith('truncated JPEG'), res.error
    # A progressive JPEG (several scans) passes whole and is refused cut short.
    rgb = cv2.imread(str(SAMPLE))
    progressive = cv2.imencode('.jpg', rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert session.call(offload, request(progressive)).success
    res = session.call(offload, request(progressive[:len(progressive) // 2] + b'\xff\xd9'))
    assert not res.success and 'truncated JPEG' in res.error, res.error
    assert session.call(offload, request(jpeg)).success


def test_malformed_fields_get_clear_reasons(server):
    from builtin_interfaces.msg import Time
    session, offload = server['session'], server['offload']
    jpeg = SAMPLE.read_bytes()
    zero_width = jpeg_claiming(0, 480)
    no_frame = b'\xff\xd8\xff\xfe\x00\x04ab\xff\xda\x00\x02\xff\xd9'   # comment, scan, end
    bad_ihdr = png_claiming(640, 480)[:12] + b'JUNK' + png_claiming(640, 480)[16:]
    cases = {
        'nanosec 1e9': (request(jpeg, deadline=Time(sec=int(time.time()) + 5,
                                                    nanosec=1_000_000_000)), 'invalid deadline'),
        'nanosec max': (request(jpeg, deadline=Time(sec=1, nanosec=2**32 - 1)),
                        'invalid deadline'),
        'zero width': (request(zero_width), 'absurd JPEG header'),
        'no frame header': (request(no_frame), 'corrupt JPEG header'),
        'png without IHDR': (request(bad_ihdr, fmt='png'), 'corrupt PNG header'),
        'png 65535 wide': (request(png_claiming(65535, 1), fmt='png'), 'cannot decode'),
    }
    for name, (req, reason) in cases.items():
        res = session.call(offload, req)
        assert res is not None and not res.success, name
        assert reason in res.error and 'internal error' not in res.error, f'{name}: {res.error}'
    assert session.call(offload, request(jpeg)).success


def test_probe_payload_limit(server):
    from cbo_interfaces.srv import Probe
    session = server['session']
    small = session.call(server['probe'], Probe.Request(payload=bytes(16384)))
    assert small.received_bytes == 16384 and small.server_stamp.sec > 0
    big = session.call(server['probe'], Probe.Request(payload=bytes(2 * 1024 * 1024)))
    assert big is not None and big.received_bytes == 0 and big.server_stamp.sec == 0
    assert 'max_probe_bytes' in server['log'].read_text()


def test_limits_cannot_be_changed_remotely_by_default(server):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    session = server['session']
    client = session.node.create_client(SetParameters, '/offload_server/set_parameters')
    assert session.spin_until(client.service_is_ready, 10)
    for name in ('max_payload_bytes', 'max_batch_size', 'max_image_pixels'):
        req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=1024))])
        result = session.call(client, req).results[0]
        assert not result.successful and 'read-only' in result.reason, (name, result.reason)
    assert session.call(server['offload'], request(SAMPLE.read_bytes())).success


def test_diagnostics_ok_on_a_cpu_machine_with_the_shipped_providers(server):
    from diagnostic_msgs.msg import DiagnosticStatus
    session = server['session']

    def status():
        for array in reversed(server['diagnostics']):
            for item in array.status:
                if item.name == '/offload_server':
                    return item
        return None
    # The earlier tests' refusals are no busy refusals: nothing degrades the level.
    item = session.spin_until(status, 5)
    assert item is not None
    values = {kv.key: kv.value for kv in item.values}
    assert values['providers_requested'] == 'tensorrt, cuda, cpu'
    if values['providers_missing'] != 'none':
        assert item.level == DiagnosticStatus.OK, item.message
    assert values['limits_remotely_settable'] == 'False'


def test_flood_is_answered_and_does_not_starve_other_clients(tmp_path):
    """A flooding client gets results or quick busy refusals; steady clients keep their rate.

    One steady client is another robot (its own namespace); the other calls the flooded
    service itself, with its own ``client_id``.
    """
    from cbo_interfaces.srv import Offload
    domain = unique_domain_id()
    flood_ns, steady_ns = f'flood{os.getpid()}', f'steady{os.getpid()}'
    process, log = start_server(tmp_path, domain, f'robot_namespaces:=[{flood_ns}, {steady_ns}]',
                                'warmup:=false')
    session = RosSession(domain)
    neighbour_session = None
    frame = cv2.resize(cv2.imread(str(SAMPLE)), (320, 240))
    jpeg = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    try:
        # The neighbour is a participant of its own, as another process on the robot would be.
        neighbour_session = RosSession(domain, name='neighbour_client')
        flood = session.client(Offload, f'/{flood_ns}/offload', depth=FLOOD_REQUESTS)
        steady = session.client(Offload, f'/{steady_ns}/offload', depth=10)
        neighbour = neighbour_session.client(Offload, f'/{flood_ns}/offload', depth=10)
        assert session.spin_until(lambda: flood.service_is_ready() and steady.service_is_ready(),
                                  30), log.read_text()
        assert neighbour_session.spin_until(neighbour.service_is_ready, 30), log.read_text()
        assert session.call(steady, request(jpeg)).success        # warm
        start = time.monotonic()
        flood_futures = [flood.call_async(request(jpeg, seq=i)) for i in range(FLOOD_REQUESTS)]
        steady_futures, neighbour_futures, next_steady, flood_seconds = [], [], start, None
        # The steady clients send 5 frames/s each while the flood is being answered.
        while time.monotonic() - start < 60 and (flood_seconds is None
                                                 or len(steady_futures) < 10):
            now = time.monotonic()
            if now >= next_steady:
                steady_futures.append(steady.call_async(request(jpeg)))
                neighbour_futures.append(neighbour.call_async(
                    request(jpeg, client_id='/neighbour_planner')))
                next_steady += 0.2
            session.executor.spin_once(timeout_sec=0.005)
            neighbour_session.executor.spin_once(timeout_sec=0.005)
            if flood_seconds is None and all(f.done() for f in flood_futures):
                flood_seconds = time.monotonic() - start
        session.spin_until(lambda: all(f.done() for f in steady_futures), 5)
        neighbour_session.spin_until(lambda: all(f.done() for f in neighbour_futures), 5)
    finally:
        session.close()
        if neighbour_session is not None:
            neighbour_session.close()
        assert stop_process(process) == 0, log.read_text()
    flood_answers = [f.result() for f in flood_futures if f.done()]
    served = sum(r.success for r in flood_answers)
    busy = [r for r in flood_answers if not r.success and r.error.startswith('busy:')]
    other = [r.error for r in flood_answers if not r.success and not r.error.startswith('busy:')]
    steady_answers = [f.result() for f in steady_futures if f.done()]
    neighbour_answers = [f.result() for f in neighbour_futures if f.done()]
    print(f'\nflood of {FLOOD_REQUESTS}: {len(flood_answers)} answered ({served} results, '
          f'{len(busy)} busy) in {flood_seconds or float("nan"):.1f} s; steady robot: '
          f'{sum(r.success for r in steady_answers)}/{len(steady_futures)} results; '
          f'neighbour on the flooded service: {sum(r.success for r in neighbour_answers)}/'
          f'{len(neighbour_futures)} results')
    assert len(flood_answers) == FLOOD_REQUESTS, 'requests without an answer'
    assert not other, other[:3]
    assert busy and all('retry in' in r.error for r in busy), busy[:1]
    assert served >= 32
    # The steady robot (its own namespace) is served every time despite the flood.
    assert len(steady_answers) == len(steady_futures) >= 10
    assert all(r.success for r in steady_answers), [r.error for r in steady_answers
                                                    if not r.success][:3]
    # So is a client with its own client_id on the flooded service: the flood fills only
    # its own share of the queue.
    assert len(neighbour_answers) == len(neighbour_futures), 'neighbour calls without an answer'
    assert all(r.success for r in neighbour_answers), [r.error for r in neighbour_answers
                                                       if not r.success][:3]
