"""The op registry: every op type is declared once, as an `OpDef`.

An `OpDef` holds an op's slots, attributes, shape/dtype inference, the kernel it
binds and its gradient rule. Nothing else in the framework knows about op types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

GRAD_SUFFIX = "@GRAD"


def grad_var_name(name: str) -> str:
    """Name of the gradient of variable `name` (`"x"` -> `"x@GRAD"`)."""
    return name + GRAD_SUFFIX


class _NoGrad:
    """Marks an op as not differentiable (its outputs stop gradients)."""

    def __repr__(self):
        return "NO_GRAD"


NO_GRAD = _NoGrad()

_ATTR_TYPES = {
    int: (int, np.integer),
    float: (float, int, np.floating, np.integer),
    bool: (bool, np.bool_),
    str: (str,),
}


@dataclass(frozen=True)
class Attr:
    """An attribute: its Python type (int, float, bool, str, list, 'ints', 'floats', 'dtype', 'shape'),
    default (`REQUIRED` if it has none) and an optional check returning an error message or None."""

    kind: Any
    default: Any = None
    check: Callable[[Any], str | None] | None = None


REQUIRED = object()


def _coerce(op_type: str, name: str, spec: Attr, value):
    kind = spec.kind
    bad = TypeError(f"{op_type}: attribute {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if kind in (int, float, bool, str):
        if isinstance(value, bool) and kind in (int, float):
            raise bad
        if not isinstance(value, _ATTR_TYPES[kind]):
            raise bad
        value = kind(value)
        if kind is float and not math.isfinite(value) and spec.check is None:  # a check may allow +-inf
            raise ValueError(f"{op_type}: attribute {name!r} is {value} (it must be finite)")
    elif kind in ("ints", "shape"):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        ):
            raise bad
        value = tuple(int(v) for v in value)
    elif kind == "floats":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, _ATTR_TYPES[float])
                                                           and not isinstance(v, bool) for v in value):
            raise bad
        value = tuple(float(v) for v in value)
        if spec.check is None and not all(map(math.isfinite, value)):
            raise ValueError(f"{op_type}: attribute {name!r}={list(value)} holds a non-finite value")
    elif kind == "dtype":
        try:
            value = np.dtype(value).name
        except TypeError:
            raise bad from None
    if spec.check is not None:
        msg = spec.check(value)
        if msg:
            raise ValueError(f"{op_type}: attribute {name!r}={value!r}: {msg}")
    return value


@dataclass(frozen=True)
class Meta:
    """What inference and lowering know of a variable: name, shape (-1 = unknown batch) and dtype."""

    name: str
    shape: tuple
    dtype: np.dtype


class InferContext:
    """Read-only view of an op's inputs and attributes for `OpDef.infer` and `OpDef.lower`."""

    def __init__(self, opdef: "OpDef", inputs: dict, attrs: dict, outputs: dict | None = None,
                 overwritable: frozenset = frozenset()):
        self.opdef = opdef
        self.inputs = inputs  # slot -> list[Meta]
        self.attrs = attrs
        self.outputs = outputs or {}  # slot -> list[name]; lowering uses it to skip absent outputs
        # input slots whose buffers the kernel may overwrite (dead after this op, not aliased, not fed)
        self.overwritable = overwritable

    def has(self, slot: str) -> bool:
        return bool(self.inputs.get(slot))

    def metas(self, slot: str) -> list:
        return self.inputs.get(slot, [])

    def meta(self, slot: str, i: int = 0) -> Meta:
        return self.inputs[slot][i]

    def shape(self, slot: str, i: int = 0) -> tuple:
        return self.inputs[slot][i].shape

    def dtype(self, slot: str, i: int = 0) -> np.dtype:
        return self.inputs[slot][i].dtype

    def has_output(self, slot: str) -> bool:
        return bool(self.outputs.get(slot))

    def error(self, message: str, *slots: str) -> ValueError:
        """A ValueError naming the op, and each given slot's variables with their shapes and dtypes."""
        parts = []
        for slot in slots or tuple(self.inputs):
            for m in self.inputs.get(slot, []):
                parts.append(f"{slot}={m.name!r} shape={list(m.shape)} dtype={m.dtype}")
        where = f" ({'; '.join(parts)})" if parts else ""
        return ValueError(f"op '{self.opdef.type}': {message}{where}")

    def expect_dtype(self, *slots: str, kinds="f"):
        """Checks that the given slots share one dtype of the given numpy kinds ('f' float, 'i' int)."""
        first = None
        for slot in slots:
            for m in self.inputs.get(slot, []):
                if m.dtype.kind not in kinds:
                    raise self.error(f"slot {slot} needs a {'float' if kinds == 'f' else kinds} dtype, got {m.dtype}", slot)
                if first is None:
                    first = m.dtype
                elif m.dtype != first:
                    raise self.error(f"dtypes differ ({first} vs {m.dtype})", *slots)
        return first


@dataclass
class GradContext:
    """What a gradient rule sees: the forward op and the names of the gradients around it."""

    op: Any  # the forward Operator
    output_grads: dict  # slot -> list of names (a zero-filled var where no gradient flows)
    input_grads: dict  # slot -> list of names, None where no gradient is wanted

    @property
    def attrs(self):
        return self.op.attrs

    def i(self, slot):
        return self.op.inputs.get(slot, [])

    def o(self, slot):
        return self.op.outputs.get(slot, [])

    def og(self, slot):
        return self.output_grads.get(slot, [])

    def ig(self, slot):
        return self.input_grads.get(slot, [])

    def wants(self, slot) -> bool:
        return any(n is not None for n in self.input_grads.get(slot, []))


@dataclass
class GradOpSpec:
    """One gradient op a rule asks for. Output names that are None are dropped."""

    type: str
    inputs: dict
    outputs: dict
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Elementwise:
    """An op as a function of one element of each input, for the fuse pass (fluidlite/compiler/fuse.py).

    - `fn`: an `@njit(inline="always")` scalar function in `fluidlite.kernels`: the one the op's own
      kernel calls per element, so a fused chain computes bit for bit what the unfused ops compute;
    - `args`: fn's arguments. An input slot name (str) stands for that input's element; an int or bool
      is baked into the fused kernel as a literal (op codes, so the branch on it folds away); a float or
      NumPy float is passed at run time with its type (chains differing only in constants share a kernel);
    - `outs`: None when fn returns the op's one output; else, per output variable of the op (in order),
      the index of its value in the tuple fn returns;
    - `shapes`: slot -> the input's shape padded to the output's rank, 1 where it broadcasts (Paddle's
      `axis`); None: NumPy's rule (trailing dimensions aligned).
    """

    fn: Any
    args: tuple
    outs: tuple | None = None
    shapes: dict | None = None


@dataclass
class OpDef:
    """Everything about one op type.

    - `infer(ctx) -> {slot: [(shape, dtype), ...]}` (a bare `(shape, dtype)` stands for a one-var list).
    - `kernel` + `kernel_attrs`: the Numba function called as `kernel(*inputs, *attr_values)`;
      or `lower(ctx) -> callable(*inputs)` for ops that specialise on shapes at plan time.
      Inputs arrive flattened in slot order; the callable returns one array, or a tuple when the
      op has several outputs.
    - `grad(GradContext) -> [GradOpSpec]`, or `NO_GRAD`, or None (no rule: backward raises).
    - `returns_view`: the kernel may return its input or a view of it (reshape); the executor then
      never lets a later kernel overwrite either buffer while the other is alive.
    - `disjoint_views`: each output is a view of its own part of the one input (unstack): once the input
      is dead, the alias pass lets each output be overwritten on its own.
    - `fold`: for an op that reduces its one (duplicable) input slot with an associative in-place
      step, `fold(ctx)` returns that step `f(acc, x) -> acc`; the executor may then accumulate each
      input as soon as it is made (cache-hot, freed at once) instead of keeping all until the op.
    - `batch(attrs, batched)`: when the inputs in slots `batched` gain one leading dimension (the
      same op applied to every slice), the attributes that compute it in one op; None if it cannot.
      StaticRNN uses it to run step ops that read no state once over the whole sequence.
    - `writes_out`: the lowered callable accepts a keyword `out`, a list with one entry per output
      variable: an array of the output's shape and dtype to write the result into (and return as that
      output), or None. The executor passes the scope's old array of a persistable output (see
      compiler/inplace.py) or a slice of a stack's buffer (compiler/stack_into.py).
    - `batch_poly`: the callable `lower(ctx)` returns works for any batch size (it reads every size
      from its arrays at run time, chooses serial or parallel there too), so a plan reuses it when
      only the batch size changes. True, False, or `batch_poly(ctx) -> bool`; None (the default)
      means True for a plain `kernel` (it only ever sees arrays and fixed attributes) and False for
      `lower`: the plan then lowers the op again for each new batch size (compiler/rebatch.py).
    - `elementwise(ctx) -> Elementwise | None`: the op computes each output element from the inputs'
      elements at the same (broadcast) position; the fuse pass may then fuse it with its neighbours into
      one generated kernel. None for an instance it cannot describe (a broadcast needing a reduction).
    Lowering sees `ctx.overwritable`: input slots whose buffers the kernel may reuse for its output.
    """

    type: str
    inputs: tuple = ()
    outputs: tuple = ("Out",)
    attrs: dict = field(default_factory=dict)
    infer: Callable | None = None
    kernel: Callable | None = None
    kernel_attrs: tuple = ()
    lower: Callable | None = None
    grad: Any = None
    duplicable: frozenset = frozenset()  # slots holding any number of variables
    optional: frozenset = frozenset()  # slots that may be empty
    returns_view: bool = False  # the kernel may return a view of (or the same array as) an input
    disjoint_views: bool = False  # each output views its own part of the one input (unstack)
    fold: Callable | None = None  # fold(ctx) -> f(acc, x) -> acc: the op is a fold of its one slot
    batch: Callable | None = None  # batch(attrs, batched_slots) -> attrs with one more leading dim, or None
    nondiff_outputs: frozenset = frozenset()  # output slots no gradient flows back through (saved values)
    random: bool = False  # draws random numbers: gets a State/StateOut stream when appended (random_state)
    writes_out: bool = False  # the lowered callable takes `out=[array or None per output var]` and writes there
    batch_poly: Any = None  # True/False/callable(ctx): the lowered callable works for any batch size
    elementwise: Callable | None = None  # elementwise(ctx) -> Elementwise or None: fusable (compiler/fuse.py)
    doc: str = ""

    def is_batch_poly(self, ctx: InferContext) -> bool:
        """Whether `bind(ctx)` (and `fold(ctx)`) work for every batch size, not only `ctx`'s shapes."""
        poly = self.batch_poly
        if poly is None:
            return self.lower is None
        return bool(poly(ctx)) if callable(poly) else bool(poly)

    def bind(self, ctx: InferContext) -> Callable:
        """The callable the executor runs for one op instance."""
        if self.lower is not None:
            return self.lower(ctx)
        kernel = self.kernel
        consts = tuple(ctx.attrs[a] for a in self.kernel_attrs)
        if not consts:
            return kernel
        return lambda *ins: kernel(*ins, *consts)

    def normalize_attrs(self, attrs: dict | None) -> dict:
        attrs = dict(attrs or {})
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"op '{self.type}': unknown attribute(s) {sorted(unknown)}; known: {sorted(self.attrs)}")
        out = {}
        for name, spec in self.attrs.items():
            if name in attrs and attrs[name] is not None:
                out[name] = _coerce(self.type, name, spec, attrs[name])
            elif spec.default is REQUIRED:
                raise ValueError(f"op '{self.type}': attribute {name!r} is required")
            else:
                out[name] = spec.default
        return out

    def run_infer(self, inputs: dict, attrs: dict) -> dict:
        """Output slot -> list of (shape, dtype); raises ValueError naming the op on a mismatch."""
        result = self.infer(InferContext(self, inputs, attrs))
        out = {}
        for slot, val in result.items():
            if not isinstance(val, list):
                val = [val]
            out[slot] = [(tuple(int(d) for d in s), np.dtype(d)) for s, d in val]
        return out


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.type in OPS:
        raise ValueError(f"op type '{opdef.type}' is registered twice")
    if opdef.infer is None or (opdef.kernel is None and opdef.lower is None):
        raise ValueError(f"op '{opdef.type}' needs infer and a kernel (or lower)")
    OPS[opdef.type] = opdef
    return opdef


_GRAD_KEYS = ("grad_reads", "grad_kernel", "grad_kernel_attrs", "grad_lower", "grad_infer", "grad_wrt",
              "grad_picks", "grad_returns_view", "grad_batch_poly", "grad_elementwise")


def defop(type: str, **kw) -> OpDef:
    """Declare and register an op type (see `OpDef`).

    With `grad_reads` (the forward slots its gradient reads) plus `grad_kernel` (or `grad_lower`),
    `defop` also registers `<type>_grad` itself (see `derived_grad.derive_grad`) and sets the rule that appends it.
    """
    derived = {k[len("grad_"):]: kw.pop(k) for k in _GRAD_KEYS if k in kw}
    for key in ("duplicable", "optional", "nondiff_outputs"):
        if key in kw:
            kw[key] = frozenset(kw[key])
    if not derived:
        return register(OpDef(type, **kw))
    if kw.get("grad") is not None:
        raise ValueError(f"op '{type}': give either grad= or the derived grad_* arguments, not both")
    from .derived_grad import derive_grad

    gdef, kw["grad"] = derive_grad(OpDef(type, **kw), **derived)
    opdef = register(OpDef(type, **kw))
    register(gdef)
    return opdef


def get_op_def(type: str) -> OpDef:
    try:
        return OPS[type]
    except KeyError:
        raise ValueError(f"unknown op type '{type}'") from None
