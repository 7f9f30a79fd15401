"""The callback interface pure code reports through.

models/ must not import MLflow or Prefect, yet training loops should still show loss curves and progress bars.
Pure code calls a `Reporter`; tasks/ binds it to MLflow and Prefect, tests bind it to lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Reporter(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None: ...
    def log_figure(self, name: str, figure: Any) -> None: ...
    def progress(self, done: int, total: int, description: str) -> None: ...


@dataclass
class RecordingReporter:
    """Keeps everything in memory: the binding tests and plain scripts use."""

    metrics: list[tuple[int | None, dict[str, float]]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    last_progress: tuple[int, int, str] | None = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.tables[name] = rows

    def log_figure(self, name: str, figure: Any) -> None:
        self.figures[name] = figure

    def progress(self, done: int, total: int, description: str) -> None:
        self.last_progress = (done, total, description)

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.metrics if key in m]
