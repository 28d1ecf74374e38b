"""Field-path errors: the one shape every user-facing problem with a spec takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError


@dataclass(frozen=True, order=True)
class FieldError:
    """A problem with one field: ``path`` like ``spec.engine.tensorParallelSize``."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class InvalidSpecError(ValueError):
    """An LLMService that cannot be rendered; carries every problem found, not just the first."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


def path_of(loc: Sequence[int | str], prefix: str = "") -> str:
    """pydantic's ``loc`` tuple as a dotted path with [index] for list items."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def from_pydantic(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for err in exc.errors():
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown field"
        errors.append(FieldError(path_of(err["loc"], prefix), reason))
    return errors
