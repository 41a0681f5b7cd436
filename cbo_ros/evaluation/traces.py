"""Network traces for the evaluator: piecewise-constant bandwidth, RTT and loss over time.

CSV columns (header required): ``time`` (s), ``bandwidth`` (bit/s), ``rtt`` (s), ``loss``
(0..1). ``bandwidth_mbps`` and ``rtt_ms`` are accepted instead of ``bandwidth`` and ``rtt``.
Each row holds from its time until the next row; the last row holds forever, and times before the
first row use the first row.
"""

import csv
import math
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """A trace file is missing or malformed."""


class NetworkTrace:
    """Piecewise-constant link conditions with exact transfer times under varying bandwidth."""

    def __init__(self, times, bandwidth_bps, rtt_s, loss, name='trace'):
        self.times = np.asarray(times, dtype=np.float64)
        self.bandwidth_bps = np.asarray(bandwidth_bps, dtype=np.float64)
        self.rtt_s = np.asarray(rtt_s, dtype=np.float64)
        self.loss = np.asarray(loss, dtype=np.float64)
        self.name = name
        if not (len(self.times) == len(self.bandwidth_bps) == len(self.rtt_s) == len(self.loss)):
            raise TraceError('trace columns differ in length')
        if len(self.times) == 0:
            raise TraceError('empty trace')
        if np.any(np.diff(self.times) < 0):
            raise TraceError('trace times must be non-decreasing')
        if np.any(self.bandwidth_bps < 0) or np.any(self.rtt_s < 0):
            raise TraceError('bandwidth and rtt must be >= 0')
        if np.any((self.loss < 0) | (self.loss > 1)):
            raise TraceError('loss must lie in [0, 1]')

    def rtt_never_falls(self):
        """Tell whether the RTT is non-decreasing over time (the exact solver's condition)."""
        return bool(np.all(np.diff(self.rtt_s) >= 0))

    @classmethod
    def constant(cls, bandwidth_bps, rtt_s=0.02, loss=0.0):
        """Build a trace with the same conditions at all times."""
        name = f'constant {bandwidth_bps / 1e6:g} Mbit/s, rtt {rtt_s * 1e3:g} ms, loss {loss:g}'
        return cls([0.0], [bandwidth_bps], [rtt_s], [loss], name)

    @classmethod
    def from_csv(cls, path):
        """Read a trace CSV (see the module docstring)."""
        path = Path(path)
        if not path.is_file():
            raise TraceError(f'trace file {path} not found')
        rows = []
        with open(path, newline='') as handle:
            reader = csv.DictReader(row for row in handle if not row.startswith('#'))
            fields = set(reader.fieldnames or [])
            if 'time' not in fields or not fields & {'bandwidth', 'bandwidth_mbps'}:
                raise TraceError(f'{path}: need columns time,bandwidth[,rtt,loss] '
                                 f'(got {sorted(fields)})')
            for number, row in enumerate(reader, start=2):
                try:
                    bandwidth = float(row['bandwidth']) if row.get('bandwidth') not in (None, '') \
                        else float(row['bandwidth_mbps']) * 1e6
                    if row.get('rtt') not in (None, ''):
                        rtt = float(row['rtt'])
                    elif row.get('rtt_ms') not in (None, ''):
                        rtt = float(row['rtt_ms']) / 1e3
                    else:
                        rtt = 0.02
                    loss = float(row['loss']) if row.get('loss') not in (None, '') else 0.0
                    rows.append((float(row['time']), bandwidth, rtt, loss))
                except (TypeError, ValueError) as error:
                    raise TraceError(f'{path}:{number}: {error}') from error
        if not rows:
            raise TraceError(f'{path}: no rows')
        rows.sort(key=lambda r: r[0])
        columns = list(zip(*rows))
        return cls(*columns, name=path.name)

    def _index(self, t):
        return max(0, int(np.searchsorted(self.times, t, side='right')) - 1)

    def at(self, t):
        """``(bandwidth_bps, rtt_s, loss)`` at time ``t``."""
        i = self._index(t)
        return float(self.bandwidth_bps[i]), float(self.rtt_s[i]), float(self.loss[i])

    def transfer_finish(self, start_s, payload_bytes):
        """When a transfer of ``payload_bytes`` started at ``start_s`` ends (inf if never)."""
        remaining = 8.0 * float(payload_bytes)
        t = float(start_s)
        i = self._index(t)
        while True:
            rate = float(self.bandwidth_bps[i])
            end = float(self.times[i + 1]) if i + 1 < len(self.times) else math.inf
            if rate > 0:
                needed = remaining / rate
                if t + needed <= end:
                    return t + needed
                remaining -= rate * (end - t)
            if math.isinf(end):
                return math.inf
            t = end
            i += 1

    def scaled(self, factor):
        """Return the same trace with the bandwidth multiplied by ``factor``."""
        return NetworkTrace(self.times, self.bandwidth_bps * factor, self.rtt_s, self.loss,
                            f'{self.name} x{factor:g}')


def load_trace(spec, rtt_s=0.02, loss=0.0):
    """Load a CSV path, or a constant bandwidth given as a number of bit/s (e.g. '2e6')."""
    if isinstance(spec, NetworkTrace):
        return spec
    try:
        bandwidth = float(spec)
    except (TypeError, ValueError):
        return NetworkTrace.from_csv(spec)
    return NetworkTrace.constant(bandwidth, rtt_s, loss)
