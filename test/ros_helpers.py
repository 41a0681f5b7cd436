"""Helpers for integration tests that start real ROS 2 processes."""

import os
import random
import subprocess
import sys
import time

# Domain ids 1..101 avoid the default 0; the process id spreads parallel runs apart.
_domain_counter = [random.Random(os.getpid()).randrange(1, 90)]


def unique_domain_id():
    """A ROS_DOMAIN_ID that no other test of this run uses."""
    _domain_counter[0] = _domain_counter[0] % 100 + 1
    return _domain_counter[0]


def ros_env(domain_id, **extra):
    """Environment for a child process on its own DDS domain."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    env['PYTHONUNBUFFERED'] = '1'
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_process(args, env, log_path=None):
    """Start a child (a python module or an executable) with output to a log file."""
    if args and args[0] == '-m':
        args = [sys.executable] + list(args)
    out = open(log_path, 'w') if log_path else subprocess.DEVNULL
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(process, timeout=10.0):
    """SIGINT, then SIGKILL; return the exit code."""
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_for(predicate, timeout, interval=0.05):
    """Poll until predicate() is truthy or the timeout passes; return its last value."""
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = predicate()
    return value
