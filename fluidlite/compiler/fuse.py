"""Pass `fuse`: runs of consecutive elementwise steps become one generated Numba kernel.

An op is fusable when its OpDef declares `elementwise` (its per-element function, see
`registry.Elementwise`); nothing here knows op types. Consecutive fusable steps whose outputs have
one shape form a group (at most `MAX_OPS`): a bias add + activation, an activation's gradient, a
residual add + scale, a dropout mask multiply, a clip. Each input of the group is either the full
shape, a row repeated over the leading dims ([N] against [B, N]), a column ([B, 1]) or a scalar;
all rows and columns of a group must cut the output at the same place. The group runs where its
last member ran (members are consecutive, so no other step's reads or buffer reuse move) and
materialises only the values read after it, fetched or persistable: the others live in registers.

Not fused: a step that folds (`fold` pass), writes a persistable into the scope's old array
(`inplace`), writes a name it reads, or writes a name another step writes; a single fusable step
keeps its own kernel (no compile for nothing). Off under `check_nan_inf` (the NaN report needs
every op's output) and with `CompileOptions(disabled={"fuse"})` / FLUIDLITE_PASSES_OFF=fuse.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..ops import common
from ..shapes import numel
from .fused_kernel import COL, FULL, ROW, SCALAR, Chain, bind, load, render
from .ir import FusedStep, PlanIR

MAX_OPS = 32  # ops per generated kernel: bounds its compile time (a longer chain is cut in pieces)


def classify(padded: tuple, out: tuple):
    """How an input of padded shape `padded` meets output shape `out`: (kind, C) with C the column
    count of the (R, C) view it needs (None for full and scalar), or None if it is no such pattern."""
    if len(padded) != len(out) or any(a != 1 and a != d for a, d in zip(padded, out)):
        return None
    dims = [k for k, d in enumerate(out) if d != 1]
    full = [padded[k] != 1 for k in dims]
    if all(full):
        return FULL, None
    if not any(full):
        return SCALAR, None
    first = full.index(True)
    if all(full[first:]):  # broadcast dims, then full ones: a row repeated over the leading dims
        return ROW, numel(out[dims[first]:])
    cut = full.index(False)
    if not any(full[cut:]):  # full dims, then broadcast ones: a column repeated along each row
        return COL, numel(out[dims[cut]:])
    return None


def _padded(shape: tuple, rank: int):
    shape = tuple(shape)
    while len(shape) > rank and shape[0] == 1:
        shape = shape[1:]
    return None if len(shape) > rank else (1,) * (rank - len(shape)) + shape


class _Group:
    """Consecutive fusable steps being collected, and the chain they render to."""

    def __init__(self, ir: PlanIR):
        self.ir, self.steps, self.chain = ir, [], Chain()
        self.shape, self.cut = None, None
        self.arg_index, self.arg_names, self.tmp = {}, [], {}

    def try_add(self, step, decl) -> bool:
        """Add `step` if it fits this group (same output shape, compatible broadcasts); else change nothing."""
        metas = [self.ir.metas[n] for n in step.out_names]
        shape = metas[0].shape if self.shape is None else self.shape
        if len(self.steps) >= MAX_OPS or any(m.shape != shape for m in metas):
            return False
        refs, new_args, cut = [], [], self.cut
        for a in decl.args:
            if not isinstance(a, str):
                if isinstance(a, (bool, int, np.bool_, np.integer)):
                    refs.append(("lit", a.item() if isinstance(a, np.generic) else a))
                else:
                    refs.append(("par", a))
                continue
            names = step.op.inputs.get(a, ())
            if len(names) != 1:
                return False
            name = names[0]
            if name in self.tmp:
                refs.append(("tmp", self.tmp[name]))
                continue
            meta = self.ir.metas[name]
            padded = decl.shapes[a] if decl.shapes and a in decl.shapes else _padded(meta.shape, len(shape))
            how = None if padded is None else classify(tuple(padded), shape)
            if how is None or (how[1] is not None and cut is not None and how[1] != cut):
                return False
            cut = how[1] if how[1] is not None else cut
            key = (name, how[0])
            if key not in self.arg_index and key not in new_args:
                new_args.append(key)
            refs.append(("arg", key))
        # fits: commit
        self.shape, self.cut = shape, cut
        for key in new_args:
            self.arg_index[key] = len(self.chain.args)
            self.chain.args.append((key[1], self.ir.metas[key[0]].dtype.name))
            self.arg_names.append(key[0])
        chain_refs = []
        for what, v in refs:
            if what == "arg":
                chain_refs.append(("arg", self.arg_index[v]))
            elif what == "par":
                chain_refs.append(("par", len(self.chain.params)))
                self.chain.params.append((np.dtype(type(v)).name if isinstance(v, np.floating) else "float64", v))
            else:
                chain_refs.append((what, v))
        outs = []
        for k, n in enumerate(step.out_names):
            self.tmp[n] = self.chain.ntmp
            outs.append((self.chain.ntmp, None if decl.outs is None else decl.outs[k]))
            self.chain.ntmp += 1
        self.chain.calls.append((decl.fn, chain_refs, outs, [m.dtype.name for m in metas]))
        self.steps.append(step)
        return True

    def finish(self, read_later: set):
        """The FusedStep, or the members unchanged when there is nothing to fuse."""
        if len(self.steps) < 2:
            return self.steps
        ir, keep = self.ir, set(self.ir.fetch_names) | set(self.ir.persist_out)
        made = [n for s in self.steps for n in s.out_names]
        outs = [n for n in made if n in read_later or n in keep or ir.is_persistable(n)] or self.steps[-1].out_names
        donor = next((j for j, (n, (kind, _)) in enumerate(zip(self.arg_names, self.chain.args))
                      if kind == FULL and ir.metas[n].shape == self.shape), None)
        if donor is None:  # no argument has the output's shape to lend (size-1 dims placed differently)
            return self.steps
        chain = self.chain
        chain.donor, chain.results = donor, [self.tmp[n] for n in outs]
        values = [v for _, v in chain.params]
        chain.params = [t for t, _ in chain.params]
        text, fns = render(chain)
        last = self.steps[-1]
        # batch-polymorphic: sizes, the row split and serial-or-parallel are all read from the arrays
        return [FusedStep(last.op, last.opdef, inputs=last.inputs, ctx=last.ctx, poly=True,
                          kernel=bind(load(text, fns), values, donor, common.parallel_min()), members=list(self.steps),
                          ins=list(self.arg_names), outs=outs)]


def _fusable(ir: PlanIR, step, writers: Counter):
    """The step's `Elementwise` declaration if it may join a group, else None."""
    decl_fn = step.opdef.elementwise
    if decl_fn is None or step.fold is not None or step.reuse or step.ctx is None:
        return None
    outs = step.out_names
    if not outs or set(outs) & set(step.in_names) or any(writers[n] != 1 for n in outs):
        return None
    if any(ir.metas[n].dtype.kind != "f" for n in outs):
        return None
    return decl_fn(step.ctx)


def fuse(ir: PlanIR, options) -> PlanIR:
    if "fuse" in options.disabled:
        return ir
    steps = ir.steps
    writers = Counter(n for s in steps for n in s.out_names)
    last_read = {}
    for i, s in enumerate(steps):
        for n in s.in_names:
            last_read[n] = i
    new, group = [], None

    def close(end):  # the group covers steps[start:end]; values read at or after `end` are materialised
        later = {n for n, i in last_read.items() if i >= end}
        new.extend(group.finish(later))

    for i, step in enumerate(steps):
        decl = _fusable(ir, step, writers)
        if decl is not None and group is not None and group.try_add(step, decl):
            continue
        if group is not None:
            close(i)
            group = None
        if decl is not None:
            group = _Group(ir)
            if group.try_add(step, decl):
                continue
            group = None
        new.append(step)
    if group is not None:
        close(len(steps))
    ir.steps = new
    return ir
