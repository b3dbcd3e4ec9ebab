"""Hypothesis settings shared by the fuzz harnesses: small by default, `FLUIDLITE_FUZZ_EXAMPLES=N` for a long run.

The default profile is derandomized (the same cases every run, so CI is stable); the long profile
draws fresh cases. Each harness counts the cases it ran and their outcomes in `COUNTS`; the long
profile prints the totals when the process exits (the figures quoted in docs/reliability.md).
"""
import os
from collections import Counter

from hypothesis import HealthCheck, settings

LONG = int(os.environ.get("FLUIDLITE_FUZZ_EXAMPLES", "0") or 0)
COUNTS = Counter()


def fuzz_settings(default: int, deadline_ms=None):
    return settings(max_examples=LONG or default, deadline=deadline_ms, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck), database=None, print_blob=True)


def report(name, **counts):
    COUNTS.update({f"{name}.{k}": v for k, v in counts.items()})


def _summary():
    if COUNTS:
        print("\n[fuzz] " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))


if LONG:
    import atexit

    atexit.register(_summary)
