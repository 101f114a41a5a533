"""docs/privacy.md traces the privacy policy: one row per sentence of the policy in
force (templates/policies/), each sentence that says what the system does names the
code that does it and at least one test that shows it, and every file and test the
document cites exists."""

import ast
import html
import re
from pathlib import Path

from tests.test_retention_jobs import RETENTION_JOBS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "privacy.md"
ROW = re.compile(r"^\| (\d+) \| §(\d+) \| (.+?) \| (system|organizational) \| (.*) \| (.*) \|$")
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
CITED_FILE = re.compile(r"`((?:clinik|tests|templates|static|docs|bench|sdk)/[\w./-]+)`")


def _policy_sentences() -> list[tuple[str, str]]:
    """(section number, sentence) of every paragraph of the newest policy version."""
    versions = sorted(
        (ROOT / "templates" / "policies").glob("privacy-v*.html"),
        key=lambda p: int(re.findall(r"\d+", p.stem)[-1]),
    )
    text = versions[-1].read_text()
    found: list[tuple[str, str]] = []
    section = "0"
    for tag, body in re.findall(r"<(h2|h3|p)>(.*?)</\1>", text, re.S):
        plain = html.unescape(re.sub(r"<[^>]+>", "", body)).strip()
        if tag == "h2":
            section = plain.split(".")[0]
        elif tag == "p":
            found.extend(
                (section, sentence) for sentence in re.split(r"(?<=\.)\s+(?=[A-Z(])", plain)
            )
    return found


def _rows() -> list[tuple[str, ...]]:
    return [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def test_every_sentence_of_the_policy_has_a_row_in_order() -> None:
    sentences = _policy_sentences()
    assert len(sentences) > 40
    assert [(section, sentence) for _, section, sentence, *_ in _rows()] == sentences


def test_every_row_that_says_what_the_system_does_names_a_test() -> None:
    rows = _rows()
    system = [row for row in rows if row[3] == "system"]
    assert len(system) > 30
    for number, _section, sentence, kind, mechanism, tests in rows:
        if kind == "system":
            assert CITED_TEST.search(tests), (number, sentence)
            assert CITED_FILE.search(mechanism), (number, sentence)
        else:
            assert mechanism.strip(), (number, "say why it is not the system's to do")


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_cited_file_and_test_exists() -> None:
    text = DOC.read_text()
    files = set(CITED_FILE.findall(text))
    tests = set(CITED_TEST.findall(text))
    assert files and tests
    missing_files = sorted(f for f in files if not (ROOT / f.split("::")[0]).exists())
    assert missing_files == []
    missing_tests = sorted(
        f"{path}::{name}"
        for path, name in tests
        if not (ROOT / path).exists() or name not in _functions(ROOT / path)
    )
    assert missing_tests == []


def test_every_retention_job_is_in_the_retention_table() -> None:
    text = DOC.read_text()
    assert sorted(job for job in RETENTION_JOBS if f"`{job}`" not in text) == []
