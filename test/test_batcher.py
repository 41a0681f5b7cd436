"""server_node.batcher: concurrent submissions are grouped into batches, in order, with limits."""

import threading
import time

import pytest

from server_node.batcher import (Batcher, BatcherClosedError, ExpiredError, QueueFullError)


class Recorder:
    """process(): doubles the items and remembers the batches it saw."""

    def __init__(self, delay=0.0, gate=None):
        self.batches = []
        self.delay = delay
        self.gate = gate

    def __call__(self, items):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        time.sleep(self.delay)
        return [2 * x for x in items]


def test_concurrent_submissions_are_batched_and_results_routed_back():
    gate = threading.Event()
    process = Recorder(gate=gate)
    batcher = Batcher(process, max_batch_size=4, batch_timeout_s=0.05)
    try:
        futures = [batcher.submit(i) for i in range(10)]
        gate.set()
        results = [f.result(5) for f in futures]
        assert [r.value for r in results] == [2 * i for i in range(10)]
        sizes = [len(b) for b in process.batches]
        assert max(sizes) == 4 and sum(sizes) == 10 and all(s <= 4 for s in sizes)
        assert [x for b in process.batches for x in b] == list(range(10))    # FIFO
        for r in results:
            assert r.batch_size in sizes and r.queue_ms >= 0 and r.process_ms >= 0
        batches, items, mean_batch, _ = batcher.stats(60)
        assert (batches, items) == (len(sizes), 10) and mean_batch == pytest.approx(10 / batches)
    finally:
        batcher.close()


def test_batch_size_one_disables_batching():
    process = Recorder()
    batcher = Batcher(process, max_batch_size=1, batch_timeout_s=0.05)
    try:
        futures = [batcher.submit(i) for i in range(5)]
        assert [f.result(5).batch_size for f in futures] == [1] * 5
        assert process.batches == [[0], [1], [2], [3], [4]]
    finally:
        batcher.close()


def test_lone_request_waits_at_most_the_batch_timeout():
    batcher = Batcher(Recorder(), max_batch_size=8, batch_timeout_s=0.03)
    try:
        start = time.monotonic()
        result = batcher.submit(1).result(5)
        elapsed = time.monotonic() - start
        assert result.batch_size == 1 and 0.025 <= elapsed < 0.5
    finally:
        batcher.close()


def test_full_queue_refuses_at_once():
    gate = threading.Event()
    batcher = Batcher(Recorder(gate=gate), max_batch_size=1, batch_timeout_s=0.0,
                      max_queue_size=2)
    try:
        first = batcher.submit(0)
        end = time.monotonic() + 5
        while batcher.depth and time.monotonic() < end:     # worker holds item 0 at the gate
            time.sleep(0.005)
        queued = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(QueueFullError):
            batcher.submit(3)
        gate.set()
        assert [f.result(5).value for f in [first] + queued] == [0, 2, 4]
    finally:
        batcher.close()


def test_expired_items_are_dropped_before_processing():
    gate = threading.Event()
    process = Recorder(gate=gate)
    batcher = Batcher(process, max_batch_size=1, batch_timeout_s=0.0)
    try:
        first = batcher.submit(0)
        time.sleep(0.05)
        late = batcher.submit(1, expires=time.monotonic() + 0.01)
        fine = batcher.submit(2, expires=time.monotonic() + 10)
        time.sleep(0.05)
        gate.set()
        with pytest.raises(ExpiredError):
            late.result(5)
        assert first.result(5).value == 0 and fine.result(5).value == 4
        assert [1] not in process.batches and batcher.expired == 1
    finally:
        batcher.close()


def test_process_errors_reach_every_submitter_and_worker_survives():
    calls = []

    def process(items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError('model exploded')
        return items

    batcher = Batcher(process, max_batch_size=8, batch_timeout_s=0.02)
    try:
        futures = [batcher.submit(i) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match='exploded'):
                f.result(5)
        assert batcher.submit(7).result(5).value == 7
    finally:
        batcher.close()


def test_reconfigure_and_close():
    batcher = Batcher(Recorder(), max_batch_size=2, batch_timeout_s=0.01)
    batcher.configure(max_batch_size=1, batch_timeout_s=0.0)
    assert batcher.submit(3).result(5).batch_size == 1
    with pytest.raises(ValueError):
        batcher.configure(max_batch_size=0)
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.submit(1)


def test_clients_are_taken_in_turn_so_a_flood_does_not_starve_another():
    gate = threading.Event()
    process = Recorder(gate=gate)
    batcher = Batcher(process, max_batch_size=4, batch_timeout_s=0.0, max_queue_size=100)
    try:
        blocker = batcher.submit(-1, client='flood')        # holds the worker at the gate
        time.sleep(0.05)
        flood = [batcher.submit(i, client='flood') for i in range(40)]
        steady = [batcher.submit(100 + i, client='steady') for i in range(3)]
        assert batcher.client_depth('flood') == 40 and batcher.client_depth('steady') == 3
        gate.set()
        for future in flood + steady + [blocker]:
            future.result(5)
        # The first batch after the blocker takes flood and steady items in turn.
        assert process.batches[1] == [0, 100, 1, 101]
        assert process.batches[2] == [2, 102, 3, 4]
        assert [x for b in process.batches[1:] for x in b if x < 100] == list(range(40))
    finally:
        batcher.close()


def test_within_a_client_the_earliest_deadline_goes_first():
    """A backlog of far-deadline requests does not delay one due soon; no deadline goes last."""
    gate = threading.Event()
    process = Recorder(gate=gate)
    batcher = Batcher(process, max_batch_size=1, batch_timeout_s=0.0, max_queue_size=100)
    try:
        now = time.monotonic()
        blocker = batcher.submit(-1, client='robot')          # holds the worker at the gate
        give_up = time.monotonic() + 5
        while batcher.depth and time.monotonic() < give_up:   # the worker has taken it
            time.sleep(0.01)
        backlog = [batcher.submit(i, expires=now + 10.0, client='robot') for i in range(5)]
        undated = batcher.submit(50, client='robot')
        urgent = batcher.submit(99, expires=now + 5.0, client='robot')
        gate.set()
        for future in backlog + [undated, urgent, blocker]:
            future.result(5)
        assert [b[0] for b in process.batches[1:]] == [99, 0, 1, 2, 3, 4, 50]
    finally:
        batcher.close()


def test_per_client_limit_refuses_only_the_client_over_it():
    gate = threading.Event()
    batcher = Batcher(Recorder(gate=gate), max_batch_size=1, batch_timeout_s=0.0,
                      max_queue_size=10, max_queue_per_client=3)
    try:
        batcher.submit(0, client='a')
        time.sleep(0.05)                                     # taken by the worker
        futures = [batcher.submit(i, client='a') for i in range(3)]
        with pytest.raises(QueueFullError, match='this client'):
            batcher.submit(9, client='a')
        futures.append(batcher.submit(7, client='b'))        # another client still gets in
        assert batcher.depth == 4
        gate.set()
        assert [f.result(5).value for f in futures] == [0, 2, 4, 14]
        assert batcher.alive
    finally:
        batcher.close()
    assert not batcher.alive
