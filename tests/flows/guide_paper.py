"""The paper docs/adding-a-paper.md shows (its recipe file and its config file) and a copy of the project that has
it: the files as git has them (tracked and not ignored: no datasets, no state) plus the guide's two, committed in a
repository of its own. Tests run the new paper in the copy, in this process (`running_in`) or as `paperops`
subprocesses."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

import recipes
from settings import PROJECT_ROOT

GUIDE = PROJECT_ROOT / "docs" / "adding-a-paper.md"
# "`recipes/<paper>.py`:" or "`configs/<paper>.yaml`:", a blank line, then the fenced file
SHOWN_FILE = re.compile(r"^`((?:recipes/\w+\.py)|(?:configs/\w+\.yaml))`:\n\n```\w*\n(.*?)^```$", re.M | re.S)


def the_guides_files() -> dict[str, str]:
    """The files docs/adding-a-paper.md tells the reader to write, by path."""
    return dict(SHOWN_FILE.findall(GUIDE.read_text()))


FILES = the_guides_files()
PAPER = next((Path(path).stem for path in FILES if path.startswith("recipes/")), "")


def git(root: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-c", "user.name=paperops", "-c", "user.email=paperops@localhost", *arguments],
                          cwd=root, check=True, capture_output=True, text=True).stdout


def copy_project_with_the_guides_paper(copy: Path) -> Path:
    for name in git(PROJECT_ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0"):
        if name and (PROJECT_ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, copy / name)
    for path, text in FILES.items():
        assert not (copy / path).exists(), f"{path} is already part of the project"
        (copy / path).write_text(text)
    git(copy, "init", "--quiet")
    git(copy, "add", "--all")
    git(copy, "commit", "--quiet", "-m", "a new paper: one recipe file and one config file")
    return copy


@contextmanager
def running_in(copy: Path) -> Iterator[Path]:
    """This process as if started in the copy: its project root, and its recipes/ as the recipes package's path."""
    from recipes.base import _RECIPES

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAPEROPS_ROOT", str(copy))
        patch.setattr(recipes, "__path__", [str(copy / "recipes")])
        try:
            yield copy
        finally:
            _RECIPES.pop(PAPER, None)
            sys.modules.pop(f"recipes.{PAPER}", None)
