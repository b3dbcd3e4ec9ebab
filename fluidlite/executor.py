"""The Executor: compiles a program once into a plan, then each step only checks feeds and calls kernels.

A plan is straight-line Python generated for one (program version, feed signature, fetch list):
one line per op calling its bound kernel, `del` after each value's last use. See docs/design.md.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np

from ._memory import tune_malloc
from .framework import Program, Variable, default_main_program
from .registry import InferContext, Meta, get_op_def
from .scope import Scope, global_scope

_MAX_PLANS = 64


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
    """One compiled program: a generated step function plus what it reads and writes."""

    def __init__(self, program: Program, feed_sig: tuple, fetch_names: tuple):
        block = program.global_block()
        self.fetch_names = fetch_names
        fed = {name: (shape, dtype) for name, shape, dtype in feed_sig}
        ops = self._needed_ops(block, fed, fetch_names)
        metas = {}  # name -> Meta with concrete shapes
        for name, (shape, dtype) in fed.items():
            metas[name] = Meta(name, shape, dtype)
        produced = set(fed)
        self.scope_inputs = []  # persistable values read from the scope
        steps = []
        for op in ops:
            opdef = get_op_def(op.type)
            ins = {}
            for slot, names in op.inputs.items():
                ins[slot] = []
                for n in names:
                    if n not in metas:
                        var = block._find_var(n)
                        if var is not None and var.is_data:
                            raise ValueError(f"data variable {n!r} must be fed (op '{op.type}' reads it)")
                        if var is None or not var.persistable:
                            raise ValueError(f"op '{op.type}' reads {n!r}, which no op computes and which is "
                                             f"{'not a variable' if var is None else 'not persistable'}: feed it")
                        metas[n] = Meta(n, var.shape, var.dtype)
                        self.scope_inputs.append(n)
                    ins[slot].append(metas[n])
            try:
                inferred = opdef.run_infer(ins, op.attrs)
            except ValueError as exc:
                raise ValueError(f"{exc} [while planning with the fed shapes]") from None
            for slot, names in op.outputs.items():
                for n, (shape, dtype) in zip(names, inferred[slot]):
                    metas[n] = Meta(n, shape, dtype)
                    produced.add(n)
            steps.append((op, opdef, ins))
        ops = [s[0] for s in steps]
        overwritable = self._overwritable(block, ops, set(fed), fetch_names)
        readers = {}
        for op in ops:
            for n in op.input_names:
                readers[n] = readers.get(n, 0) + 1
        bound = []
        for i, (op, opdef, ins) in enumerate(steps):
            ctx = InferContext(opdef, ins, op.attrs, op.outputs, overwritable[i])
            names = [n for ns in op.inputs.values() for n in ns]
            # fold as the inputs are made: each is ours alone (overwritable) and read by this op only
            fold = (opdef.fold(ctx) if opdef.fold is not None and len(names) >= 3 and len(op.inputs) == 1
                    and set(op.inputs) <= overwritable[i] and all(readers[n] == 1 for n in names) else None)
            bound.append((op, opdef.bind(ctx), names, op.output_names, fold))
        steps = bound
        for n in fetch_names:
            if n not in metas:
                var = block._find_var(n)
                if var is None:
                    raise ValueError(f"fetch target {n!r} is not a variable of the program")
                if not var.persistable:
                    raise ValueError(f"fetch target {n!r} is neither fed nor computed by the program")
                metas[n] = Meta(n, var.shape, var.dtype)
                self.scope_inputs.append(n)
        self.persist_out = [n for n in dict.fromkeys(o for op in ops for o in op.output_names)
                            if (v := block._find_var(n)) is not None and v.persistable]
        self.declared = {n: (block._find_var(n).shape, block._find_var(n).dtype) for n in self.persist_out}
        self.metas = metas
        self.ops = ops
        self._step, self._line_to_op = self._generate(list(fed), steps)
        self._checked_scopes = set()

    @staticmethod
    def _overwritable(block, ops, fed, fetch_names) -> list:
        """For each op, the input slots whose buffers its kernel may reuse.

        A persistable may be updated in place by an op writing the same name (optimizer state).
        Any other buffer only if an op of this plan made it, it is not fetched, and neither it nor
        anything sharing memory with it (through a view-returning op) is read after this op."""
        group = {}  # name -> alias group id

        def find(n):
            while group.get(n, n) != n:
                n = group[n]
            return n

        made_here = set()
        for op in ops:
            made_here.update(op.output_names)
            if get_op_def(op.type).returns_view:
                for o in op.output_names:
                    for n in op.input_names:
                        group[find(o)] = find(n)
        aliased = {find(n) for n in group}
        last_read = {}
        for i, op in enumerate(ops):
            for n in op.input_names:
                last_read[find(n)] = i
        fetched = {find(n) for n in fetch_names}
        result = []
        for i, op in enumerate(ops):
            outs = set(op.output_names)
            slots = set()
            for slot, names in op.inputs.items():
                ok = True
                for n in names:
                    var = block._find_var(n)
                    if var is not None and var.persistable:
                        ok &= n in outs
                    else:
                        g = find(n)
                        ok &= (n in made_here and n not in fed and g not in fetched
                               and (last_read[g] == i or (n in outs and g not in aliased)) and names.count(n) == 1
                               and sum(n in ns for ns in op.inputs.values()) == 1)
                if ok and names:
                    slots.add(slot)
            result.append(frozenset(slots))
        return result

    @staticmethod
    def _needed_ops(block, fed, fetch_names) -> list:
        """Ops that the fetches or a persistable write need, in program order; fed values are not recomputed."""
        needed = set(fetch_names)
        keep = []
        for op in reversed(block.ops):
            outs = op.output_names
            writes_persistable = any((v := block._find_var(n)) is not None and v.persistable for n in outs)
            if all(n in fed for n in outs):
                continue
            if writes_persistable or any(n in needed for n in outs):
                keep.append(op)
                needed.update(op.input_names)
        keep.reverse()
        return keep

    def _generate(self, feed_names, steps):
        local = {}

        def ref(name):
            if name not in local:
                local[name] = f"v{len(local)}"
            return local[name]

        last_use = {}
        for i, (_, _, ins, outs, _) in enumerate(steps):
            for n in ins + outs:
                last_use[n] = i
        producer = {}
        for j, (_, _, _, outs, _) in enumerate(steps):
            for n in outs:
                producer.setdefault(n, j)
        folds = {}  # producer step -> [(folding step, input name)]
        for i, (_, _, ins, _, fold) in enumerate(steps):
            if fold is not None:
                for n in ins:
                    folds.setdefault(producer[n], []).append((i, n))
        keep_alive = set(self.fetch_names) | set(self.persist_out)
        lines = ["def _step(F, A):"]
        for n in feed_names:
            lines.append(f"    {ref(n)} = F[{n!r}]")
        for n in self.scope_inputs:
            lines.append(f"    {ref(n)} = A[{n!r}]")
        env = {}
        line_to_op = {}
        started = set()
        for i, (op, kernel, ins, outs, fold) in enumerate(steps):
            targets = ", ".join(ref(n) for n in outs)
            if fold is None:
                env[f"K{i}"] = kernel
                lines.append(f"    {targets} = K{i}({', '.join(ref(n) for n in ins)})")
            else:  # its inputs were folded into acc{i} as they were made
                lines.append(f"    {targets} = acc{i}")
            line_to_op[len(lines)] = op
            dead = [ref(n) for n in dict.fromkeys(ins + outs)
                    if last_use[n] == i and n not in keep_alive and not (fold is not None and n in ins)]
            if fold is not None:
                dead.append(f"acc{i}")
            if dead:
                lines.append(f"    del {', '.join(dead)}")
            for k, n in folds.get(i, ()):
                if k in started:
                    env[f"F{k}"] = steps[k][4]
                    lines.append(f"    acc{k} = F{k}(acc{k}, {ref(n)})")
                else:
                    started.add(k)
                    lines.append(f"    acc{k} = {ref(n)}")
                line_to_op[len(lines)] = steps[k][0]
                lines.append(f"    del {ref(n)}")
        for n in self.persist_out:
            lines.append(f"    A[{n!r}] = {ref(n)}")
        persist = set(self.persist_out) | set(self.scope_inputs)
        fetched = ", ".join(f"{ref(n)}.copy()" if n in persist else ref(n) for n in self.fetch_names)
        lines.append(f"    return [{fetched}]")
        source = "\n".join(lines)
        filename = f"<fluidlite plan {id(self):x}>"
        exec(compile(source, filename, "exec"), env)
        self.source = source
        return env["_step"], line_to_op

    def _check_scope(self, scope: Scope):
        arrays = scope._arrays
        for n in self.scope_inputs:
            value = arrays.get(n)
            if value is None:
                raise ValueError(f"variable {n!r} has no value in the scope: run the startup program first")
            m = self.metas[n]
            if value.dtype != m.dtype or len(value.shape) != len(m.shape) or any(
                    d != -1 and d != s for d, s in zip(m.shape, value.shape)):
                raise ValueError(f"variable {n!r} in the scope is {value.dtype}{list(value.shape)}, "
                                 f"the program declares {m.dtype}{list(m.shape)}")
        scope._declared.update(self.declared)
        self._checked_scopes.add(id(scope))

    def run(self, feed: dict, scope: Scope) -> list:
        if id(scope) not in self._checked_scopes:
            self._check_scope(scope)
        try:
            return self._step(feed, scope._arrays)
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
            if tb.tb_frame.f_code.co_name == "_step" and tb.tb_frame.f_code.co_filename.startswith("<fluidlite plan"):
                return self._line_to_op.get(tb.tb_lineno)
            tb = tb.tb_next
        return None


class Executor:
    """Runs programs. Plans are cached per (program version, feed signature, fetch list)."""

    def __init__(self, place=None):
        self.place = place or CPUPlace()
        self._plans: OrderedDict = OrderedDict()
        tune_malloc()

    def run(self, program=None, feed=None, fetch_list=None, scope=None, return_numpy=True):
        """Run `program`; returns the fetched values as numpy arrays (copies)."""
        program = default_main_program() if program is None else program
        if not isinstance(program, Program):
            raise TypeError(f"Executor.run: program must be a Program, got {type(program).__name__}")
        scope = global_scope() if scope is None else scope
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
            feed = {n: np.asarray(a, order="C") for n, a in feed.items()}  # ascontiguousarray would make 0-d 1-d
            sig = tuple([(n, a.shape, a.dtype) for n, a in feed.items()])
        key = (program._uid, program._version, fetch_names, sig)
        plan = self._plans.get(key)
        if plan is None:
            _check_feed(program, feed)
            plan = Plan(program, sig, fetch_names)
            self._plans[key] = plan
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        return plan.run(feed, scope)

    def close(self):
        self._plans.clear()


def _check_feed(program: Program, feed: dict):
    """Feed names, dtypes and shapes against the data variables; raises before anything runs."""
    block = program.global_block()
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
