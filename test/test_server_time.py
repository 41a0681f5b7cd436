"""Server time to plan with, server occupancy and the measuring probe (ROS-free)."""

import pytest

from cbo_ros.core.planner import FrameCandidate, LinkState, OffloadOption
from cbo_ros.core.server_time import ServerOccupancy, ServerTimeModel, ServerTimeProbe


def profile(resolution):
    return 0.010 * resolution / 100      # 10 ms per 100 px


def test_without_adaptation_the_profile_is_used():
    model = ServerTimeModel(profile, adapt=False)
    model.observe(0.0, 100, round_trip_s=0.5, transfer_s=0.0, rtt_s=0.0)
    assert model.server_time_s(100, 0.1) == pytest.approx(0.010)


def test_the_percentile_of_recent_excess_is_added_and_old_calls_are_forgotten():
    model = ServerTimeModel(profile, adapt=True, percentile=50.0, window_s=5.0)
    assert model.server_time_s(200, 0.0) == pytest.approx(0.020)    # no call: the profile
    # Round trip 0.1 s = transfer 0.02 + RTT 0.01 + queue 0.01 + server 0.06: excess 0.05.
    for t in (1.0, 2.0, 3.0):
        model.observe(t, 100, round_trip_s=0.1, transfer_s=0.02, rtt_s=0.01, queue_s=0.01)
    model.observe(3.5, 100, round_trip_s=0.5, transfer_s=0.02, rtt_s=0.01, queue_s=0.01)
    # Median excess 0.05 s, added to the profile of whichever resolution is planned.
    assert model.server_time_s(200, 4.0) == pytest.approx(0.020 + 0.05)
    assert model.server_time_s(200, 7.5) == pytest.approx(0.020 + 0.25)  # t=3.0, 3.5 left
    assert model.server_time_s(200, 8.2) == pytest.approx(0.020 + 0.45)  # only t=3.5
    assert model.server_time_s(200, 9.0) == pytest.approx(0.020)         # all forgotten


def test_a_faster_server_than_profiled_is_planned_with_at_least_a_millisecond():
    model = ServerTimeModel(profile, adapt=True)
    model.observe(0.0, 100, round_trip_s=0.0, transfer_s=0.0, rtt_s=0.0)
    assert model.server_time_s(100, 0.0) == pytest.approx(1e-3)


def test_occupancy_is_learnt_and_queues_later_requests():
    occupancy = ServerOccupancy(alpha=0.5)
    occupancy.observe(inference_ms=40.0, batch_size=4, decode_ms=2.0)   # first: taken as is
    assert occupancy.occupancy_s == pytest.approx(0.012)
    occupancy.observe(inference_ms=20.0, batch_size=1, decode_ms=0.0)   # then averaged
    assert occupancy.occupancy_s == pytest.approx(0.016)
    link = LinkState(bandwidth_bps=8e6, rtt_s=0.010, busy_until_s=0.0)
    assert occupancy.wait_s(0.0, 10_000, link) == 0.0                 # an idle server
    occupancy.reserve(link_free_after_s=0.010, rtt_s=0.010)           # arrives at 0.015
    assert occupancy.free_s == pytest.approx(0.015 + 0.016)
    # 1,000 bytes queued now arrive at 0.001 + 0.005: they wait until the server is free.
    assert occupancy.wait_s(0.0, 1_000, link) == pytest.approx(0.031 - 0.006)


def candidate(deadline_s):
    options = [OffloadOption(r, r * 10, 0.9, 0.02) for r in (96, 128, 224)]
    return FrameCandidate(seq=7, arrival_s=0.0, deadline_s=deadline_s, confidence=0.6,
                          options=options)


def test_the_probe_offloads_the_smallest_option_at_most_once_per_period():
    probe = ServerTimeProbe(period_s=3.0)
    link = LinkState(bandwidth_bps=8e6, rtt_s=0.01)
    first = probe.propose(candidate(deadline_s=10.3), link, now_s=10.0)
    assert first.offload and first.resolution == 96 and first.payload_bytes == 960
    assert first.expected_gain == 0.0 and 'measure server time' in first.reason
    assert first.link_free_after_s == pytest.approx(10.0 + 960 * 8 / 8e6)
    assert probe.propose(candidate(10.3), link, now_s=11.0) is None      # within the period
    assert probe.propose(candidate(13.3), link, now_s=13.0) is not None
    probe.offload_sent(15.0)                                               # a real offload
    assert probe.propose(candidate(17.3), link, now_s=17.0) is None
    assert probe.propose(candidate(18.0001), link, now_s=18.0) is None     # cannot make it
    assert ServerTimeProbe(period_s=0.0).propose(candidate(99.0), link, 50.0) is None


def test_probe_respects_the_link_queue():
    probe = ServerTimeProbe(period_s=1.0)
    busy = LinkState(bandwidth_bps=8e6, rtt_s=0.01, busy_until_s=5.0)
    assert probe.propose(candidate(deadline_s=4.9), busy, now_s=4.0) is None
    decision = probe.propose(candidate(deadline_s=6.0), busy, now_s=4.0)
    assert decision.link_free_after_s == pytest.approx(5.0 + 960 * 8 / 8e6)
    assert decision.offload and decision.resolution == 96
