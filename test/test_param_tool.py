"""cbo_param against a real running node: list, get, describe, set and the node's refusals."""

import os
import subprocess
import sys

import pytest

from ros_helpers import ros_env, start_process, stop_process, unique_domain_id

NS = f'/prm{os.getpid()}'
PLANNER = f'{NS}/offload_planner_node'


def test_values_are_read_as_yaml_and_given_the_declared_type():
    from rcl_interfaces.msg import ParameterType as T
    from cbo_ros.tools.param import node_name, parse_value
    assert parse_value('250', T.PARAMETER_DOUBLE).double_value == 250.0
    assert parse_value('250', T.PARAMETER_DOUBLE).type == T.PARAMETER_DOUBLE
    assert parse_value('[1, 2]', T.PARAMETER_DOUBLE_ARRAY).double_array_value.tolist() == [1, 2]
    assert parse_value('0', T.PARAMETER_STRING).string_value == '0'     # a V4L2 index as text
    assert parse_value('true').bool_value is True
    assert node_name('robot1/offload_planner_node') == '/robot1/offload_planner_node'


@pytest.fixture(scope='module')
def planner(tmp_path_factory):
    """A planner process (shipped config) under NS, and its domain."""
    from cbo_ros.assets import paths
    domain = unique_domain_id()
    log = tmp_path_factory.mktemp('param') / 'planner.log'
    process = start_process(
        [sys.executable, '-m', 'cbo_ros.nodes.offload_planner_node', '--ros-args',
         '--params-file', str(paths.SOURCE_ROOT / 'config' / 'robot.yaml'),
         '-r', f'__ns:={NS}'], ros_env(domain), log)
    yield domain
    assert stop_process(process) == 0, log.read_text()


def cbo_param(domain, *args):
    """Run cbo_param; return (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, '-m', 'cbo_ros.tools.param', '--timeout', '20',
                           *args], env=ros_env(domain), capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.integration
def test_get_set_list_describe(planner):
    code, out, err = cbo_param(planner, 'set', PLANNER, 'deadline_ms', '250')
    assert code == 0 and 'deadline_ms set to 250.0' in out, err
    code, out, err = cbo_param(planner, 'get', PLANNER, 'deadline_ms', 'strategy')
    assert code == 0 and out.splitlines() == ['deadline_ms: 250.0', "strategy: 'cbo'"], err
    code, out, err = cbo_param(planner, 'list', PLANNER)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and 'settable' in lines['jpeg_quality'], out + err
    assert 'read-only' in lines['strategy'], out
    code, out, err = cbo_param(planner, 'describe', PLANNER, 'jpeg_quality')
    assert code == 0 and 'range: [1, 100]' in out and 'read-only: no' in out, out + err


@pytest.mark.integration
@pytest.mark.parametrize('args, reason', [
    (('set', PLANNER, 'deadline_ms', '100000'), 'out of range'),
    (('set', PLANNER, 'strategy', 'local_only'), 'read-only'),
    (('set', PLANNER, 'deadline_ms', '10'), 'must be below deadline_ms'),   # node validation
    (('set', PLANNER, 'deadline_ms', 'soon'), "is a double parameter; 'soon' reads as a string"),
    (('get', PLANNER, 'dedline_ms'), "has no parameter 'dedline_ms'; did you mean deadline_ms"),
])
def test_refusals_carry_the_reason(planner, args, reason):
    code, out, err = cbo_param(planner, *args)
    assert code == 1 and reason in err, out + err


@pytest.mark.integration
def test_unknown_node_is_named_with_the_nodes_seen(planner):
    done = subprocess.run([sys.executable, '-m', 'cbo_ros.tools.param', '--timeout', '3', 'get',
                           f'{NS}/no_such_node', 'x'], env=ros_env(planner),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f'no node {NS}/no_such_node answers' in done.stderr, done.stderr
    assert PLANNER in done.stderr, done.stderr       # the node that is there
