"""Comments cite docs/architecture.md, which is in the repository, by a section that
exists; none cites a design document that is not."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r'docs/architecture\.md,\s+"([^"]+)"')


def _sources() -> list[Path]:
    return [
        path
        for folder in ("clinik", "tests", "bench", "templates")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".py", ".html", ".md"}
    ]


def test_every_citation_names_a_section_of_the_architecture_doc() -> None:
    headings = [
        line.lstrip("#").strip()
        for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
        if line.startswith("#")
    ]
    cited = {
        (path.name, " ".join(match.split()))
        for path in _sources()
        for match in CITATION.findall(path.read_text())
    }
    assert cited, "nothing cites docs/architecture.md"
    unknown = sorted(c for c in cited if not any(h.startswith(c[1]) for h in headings))
    assert unknown == []


def test_no_comment_cites_a_design_document_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    offenders = sorted(
        str(p.relative_to(ROOT)) for p in _sources() if p != this and "DESIGN.md" in p.read_text()
    )
    assert offenders == []
