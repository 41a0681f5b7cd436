"""A ROS-free dynamic batching queue: requests submitted from many threads, one worker thread.

Items are queued per client (any hashable key, e.g. the robot namespace a request came from)
and batches take the clients in turn (round robin), so a client that floods the queue delays
the others by at most one item per batch instead of by its whole backlog. Within a client's
queue the item that expires first goes first (earliest deadline first; items without an expiry
last, in arrival order), so a backlog of far-deadline requests does not delay a frame due in a
few hundred milliseconds. The worker takes the next waiting item, then keeps collecting until
``max_batch_size`` items are gathered or ``batch_timeout_s`` has passed since that first item
was taken, runs ``process(items)`` once for the whole batch and resolves one
:class:`concurrent.futures.Future` per item with a :class:`BatchResult`. Items whose expiry time
has passed before their batch starts are dropped with :class:`ExpiredError` instead of wasting
inference time on them.
"""

import collections
import concurrent.futures
import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any


class QueueFullError(RuntimeError):
    """The batching queue is full: the request is refused at once."""


class ExpiredError(RuntimeError):
    """The item's expiry time passed while it waited in the queue."""


class BatcherClosedError(RuntimeError):
    """The batcher has been closed."""


@dataclass
class BatchResult:
    """What a submitter gets back: its own result plus how its batch went."""

    value: Any
    batch_size: int
    queue_ms: float        # submit -> its batch started processing
    process_ms: float      # duration of process() for the whole batch


@dataclass
class _Entry:
    item: Any
    future: concurrent.futures.Future
    submitted: float
    expires: float


class Batcher:
    """Group items submitted concurrently into batches processed by one worker thread.

    ``process(items) -> results`` receives a list of items and must return one result per item
    in the same order; if it raises, every future of that batch gets the exception.
    ``max_batch_size=1`` turns batching off (each item is processed on its own, in order).
    """

    def __init__(self, process, max_batch_size=8, batch_timeout_s=0.005, max_queue_size=64,
                 clock=time.monotonic, name='batcher', max_queue_per_client=None):
        if max_queue_size < 1:
            raise ValueError('max_queue_size must be >= 1')
        self._process = process
        self._clock = clock
        self._queues = {}           # client -> heap of (expires, order, _Entry), non-empty only
        self._order = itertools.count()         # ties (and no expiry) in arrival order
        self._turns = collections.deque()       # clients with waiting items, in serving order
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False
        self.max_queue_size = int(max_queue_size)
        self.max_queue_per_client = int(max_queue_per_client or max_queue_size)
        self.configure(max_batch_size, batch_timeout_s)
        # Statistics (read by the node; updated under the condition's lock).
        self.batches = 0
        self.processed = 0
        self.expired = 0
        self.history = collections.deque(maxlen=1024)   # (end time, batch size, process seconds)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def configure(self, max_batch_size=None, batch_timeout_s=None):
        """Change the batch size limit and/or the batching timeout (takes effect next batch)."""
        if max_batch_size is not None:
            if int(max_batch_size) < 1:
                raise ValueError('max_batch_size must be >= 1')
            self.max_batch_size = int(max_batch_size)
        if batch_timeout_s is not None:
            if float(batch_timeout_s) < 0.0:
                raise ValueError('batch_timeout_s must be >= 0')
            self.batch_timeout_s = float(batch_timeout_s)

    @property
    def depth(self):
        """Items waiting for a batch (not counting the batch being processed)."""
        with self._cond:
            return self._size

    @property
    def alive(self):
        """Whether the worker thread runs (False after close, or if it died)."""
        return self._thread.is_alive()

    def client_depth(self, client):
        """Items of ``client`` waiting for a batch."""
        with self._cond:
            return len(self._queues.get(client, ()))

    def submit(self, item, expires=None, client=None):
        """Queue ``item``; return a Future resolved with a :class:`BatchResult`.

        ``expires`` is a time on this batcher's clock after which the item is not worth
        processing; ``client`` the key of the submitter's queue. Raises
        :class:`QueueFullError` when the queue (or this client's share of it) is full and
        :class:`BatcherClosedError` after :meth:`close`.
        """
        future = concurrent.futures.Future()
        now = self._clock()
        with self._cond:
            if self._closed:
                raise BatcherClosedError('batcher is closed')
            if self._size >= self.max_queue_size:
                raise QueueFullError(f'queue full ({self.max_queue_size} requests waiting)')
            queue = self._queues.get(client)
            if queue is None:
                queue = self._queues[client] = []
                self._turns.append(client)
            elif len(queue) >= self.max_queue_per_client:
                raise QueueFullError(f'queue of this client full ({len(queue)} requests '
                                     'waiting)')
            entry = _Entry(item, future, now,
                           float('inf') if expires is None else float(expires))
            heapq.heappush(queue, (entry.expires, next(self._order), entry))
            self._size += 1
            self._cond.notify_all()
        return future

    def close(self, timeout=5.0):
        """Stop the worker; pending items fail with :class:`BatcherClosedError`."""
        with self._cond:
            self._closed = True
            pending = [entry for queue in self._queues.values() for _, _, entry in queue]
            self._queues.clear()
            self._turns.clear()
            self._size = 0
            self._cond.notify_all()
        for entry in pending:
            entry.future.set_exception(BatcherClosedError('batcher closed'))
        self._thread.join(timeout)

    def stats(self, window_s, now=None):
        """Return (batches, items, mean batch size, mean process ms) over the last window_s."""
        now = self._clock() if now is None else now
        with self._cond:
            recent = [h for h in self.history if now - h[0] <= window_s]
        if not recent:
            return 0, 0, 0.0, 0.0
        items = sum(h[1] for h in recent)
        return (len(recent), items, items / len(recent),
                1e3 * sum(h[2] for h in recent) / len(recent))

    def _take_batch(self):
        """Block until a batch is ready; return its entries ([] when closed)."""
        with self._cond:
            while not self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            start = self._clock()
            end = start + self.batch_timeout_s
            while self._size < self.max_batch_size and not self._closed:
                remaining = end - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return []
            return [self._pop_next() for _ in range(min(self.max_batch_size, self._size))]

    def _pop_next(self):
        """Pop the first-expiring item of the client whose turn it is (lock held)."""
        client = self._turns.popleft()
        queue = self._queues[client]
        _, _, entry = heapq.heappop(queue)
        if queue:
            self._turns.append(client)
        else:
            del self._queues[client]
        self._size -= 1
        return entry

    def _run(self):
        while True:
            entries = self._take_batch()
            if not entries:
                return
            start = self._clock()
            live = []
            for entry in entries:
                if not entry.future.set_running_or_notify_cancel():
                    continue                       # the submitter gave up (cancelled)
                if start > entry.expires:
                    entry.future.set_exception(ExpiredError(
                        f'deadline passed after {1e3 * (start - entry.submitted):.1f} ms '
                        'in the queue'))
                    with self._cond:
                        self.expired += 1
                    continue
                live.append(entry)
            if not live:
                continue
            try:
                results = list(self._process([e.item for e in live]))
                if len(results) != len(live):
                    raise RuntimeError(f'process() returned {len(results)} results '
                                       f'for {len(live)} items')
            except Exception as error:  # noqa: BLE001 - handed to every submitter
                for entry in live:
                    entry.future.set_exception(error)
                continue
            end = self._clock()
            with self._cond:
                self.batches += 1
                self.processed += len(live)
                self.history.append((end, len(live), end - start))
            for entry, value in zip(live, results):
                entry.future.set_result(BatchResult(value, len(live),
                                                    1e3 * (start - entry.submitted),
                                                    1e3 * (end - start)))
