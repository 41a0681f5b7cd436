"""FramePlanner: options, decisions, probes and the reservations of an offload (ROS-free)."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from cbo_ros.core.calibration import CalibrationBundle
from cbo_ros.core.offload_planning import FramePlanner
from cbo_ros.core.payload_sizing import PayloadSizer
from cbo_ros.core.planner import LinkState
from cbo_ros.core.server_time import ServerOccupancy, ServerTimeModel, ServerTimeProbe
from cbo_ros.perception.image_ops import center_square, encode_jpeg

RESOLUTIONS = (96, 128, 224)
RGB = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)


@pytest.fixture
def make():
    sizers = []

    def build(strategy, probe_s=0.0):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            bundle = CalibrationBundle.identity(RESOLUTIONS)
        sizer = PayloadSizer(RESOLUTIONS, quality=90, refresh_frames=5)
        sizers.append(sizer)
        return FramePlanner(strategy, bundle, RESOLUTIONS, sizer,
                            ServerTimeModel(bundle.server_time_s, adapt=True), ServerOccupancy(),
                            ServerTimeProbe(probe_s))
    yield build
    for sizer in sizers:
        sizer.close()


def test_server_only_offloads_its_resolution_and_reserves_link_and_server(make):
    planning = make('server_only_128')
    link = LinkState(bandwidth_bps=20e6, rtt_s=0.005)
    plan = planning.plan(0, RGB, 0.4, 0.4, 3, deadline_s=10.5, link=link, now_s=10.0)
    assert plan.decision.offload and plan.decision.resolution == 128 and not plan.measure_only
    assert plan.payload == encode_jpeg(center_square(RGB, 128), 90)
    assert plan.encode_ms > 0.0
    free = 10.0 + len(plan.payload) * 8 / 20e6
    assert plan.decision.link_free_after_s == pytest.approx(free)
    assert planning.busy_until_s == pytest.approx(free)
    assert planning.occupancy.free_s == pytest.approx(free + 0.0025)   # nothing learnt yet
    # The next frame's options wait behind it on the link.
    options = planning.options({}, 0.4, LinkState(20e6, 0.005, busy_until_s=free), 10.0)
    assert [o.resolution for o in options] == list(RESOLUTIONS)
    assert [o.payload_bytes for o in options] == [planning.sizer.sizes[r] for r in RESOLUTIONS]


def test_a_local_decision_sends_nothing_unless_the_probe_measures(make):
    link = LinkState(bandwidth_bps=20e6, rtt_s=0.005)
    quiet = make('local_only')
    plan = quiet.plan(0, RGB, 0.9, 0.9, 3, deadline_s=10.5, link=link, now_s=10.0)
    assert not plan.decision.offload and plan.payload is None and quiet.busy_until_s == 0.0
    probing = make('local_only', probe_s=3.0)
    plan = probing.plan(0, RGB, 0.9, 0.9, 3, deadline_s=10.5, link=link, now_s=10.0)
    assert plan.measure_only and plan.decision.offload and plan.decision.resolution == 96
    assert plan.decision.confidence == pytest.approx(0.9)      # the frame keeps its answer
    assert plan.payload == encode_jpeg(center_square(RGB, 96), 90)
    probing.offload_sent(10.0)
    again = probing.plan(1, RGB, 0.9, 0.9, 3, deadline_s=11.5, link=link, now_s=11.0)
    assert not again.decision.offload


def test_answers_teach_the_server_time_and_occupancy(make):
    planning = make('server_only_96')
    response = SimpleNamespace(queue_ms=10.0, inference_ms=30.0, batch_size=2, decode_ms=1.0,
                               score=0.8, class_id='5')
    planning.observe_answer(1.0, 0, 96, round_trip_s=0.2, transfer_s=0.01, rtt_s=0.01,
                            response=response)
    assert planning.occupancy.occupancy_s == pytest.approx(0.016)
    # Measured server time 0.2 - 0.01 - 0.01 - 0.01 = 0.17 s replaces the profile's 0.04 s.
    assert planning.server_time.server_time_s(96, 1.5) == pytest.approx(0.17)


def test_the_link_view_prefers_a_fresh_estimate_and_applies_the_cap():
    from cbo_ros.core.offload_planning import link_view
    quality = SimpleNamespace(bandwidth_bps=20e6, rtt_ms=8.0, loss_rate=0.01, source='probes',
                              server_reachable=True)
    link, why, source = link_view(quality, 10e6, 0.005, busy_until_s=3.0)
    assert (link.bandwidth_bps, link.rtt_s, link.loss_rate) == (20e6, 0.008, 0.01)
    assert link.reachable and why == '' and source == 'probes' and link.busy_until_s == 3.0
    link, _, source = link_view(None, 10e6, 0.005, cap_bps=2e6)
    assert (link.bandwidth_bps, link.rtt_s, source) == (2e6, 0.005, 'initial, capped')
    unknown = SimpleNamespace(**(vars(quality) | {'bandwidth_bps': 0.0, 'source': ''}))
    assert link_view(unknown, 10e6, 0.005)[0].bandwidth_bps == 10e6   # unknown: the initial
    down = SimpleNamespace(**(vars(quality) | {'server_reachable': False}))
    link, why, _ = link_view(down, 10e6, 0.005)
    assert not link.reachable and why == 'server unreachable (network monitor)'
    link, why, _ = link_view(down, 10e6, 0.005, unreachable_why='server unavailable')
    assert not link.reachable and why == 'server unavailable'
