"""The README's curl quickstart runs as written against the real server: the shell
block is run by bash, with only BASE pointed at the test's server and manage.py at
the test database."""

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.liveserver import ROOT, database_url, serve


@pytest.mark.django_db(transaction=True)
def test_the_curl_quickstart_runs_as_written(tmp_path: Path, django_db_blocker: Any) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart with curl", 1)[1]
    script = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "BASE=http://127.0.0.1:8000/fhir/R4" in script
    with serve(tmp_path) as server:
        script = script.replace("BASE=http://127.0.0.1:8000/fhir/R4", f"BASE={server.base}/fhir/R4")
        result = subprocess.run(
            ["bash", "-c", "set -eu\n" + script],
            cwd=ROOT,
            # as under `make run`: emails go to a worker (none here), not to stdout
            env={**os.environ, "DATABASE_URL": database_url(), "CELERY_TASK_ALWAYS_EAGER": "false"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    out = result.stdout
    assert '"resourceType":"CapabilityStatement"' in out.replace(" ", "")
    assert out.count('"family":"Chalmers"') >= 2
    assert re.search(r'"type":\s*"transaction-response"', out)
    assert out.rstrip().endswith("204")
