"""The server's ``busy: … retry in N ms`` refusals: when to offload to it again (no ROS).

An overloaded offload server refuses a request at once with an error that starts with
``busy:`` and ends with a retry hint. :class:`BusyBackoff` turns such refusals into a time
before which the planner answers locally instead of adding to the server's queue.
"""

import re
from typing import Optional

_RETRY = re.compile(r'retry in (\d+(?:\.\d+)?) ?ms')


def retry_after_s(error: str) -> Optional[float]:
    """Return the retry hint of a ``busy:`` refusal in seconds (None: not a busy refusal).

    A busy refusal without a readable hint gives 0 (retry at once).
    """
    if not error.startswith('busy:'):
        return None
    match = _RETRY.search(error)
    return float(match.group(1)) / 1e3 if match else 0.0


class BusyBackoff:
    """Hold offloads to a server that said it was busy until its retry hint has passed.

    ``max_wait_s`` bounds a hint (a faulty or hostile server cannot stop offloading for long).
    Times are seconds on the caller's clock.
    """

    def __init__(self, max_wait_s: float = 5.0) -> None:
        self.max_wait_s = float(max_wait_s)
        self.until_s = 0.0
        self.refusals = 0
        self.last_error = ''

    def observe(self, error: str, now_s: float) -> bool:
        """Take a failed response's error; return whether it was a busy refusal."""
        wait_s = retry_after_s(error)
        if wait_s is None:
            return False
        self.refusals += 1
        self.last_error = error
        self.until_s = max(self.until_s, now_s + min(max(wait_s, 0.0), self.max_wait_s))
        return True

    def why(self, now_s: float) -> str:
        """Return why offloading waits ('' when it need not)."""
        if now_s >= self.until_s:
            return ''
        return f'server busy (retry in {(self.until_s - now_s) * 1e3:.0f} ms)'
