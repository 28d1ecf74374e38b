"""Run one of the operator's forever-loops in a test: until a condition holds, then cancel it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest


def run_until(loop: Coroutine[Any, Any, Any], done: Callable[[], bool], limit: int = 500) -> None:
    """Run ``loop`` as a task until ``done()`` (polled every 10 ms, at most ``limit`` times); it
    must not end by itself meanwhile, and it must end on cancellation."""

    async def run() -> None:
        task = asyncio.create_task(loop)
        for _ in range(limit):
            if done():
                break
            assert not task.done(), task
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
