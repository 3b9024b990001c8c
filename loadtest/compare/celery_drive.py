"""Sends N Celery tasks at once and waits for every result; prints the rate."""

import sys
import time

from celery_tasks import run


def main():
    n = int(sys.argv[1])
    command = sys.argv[2]
    # Warm up: the workers are up and the result queue exists before the clock starts.
    run.delay([command]).get(timeout=60)
    t0 = time.monotonic()
    results = [run.delay([command]) for _ in range(n)]
    codes = [r.get(timeout=600) for r in results]
    took = time.monotonic() - t0
    bad = sum(1 for c in codes if c != 0)
    print(f"celery (prefork, rpc results): {n} tasks in {took:.2f} s = {n / took:.0f} tasks/s ({bad} failed)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
