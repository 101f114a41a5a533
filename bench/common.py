"""What the benchmark scripts share."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def create_org(name: str, email: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A new organization with an API key (`manage.py create_org`): its JSON line,
    {"org_id", "user_email", "api_key"}."""
    out = subprocess.run(
        [sys.executable, "manage.py", "create_org", "--name", name, "--email", email],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
