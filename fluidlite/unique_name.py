"""Deterministic unique names: `generate("fc")` -> `fc_0`, `fc_1`, ...; `guard()` starts afresh."""
from __future__ import annotations

import contextlib
from collections import defaultdict


class NameGenerator:
    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.counters = defaultdict(int)

    def __call__(self, key: str) -> str:
        n = self.counters[key]
        self.counters[key] += 1
        return f"{self.prefix}{key}_{n}"


_generator = NameGenerator()


def generate(key: str) -> str:
    """A new name `key_N`, unique within the current guard."""
    return _generator(key)


def switch(new: NameGenerator | None = None) -> NameGenerator:
    global _generator
    old, _generator = _generator, new or NameGenerator()
    return old


@contextlib.contextmanager
def guard(new_generator: NameGenerator | str | None = None):
    """Names generated inside start from zero again (a str is used as a prefix)."""
    if isinstance(new_generator, str):
        new_generator = NameGenerator(new_generator)
    old = switch(new_generator)
    try:
        yield
    finally:
        switch(old)
