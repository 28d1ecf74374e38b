"""Unit tests share the operator's module-level state: each test starts with none of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmservice_operator import reconcile


@pytest.fixture(autouse=True)
def _fresh_operator_state() -> Iterator[None]:
    reconcile.CHILDREN.clear()
    reconcile.CODE.clear()
    reconcile._LOCKS.clear()
    reconcile._RECONCILED.clear()
    yield
