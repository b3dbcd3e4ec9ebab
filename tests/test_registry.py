"""Every registered op is complete, every gradient rule asks for registered ops with declared slots,
and kernel modules hold only cached Numba functions. Generic: walks the registry, no op list."""
import importlib
import inspect
import pkgutil

import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

import fluidlite as fl
from fluidlite import kernels
from fluidlite.framework import Operator
from fluidlite.registry import NO_GRAD, OPS, REQUIRED, GradContext, grad_var_name

GRAD_OP_SUFFIX = "_grad"

# values tried, in order, for a required attribute of each kind; they fit a minimal instance whose
# variables are 1-D (axis lists name dim 0, so a permutation or reduction over it is valid)
_SAMPLES = {int: [1, 2, 0], float: [1.0, 2.0, 0.5, 0.0], bool: [False, True], str: [""],
            "shape": [(1,)], "ints": [(0,), (1,)], "floats": [(1.0,)], "dtype": ["float32"]}


def _is_grad_op(op_type):
    """`X_grad` differentiates the registered op `X`; it needs no rule of its own."""
    return op_type.endswith(GRAD_OP_SUFFIX) and op_type[:-len(GRAD_OP_SUFFIX)] in OPS


def _forward_ops():
    return sorted(t for t in OPS if not _is_grad_op(t))


def _attr_variants(opdef):
    """Default attributes (required ones filled with a sample that passes their check), then each bool flipped."""
    base = {}
    for name, spec in opdef.attrs.items():
        if spec.default is not REQUIRED:
            continue
        for value in _SAMPLES.get(spec.kind, []):
            try:
                opdef.normalize_attrs({**base, name: value})
            except (TypeError, ValueError) as exc:
                if f"{name!r}" in str(exc):  # the sample itself is rejected: try the next one
                    continue
            base[name] = value
            break
    variants = [opdef.normalize_attrs(base)]
    for name, value in variants[0].items():
        if isinstance(value, bool):
            try:
                variants.append(opdef.normalize_attrs({**base, name: not value}))
            except (TypeError, ValueError):
                pass
    return variants


def _fake_op(opdef, attrs):
    """An instance of the op with one variable per slot (two for duplicable slots), not in any block's op list."""
    block = fl.Program().global_block()

    def names(slot, tag):
        return [f"{slot}.{tag}{k}" for k in range(2 if slot in opdef.duplicable else 1)]

    inputs = {s: names(s, "in") for s in opdef.inputs}
    outputs = {s: names(s, "out") for s in opdef.outputs}
    return Operator(block, opdef.type, inputs, outputs, attrs)


def _wanted_patterns(op):
    """All input gradients wanted, then each input slot alone."""
    every = {s: [grad_var_name(n) for n in ns] for s, ns in op.inputs.items()}
    yield every
    if len(op.inputs) > 1:
        for slot in op.inputs:
            yield {s: (ns if s == slot else [None] * len(ns)) for s, ns in every.items()}


def _check_specs(op, grads_in, specs):
    """Problems with the specs a rule returned for `op` (empty when they are fine)."""
    problems = []
    known = set(op.input_names) | set(op.output_names)
    known |= {grad_var_name(n) for n in op.output_names}
    for spec in specs:
        where = f"{op.type} (attrs {op.attrs}) -> {spec.type}"
        gdef = OPS.get(spec.type)
        if gdef is None:
            problems.append(f"{where}: unregistered op type")
            continue
        for slot in set(spec.inputs) - set(gdef.inputs):
            problems.append(f"{where}: unknown input slot {slot}")
        for slot in set(spec.outputs) - set(gdef.outputs):
            problems.append(f"{where}: unknown output slot {slot}")
        for slot in gdef.inputs:
            given = [n for n in spec.inputs.get(slot, []) if n is not None]
            if not given and slot not in gdef.optional:
                problems.append(f"{where}: required input slot {slot} is not given")
            for n in given:
                if n not in known:
                    problems.append(f"{where}: input {slot} reads {n!r}, which the forward op, its gradients "
                                    f"and earlier grad ops do not provide")
        for slot, outs in spec.outputs.items():
            if any(n is None for n in outs) and slot not in gdef.optional:
                problems.append(f"{where}: output slot {slot} may be dropped but is not optional")
            known.update(n for n in outs if n is not None)
        try:
            gdef.normalize_attrs(spec.attrs)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: bad attributes: {exc}")
    return problems


def test_every_op_has_infer_kernel_and_a_gradient_decision():
    missing = []
    for t, opdef in OPS.items():
        if opdef.infer is None:
            missing.append(f"{t}: no infer")
        if opdef.kernel is None and opdef.lower is None:
            missing.append(f"{t}: no kernel or lower")
        if not _is_grad_op(t) and opdef.grad is None:
            missing.append(f"{t}: no gradient rule and not marked NO_GRAD")
        if opdef.grad is not None and opdef.grad is not NO_GRAD and not callable(opdef.grad):
            missing.append(f"{t}: grad is neither callable nor NO_GRAD")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("op_type", [t for t in _forward_ops() if callable(OPS[t].grad)])
def test_gradient_rule_emits_registered_ops_with_declared_slots(op_type):
    opdef = OPS[op_type]
    problems = []
    for attrs in _attr_variants(opdef):
        op = _fake_op(opdef, attrs)
        output_grads = {s: [grad_var_name(n) for n in ns] for s, ns in op.outputs.items()}
        for k, grads_in in enumerate(_wanted_patterns(op)):
            specs = opdef.grad(GradContext(op, output_grads, grads_in))
            assert isinstance(specs, list), f"{op_type}: the rule returned {specs!r}, not a list of specs"
            assert specs or k > 0, f"{op_type}: the rule appends nothing though every input gradient is wanted"
            problems += _check_specs(op, grads_in, specs)
    assert not problems, "\n".join(dict.fromkeys(problems))


def test_a_forward_op_with_a_rule_has_its_grad_op_when_it_names_one():
    """Rules that follow the `<type>_grad` naming find that op registered (the generic check above covers
    the rest); and every registered `X_grad` op belongs to a forward op that has a rule."""
    orphans = [t for t in OPS if _is_grad_op(t) and not callable(OPS[t[:-len(GRAD_OP_SUFFIX)]].grad)]
    assert not orphans, f"gradient ops whose forward op has no rule: {orphans}"


def _kernel_modules():
    for info in pkgutil.iter_modules(kernels.__path__):
        yield importlib.import_module(f"{kernels.__name__}.{info.name}")


def test_kernel_modules_hold_only_cached_numba_functions():
    problems = []
    modules = list(_kernel_modules())
    assert modules, "no kernel modules found"
    for mod in modules:
        for name, obj in vars(mod).items():
            if name.startswith("__"):
                continue
            if isinstance(obj, Dispatcher):
                if type(getattr(obj, "_cache", None)).__name__ == "NullCache":
                    problems.append(f"{mod.__name__}.{name}: njit without cache=True")
            elif (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod.__name__:
                kind = "class" if inspect.isclass(obj) else "function"
                problems.append(f"{mod.__name__}.{name}: a plain Python {kind}")
            elif isinstance(obj, (list, dict, set, np.ndarray)):
                problems.append(f"{mod.__name__}.{name}: a mutable global")
    assert not problems, "\n".join(problems)


def test_the_checks_above_can_fail():
    """The spec check flags an unregistered type, an unknown slot and a missing required input."""
    from fluidlite.registry import GradOpSpec

    op = _fake_op(OPS["tanh"], {})
    grads = {"X": ["X.in0@GRAD"]}
    bad = [GradOpSpec("no_such_op_grad", {}, {}),
           GradOpSpec("tanh_grad", {"Oops": ["Out.out0"]}, {"X@GRAD": ["X.in0@GRAD"]})]
    problems = _check_specs(op, grads, bad)
    assert any("unregistered" in p for p in problems)
    assert any("unknown input slot Oops" in p for p in problems)
    assert any("required input slot Out" in p for p in problems)
    assert _is_grad_op("tanh_grad") and not _is_grad_op("tanh")


def test_kernels_refuse_a_second_module_name(tmp_path, monkeypatch):
    # imported as top-level `kernels` (a checkout on sys.path), a kernel's disk-cache entry would name a module
    # that fluidlite.kernels cannot load later
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(kernels.__file__).parent.parent))
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    with pytest.raises(ImportError, match="fluidlite.kernels"):
        importlib.import_module("kernels")
    assert "kernels" not in sys.modules
