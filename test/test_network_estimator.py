"""NetworkEstimator: goodput, RTT, loss, staleness and external estimates recovered from samples."""

import random

import pytest

from cbo_ros.core.network_estimator import NetworkEstimator


def feed_link(est, rate_bps, rtt_ms, server_ms=20.0, start=0.0, count=40, period=0.1,
              jitter_ms=0.0, seed=0, probes=True):
    """Simulate offload transfers (and small probes) over a link of known rate and RTT."""
    rng = random.Random(seed)
    now = start
    for i in range(count):
        now = start + i * period
        if probes:
            est.add_probe(now, 64, rtt_ms + rng.uniform(0, jitter_ms))
        payload = rng.randint(8_000, 60_000)
        wire_ms = 1e3 * 8 * payload / rate_bps
        est.add_transfer(now + 0.05, payload, rtt_ms + wire_ms + server_ms
                         + rng.uniform(0, jitter_ms), server_ms)
    return now + 0.05


@pytest.mark.parametrize('rate_bps,rtt_ms', [(2e6, 40.0), (20e6, 10.0), (100e6, 2.0)])
def test_recovers_known_goodput_and_rtt_within_10_percent(rate_bps, rtt_ms):
    est = NetworkEstimator(window_s=10.0)
    now = feed_link(est, rate_bps, rtt_ms, jitter_ms=0.1 * rtt_ms)
    result = est.estimate(now)
    assert result.bandwidth_bps == pytest.approx(rate_bps, rel=0.10)
    assert result.rtt_ms == pytest.approx(rtt_ms, rel=0.10)
    assert result.loss_rate == 0.0
    assert result.server_reachable and not result.stale
    assert result.source == 'transfers+probes'
    assert result.samples == 80


def test_goodput_subtracts_server_time_and_base_rtt():
    # Without subtracting server time and RTT the rate would be ~5x too low here.
    est = NetworkEstimator()
    est.add_probe(0.0, 64, 50.0)
    est.add_transfer(0.1, 25_000, 50.0 + 20.0 + 150.0, server_ms=150.0)   # 20 ms on the wire
    assert est.estimate(0.2).bandwidth_bps == pytest.approx(10e6, rel=0.01)


def test_outlier_transfers_do_not_move_the_median():
    est = NetworkEstimator()
    now = feed_link(est, 10e6, 20.0, count=30)
    for i in range(5):      # a few stalled transfers (retransmissions), 10x slower
        est.add_transfer(now + 0.01 * i, 30_000, 20.0 + 240.0, 0.0)
    assert est.estimate(now + 0.1).bandwidth_bps == pytest.approx(10e6, rel=0.10)


def test_large_probes_give_goodput_without_offload_traffic():
    est = NetworkEstimator(min_bandwidth_payload_bytes=4096)
    est.add_probe(0.0, 64, 10.0)
    est.add_probe(0.5, 16_384, 10.0 + 1e3 * 8 * 16_384 / 5e6)
    result = est.estimate(0.6)
    assert result.bandwidth_bps == pytest.approx(5e6, rel=0.01)
    assert result.source == 'probes'


def test_small_transfers_do_not_count_as_goodput_samples():
    est = NetworkEstimator(min_bandwidth_payload_bytes=4096)
    est.add_transfer(0.0, 500, 30.0, 1.0)
    assert est.estimate(0.1).bandwidth_bps == 0.0


def test_loss_rate_over_the_sliding_window():
    est = NetworkEstimator(window_s=5.0)
    for i in range(10):
        est.add_probe(i * 0.1, 64, 5.0 if i % 4 else None)    # 3 of 10 lost
    assert est.estimate(1.0).loss_rate == pytest.approx(0.3)
    est.add_transfer(1.1, 20_000, 0.0, 0.0, success=False)
    est.add_transfer(1.2, 20_000, 900.0, 0.0, success=True, timed_out=True)
    assert est.estimate(1.3).loss_rate == pytest.approx(5 / 12)
    # Everything leaves the window: no evidence of loss any more.
    for i in range(5):
        est.add_probe(10.0 + i * 0.1, 64, 5.0)
    assert est.estimate(10.5).loss_rate == 0.0


def test_staleness_and_reachability_when_measurements_stop():
    est = NetworkEstimator(stale_after_s=2.0, unreachable_after_s=3.0, max_consecutive_failures=2)
    feed_link(est, 10e6, 10.0, count=10)            # last measurement at 0.95 s
    fresh = est.estimate(1.0)
    assert fresh.server_reachable and not fresh.stale
    assert est.estimate(2.5).estimate_age_s == pytest.approx(1.55)
    later = est.estimate(4.0)
    assert later.stale and later.estimate_age_s == pytest.approx(3.05)
    assert not later.server_reachable                  # no answer for > 3 s
    assert later.bandwidth_bps == pytest.approx(10e6, rel=0.1)   # last value kept


def test_consecutive_lost_probes_make_the_server_unreachable_at_once():
    est = NetworkEstimator(max_consecutive_failures=2, unreachable_after_s=30.0)
    est.add_probe(0.0, 64, 5.0)
    est.add_probe(0.5, 64, None)
    assert est.estimate(0.6).server_reachable
    est.add_probe(1.0, 64, None)
    assert not est.estimate(1.1).server_reachable
    est.add_probe(1.5, 64, 5.0)
    assert est.estimate(1.6).server_reachable


def test_old_requests_given_up_late_do_not_hide_a_server_that_answers_again():
    """The calls in flight when a server died are given up seconds later, while a restarted
    server already answers probes: they are losses, not failures in a row (they kept the monitor
    reporting 'unreachable' for ~3 s after a restart)."""
    est = NetworkEstimator(max_consecutive_failures=2, unreachable_after_s=30.0)
    est.add_probe(10.0, 64, 5.0)                       # the new server answers
    for i in range(12):                                # calls sent at 6.0-7.1 s, given up now
        est.add_transfer(10.1 + 0.05 * i, 30_000, 0.0, success=False, timed_out=True,
                         sent=6.0 + 0.1 * i)
    result = est.estimate(10.8)
    assert result.server_reachable
    assert result.loss_rate == pytest.approx(12 / 13)
    # Requests sent after the last answer still count: two in a row make it unreachable.
    est.add_transfer(11.0, 30_000, 0.0, success=False, timed_out=True, sent=10.2)
    est.add_transfer(11.1, 30_000, 0.0, success=False, timed_out=True, sent=10.3)
    assert not est.estimate(11.2).server_reachable


def test_absent_service_is_unreachable_but_not_loss():
    est = NetworkEstimator(max_consecutive_failures=2)
    est.add_probe(0.0, 64, 5.0)
    est.add_unreachable(0.5)
    est.add_unreachable(1.0)
    result = est.estimate(1.1)
    assert not result.server_reachable and result.loss_rate == 0.0


def test_never_measured_reports_age_since_start():
    est = NetworkEstimator(start_time=100.0, stale_after_s=2.0)
    result = est.estimate(103.0)
    assert result.stale and result.estimate_age_s == pytest.approx(3.0)
    assert not result.server_reachable and result.source == 'none'
    assert NetworkEstimator().estimate(5.0).estimate_age_s == float('inf')


def test_fresh_external_estimate_takes_precedence_then_expires():
    est = NetworkEstimator(external_timeout_s=2.0)
    feed_link(est, 10e6, 10.0, count=10)
    est.set_external(1.0, 3e6, 80.0, 0.05, server_reachable=True, estimate_age_s=0.2)
    result = est.estimate(1.5)
    assert result.source == 'external'
    assert (result.bandwidth_bps, result.rtt_ms, result.loss_rate) == (3e6, 80.0, 0.05)
    assert result.estimate_age_s == pytest.approx(0.55)    # own measurement at 0.95 is older
    expired = est.estimate(3.5)
    assert expired.source == 'transfers+probes'
    assert expired.bandwidth_bps == pytest.approx(10e6, rel=0.1)


def test_stale_external_estimate_is_ignored():
    est = NetworkEstimator()
    est.add_probe(0.0, 64, 10.0)
    est.set_external(0.1, 3e6, 80.0, 0.0, stale=True)
    assert est.estimate(0.2).source == 'probes'


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError):
        NetworkEstimator(window_s=0)
    with pytest.raises(ValueError):
        NetworkEstimator(rtt_alpha=1.5)
    with pytest.raises(ValueError):
        NetworkEstimator(change_ratio=1.0)


def test_a_rate_change_is_followed_after_a_few_transfers_not_half_a_window():
    est = NetworkEstimator(window_s=10.0)
    now = feed_link(est, 10e6, 20.0, count=60)
    now = feed_link(est, 2e6, 20.0, start=now + 0.1, count=5, seed=1)
    assert est.estimate(now).bandwidth_bps == pytest.approx(2e6, rel=0.10)
    now = feed_link(est, 8e6, 20.0, start=now + 0.1, count=5, seed=2)
    assert est.estimate(now).bandwidth_bps == pytest.approx(8e6, rel=0.10)
    # Without change detection the median of the 10 s window still reads the old rate.
    slow = NetworkEstimator(window_s=10.0, change_samples=0)
    now = feed_link(slow, 10e6, 20.0, count=60)
    now = feed_link(slow, 2e6, 20.0, start=now + 0.1, count=5, seed=1)
    assert slow.estimate(now).bandwidth_bps == pytest.approx(10e6, rel=0.10)


def test_queued_transfers_give_the_link_rate_not_less():
    # An exact 1 Mbit/s FIFO link, three 12.5 kB transfers sent 20 ms apart: each waits behind
    # the previous one; its sample must still read 1 Mbit/s.
    est = NetworkEstimator(change_samples=0)
    free = 0.0
    for sent in (0.0, 0.02, 0.04):
        free = max(sent, free) + 8 * 12_500 / 1e6
        est.add_transfer(free, 12_500, (free - sent) * 1e3, 0.0, sent=sent)
    assert est.estimate(free).bandwidth_bps == pytest.approx(1e6, rel=1e-6)


def test_answers_arriving_out_of_order_give_the_same_samples():
    # Two 10 kB transfers sent 1 ms apart on an 8 Mbit/s FIFO link. When the second one's
    # answer arrives first (one server batch), the first must not count the later one as ahead
    # of it (that read 16 Mbit/s); the second cannot know yet about the first and reads low.
    def samples(order):
        est = NetworkEstimator(change_samples=0)
        transfers = [(0.000, 0.010), (0.001, 0.020)]          # (sent, end of upload)
        rates = {}
        for i in order:
            sent, end = transfers[i]
            est.add_transfer(0.05 + i * 1e-3, 10_000, (end - sent) * 1e3, 0.0, sent=sent)
            rates[i] = est._rates[-1][1]
        return rates
    assert list(samples([0, 1]).values()) == pytest.approx([8e6, 8e6], rel=0.01)
    reordered = samples([1, 0])
    assert reordered[0] == pytest.approx(8e6, rel=0.01)
    assert reordered[1] <= 8e6 * 1.01


def test_non_finite_measurements_are_ignored():
    est = NetworkEstimator()
    est.add_probe(0.0, 64, 20.0)
    est.add_probe(0.1, 64, float('nan'))
    est.add_probe(0.2, 64, float('inf'))
    est.add_transfer(0.3, 20_000, float('nan'), 0.0)
    result = est.estimate(0.4)
    assert result.rtt_ms == pytest.approx(20.0)
    assert result.loss_rate == 0.0
