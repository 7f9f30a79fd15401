"""The documentation: the mkdocs site builds with --strict (every page in the nav, every internal link and anchor
resolves), and the README stays the front page: at most 250 lines, every relative link pointing at a file of the
repository, and no citation of internal notes (papers and official repositories are cited instead)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_LINES = 250
# Planning notes that never ship with the repository: citing them sends a reader nowhere.
INTERNAL_NOTES = re.compile(r"\b(?:vision|language|data_sources|ecosystem|DESIGN)\.md\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def documentation_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def relative_link_targets(markdown: str) -> list[str]:
    """Targets of the markdown links that point into the repository (not URLs, not in-page anchors)."""
    targets = []
    for target in MARKDOWN_LINK.findall(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_site_builds_with_strict_checks(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "adding-a-paper" / "index.html").is_file()


def test_the_readme_is_a_front_page_of_at_most_250_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/")


def test_every_relative_link_of_the_readme_points_at_a_file_of_the_repository():
    missing = [target for target in relative_link_targets(README.read_text()) if not (REPO / target).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_link_targets_skip_urls_and_anchors_and_drop_the_fragment():
    markdown = "[a](docs/x.md#part) [b](https://example.org/y.md) [c](#here) [d](mailto:x@y.z) [e](docs/)"
    assert relative_link_targets(markdown) == ["docs/x.md", "docs/"]


def test_no_page_cites_internal_notes():
    cited = {str(path.relative_to(REPO)): sorted(set(INTERNAL_NOTES.findall(path.read_text())))
             for path in documentation_files()}
    offending = {path: notes for path, notes in cited.items() if notes}
    assert not offending, f"cite the paper (arXiv id, venue) or its official repository, not internal notes: {offending}"
