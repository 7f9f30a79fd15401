"""The documentation: the mkdocs site builds with --strict (every page in the nav, every internal link and anchor
resolves), and the README stays the front page: at most 250 lines, every relative link pointing at a file of the
repository, and no citation of internal notes (papers and official repositories are cited instead) in the pages nor in
the code, configs and tests a user of the repository reads."""
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
INTERNAL_NOTES = re.compile(r"\b(?:vision|language|data_sources|ecosystem|DESIGN|stack)\.md\b")
# Where code, config comments, docstrings and report strings live (this file names the notes, so it is left out).
SOURCE_DIRS = ("recipes", "models", "data", "configs", "benchmarks", "tasks", "flows", "settings", "paperops", "mlflow",
               "tests")
SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".md"}
TOP_LEVEL_FILES = ("Makefile", "pyproject.toml", "dvc.yaml", "params.yaml", "prefect.yaml", "mkdocs.yml",
                   "docker-compose.yml")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def documentation_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def source_files() -> list[Path]:
    files = [path for folder in SOURCE_DIRS for path in sorted((REPO / folder).rglob("*"))
             if path.suffix in SOURCE_SUFFIXES and path.is_file()]
    files += [REPO / name for name in TOP_LEVEL_FILES if (REPO / name).is_file()]
    return [path for path in files if path != Path(__file__).resolve()]


def internal_note_citations(paths: list[Path]) -> dict[str, list[str]]:
    """The internal notes each file names, for the files that name any."""
    cited = {str(path.relative_to(REPO)): sorted(set(INTERNAL_NOTES.findall(path.read_text(errors="replace"))))
             for path in paths}
    return {path: notes for path, notes in cited.items() if notes}


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
    offending = internal_note_citations(documentation_files())
    assert not offending, f"cite the paper (arXiv id, venue) or its official repository, not internal notes: {offending}"


def test_no_code_config_or_test_cites_internal_notes():
    files = source_files()
    assert REPO / "recipes" / "ovor.py" in files and REPO / "configs" / "cbq.yaml" in files
    offending = internal_note_citations(files)
    assert not offending, (f"cite the paper (arXiv id, venue, section) or its official repository and file, or say "
                           f"'our miniature', not internal notes: {offending}")


def test_the_internal_notes_pattern_finds_citations_and_spares_repository_files():
    text = "vision.md §4.5, (language.md §1.11), see DESIGN.md, (stack.md); docs/concepts.md, paperops/stack.py"
    assert INTERNAL_NOTES.findall(text) == ["vision.md", "language.md", "DESIGN.md", "stack.md"]
