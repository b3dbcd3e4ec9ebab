"""Shape arithmetic with -1 standing for an unknown (batch) dimension."""
from __future__ import annotations


def dims_match(a: int, b: int) -> bool:
    return a == b or a == -1 or b == -1


def numel(shape) -> int:
    """Element count, or -1 when a dimension is unknown."""
    n = 1
    for d in shape:
        if d < 0:
            return -1
        n *= d
    return n


def broadcast(a: tuple, b: tuple) -> tuple | None:
    """NumPy broadcasting of two shapes (None if they do not broadcast)."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x == -1 or y == -1:
            out.append(max(x, y))
        else:
            return None
    return tuple(reversed(out))
