"""Gradient ops derived from their forward op: `defop(..., grad_reads=..., grad_kernel=...)` lands here.

A differentiable op used to need a forward OpDef, a rule, and a hand-written `<type>_grad` OpDef whose
slots, attributes and inference repeat the forward op's. `derive_grad` builds the last two from the
forward declaration; ops with unusual gradients (other ops, several grad ops) still write `grad=`.
"""
from __future__ import annotations

from .registry import GradOpSpec, OpDef, grad_var_name


def derive_grad(fwd: OpDef, reads=(), kernel=None, kernel_attrs=(), lower=None, infer=None, wrt=None,
                 picks=True, returns_view=False, batch_poly=None, elementwise=None):
    """The `<type>_grad` OpDef and the forward rule that appends it.

    Slots: inputs `reads + <out>@GRAD` for every differentiable output (a zero-filled variable where no
    gradient flows), outputs `<in>@GRAD` for every slot of `wrt` (default: all forward inputs), each
    optional: the rule drops the ones nobody wants and appends nothing when none is wanted. Attributes
    are the forward op's. `infer` maps each output to the slot whose shape and dtype it takes (default:
    the forward input itself, which `reads` must then name), or is an infer function. The kernel is
    called as `kernel(*reads, *out grads, *attrs)` and returns one array per `wrt` slot (a tuple when
    several); with `picks` the binding hands on only the wanted ones (`picks=False`: `grad_lower`
    already looks at `ctx.has_output`). `batch_poly` as for `OpDef`; a `grad_kernel` is batch-polymorphic
    (it only sees arrays and fixed attributes, and picking outputs does not look at shapes). `elementwise`
    is the grad op's `OpDef.elementwise` (fusable)."""
    reads = tuple(reads)
    wrt = tuple(fwd.inputs if wrt is None else wrt)
    known = set(fwd.inputs) | set(fwd.outputs)
    unknown = [s for s in reads + wrt if s not in known]
    if unknown or not set(wrt) <= set(fwd.inputs):
        raise ValueError(f"op '{fwd.type}': grad slots {unknown or list(wrt)} are not slots of the forward op "
                         f"(inputs {list(fwd.inputs)}, outputs {list(fwd.outputs)})")
    douts = tuple(o for o in fwd.outputs if o not in fwd.nondiff_outputs)
    ins = reads + tuple(grad_var_name(o) for o in douts)
    dup = fwd.duplicable | {grad_var_name(s) for s in fwd.duplicable}
    opt = fwd.optional | {grad_var_name(s) for s in fwd.optional}
    outs = tuple(grad_var_name(s) for s in wrt)
    if infer is None or isinstance(infer, dict):
        like = {grad_var_name(s): s for s in wrt} if infer is None else infer
        missing = [o for o in outs if like.get(o) not in ins]
        if missing:
            raise ValueError(f"op '{fwd.type}': grad_infer cannot give {missing} a shape: name slots among "
                             f"the grad op's inputs {list(ins)} (grad_infer={{out: in}}) or pass a function")
        infer = _infer_like(like)
    if (kernel is None) == (lower is None):
        raise ValueError(f"op '{fwd.type}': the derived grad op needs exactly one of grad_kernel and grad_lower")
    if kernel is not None:
        lower = _lower_kernel(kernel, tuple(kernel_attrs))
        batch_poly = True
    if picks and len(outs) > 1:
        lower = _picking(lower, outs)
    gdef = OpDef(fwd.type + "_grad", inputs=ins, outputs=outs, attrs=fwd.attrs, infer=infer, lower=lower,
                 returns_view=returns_view, batch_poly=batch_poly, elementwise=elementwise,
                 duplicable=frozenset(s for s in ins + outs if s in dup),
                 optional=frozenset(outs) | {s for s in ins if s in opt},
                 doc=f"The gradient of `{fwd.type}`: {', '.join(outs)} from {', '.join(ins)}.")

    def rule(g):
        if not any(g.wants(s) for s in wrt):
            return []
        inputs = {s: (g.i(s) if s in fwd.inputs else g.o(s)) for s in reads}
        inputs.update({grad_var_name(o): g.og(o) for o in douts})
        return [GradOpSpec(gdef.type, inputs, {grad_var_name(s): g.ig(s) for s in wrt}, dict(g.attrs))]

    return gdef, rule


def _infer_like(like):
    return lambda ctx: {out: (ctx.shape(src), ctx.dtype(src)) for out, src in like.items()}


def _lower_kernel(kernel, kernel_attrs):
    def lower(ctx):
        consts = tuple(ctx.attrs[a] for a in kernel_attrs)
        return (lambda *ins: kernel(*ins, *consts)) if consts else kernel
    return lower


def _picking(lower, outs):
    """Wraps a lowering whose callable returns every output so the bound one returns only the wanted."""
    def picked(ctx):
        run = lower(ctx)
        wanted = [k for k, slot in enumerate(outs) if ctx.has_output(slot)]
        if len(wanted) == len(outs):
            return run
        if len(wanted) == 1:
            k = wanted[0]
            return lambda *ins: run(*ins)[k]

        def some(*ins):
            result = run(*ins)
            return tuple(result[k] for k in wanted)
        return some
    return picked
