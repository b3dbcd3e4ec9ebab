"""The IR: Program -> Blocks -> Variables and Operators."""
from __future__ import annotations

import contextlib
import copy
import itertools

import numpy as np

from . import random_state, unique_name
from .registry import get_op_def
from .shapes import dims_match
from .variable import (  # noqa: F401  (re-exported: the IR's public home is fluidlite.framework)
    ROLE_BACKWARD, ROLE_ERROR_CLIP, ROLE_FORWARD, ROLE_GRAD_CLIP, ROLE_OPTIMIZE, ROLES, Operator, Parameter,
    Variable, _as_shape, _names,
)


class Block:
    """An ordered list of ops and a dict of variables; `parent_idx` links a sub-block to its parent."""

    def __init__(self, program, idx, parent_idx=-1):
        self.program = program
        self.idx = idx
        self.parent_idx = parent_idx
        self.vars: dict[str, Variable] = {}
        self.ops: list[Operator] = []

    @property
    def parent(self):
        return self.program.blocks[self.parent_idx] if self.parent_idx >= 0 else None

    def _changed(self):
        self.program._version += 1

    def var(self, name: str) -> Variable:
        v = self._find_var(name)
        if v is None:
            raise ValueError(f"block {self.idx} has no variable named {name!r}")
        return v

    def has_var(self, name: str) -> bool:
        return self._find_var(name) is not None

    def _find_var(self, name: str):
        block = self
        while block is not None:
            if name in block.vars:
                return block.vars[name]
            block = block.parent
        return None

    def all_parameters(self) -> list:
        return [v for v in self.vars.values() if isinstance(v, Parameter)]

    def create_var(self, name=None, shape=None, dtype=None, persistable=False, stop_gradient=False,
                   error_clip=None, is_data=False, **_ignored) -> Variable:
        """A new variable (or the existing one of that name, if shape and dtype agree)."""
        name = name or unique_name.generate("_generated_var")
        old = self.vars.get(name)
        if old is not None:
            if shape is not None and old.shape is not None and _as_shape(shape) != old.shape:
                raise ValueError(f"variable {name!r} exists with shape {list(old.shape)}, asked for {list(shape)}")
            if dtype is not None and old.dtype is not None and np.dtype(dtype) != old.dtype:
                raise ValueError(f"variable {name!r} exists with dtype {old.dtype}, asked for {np.dtype(dtype)}")
            return old
        if dtype is None and shape is not None:
            dtype = "float32"  # Paddle's default; a var with neither is typed by the op that writes it
        var = Variable(self, name, shape, dtype, persistable, stop_gradient, error_clip, is_data)
        self.vars[name] = var
        self._changed()
        return var

    def create_parameter(self, shape, dtype="float32", name=None, attr=None, default_initializer=None,
                         startup_program=None) -> Parameter:
        """A Parameter in the global block, initialised by an op in the startup program."""
        from .param_attr import ParamAttr
        from .initializer import Xavier

        attr = ParamAttr._to_attr(attr)
        shape = _as_shape(shape)
        if any(d < 1 for d in shape):
            raise ValueError(f"parameter {name or attr.name!r}: shape {list(shape)} must be fully known and positive")
        name = name or attr.name or unique_name.generate("param")
        gblock = self.program.global_block()
        old = gblock.vars.get(name)
        if old is not None:
            if not isinstance(old, Parameter) or old.shape != shape or old.dtype != np.dtype(dtype):
                raise ValueError(f"parameter {name!r} exists with shape {list(old.shape)} {old.dtype}, "
                                 f"asked for {list(shape)} {np.dtype(dtype)}")
            return old  # sharing by name
        init = attr.initializer or default_initializer or Xavier()
        param = Parameter(gblock, name, shape, dtype, trainable=attr.trainable,
                          optimize_attr={"learning_rate": attr.learning_rate}, regularizer=attr.regularizer,
                          gradient_clip_attr=attr.gradient_clip, need_clip=attr.need_clip, initializer=init)
        startup = startup_program or default_startup_program()
        init(param, startup.global_block())  # may raise: nothing is added to this program before it
        gblock.vars[name] = param
        gblock._changed()
        return param

    def append_op(self, type, inputs=None, outputs=None, attrs=None, role=None) -> Operator:
        """Append an op; output shapes and dtypes are inferred now, and a mismatch raises ValueError."""
        op = self._make_op(type, inputs, outputs, attrs, role)
        self.ops.append(op)
        self._commit(op)
        return op

    def insert_op(self, index, type, inputs=None, outputs=None, attrs=None, role=None) -> Operator:
        op = self._make_op(type, inputs, outputs, attrs, role)
        self.ops.insert(index, op)
        self._commit(op)
        return op

    def _remove_op(self, index):
        del self.ops[index]
        self._changed()

    def _make_op(self, type, inputs, outputs, attrs, role):
        opdef = get_op_def(type)
        if opdef.random:  # its stream lives in the scope (fluidlite.random_state)
            gvars = self.program.global_block().vars
            before = len(gvars)
            inputs, outputs, attrs = random_state.attach(self, opdef, inputs, outputs, attrs)
            try:
                return self._make_checked_op(opdef, type, inputs, outputs, attrs, role)
            except Exception:
                if len(gvars) > before:  # drop the state variable attach made for this op
                    gvars.pop(next(reversed(gvars)))
                raise
        return self._make_checked_op(opdef, type, inputs, outputs, attrs, role)

    def _make_checked_op(self, opdef, type, inputs, outputs, attrs, role):
        ins = self._slots(opdef, opdef.inputs, inputs or {}, "input")
        outs = self._slots(opdef, opdef.outputs, outputs or {}, "output")
        attrs = opdef.normalize_attrs(attrs)
        metas = {}
        for slot, names in ins.items():
            metas[slot] = []
            for n in names:
                v = self._find_var(n)
                if v is None:
                    raise ValueError(f"op '{type}': input {slot} names variable {n!r}, which does not exist in block {self.idx}")
                if v.shape is None or v.dtype is None:
                    raise ValueError(f"op '{type}': input {slot} variable {n!r} has no shape/dtype yet (nothing has written it)")
                metas[slot].append(v._meta())
        inferred = opdef.run_infer(metas, attrs)
        self._pending_new = []
        for slot, names in outs.items():
            types = inferred.get(slot, [])
            if len(types) != len(names):
                raise ValueError(f"op '{type}': output {slot} has {len(names)} variable(s), inference gives {len(types)}")
            for n, (shape, dtype) in zip(names, types):
                v = self._find_var(n)
                if v is None:
                    continue
                if v.shape is not None and (len(v.shape) != len(shape) or not all(map(dims_match, v.shape, shape))):
                    raise ValueError(f"op '{type}': output {slot} variable {n!r} is declared with shape {list(v.shape)}, "
                                     f"but the op gives shape {list(shape)}")
                if v.dtype is not None and v.dtype != dtype:
                    raise ValueError(f"op '{type}': output {slot} variable {n!r} is declared {v.dtype}, but the op gives {dtype}")
        op = Operator(self, type, ins, outs, attrs, role or self.program._current_role)
        op._inferred = inferred
        return op

    def _slots(self, opdef, declared, given, what) -> dict:
        unknown = set(given) - set(declared)
        if unknown:
            raise ValueError(f"op '{opdef.type}': unknown {what} slot(s) {sorted(unknown)}; it has {list(declared)}")
        out = {}
        for slot in declared:
            names = _names(given.get(slot))
            if not names and slot not in opdef.optional:
                if what == "output":
                    raise ValueError(f"op '{opdef.type}': output slot {slot} is missing")
                raise ValueError(f"op '{opdef.type}': input slot {slot} is missing")
            if len(names) > 1 and slot not in opdef.duplicable:
                raise ValueError(f"op '{opdef.type}': {what} slot {slot} takes one variable, got {len(names)}: {names}")
            if names:
                out[slot] = names
        return out

    def _commit(self, op):
        for slot, names in op.outputs.items():
            for n, (shape, dtype) in zip(names, op._inferred[slot]):
                v = self._find_var(n)
                if v is None:
                    v = self.vars[n] = Variable(self, n, shape, dtype)
                if v.shape is None or (-1 in v.shape and -1 not in shape):
                    v.shape = shape
                if v.dtype is None:
                    v.dtype = dtype
                if v.op is None:
                    v.op = op
        del op._inferred
        self._changed()

    def to_string(self) -> str:
        lines = [f"block {self.idx} (parent {self.parent_idx}) {{"]
        lines += ["  " + v.to_string() for v in self.vars.values()]
        lines += ["  " + op.to_string() for op in self.ops]
        lines.append("}")
        return "\n".join(lines)

    __str__ = to_string

    def __repr__(self):
        return f"<Block {self.idx}: {len(self.vars)} vars, {len(self.ops)} ops>"


_program_ids = itertools.count()


class Program:
    """Blocks of ops; block 0 is the global block."""

    def __init__(self):
        self.blocks = [Block(self, 0)]
        self._current_block_idx = 0
        self._current_role = ROLE_FORWARD
        self._version = 0
        self._uid = next(_program_ids)
        self.random_seed = 0
        self._clip_records = []  # what each gradient-clip build made, by name (fluidlite.clip.ClipResult)

    def global_block(self) -> Block:
        return self.blocks[0]

    def block(self, index: int) -> Block:
        return self.blocks[index]

    def current_block(self) -> Block:
        return self.blocks[self._current_block_idx]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _create_block(self, parent_idx=None) -> Block:
        parent = self._current_block_idx if parent_idx is None else parent_idx
        block = Block(self, len(self.blocks), parent)
        self.blocks.append(block)
        self._current_block_idx = block.idx
        self._version += 1
        return block

    def _rollback(self):
        self._current_block_idx = self.current_block().parent_idx

    @contextlib.contextmanager
    def role_guard(self, role: str):
        """Ops appended inside (without an explicit `role=`) get this role, e.g. in a backward callback:
        `with block.program.role_guard("error_clip"): block.append_op(...)`."""
        if role not in ROLES:
            raise ValueError(f"unknown op role {role!r}; roles are {ROLES}")
        old, self._current_role = self._current_role, role
        try:
            yield
        finally:
            self._current_role = old

    _role_guard = role_guard  # the name fluidlite's own modules used before it was public

    def all_parameters(self) -> list:
        return self.global_block().all_parameters()

    def list_vars(self):
        for block in self.blocks:
            yield from block.vars.values()

    def clone(self, for_test: bool = False) -> "Program":
        """A copy; with `for_test`, ops with an `is_test` attribute switch to inference."""
        new = Program()
        new.random_seed = self.random_seed
        new._clip_records = copy.deepcopy(self._clip_records)
        new.blocks = []
        for block in self.blocks:
            nb = Block(new, block.idx, block.parent_idx)
            for name, v in block.vars.items():
                nv = copy.copy(v)
                nv.block = nb
                if isinstance(v, Parameter):
                    nv.optimize_attr = dict(v.optimize_attr)
                nb.vars[name] = nv
            new.blocks.append(nb)
        for block, nb in zip(self.blocks, new.blocks):
            for op in block.ops:
                attrs = dict(op.attrs)
                if for_test and "is_test" in attrs:
                    attrs["is_test"] = True
                nop = Operator(nb, op.type, {k: list(v) for k, v in op.inputs.items()},
                               {k: list(v) for k, v in op.outputs.items()}, attrs, op.role)
                nb.ops.append(nop)
        for nb in new.blocks:
            for v in nb.vars.values():
                v.op = None
        for nb in new.blocks:  # each var's producer is the first op of the copy that writes it
            for op in nb.ops:
                for n in op.output_names:
                    v = nb._find_var(n)
                    if v is not None and v.op is None:
                        v.op = op
        return new

    def to_string(self) -> str:
        return "\n".join(b.to_string() for b in self.blocks)

    __str__ = to_string

    def __repr__(self):
        return f"<Program {len(self.blocks)} block(s), {sum(len(b.ops) for b in self.blocks)} ops>"


_main_program = Program()
_startup_program = Program()


def default_main_program() -> Program:
    return _main_program


def default_startup_program() -> Program:
    return _startup_program


def switch_main_program(program: Program) -> Program:
    global _main_program
    old, _main_program = _main_program, program
    return old


def switch_startup_program(program: Program) -> Program:
    global _startup_program
    old, _startup_program = _startup_program, program
    return old


def role_guard(role: str, program: Program | None = None):
    """`program.role_guard(role)` for `program` (default: the main program): ops appended inside get `role`."""
    return (program or default_main_program()).role_guard(role)


@contextlib.contextmanager
def program_guard(main_program: Program, startup_program: Program | None = None):
    """Layers called inside append to `main_program` (and initialise parameters in `startup_program`)."""
    if not isinstance(main_program, Program):
        raise TypeError(f"program_guard: main_program must be a Program, got {type(main_program).__name__}")
    if startup_program is not None and not isinstance(startup_program, Program):
        raise TypeError(f"program_guard: startup_program must be a Program, got {type(startup_program).__name__}")
    old_main = switch_main_program(main_program)
    old_startup = switch_startup_program(startup_program) if startup_program is not None else None
    try:
        yield
    finally:
        switch_main_program(old_main)
        if startup_program is not None:
            switch_startup_program(old_startup)
