"""The exact offline solver against brute force on small random cases."""

import numpy as np
import pytest

from cbo_ros.evaluation.traces import NetworkTrace
from cbo_ros.core.exact_solver import (Job, JobOption, constant_bandwidth, schedule_feasible,
                                       schedule_value, solve_brute_force, solve_exact)


def random_jobs(rng, n, resolutions=(96, 160, 224)):
    jobs, t = [], 0.0
    for seq in range(n):
        t += rng.uniform(0.0, 0.05)
        options = [JobOption(r, int(rng.integers(500, 9000)), rng.uniform(0.01, 0.04),
                             rng.uniform(-0.2, 0.7)) for r in resolutions]
        jobs.append(Job(seq, t, t + rng.uniform(0.05, 0.3), options))
    return jobs


@pytest.mark.parametrize('seed', range(6))
def test_exact_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        jobs = random_jobs(rng, int(rng.integers(1, 6)))
        finish = constant_bandwidth(rng.uniform(2e5, 2e6))
        initial = rng.uniform(0.0, 0.05)
        exact = solve_exact(jobs, finish, initial_free_s=initial)
        brute = solve_brute_force(jobs, finish, initial_free_s=initial)
        assert exact.value == pytest.approx(brute.value, abs=1e-9)
        assert schedule_feasible(jobs, exact.schedule, finish, initial)
        assert schedule_value(jobs, exact.schedule) == pytest.approx(exact.value)


def test_discretised_dp_is_feasible_and_close():
    rng = np.random.default_rng(7)
    gaps = []
    for _ in range(40):
        jobs = random_jobs(rng, 5)
        finish = constant_bandwidth(1e6)
        brute = solve_brute_force(jobs, finish)
        coarse = solve_exact(jobs, finish, quantum_s=0.002)
        assert coarse.value <= brute.value + 1e-9
        assert schedule_feasible(jobs, coarse.schedule, finish)
        gaps.append(brute.value - coarse.value)
    assert np.mean(gaps) < 0.05


def test_exact_dp_with_a_time_varying_link():
    trace = NetworkTrace([0.0, 0.05, 0.1], [2e6, 2e5, 1e6], [0.02] * 3, [0.0] * 3)
    rng = np.random.default_rng(8)
    for _ in range(20):
        jobs = random_jobs(rng, 4)
        exact = solve_exact(jobs, trace.transfer_finish)
        brute = solve_brute_force(jobs, trace.transfer_finish)
        assert exact.value == pytest.approx(brute.value, abs=1e-9)


def test_known_case_prefers_two_small_transfers_over_one_big():
    # 1 Mbit/s: 10 kB takes 80 ms. Two frames 10 ms apart, deadlines 100 ms after release.
    finish = constant_bandwidth(1e6)
    jobs = [Job(0, 0.0, 0.1, [JobOption(96, 2000, 0.02, 0.3), JobOption(224, 10000, 0.02, 0.5)]),
            Job(1, 0.01, 0.11, [JobOption(96, 2000, 0.02, 0.3),
                                JobOption(224, 10000, 0.02, 0.5)])]
    solution = solve_exact(jobs, finish)
    assert solution.schedule == {0: 96, 1: 96}
    assert solution.value == pytest.approx(0.6)


def test_no_jobs_and_no_positive_gain():
    finish = constant_bandwidth(1e6)
    assert solve_exact([], finish).value == 0.0
    jobs = [Job(0, 0.0, 1.0, [JobOption(96, 100, 0.0, -0.1)])]
    assert solve_exact(jobs, finish).schedule == {}


def test_exact_dp_takes_the_rtt_at_each_transfers_start():
    # The RTT rises from 20 to 150 ms at t = 0.05 s: a frame queued behind another starts its
    # transfer later, under the higher RTT; the DP must check it then, like the replay does.
    trace = NetworkTrace([0.0, 0.05], [1e6, 1e6], [0.02, 0.15], [0.0, 0.0])

    def rtt_at(start_s):
        return trace.at(start_s)[1]
    rng = np.random.default_rng(9)
    for _ in range(30):
        jobs = random_jobs(rng, 4)
        for job in jobs:
            job.options = [JobOption(o.resolution, o.payload_bytes, 0.005, o.gain)
                           for o in job.options]
        exact = solve_exact(jobs, trace.transfer_finish, rtt_at=rtt_at)
        brute = solve_brute_force(jobs, trace.transfer_finish, rtt_at=rtt_at)
        assert exact.value == pytest.approx(brute.value, abs=1e-9)
        assert schedule_feasible(jobs, exact.schedule, trace.transfer_finish, rtt_at=rtt_at)
