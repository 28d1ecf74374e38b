"""Render time per LLMService (median and p99 over N renders of each example). Not a test.

.venv/bin/python -m bench.render_bench [-n 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

from llmservice_operator.render import render
from llmservice_operator.validate import parse
from tests.unit.examples import example_services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    print(f"{'case':<22} {'parse+render p50':>17} {'p99':>9}")
    for case, obj in sorted(example_services().items()):
        samples = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            render(parse(obj))
            samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        p99 = samples[int(len(samples) * 0.99) - 1]
        print(f"{case:<22} {statistics.median(samples):>14.3f} ms {p99:>6.3f} ms")


if __name__ == "__main__":
    main()
