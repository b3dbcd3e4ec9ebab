"""Pass `codegen`: one straight-line Python function per plan (torch.fx's `recompile()` idea).

    def _step(F, A):            # F: the feed dict, A: the scope's value mapping
        v0 = F['x']
        v1 = A['fc_0.w_0']
        v2 = K0(v0, v1)         # K<i>: step i's bound kernel
        del v0
        ...
        A['fc_0.w_0'] = v7      # persistable results back to the scope
        return [v5]             # fetches (a persistable one is copied)

Each value is deleted after its last use. With `options.check_nan_inf` a line `N<i>((outs), I)`
follows each kernel call, `I` the inputs the op saw (see `nan_check`), and the persistables the plan
updates are read as copies. A folded step's inputs are accumulated into `acc<i>` as
they are made (`F<i>` is its fold step). A stack assembled in place (stack_into) is a buffer `B<k>`
allocated before the first kernel that writes a slice of it (`out=[B<k>[t]]`). The source is kept as
`PlanIR.source` (public as `Plan.source`) and `line_to_op` maps each line number back to its op for
error messages.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np

from .inplace import reusable
from .ir import PlanIR
from .nan_check import checker

_plan_ids = itertools.count()


class _Names:
    """Python local names for program values: v0, v1, ... in order of first mention."""

    def __init__(self):
        self.local = {}

    def __call__(self, name: str) -> str:
        if name not in self.local:
            self.local[name] = f"v{len(self.local)}"
        return self.local[name]


def codegen(ir: PlanIR, options) -> PlanIR:
    steps = ir.steps
    ref = _Names()
    last_use, producer, folds = {}, {}, {}
    for i, step in enumerate(steps):
        for n in step.in_names + step.out_names:
            last_use[n] = i
        for n in step.out_names:
            producer.setdefault(n, i)
    for i, step in enumerate(steps):
        if step.fold is not None:
            for n in step.in_names:
                folds.setdefault(producer[n], []).append((i, n))  # producer step -> [(folding step, input)]
    keep_alive = set(ir.fetch_names) | set(ir.persist_out)
    ir.assembled, allocate_at = {}, {}  # stack result -> buffer number; step index -> results to allocate
    for i, step in enumerate(steps):
        for entry in step.into:
            if entry is not None and entry[0] not in ir.assembled:
                k = ir.assembled[entry[0]] = len(ir.assembled)
                allocate_at.setdefault(i, []).append(entry[0])
    lines = ["def _step(F, A):"]
    lines += [f"    {ref(n)} = F[{n!r}]" for n in ir.feed]
    check = getattr(options, "check_nan_inf", False)
    updated = set(ir.persist_out) if check else set()  # the scope keeps these until the last line
    lines += [f"    {ref(n)} = A[{n!r}]{'.copy()' if n in updated else ''}" for n in ir.scope_inputs]
    env, line_to_op, started = {}, {}, set()
    for i, step in enumerate(steps):
        ins, outs = step.in_names, step.out_names
        targets = ", ".join(ref(n) for n in outs)
        for name in allocate_at.get(i, ()):  # a stack's buffer, before the first op writing into it
            k = ir.assembled[name]
            env["EMPTY"], env[f"SH{k}"], env[f"T{k}"] = np.empty, ir.metas[name].shape, ir.metas[name].dtype
            lines.append(f"    B{k} = EMPTY(SH{k}, T{k})  # {name}, stacked in place")
        if step.assembles:
            k = ir.assembled[outs[0]]
            lines.append(f"    {targets} = B{k}  # stack: its inputs were written into it")
            lines.append(f"    del B{k}")
        elif step.fold is None:
            env[f"K{i}"] = step.kernel
            args = [ref(n) for n in ins]
            if step.reuse or step.into:  # the scope's old arrays (when they may be reused) and stack slices
                reuse, into = step.reuse or [None] * len(outs), step.into or [None] * len(outs)
                env["R"] = reusable
                for n in reuse:
                    if n is not None:
                        env[f"T_{ir.metas[n].dtype.name}"] = ir.metas[n].dtype
                args.append("out=[" + ", ".join(
                    f"B{ir.assembled[s[0]]}[{s[1]}]" if s is not None else "None" if n is None else
                    f"R(A, {n!r}, {ir.metas[n].shape!r}, T_{ir.metas[n].dtype.name})"
                    for n, s in zip(reuse, into)) + "]")
            if check:  # the inputs as the op saw them (an op may write a name it reads)
                lines.append(f"    I = ({''.join(ref(n) + ', ' for n in ins)})")
            lines.append(f"    {targets} = K{i}({', '.join(args)}){step.note}")
        else:  # its inputs were folded into acc{i} as they were made
            lines.append(f"    {targets} = acc{i}")
        line_to_op[len(lines)] = step.op
        if check and step.fold is None:
            env[f"N{i}"] = checker(step, i)
            lines.append(f"    N{i}(({targets},), I)")
            line_to_op[len(lines)] = step.op
        dead = [ref(n) for n in dict.fromkeys(ins + outs)
                if last_use[n] == i and n not in keep_alive and not (step.fold is not None and n in ins)]
        if step.fold is not None:
            dead.append(f"acc{i}")
        if dead:
            lines.append(f"    del {', '.join(dead)}")
        for k, n in folds.get(i, ()):
            if k in started:
                env[f"F{k}"] = steps[k].fold
                lines.append(f"    acc{k} = F{k}(acc{k}, {ref(n)})")
            else:
                started.add(k)
                lines.append(f"    acc{k} = {ref(n)}")
            line_to_op[len(lines)] = steps[k].op
            lines.append(f"    del {ref(n)}")
    lines += [f"    A[{n!r}] = {ref(n)}" for n in ir.persist_out]
    persist = set(ir.persist_out) | set(ir.scope_inputs)
    fetched = ", ".join(f"{ref(n)}.copy()" if n in persist else ref(n) for n in ir.fetch_names)
    lines.append(f"    return [{fetched}]")
    ir.source = "\n".join(lines)
    ir.code = _code(ir.source)
    exec(ir.code, env)
    ir.step_fn, ir.line_to_op, ir.env = env["_step"], line_to_op, env
    return ir


PLAN_FILENAME_PREFIX = "<fluidlite plan"


@functools.lru_cache(maxsize=256)
def _code(source: str):
    """The compiled step function source; plans of one program at other batch sizes generate the same
    text (their kernels differ only in `env`), so a new batch size skips Python's compile (~1/4 of a
    plan's build). Failing ops are found through each plan's own line map, not the file name."""
    return compile(source, f"{PLAN_FILENAME_PREFIX} {next(_plan_ids)}>", "exec")
