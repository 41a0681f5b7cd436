"""scripts/setup.sh is idempotent: a second run redoes nothing and changes no artifact."""

import os
import subprocess
from pathlib import Path

from cbo_ros.assets import paths

ROOT = Path(__file__).resolve().parents[1]


def test_setup_rerun_skips_every_step_and_keeps_artifacts():
    artifacts = sorted(p for p in paths.models_dir().glob('*') if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in artifacts}
    result = subprocess.run(['bash', str(ROOT / 'scripts' / 'setup.sh')], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for step in ('installing', 'creating virtualenv', 'building cbo_interfaces',
                 'exporting models', 'building the true-label benchmark', 'calibrating'):
        assert step not in output, f'setup re-ran "{step}":\n{output}'
    assert 'ready' in output
    assert {p: p.stat().st_mtime_ns for p in artifacts} == before
    env_file = (ROOT / 'cbo_env.sh').read_text()
    assert 'RMW_IMPLEMENTATION=rmw_fastrtps_cpp' in env_file
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' in env_file
