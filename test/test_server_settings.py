"""server_node.settings and the provider health rule: the parameter convention, without ROS I/O."""

import pytest
from rclpy.parameter import Parameter

from server_node.settings import (changed_fields, PARAMETERS, RUNTIME, ServerSettings)


def shipped():
    return ServerSettings.from_values({name: spec[0] for name, spec in PARAMETERS.items()})


def test_settings_are_typed_frozen_and_converted_once():
    settings = shipped()
    assert settings.batch_timeout_s == 0.0 and settings.providers == ('tensorrt', 'cuda', 'cpu')
    assert settings.allow_remote_limit_changes is False
    with pytest.raises(AttributeError):
        settings.max_batch_size = 8
    changed = settings.with_changes([Parameter('batch_timeout_ms', value=5.0),
                                     Parameter('max_batch_size', value=8)])
    assert changed.batch_timeout_s == pytest.approx(0.005) and changed.max_batch_size == 8
    assert sorted(changed_fields(settings, changed)) == ['batch_timeout_s', 'max_batch_size']
    assert settings.max_batch_size == 4                      # the original is unchanged


def test_run_time_changes_are_validated_together():
    settings = shipped()
    assert settings.validate_changes([Parameter('max_queue_size', value=128)]) == ''
    reason = settings.validate_changes([Parameter('max_queue_size', value=8)])
    assert 'max_queue_per_client (32) must not exceed max_queue_size (8)' in reason
    assert settings.validate_changes([Parameter('max_queue_size', value=8),
                                      Parameter('max_queue_per_client', value=8)]) == ''
    assert 'cannot change at run time' in settings.validate_changes(
        [Parameter('model', value='other.onnx')])
    assert RUNTIME < set(PARAMETERS)


def test_every_parameter_has_a_description_and_numbers_a_range():
    for name, (default, description, bounds) in PARAMETERS.items():
        assert len(description) > 20, name
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert bounds and bounds[0] <= default <= bounds[1], name


@pytest.mark.parametrize('requested,active,warnings,level', [
    (['tensorrt', 'cuda', 'cpu'], ['CPUExecutionProvider'], ['cuda missing', 'trt missing'], 0),
    (['cuda'], ['CPUExecutionProvider'], ['cuda missing'], 1),
    (['cuda'], ['CUDAExecutionProvider', 'CPUExecutionProvider'], [], 0),
    (['tensorrt', 'cuda'], ['CUDAExecutionProvider', 'CPUExecutionProvider'], ['trt missing'], 0),
    (['cdua', 'cpu'], ['CPUExecutionProvider'], ["unknown execution provider 'cdua'"], 1),
    (['cpu'], ['CPUExecutionProvider'], [], 0),
])
def test_provider_health(requested, active, warnings, level):
    from server_node.offload_server import provider_health
    got, note = provider_health(requested, active, warnings)
    assert got == bytes([level]), note
    assert bool(note) == bool(level)


def test_workstation_package_imports_no_robot_nodes():
    """server_node uses cbo_common for shared helpers, never cbo_ros.nodes internals."""
    import ast
    from pathlib import Path
    package = Path(__file__).resolve().parents[1] / 'server_node' / 'server_node'
    imported = set()
    for path in package.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert 'cbo_common.ros_helpers' in imported
    assert not [name for name in imported if name.startswith('cbo_ros.nodes')], imported
