"""Random streams are program state: each random op of a main program draws from a variable in the scope.

A random op (`dropout`, `uniform_random`, `gaussian_random`, `truncated_gaussian_random`,
`gaussian_random_batch_size_like`) that writes a temporary gets, when it is appended, a persistable
int64 `[2]` variable `<out>@RANDOM_STATE` = `[key, counter]` in both its `State` input and its
`StateOut` output, and an attribute `stream` (its index among the program's random ops). Each run it
draws with the seed `mix(seed or key, stream, counter)` and writes back `counter + 1`. So:

- the same program, seed and scope give the same values whatever else ran (other scopes, other
  Executors, other threads, plans rebuilt or evicted): nothing random lives in a plan;
- every run draws new values (a gradient-noise op never repeats itself);
- `save_persistables` / `load_persistables` carry the stream, so a resumed run continues it.

`key` matters only for `seed == 0`: it is drawn from OS entropy when the state is first needed, so an
unseeded op differs between scopes. A missing state (a scope that never ran the program, a checkpoint
written before the op existed) is made fresh (`counter = 0`) the first time a plan reads it.
A random op writing a persistable variable (an initializer in a startup program) keeps its fixed seed:
running the startup program again re-initialises identically.

DP-SGD's `dp_gaussian_noise` (fluidlite.per_example) is such a random op; its startup program also
makes its states (`random_state_init`), so `fl.distributed.broadcast_persistables` can give every
worker the same noise stream.
"""
from __future__ import annotations

import numpy as np

STATE_SUFFIX = "@RANDOM_STATE"
STATE_SHAPE = (2,)
STATE_DTYPE = np.dtype("int64")
_M64 = (1 << 64) - 1


def is_state(name: str) -> bool:
    return isinstance(name, str) and name.endswith(STATE_SUFFIX)


def fresh_state() -> np.ndarray:
    """[key from OS entropy, counter 0]."""
    key = int(np.random.SeedSequence().generate_state(1, np.uint64)[0]) & ((1 << 62) - 1)
    return np.array([key, 0], dtype=STATE_DTYPE)


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def stream_key(base: int, stream: int, counter: int) -> int:
    """The 64-bit key of one draw: a hash of (base, stream, counter), base the seed or the state's key."""
    return _splitmix(_splitmix(_splitmix(base & _M64) ^ (stream & _M64)) ^ (counter & _M64))


def call_seed(seed: int, key: int, stream: int, counter: int) -> int:
    """The 32-bit seed of one draw: a hash of (seed or key, stream, counter)."""
    return stream_key(seed if seed else key, stream, counter) & 0xFFFFFFFF


def advance(state: np.ndarray, seed: int, stream: int):
    """(seed of this draw, the next state) for a `[key, counter]` state array."""
    key, counter = int(state[0]), int(state[1])
    return call_seed(seed, key, stream, counter), np.array([key, counter + 1], dtype=STATE_DTYPE)


def attach(block, opdef, inputs, outputs, attrs):
    """For a random op about to be appended: its (inputs, outputs, attrs) with a state variable wired in.

    Unchanged when the op is not random, already has a `State`, or writes a persistable variable."""
    if not getattr(opdef, "random", False) or (inputs or {}).get("State") or not outputs:
        return inputs, outputs, attrs
    out = outputs.get("Out")
    out = out[0] if isinstance(out, (list, tuple)) and out else out
    name = getattr(out, "name", out)
    if not isinstance(name, str):
        return inputs, outputs, attrs
    var = block._find_var(name)
    if var is not None and var.persistable:
        return inputs, outputs, attrs
    gblock = block.program.global_block()
    state = name + STATE_SUFFIX
    if gblock._find_var(state) is not None:
        return inputs, outputs, attrs
    stream = sum(1 for b in block.program.blocks for v in b.vars if is_state(v))
    gblock.create_var(name=state, shape=STATE_SHAPE, dtype=STATE_DTYPE, persistable=True, stop_gradient=True)
    attrs = dict(attrs or {})
    attrs.setdefault("stream", stream)
    return dict(inputs or {}, State=[state]), dict(outputs, StateOut=[state]), attrs


def init_missing(scope, names) -> None:
    """Give every random state among `names` that the scope lacks a fresh value."""
    for n in names:
        if is_state(n) and scope.get_array(n) is None:
            scope.set_array(n, fresh_state())


# A fresh key has 62 bits; this bit marks a key derived for one data-parallel worker (`for_rank`).
RANK_FLAG = 1 << 62


def for_rank(state: np.ndarray, rank: int) -> np.ndarray:
    """A `[key, counter]` state for worker `rank` of a stream each worker draws on its own (dropout):
    the key is derived from (key, rank) and flagged, so that even a seeded op's draws differ by rank."""
    key = int(state[0]) & (RANK_FLAG - 1)
    derived = (_splitmix(key ^ _splitmix(rank + 1)) & (RANK_FLAG - 1)) | RANK_FLAG
    return np.array([derived, int(state[1])], dtype=STATE_DTYPE)


def rank_salted(call: int, state: np.ndarray) -> int:
    """The seed of a draw (`advance`), mixed with the state's key when `for_rank` made it, else unchanged."""
    key = int(state[0])
    return call if not key & RANK_FLAG else _splitmix(call ^ key) & 0xFFFFFFFF


__all__ = ["RANK_FLAG", "STATE_SUFFIX", "advance", "attach", "call_seed", "for_rank", "fresh_state", "init_missing", "is_state",
           "rank_salted", "stream_key"]
