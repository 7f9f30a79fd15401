"""Who may read which split: the roles a dataset's splits play, and the views the platform hands each step.

Every data family declares the role each of its split names plays (SPLIT_ROLES in data/images.py, data/text.py,
data/fewshot.py): FIT (training data), VAL (carved from the training data: every choice a run makes is made on it)
or TEST (read by the evaluate step only, once every setting is frozen). A recipe never opens a dataset path: its
`load_data` receives one DatasetView per dataset, and the family's loader hands out only the splits the view lets the
step read. A withheld split is a `Withheld` stand-in: any use of it raises TestSplitAccessError, which names the
split, the dataset and the step, so a train or compress step that reaches for test data stops instead of quietly
choosing its settings on it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

FIT, VAL, TEST = "fit", "val", "test"
ROLES = (FIT, VAL, TEST)

# The roles each pipeline step may read: train and compress choose on val, only evaluate reads test.
STEP_ROLES: dict[str, frozenset[str]] = {
    "train": frozenset({FIT, VAL}),
    "compress": frozenset({FIT, VAL}),
    "evaluate": frozenset(ROLES),
}


class TestSplitAccessError(RuntimeError):
    """A step used a split its view withholds (a test split, outside evaluate)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, split: str, dataset: str, step: str) -> None:
        super().__init__(f"split {split!r} of dataset {dataset!r} is withheld from the {step} step: only evaluate "
                         "reads test splits; train and compress read fit and val splits and make every choice on val")
        self.split, self.dataset, self.step = split, dataset, step


class Withheld:
    """Stands in for the arrays or text of a split the step may not read: any use raises TestSplitAccessError."""

    __slots__ = ("split", "dataset", "step")

    def __init__(self, split: str, dataset: str, step: str) -> None:
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "step", step)

    def refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TestSplitAccessError(self.split, self.dataset, self.step)

    def __getattr__(self, name: str) -> NoReturn:  # .shape, .astype, numpy's and torch's array probes
        self.refuse()

    __setattr__ = __len__ = __iter__ = __getitem__ = __contains__ = __bool__ = __array__ = refuse

    def __repr__(self) -> str:
        return f"<split {self.split!r} of {self.dataset!r} withheld from {self.step}>"


@dataclass
class DatasetView:
    """One prepared dataset directory as one step may read it. `reads` records every split a loader handed out."""

    name: str  # the dataset's name among the recipe's datasets ("data", "pretrain")
    path: Path
    step: str
    readable_roles: frozenset[str]
    reads: list[tuple[str, str]] = field(default_factory=list)  # (split, role), in the order handed out

    def __post_init__(self) -> None:
        unknown = sorted(set(self.readable_roles) - set(ROLES))
        if unknown:
            raise ValueError(f"readable_roles holds unknown role(s) {unknown}; roles: {', '.join(ROLES)}")
        self.path = Path(self.path)

    def take(self, split: str, role: str) -> bool:
        """Whether the loader may hand out `split`, which plays `role`; a split handed out is recorded."""
        if role not in ROLES:
            raise ValueError(f"split {split!r} declares unknown role {role!r}; roles: {', '.join(ROLES)}")
        if role not in self.readable_roles:
            return False
        self.reads.append((split, role))
        return True

    def withheld(self, split: str) -> Withheld:
        return Withheld(split, self.name, self.step)

    def roles_read(self) -> set[str]:
        return {role for _, role in self.reads}


DatasetViews = dict[str, DatasetView]


def as_view(source: str | Path | DatasetView) -> DatasetView:
    """`source` as a view; a path is read whole (builders, suites and tests of the data itself read every split)."""
    if isinstance(source, DatasetView):
        return source
    path = Path(source)
    return DatasetView(path.name, path, "read", frozenset(ROLES))


def step_views(paths: Mapping[str, str | Path], step: str) -> DatasetViews:
    """A view of each dataset (by its Recipe.datasets name) as pipeline step `step` may read it."""
    if step not in STEP_ROLES:
        raise ValueError(f"unknown step {step!r}; steps that read data: {', '.join(STEP_ROLES)}")
    return {name: DatasetView(name, Path(path), step, STEP_ROLES[step]) for name, path in paths.items()}
