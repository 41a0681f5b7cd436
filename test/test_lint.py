"""Code style, as ament_flake8 / ament_pep257 check it in ROS packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ['cbo_ros', 'server_node', 'cbo_common', 'test', 'launch', 'scripts', 'setup.py']


def test_flake8():
    result = subprocess.run([sys.executable, '-m', 'flake8', *CODE], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, 'flake8 found problems:\n' + result.stdout + result.stderr


def test_pep257():
    result = subprocess.run([sys.executable, '-m', 'pydocstyle', 'cbo_ros', 'server_node',
                             'cbo_common'],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, 'pydocstyle found problems:\n' + result.stdout + result.stderr
