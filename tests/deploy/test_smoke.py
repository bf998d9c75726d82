"""deploy/smoke.sh, the production layout on this machine, passes end to end (about 25 s)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_smoke_script_passes_through_nginx_and_leaves_nothing_running():
    # as from an operator's shell: none of the test run's settings (its database, Stripe emulator, ...)
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(PYTHON=sys.executable, SMOKE_DB=f"smoke_platform_test_{os.getpid()}")
    assert shutil.which("psql")
    result = subprocess.run(["bash", "deploy/smoke.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for check in ("resumed on web2 with Last-Event-ID", "RPM 4 held across web1+web2", "done by the Celery worker",
                  "the stream finished whole", "smoke: PASS"):
        assert check in output, check
    assert "files (logs, config) kept" not in output  # cleaned up after itself
    listed = subprocess.run(["psql", "postgres://postgres@127.0.0.1:5432/postgres", "-tAc",
                             "select datname from pg_database"], capture_output=True, text=True, check=True).stdout.split()
    assert env["SMOKE_DB"] not in listed
