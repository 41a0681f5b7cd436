"""The launch files (parsed with ast: `launch` is not installable here) and the parameter files.

Checks that every package/executable a launch file starts is a console script of that package,
that every config/launch path it builds exists (and is installed by setup.py), and that the
parameter files' keys are exactly the parameters the nodes declare, with accepted values (the
nodes are instantiated under rclpy with the file, as `--ros-args --params-file` passes it).
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_DIR = ROOT / 'launch'
LAUNCH_FILES = sorted(LAUNCH_DIR.glob('*.launch.py'))
PACKAGE_DIRS = {'cbo_ros': ROOT, 'server_node': ROOT / 'server_node'}


def entry_points(package):
    """console_scripts of a package's setup.py: {name: 'module:function'}."""
    text = (PACKAGE_DIRS[package] / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+)\s*=\s*([\w.]+:\w+)'", text))


def call_name(node):
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, 'attr', '')


def string(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def launched_nodes(tree):
    """(package, executable) pairs of the launch_ros Node actions of a launch file.

    A Node whose executable is a parameter of a helper function (``def robot_node(executable)``)
    is resolved through the string arguments of that helper's calls.
    """
    found = []
    helpers = {}
    for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        for call in [n for n in ast.walk(function) if isinstance(n, ast.Call)]:
            if call_name(call) != 'Node':
                continue
            keywords = {k.arg: k.value for k in call.keywords}
            package = string(keywords.get('package'))
            executable = keywords.get('executable')
            if string(executable):
                found.append((package, string(executable)))
            elif isinstance(executable, ast.Name):
                arguments = [a.arg for a in function.args.args]
                if executable.id not in arguments:
                    continue           # seen from an enclosing function
                helpers[function.name] = (package, arguments.index(executable.id))
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
        if call_name(call) in helpers:
            package, position = helpers[call_name(call)]
            found.append((package, string(call.args[position])))
    return found


def share_paths(tree):
    """Paths built as PathJoinSubstitution([FindPackageShare('pkg'), 'dir', 'file'])."""
    paths = []
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
        if call_name(call) != 'PathJoinSubstitution' or not call.args:
            continue
        parts = call.args[0].elts if isinstance(call.args[0], ast.List) else []
        if parts and isinstance(parts[0], ast.Call) and call_name(parts[0]) == 'FindPackageShare':
            package = string(parts[0].args[0])
            rest = [string(p) for p in parts[1:]]
            if all(rest):
                paths.append((package, rest))
    return paths


def included_launch_files(tree):
    """File names joined onto a launch directory: PathJoinSubstitution([launch_dir, 'x'])."""
    names = []
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
        if call_name(call) == 'PathJoinSubstitution' and call.args and \
                isinstance(call.args[0], ast.List):
            for part in call.args[0].elts:
                text = string(part)
                if text and text.endswith(('.launch.py', '.yaml')):
                    names.append(text)
    return names


def test_launch_files_present():
    names = {p.name for p in LAUNCH_FILES}
    assert {'robot.launch.py', 'server.launch.py', 'demo.launch.py'} <= names


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 'generate_launch_description' in functions
    declared = {string(c.args[0]) for c in ast.walk(tree)
                if isinstance(c, ast.Call) and call_name(c) == 'DeclareLaunchArgument'}
    assert {'namespace', 'use_sim_time', 'log_level'} <= declared, declared
    assert any('params_file' in name for name in declared), declared
    used = {string(c.args[0]) for c in ast.walk(tree)
            if isinstance(c, ast.Call) and call_name(c) == 'LaunchConfiguration'}
    assert used <= declared, f'LaunchConfiguration of undeclared arguments: {used - declared}'

    for package, executable in launched_nodes(tree):
        assert package in PACKAGE_DIRS, f'{path.name}: unknown package {package!r}'
        scripts = entry_points(package)
        assert executable in scripts, f'{path.name}: {package} has no executable {executable!r}'
        module = scripts[executable].split(':')[0]
        module_file = PACKAGE_DIRS[package] / (module.replace('.', '/') + '.py')
        assert module_file.is_file(), f'{executable}: {module_file} missing'
    for package, parts in share_paths(tree):
        target = PACKAGE_DIRS[package].joinpath(*parts)
        assert target.exists(), f'{path.name}: {"/".join(parts)} not found in {package}'
    for name in included_launch_files(tree):
        folder = LAUNCH_DIR if name.endswith('.launch.py') else ROOT / 'config'
        assert (folder / name).is_file(), f'{path.name}: {name} not found'


def test_robot_launch_starts_the_robot_nodes():
    tree = ast.parse((LAUNCH_DIR / 'robot.launch.py').read_text())
    executables = {e for _, e in launched_nodes(tree)}
    assert executables == {'camera_node', 'npu_classifier_node', 'network_monitor_node',
                           'offload_planner_node', 'early_exit_node'}
    tree = ast.parse((LAUNCH_DIR / 'server.launch.py').read_text())
    assert launched_nodes(tree) == [('server_node', 'server_node')]


def test_setup_installs_launch_and_config():
    text = (ROOT / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in text and "glob('config/*.yaml')" in text


def node_sections(path):
    """{node name: parameters} of a ROS 2 parameter file ('/**/name', 'name' or '/**')."""
    content = yaml.safe_load(path.read_text())
    sections = {}
    for key, value in content.items():
        name = str(key).split('/')[-1] or '**'
        sections[name] = value['ros__parameters']
    return sections


NODE_CLASSES = {
    'camera_node': ('cbo_ros.nodes.camera_node', 'CameraNode'),
    'npu_classifier_node': ('cbo_ros.nodes.npu_classifier_node', 'NpuClassifierNode'),
    'offload_planner_node': ('cbo_ros.nodes.offload_planner_node', 'OffloadPlannerNode'),
    'network_monitor_node': ('cbo_ros.nodes.network_monitor_node', 'NetworkMonitorNode'),
    '**': ('server_node.offload_server', 'OffloadServer'),
}


@pytest.mark.parametrize('config', ['robot.yaml', 'server.yaml'])
def test_param_files_match_declared_parameters(config):
    """Instantiate each node with the file; its keys must be exactly the declared parameters."""
    import importlib

    import rclpy
    from ros_helpers import unique_domain_id

    path = ROOT / 'config' / config
    sections = node_sections(path)
    assert sections, f'{config} has no node sections'
    context = rclpy.Context()
    rclpy.init(args=['test', '--ros-args', '--params-file', str(path)], context=context,
               domain_id=unique_domain_id())
    try:
        for name, values in sections.items():
            assert name in NODE_CLASSES, f'{config}: section for unknown node {name!r}'
            module, cls = NODE_CLASSES[name]
            node = getattr(importlib.import_module(module), cls)(context=context)
            try:
                # qos_overrides.<resolved topic>.* (QoSOverridingOptions) name the topic with
                # its namespace: a namespace-agnostic file cannot list them; they are optional.
                declared = {p for p in node._parameters if not p.startswith('qos_overrides.')}
                declared -= {'use_sim_time', 'start_type_description_service'}
                unknown = set(values) - declared
                missing = declared - set(values)
                assert not unknown, f'{config} [{name}]: not declared by the node: {unknown}'
                assert not missing, f'{config} [{name}]: declared but not in the file: {missing}'
                for key, value in values.items():
                    got = node.get_parameter(key).value
                    if isinstance(value, list):
                        got = list(got)
                    assert got == value, f'{name}.{key}: file {value!r}, node {got!r}'
                    descriptor = node.describe_parameter(key)
                    assert descriptor.description, f'{name}.{key} has no description'
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_robot_launch_camera_arguments_are_typed_and_optional():
    # `source:=0` (a V4L2 index) is parsed as YAML by launch: it must reach the node as '0'. An
    # argument left empty leaves the parameter file's value (the file must win by default).
    text = (LAUNCH_DIR / 'robot.launch.py').read_text()
    tree = ast.parse(text)
    typed = {}
    for mapping in [n for n in ast.walk(tree) if isinstance(n, ast.Dict)]:
        for key, value in zip(mapping.keys, mapping.values):
            if string(key) and isinstance(value, ast.Tuple) and len(value.elts) == 2 \
                    and isinstance(value.elts[0], ast.Call) \
                    and call_name(value.elts[0]) == 'LaunchConfiguration' \
                    and isinstance(value.elts[1], ast.Name):
                typed[string(key)] = value.elts[1].id
    assert typed == {'source': 'str', 'mode': 'str', 'wait_for_subscribers': 'int',
                     'keep_recorded_stamps': 'bool', 'publish_clock': 'bool',
                     'publish_compressed': 'bool', 'input_transport': 'str'}, typed
    assert 'ParameterValue(value, value_type=value_type)' in text
    assert 'if value.perform(context)' in text
    for path in (LAUNCH_DIR / 'robot.launch.py', LAUNCH_DIR / 'demo.launch.py'):
        defaults = {}
        for call in [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                     and call_name(n) == 'DeclareLaunchArgument']:
            keywords = {k.arg: k.value for k in call.keywords}
            defaults[string(call.args[0])] = string(keywords.get('default_value'))
        overrides = {name: defaults[name] for name in typed if name in defaults}
        assert overrides and set(overrides.values()) == {''}, (path.name, overrides)


@pytest.mark.parametrize('config', ['robot.yaml', 'server.yaml'])
def test_node_defaults_are_the_shipped_configuration(config):
    """A node run without the file (``ros2 run``) behaves as the shipped file says."""
    import importlib

    import rclpy
    from ros_helpers import unique_domain_id

    context = rclpy.Context()
    rclpy.init(args=['test'], context=context, domain_id=unique_domain_id())
    differences = []
    try:
        for name, values in node_sections(ROOT / 'config' / config).items():
            module, cls = NODE_CLASSES[name]
            node = getattr(importlib.import_module(module), cls)(context=context)
            try:
                for key, value in values.items():
                    got = node.get_parameter(key).value
                    got = list(got) if isinstance(value, list) else got
                    if got != value:
                        differences.append(f'{name}.{key}: file {value!r}, default {got!r}')
            finally:
                node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    assert not differences, differences


def launch_description_items(tree):
    """The expressions listed in ``return LaunchDescription([...])``."""
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
        if call_name(call) == 'LaunchDescription' and call.args and \
                isinstance(call.args[0], ast.List):
            return call.args[0].elts
    return []


def declared_defaults(tree):
    """{argument: default_value node} of the DeclareLaunchArgument actions."""
    defaults = {}
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and call_name(n) == 'DeclareLaunchArgument']:
        keywords = {k.arg: k.value for k in call.keywords}
        defaults[string(call.args[0])] = keywords.get('default_value')
    return defaults


def is_launch_configuration(node, name):
    return isinstance(node, ast.Call) and call_name(node) == 'LaunchConfiguration' and \
        string(node.args[0]) == name


def assert_sets_fastdds_profile(path):
    """The file sets the Fast DDS profile through the environment before it starts a node."""
    tree = ast.parse(path.read_text())
    default = declared_defaults(tree).get('fastdds_profile')
    # Default: the variable's own value when set, else the installed profile.
    assert isinstance(default, ast.Call) and call_name(default) == 'EnvironmentVariable', \
        f'{path.name}: fastdds_profile must default to $FASTDDS_DEFAULT_PROFILES_FILE'
    assert string(default.args[0]) == 'FASTDDS_DEFAULT_PROFILES_FILE'
    fallback = {k.arg: k.value for k in default.keywords}['default_value']
    assert ('cbo_ros', ['config', 'fastdds_profile.xml']) in share_paths(
        ast.Module(body=[ast.Expr(fallback)], type_ignores=[])), ast.dump(fallback)
    items = launch_description_items(tree)
    names = [call_name(item) if isinstance(item, ast.Call) else '' for item in items]
    set_env = {string(item.args[0]): item.args[1] for item in items
               if isinstance(item, ast.Call) and call_name(item) == 'SetEnvironmentVariable'}
    assert is_launch_configuration(set_env.get('FASTDDS_DEFAULT_PROFILES_FILE'),
                                   'fastdds_profile'), f'{path.name}: profile not set'
    mode = set_env.get('RMW_FASTRTPS_PUBLICATION_MODE')
    assert isinstance(mode, ast.Call) and call_name(mode) == 'EnvironmentVariable' and \
        string(mode.args[0]) == 'RMW_FASTRTPS_PUBLICATION_MODE', \
        f'{path.name}: RMW_FASTRTPS_PUBLICATION_MODE must keep a set value, else AUTO'
    assert string({k.arg: k.value for k in mode.keywords}['default_value']) == 'AUTO'
    last_env = max(i for i, n in enumerate(names) if n == 'SetEnvironmentVariable')
    first_node = min(i for i, n in enumerate(names)
                     if n not in ('DeclareLaunchArgument', 'SetEnvironmentVariable'))
    assert last_env < first_node, f'{path.name}: a node starts before the environment is set'


@pytest.mark.parametrize('name', ['robot.launch.py', 'server.launch.py'])
def test_launch_sets_the_fastdds_profile_through_the_environment(name):
    assert_sets_fastdds_profile(LAUNCH_DIR / name)


def test_fastdds_profile_is_installed():
    assert (ROOT / 'config' / 'fastdds_profile.xml').is_file()
    assert "glob('config/*.xml')" in (ROOT / 'setup.py').read_text()


def test_robot_launch_real_camera_options():
    """use_camera (off: your own driver) and image_topic (remap of image_raw)."""
    tree = ast.parse((LAUNCH_DIR / 'robot.launch.py').read_text())
    defaults = declared_defaults(tree)
    assert string(defaults['use_camera']) == 'false'
    assert string(defaults['image_topic']) == 'image_raw'

    # The camera is started only under IfCondition(LaunchConfiguration('use_camera')).
    camera = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
              and call_name(c) == 'OpaqueFunction'
              and 'camera' in ast.dump({k.arg: k.value for k in c.keywords}['function'])]
    assert len(camera) == 1
    condition = {k.arg: k.value for k in camera[0].keywords}.get('condition')
    assert isinstance(condition, ast.Call) and call_name(condition) == 'IfCondition' and \
        is_launch_configuration(condition.args[0], 'use_camera'), 'camera not conditional'

    # remappings: [('image_raw', LaunchConfiguration('image_topic'))] for the frame readers.
    remap_lists = {}
    for assign in [n for n in ast.walk(tree) if isinstance(n, ast.Assign)]:
        value = assign.value
        if isinstance(value, ast.List) and len(value.elts) == 1 and \
                isinstance(value.elts[0], ast.Tuple):
            source, target = value.elts[0].elts
            to_image_topic = is_launch_configuration(target, 'image_topic')
            if string(source) == 'image_raw' and to_image_topic:
                remap_lists[assign.targets[0].id] = True
    assert remap_lists, 'no image_raw -> image_topic remapping'
    remapped = set()
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and call_name(n) == 'robot_node']:
        keywords = {k.arg: k.value for k in call.keywords}
        value = keywords.get('remappings')
        if isinstance(value, ast.Name) and value.id in remap_lists:
            remapped.add(string(call.args[0]))
    assert remapped == {'camera_node', 'npu_classifier_node', 'offload_planner_node',
                        'early_exit_node'}, remapped
    node_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and call_name(n) == 'Node']
    assert all('remappings' in {k.arg for k in n.keywords} for n in node_calls)


def test_demo_launch_starts_the_demo_camera():
    tree = ast.parse((LAUNCH_DIR / 'demo.launch.py').read_text())
    robot_arguments = None
    for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and call_name(n) == 'IncludeLaunchDescription']:
        if 'robot.launch.py' in ast.dump(call):
            keywords = {k.arg: k.value for k in call.keywords}
            mapping = keywords['launch_arguments'].func.value   # {...}.items()
            robot_arguments = {string(k): v for k, v in zip(mapping.keys, mapping.values)
                               if k is not None}
    assert robot_arguments is not None
    assert string(robot_arguments['use_camera']) == 'true'
    assert is_launch_configuration(robot_arguments['image_topic'], 'image_topic')
    robot_yaml = yaml.safe_load((ROOT / 'config' / 'robot.yaml').read_text())
    assert robot_yaml['/**/camera_node']['ros__parameters']['source'] == 'bikes.mp4'
    # Every argument the demo passes is one robot.launch.py declares.
    robot_declared = {string(c.args[0]) for c in ast.walk(
        ast.parse((LAUNCH_DIR / 'robot.launch.py').read_text()))
        if isinstance(c, ast.Call) and call_name(c) == 'DeclareLaunchArgument'}
    assert set(robot_arguments) - {None} <= robot_declared, set(robot_arguments) - robot_declared
    for name in ('strategy', 'input_transport', 'keep_recorded_stamps', 'publish_clock'):
        assert is_launch_configuration(robot_arguments[name], name), name


def test_robot_launch_early_exit_strategies_are_the_cores():
    from cbo_ros.core.early_exit import EARLY_EXIT_STRATEGIES
    tree = ast.parse((LAUNCH_DIR / 'robot.launch.py').read_text())
    values = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              and any(getattr(t, 'id', '') == 'EARLY_EXIT_STRATEGIES' for t in n.targets)]
    assert values == [EARLY_EXIT_STRATEGIES]
