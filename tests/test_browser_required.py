"""Without chromium the test run fails with the one-line fix instead of skipping the
browser tests; CLINIK_SKIP_BROWSER=1 skips them and says so (issue #14, item 5)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _collect_without_chromium(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # A PATH with nothing on it: no chromium, whatever this machine has installed.
    empty = tmp_path / "bin"
    empty.mkdir()
    inherited = {k: v for k, v in os.environ.items() if k != "CLINIK_SKIP_BROWSER"}
    environment = {**inherited, "PATH": str(empty), **env}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-rs", "tests/test_browser.py"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_chromium_fails_the_run_with_the_install_command(tmp_path: Path) -> None:
    run = _collect_without_chromium(tmp_path)
    assert run.returncode != 0
    assert "apt-get install chromium" in run.stdout + run.stderr
    assert "CLINIK_SKIP_BROWSER=1" in run.stdout + run.stderr


def test_clinik_skip_browser_skips_them_and_says_so(tmp_path: Path) -> None:
    run = _collect_without_chromium(tmp_path, CLINIK_SKIP_BROWSER="1")
    assert run.returncode in (0, 5), run.stdout + run.stderr  # 5: nothing collected
    assert "CLINIK_SKIP_BROWSER=1: the browser tests are skipped" in run.stdout
