"""Shared pytest configuration: markers and the environment the tests run in."""

import os


def pytest_configure(config):
    config.addinivalue_line('markers', 'integration: starts real ROS 2 processes (DDS)')
    config.addinivalue_line('markers', 'slow: takes more than ~30 s')
    os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
