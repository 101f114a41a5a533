"""The README documents every environment variable settings.py reads."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Read by settings.py but set only by `make` or the test runner, never by a user.
INTERNAL = {"CLINIK_TESTING"}


def test_every_setting_variable_is_in_the_readme() -> None:
    settings_text = (ROOT / "clinik" / "settings.py").read_text()
    readme = (ROOT / "README.md").read_text()
    names = set(re.findall(r'env_(?:str|int|bool|list)\(\s*"([A-Z0-9_]+)"', settings_text))
    assert "DATABASE_URL" in names and "REDIS_URL" in names
    missing = sorted(n for n in names - INTERNAL if f"`{n}`" not in readme)
    assert missing == []
