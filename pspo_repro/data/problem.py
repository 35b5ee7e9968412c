"""The one record shape every benchmark problem takes, whatever its source (imports nothing of the package)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, whatever its source."""

    id: str
    question: str
    answer: str
    benchmark: str
    kind: str
    solution: str | None = None
    metadata: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """A plain, JSON-serialisable dict (metadata copied)."""
        return dataclasses.asdict(self)
