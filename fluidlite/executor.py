"""The Executor: compiles a program once into a plan, then each step only checks feeds and calls kernels.

A plan is straight-line Python generated for one (program version, feed signature with the batch
size left symbolic, fetch list): one line per op calling its bound kernel, `del` after each value's
last use. A new batch size reuses the plan (compiler/rebatch.py). See docs/design.md.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import weakref
from collections import OrderedDict

import numpy as np

from . import random_state
from ._memory import tune_malloc
from ._threads import RunGuard, choose_layer
from .framework import Program, Variable, default_main_program
from .compiler import CompileOptions, compile_plan
from .compiler.codegen import PLAN_FILENAME_PREFIX
from .compiler.nan_check import NanInfError
from .compiler.rebatch import NotReusable, at_batch, bind_batch
from .scope import Scope, global_scope

_MAX_PLANS = 64  # distinct plans kept per Executor
_MAX_BOUND = 1024  # (feed shapes -> plan, step function, plan key) entries; each is a few closures, not a plan
_MAX_BATCHES = 256  # step functions bound for other batch sizes, per plan


class CPUPlace:
    def __repr__(self):
        return "CPUPlace"


def _fetch_name(item) -> str:
    if isinstance(item, Variable):
        return item.name
    if isinstance(item, str):
        return item
    raise TypeError(f"fetch_list items must be Variables or names, got {type(item).__name__}")


class PlanError(RuntimeError):
    """An op failed while a plan ran and its exception could not be re-raised as its own type."""


class Plan:
    """One compiled program: a generated step function plus what it reads and writes.

    Built by the passes of `fluidlite.compiler` (prune, infer, alias, lower, fold, fuse, codegen).
    `source` is the generated Python (like torch.fx's `GraphModule.code`); `steps` the typed step
    list it was generated from; `ops` the operators it runs, in order."""

    def __init__(self, program: Program, feed_sig: tuple, fetch_names: tuple, options: CompileOptions | None = None):
        ir = compile_plan(program.global_block(), feed_sig, fetch_names, options)
        self.ir = ir
        self.fetch_names = fetch_names
        self.steps = ir.steps
        self.ops = [op for s in ir.steps for op in s.ops]  # a fused step runs several
        self.metas = ir.metas
        self.scope_inputs = ir.scope_inputs
        self.persist_out = ir.persist_out
        self.declared = ir.declared
        self.source = ir.source
        self._step, self._line_to_op = ir.step_fn, ir.line_to_op
        self.feed_sig = feed_sig
        self.reusable = True  # False once a batch size showed a persistable result following the batch
        self._by_sig: OrderedDict = OrderedDict()  # other feed shapes -> step function (LRU)
        self._lock = threading.Lock()
        self._checked_scopes = weakref.WeakSet()  # not ids: a new scope may reuse a dead one's id

    def memory(self, feed: dict | None = None):
        """The step's memory plan (`fluidlite.compiler.memory.MemoryPlan`): peak live bytes and where,
        at the feed shapes the plan was compiled for, or at those of `feed` (name -> array)."""
        from .compiler.memory import memory_plan

        if feed is None:
            return memory_plan(self.ir)
        return memory_plan(at_batch(self.ir, {n: (np.shape(a), np.asarray(a).dtype) for n, a in feed.items()}))

    def step_for(self, feed_sig: tuple):
        """The step function for feeds of `feed_sig` (same plan, another batch size), or None when this
        plan cannot serve it (then compile one for it: it runs, or raises the error a plan would)."""
        if feed_sig == self.feed_sig:
            return self._step
        with self._lock:
            step = self._by_sig.get(feed_sig)
            if step is not None:
                self._by_sig.move_to_end(feed_sig)
                return step
        if not self.reusable:
            return None
        try:
            step = bind_batch(self.ir, {n: (shape, dtype) for n, shape, dtype in feed_sig})
        except NotReusable:
            self.reusable = False
            return None
        except Exception:  # a shape error at this batch size: a fresh plan raises it, naming the op
            return None
        with self._lock:
            self._by_sig[feed_sig] = step
            while len(self._by_sig) > _MAX_BATCHES:
                self._by_sig.popitem(last=False)
        return step

    def _check_scope(self, scope: Scope):
        random_state.init_missing(scope, self.scope_inputs)  # a stream this scope has not used yet
        for n in self.scope_inputs:
            value = scope.get_array(n)
            if value is None:
                raise ValueError(f"variable {n!r} has no value in the scope: run the startup program first")
            m = self.metas[n]
            if value.dtype != m.dtype or len(value.shape) != len(m.shape) or any(
                    d != -1 and d != s for d, s in zip(m.shape, value.shape)):
                raise ValueError(f"variable {n!r} in the scope is {value.dtype}{list(value.shape)}, "
                                 f"the program declares {m.dtype}{list(m.shape)}")
        scope.declare(self.declared)
        self._checked_scopes.add(scope)

    def run(self, feed: dict, scope: Scope, step=None) -> list:
        """Run one step on `scope`; `step`: the step function for these feed shapes (`step_for`)."""
        if scope not in self._checked_scopes:
            self._check_scope(scope)
        try:
            # NumPy calls in lowered ops must not warn where Numba kernels never do: a diverging run
            # reports NaN/inf through check_nan_inf or its values, and a user's seterr("raise") stays theirs
            with np.errstate(all="ignore"):
                results = (step or self._step)(feed, scope.arrays)
            return _distinct(results) if len(results) > 1 else results
        except NanInfError:
            raise  # already names its op
        except Exception as exc:
            op = self._failing_op(sys.exc_info()[2])
            if op is None:
                raise
            message = f"while executing op '{op.type}' ({op.to_string()}): {exc}"
            try:  # keep the kernel's exception type (a bad label stays a ValueError), add the op
                wrapped = type(exc)(message)
            except Exception:
                wrapped = PlanError(f"{message} ({type(exc).__name__})")
            raise wrapped from exc

    def _failing_op(self, tb):
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "_step" and tb.tb_frame.f_code.co_filename.startswith(PLAN_FILENAME_PREFIX):
                return self._line_to_op.get(tb.tb_lineno)
            tb = tb.tb_next
        return None


def _distinct(results: list) -> list:
    """Fetched values that share one array (the gradients `sum` hands its inputs) come back as copies,
    so writing into one fetched array never changes another."""
    seen = set()
    for i, value in enumerate(results):
        if id(value) in seen:
            results[i] = value.copy()
        seen.add(id(value))
    return results


class Executor:
    """Runs programs. Plans are cached per (program version, feed signature, fetch list), at most
    `_MAX_PLANS` of them; the least recently used plan is evicted first. The feed signature leaves
    the batch size symbolic (the first -1 dimension of each fed variable; batch size 1 apart),
    so one plan serves every batch size unless it cannot (see `fluidlite.compiler.rebatch`).

    `check_nan_inf=True` (or the environment variable FLUIDLITE_CHECK_NAN_INF=1) checks every op's
    floating outputs as the plan runs: the first op that writes a NaN or an Inf raises `NanInfError`
    before any later op runs, and the scope keeps its values (see `fluidlite.compiler.nan_check`);
    off, the plan holds no trace of it. `compile_options` (a `fluidlite.compiler.CompileOptions`)
    switches compiler passes off or turns on the IR verifier between passes; default: from the
    environment (`CompileOptions.from_env`)."""

    def __init__(self, place=None, check_nan_inf=False, compile_options: CompileOptions | None = None):
        self.place = place or CPUPlace()
        options = CompileOptions.from_env() if compile_options is None else compile_options
        if check_nan_inf or os.environ.get("FLUIDLITE_CHECK_NAN_INF", "") not in ("", "0"):
            options = dataclasses.replace(options, check_nan_inf=True)
        self.compile_options = options
        self._plans: OrderedDict = OrderedDict()  # symbolic key -> Plan
        self._bound: OrderedDict = OrderedDict()  # concrete key -> (Plan, step function)
        self._lock = threading.Lock()
        tune_malloc()
        choose_layer()  # Numba's workqueue for fluidlite's parallel kernels, unless the user chose a layer
        self._guard = RunGuard()  # one plan at a time under workqueue; one BLAS thread when oversubscribed or faster

    def run(self, program=None, feed=None, fetch_list=None, scope=None, return_numpy=True):
        """Run `program`; returns the fetched values as numpy arrays (copies)."""
        scope = global_scope() if scope is None else scope
        plan, step, feed = self._plan(program, feed, fetch_list)
        with self._guard.using(id(step)):
            return plan.run(feed, scope, step)

    def compile(self, program=None, feed=None, fetch_list=None) -> Plan:
        """The plan `run` would execute for these arguments (compiled now, or from the cache), without
        running it: `exe.compile(main, feed, [loss]).source` is the generated step function."""
        return self._plan(program, feed, fetch_list)[0]

    def _plan(self, program, feed, fetch_list):
        """(plan, step function, feed as C-contiguous ndarrays); feeds are checked before a plan is compiled."""
        program = default_main_program() if program is None else program
        if not isinstance(program, Program):
            raise TypeError(f"Executor.run: program must be a Program, got {type(program).__name__}")
        feed = {} if feed is None else feed
        if not isinstance(feed, dict):
            raise TypeError(f"Executor.run: feed must be a dict of name -> array, got {type(feed).__name__}")
        fetch_names = tuple(_fetch_name(f) for f in (fetch_list or ()))
        try:
            sig = tuple([(n, a.shape, a.dtype) for n, a in feed.items()])
            arrays_ok = all(type(a) is np.ndarray and a.flags.c_contiguous for a in feed.values())
        except AttributeError:
            arrays_ok = False
        if not arrays_ok:
            for n, a in feed.items():
                if isinstance(a, np.ma.MaskedArray):  # np.asarray would silently drop the mask
                    raise TypeError(f"feed {n!r} is a masked array: fill it (a.filled(value)) or feed the "
                                    f"mask as its own variable; its mask would be lost")
            feed = {n: np.asarray(a, order="C") for n, a in feed.items()}  # ascontiguousarray would make 0-d 1-d
            sig = tuple([(n, a.shape, a.dtype) for n, a in feed.items()])
        key = (program._uid, program._version, fetch_names, sig)
        with self._lock:  # threads may share an Executor: the caches are changed under a lock
            hit = self._bound.get(key)
            if hit is not None:
                self._bound.move_to_end(key)  # least recently used goes first
                if hit[2] in self._plans:
                    self._plans.move_to_end(hit[2])
        if hit is None:
            hit = self._bind(program, feed, sig, fetch_names)
            with self._lock:
                self._bound[key] = hit
                while len(self._bound) > _MAX_BOUND:
                    self._bound.popitem(last=False)
        return hit[0], hit[1], feed

    def _bind(self, program, feed, sig, fetch_names):
        """(plan, step function, plan's key) for feed shapes not seen yet: the plan of their symbolic signature
        bound to this batch size, else a plan compiled for them."""
        batch = _check_feed(program, feed)
        sym = tuple([(n, shape[:batch[n][0]] + (None,) + shape[batch[n][0] + 1:] if n in batch else shape, dtype)
                     for n, shape, dtype in sig])
        skey = (program._uid, program._version, fetch_names, sym, any(b == 1 for _, b in batch.values()))
        plan = self._cached(skey)
        step = None if plan is None else plan.step_for(sig)
        if step is None and plan is not None:  # this plan cannot serve these shapes: one of their own
            skey += (sig,)
            plan = self._cached(skey)
            step = None if plan is None else plan._step
        if step is None:
            plan = Plan(program, sig, fetch_names, self.compile_options)
            step = plan._step
            with self._lock:
                self._plans[skey] = plan
                while len(self._plans) > _MAX_PLANS:
                    old = self._plans.popitem(last=False)[1]
                    for k in [k for k, hit in self._bound.items() if hit[0] is old]:
                        del self._bound[k]  # an evicted plan is not kept alive by its bindings
        return plan, step, skey

    def _cached(self, skey):
        with self._lock:
            plan = self._plans.get(skey)
            if plan is not None:
                self._plans.move_to_end(skey)
            return plan

    def close(self):
        with self._lock:
            self._plans.clear()
            self._bound.clear()


def _check_feed(program: Program, feed: dict) -> dict:
    """Feed names, dtypes and shapes against the data variables; raises before anything runs.
    Returns {name: (dimension, batch size)} of the feeds whose variable declares a -1 dimension: the
    first one is the batch (dimension 0 usually, 1 for a time-major sequence); sizes must agree."""
    block = program.global_block()
    batch = {}
    for name, value in feed.items():
        var = block.vars.get(name)
        if var is None:
            raise ValueError(f"feed {name!r} is not a variable of the program's global block")
        if value.dtype != var.dtype:
            raise TypeError(f"feed {name!r}: dtype {value.dtype} does not match the variable's {var.dtype} "
                            f"(feeds are never cast: use .astype({var.dtype.name!r}))")
        if value.ndim != len(var.shape) or any(d != -1 and d != s for d, s in zip(var.shape, value.shape)):
            raise ValueError(f"feed {name!r}: shape {list(value.shape)} does not match the variable's "
                             f"{list(var.shape)} (-1 = any batch size)")
        if any(d == -1 and s == 0 for d, s in zip(var.shape, value.shape)):
            raise ValueError(f"feed {name!r}: shape {list(value.shape)} has batch size 0; the executor runs "
                             f"batches of at least one example (skip empty batches)")
        if -1 in var.shape:
            dim = list(var.shape).index(-1)
            batch[name] = (dim, value.shape[dim])
    if len({b for _, b in batch.values()}) > 1:
        shapes = ", ".join(f"{n!r} {list(feed[n].shape)} (batch dimension {d})" for n, (d, _) in batch.items())
        raise ValueError(f"feeds disagree on the batch size (the first -1 dimension of each variable): {shapes}; "
                         f"every batch-sized feed of one run must have the same number of examples")
    return batch
