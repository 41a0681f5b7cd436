"""The planner strategies: names, feasibility of the online CBO policy, baselines' rules."""

import numpy as np
import pytest

from cbo_ros.core.planner import (FrameCandidate, LinkState, OffloadOption, lp_shadow_price,
                                  make_planner, plan_transfer, strategy_names,
                                  upper_hull_increments)

RESOLUTIONS = (96, 128, 176, 224, 260)


def candidate(seq, t, confidence, rng, deadline=0.2, raw=None):
    options = [OffloadOption(r, int(r * r * rng.uniform(0.1, 0.25)),
                             float(np.clip(0.3 + 0.5 * r / 260 + rng.normal(0, 0.05), 0, 1)),
                             0.03) for r in RESOLUTIONS]
    return FrameCandidate(seq, t, t + deadline, confidence, options, raw)


def test_strategy_names_and_factory():
    names = strategy_names(RESOLUTIONS)
    for expected in ['local_only', 'server_only_96', 'server_only_260', 'raw_threshold',
                     'calibrated_threshold', 'bandwidth_driven', 'cbo_uncalibrated', 'cbo',
                     'oracle']:
        assert expected in names
    for name in names:
        if name != 'oracle':
            assert make_planner(name).decide is not None
    assert make_planner('oracle', schedule={}).name == 'oracle'
    with pytest.raises(ValueError, match='unknown'):
        make_planner('nope')
    with pytest.raises(ValueError, match='schedule'):
        make_planner('oracle')


@pytest.mark.parametrize('strategy', ['cbo', 'cbo_uncalibrated', 'calibrated_threshold',
                                      'raw_threshold', 'bandwidth_driven'])
def test_online_policies_never_schedule_an_infeasible_offload(strategy):
    rng = np.random.default_rng(1)
    for bandwidth in (2e5, 1e6, 5e6):
        planner = make_planner(strategy, safety_margin_s=0.005)
        busy = 0.0
        offloads = 0
        for seq in range(300):
            t = seq / 25.0
            link = LinkState(bandwidth * rng.uniform(0.5, 1.5), rng.uniform(0.005, 0.08),
                             busy_until_s=busy)
            frame = candidate(seq, t, float(rng.random()), rng,
                              deadline=rng.uniform(0.05, 0.4), raw=float(rng.random()))
            decision = planner.decide(frame, link, t)
            assert decision.seq == seq and decision.reason
            if decision.offload:
                offloads += 1
                option = next(o for o in frame.options if o.resolution == decision.resolution)
                _, free, answer = plan_transfer(option, link, t)
                assert answer <= frame.deadline_s - 0.005 + 1e-12
                assert decision.expected_finish_s == pytest.approx(answer)
                assert decision.link_free_after_s == pytest.approx(free)
                assert decision.payload_bytes == option.payload_bytes
                busy = max(busy, decision.link_free_after_s)
        assert offloads > 0


def test_local_only_and_unusable_link():
    rng = np.random.default_rng(2)
    frame = candidate(0, 0.0, 0.1, rng)
    assert not make_planner('local_only').decide(frame, LinkState(1e7, 0.01), 0.0).offload
    for link in (LinkState(1e7, 0.01, reachable=False), LinkState(0.0, 0.01)):
        for name in ('cbo', 'calibrated_threshold', 'server_only_224', 'bandwidth_driven'):
            assert not make_planner(name).decide(frame, link, 0.0).offload


def test_cbo_offloads_unsure_frames_and_keeps_confident_ones():
    rng = np.random.default_rng(3)
    planner = make_planner('cbo')
    link = LinkState(5e6, 0.01)
    unsure = planner.decide(candidate(0, 0.0, 0.05, rng), link, 0.0)
    sure = planner.decide(candidate(1, 0.04, 0.99, rng), link, 0.04)
    assert unsure.offload and unsure.expected_gain > 0
    assert not sure.offload


def test_cbo_uncalibrated_uses_the_raw_confidence():
    rng = np.random.default_rng(4)
    frame = candidate(0, 0.0, 0.05, rng, raw=0.99)
    link = LinkState(5e6, 0.01)
    assert make_planner('cbo').decide(frame, link, 0.0).offload
    assert not make_planner('cbo_uncalibrated').decide(frame, link, 0.0).offload


def test_thresholds_follow_p_tar():
    rng = np.random.default_rng(5)
    frame = candidate(0, 0.0, 0.6, rng, raw=0.9)
    link = LinkState(5e6, 0.01)
    assert make_planner('calibrated_threshold', p_tar=0.7).decide(frame, link, 0.0).offload
    assert not make_planner('raw_threshold', p_tar=0.7).decide(frame, link, 0.0).offload


def test_server_only_sends_even_when_late():
    rng = np.random.default_rng(6)
    frame = candidate(0, 0.0, 0.9, rng, deadline=0.001)
    decision = make_planner('server_only_224').decide(frame, LinkState(1e5, 0.05), 0.0)
    assert decision.offload and decision.resolution == 224 and 'late' in decision.reason


def test_bandwidth_driven_resolution_grows_with_bandwidth():
    rng = np.random.default_rng(7)
    chosen = []
    for bandwidth in (3e5, 3e6, 3e7):
        planner = make_planner('bandwidth_driven')
        decision = None
        for seq in range(5):
            frame = candidate(seq, seq / 25, 0.5, rng, deadline=1.0)
            decision = planner.decide(frame, LinkState(bandwidth, 0.01), seq / 25)
        chosen.append(decision.resolution)
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]


def test_hull_and_shadow_price():
    steps = upper_hull_increments([(100, 0.15), (200, 0.2), (300, 0.3), (400, -1.0)])
    # (200, 0.2) lies under the chord from (100, 0.15) to (300, 0.3): dropped.
    assert steps == [(100.0, 0.15), (200.0, pytest.approx(0.15))]
    efficiencies = [g / b for b, g in steps]
    assert efficiencies == sorted(efficiencies, reverse=True)
    assert lp_shadow_price([(100, 0.1), (200, 0.1)], 1000) == 0.0
    assert lp_shadow_price([(100, 0.1), (200, 0.1)], 150) == pytest.approx(0.1 / 200)


class _ScoreBundle:
    """A bundle stub whose score map says: the server is right with probability = its score."""

    def server_confidence(self, resolution, score):
        return float(score)


def test_cbo_feedback_raises_the_server_profile_when_the_server_proves_better():
    rng = np.random.default_rng(8)
    link = LinkState(5e6, 0.01)
    planner = make_planner('cbo', _ScoreBundle(), feedback_prior=2.0)
    frame = candidate(0, 0.0, 0.2, rng)
    decision = planner.decide(frame, link, 0.0)
    assert decision.offload
    assert planner.feedback.shift == 0.0
    planner.observe_server_answer(0, decision.resolution, 0.99, now_s=0.1)
    assert planner.feedback.shift > 0.5
    # The next frame is judged with a higher server accuracy than the profile's.
    follow = candidate(1, 0.04, 0.5, rng)
    after = planner.decide(follow, LinkState(5e6, 0.01), 0.04)
    assert after.expected_accuracy > next(o.server_accuracy for o in follow.options
                                          if o.resolution == after.resolution)
    # Unknown frames, missing scores and bundles without a score map are ignored.
    planner.observe_server_answer(12345, 224, 0.99)
    assert len(planner.feedback.residuals) == 1
    plain = make_planner('cbo', feedback_prior=2.0)
    plain.decide(candidate(0, 0.0, 0.2, rng), link, 0.0)
    plain.observe_server_answer(0, 224, 0.99)
    assert plain.feedback.shift == 0.0
    planner.reset()
    assert planner.feedback.shift == 0.0 and not planner.feedback.pending


def test_cbo_without_feedback_and_baselines_accept_answers():
    rng = np.random.default_rng(9)
    planner = make_planner('cbo', _ScoreBundle(), feedback=False)
    planner.decide(candidate(0, 0.0, 0.2, rng), LinkState(5e6, 0.01), 0.0)
    planner.observe_server_answer(0, 224, 0.99)
    assert planner.feedback is None
    for name in ('local_only', 'raw_threshold', 'bandwidth_driven', 'server_only_96'):
        make_planner(name).observe_server_answer(0, 96, 0.5, now_s=0.0)
