"""The console entry applies fineship's environment before Prefect loads: Prefect reads its settings (the API URL of
the team server or of a running `make up` stack, its home) once, at import."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import sys
from flows.cli import main
sys.argv = ["fineship", "--help"]
try:
    main()
except SystemExit:
    pass
from prefect.settings import get_current_settings
print("API", get_current_settings().api.url)
"""


def test_the_console_entry_points_prefect_at_the_configured_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(FINESHIP_HOME=str(tmp_path), FINESHIP_PREFECT_API_URL="http://127.0.0.1:9/api")
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "API http://127.0.0.1:9/api" in out
