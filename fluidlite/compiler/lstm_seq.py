"""Pass `lstm_seq`: an unrolled LSTM's steps become one op forward and one op backward.

After mul_acc, each StaticRNN step of an LSTM is `mul_acc(H_{t-1}, W, Acc=unstack(P)[t])` and then
`lstm_unit`; its backward is, per step, `lstm_unit_grad`, the sum's gradient (dX_t passed on), and
`mul_grad` for dH_{t-1} = dX_t W^T (batch_grad takes W's gradient out of the loop). A T = 50 step made
200 kernel calls, each a parallel loop that split the product by columns and the cell by rows, so half of
each step's gates crossed between the cores. `lstm_sequence` and `lstm_sequence_backward` run all the steps
in one loop whose threads each own a band of batch rows (rows never meet in an LSTM), with the weight
packed once (kernels/lstm_seq.py): the same bits, in float32, as the steps they replace.

A forward chain: lstm_unit steps L_1..L_T (T >= 2) where L_t reads X from a mul_acc M_t that nothing else
reads, M_t multiplies L_{t-1}'s H (H0 for t = 1) by one W [H, 4H] and adds output k + t of one unstack
of P along axis 0 (read by M_t only), and L_t's C_prev is L_{t-1}'s C. A backward chain (of a fused
forward chain's steps): lstm_unit_grad steps G_T..G_1 where G_{t-1}'s H@GRAD is made, and read, only by
the product dX_t W^T of G_t's X@GRAD (or a sum_grad's view of it): a mul_grad by W, or batch_grad's
`mul` by its copy of W^T; and G_{t-1}'s C@GRAD is G_t's C_prev@GRAD, read by G_{t-1} alone. dH_{t-1}
may instead be the `sum` of that product and one other value made before G_T (h_{t-1} read elsewhere
too: StaticRNN's stacked outputs), at every link or at none. A like product of G_1's X@GRAD gives
H0@GRAD. A mul_grad that also makes W's gradient for its step (no batch_grad) keeps that part. Neither
W nor any input the chain reads may be written inside the chain's span; no output may be persistable.

Applied for float32 on an AVX-512 CPU (skinny's tiles; elsewhere BLAS per band, not measured to win)
while fluidlite's pool runs the products (`_threads.pool_on()`: with FLUIDLITE_BLAS=onednn or mkl the
steps' products run on their BLAS's own OpenMP threads, whose spinning slowed this loop's Numba threads:
an LSTM step went from 1.00-1.06x torch to 1.06-1.17x), for a weight of at most MAX_WEIGHT_BYTES (each
thread reads all of it at every step from its L2) and a batch of at least MIN_ROWS (a thread's band is
whole 8-row tiles). Off: the steps run one by one.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import _threads
from ..kernels import skinny
from ..registry import get_op_def
from .ir import PlanIR, Step

MAX_WEIGHT_BYTES = 1 << 20
MIN_ROWS = 2 * skinny.ROWS


class _Graph:
    """Who makes, reads and writes each name in the plan's steps."""

    def __init__(self, ir: PlanIR):
        self.ir, self.producer, self.readers, self.writes = ir, {}, {}, {}
        for i, step in enumerate(ir.steps):
            for n in step.out_names:
                self.producer.setdefault(n, i)
                self.writes.setdefault(n, []).append(i)
            for n in step.in_names:
                self.readers.setdefault(n, []).append(i)

    def made_once_for(self, name, reader) -> bool:
        """`name` is an intermediate made once and read by step `reader` alone."""
        ir = self.ir
        return (len(self.writes.get(name, ())) == 1 and self.readers.get(name) == [reader]
                and name not in ir.fetch_names and not ir.is_persistable(name) and name not in ir.feed)

    def untouched(self, names, lo, hi) -> bool:
        """None of `names` is written by a step in [lo, hi]."""
        return not any(lo <= w <= hi for n in names for w in self.writes.get(n, ()))

    def owned(self, names) -> bool:
        return not any(self.ir.is_persistable(n) or n in self.ir.feed for n in names)


def _fits(ir, w_name, h_name) -> bool:
    w, h = ir.metas[w_name], ir.metas[h_name]
    return (skinny.AVAILABLE and _threads.pool_on() and w.dtype == np.float32 and len(w.shape) == 2
            and w.shape[0] * w.shape[1] * 4 <= MAX_WEIGHT_BYTES and len(h.shape) == 2 and h.shape[0] >= MIN_ROWS)


def _step(ir, type_, inputs, outputs, attrs, like) -> Step:
    op = copy.copy(like)  # the program's ops stay as they are: only this plan's steps change
    op.type, op.inputs, op.outputs, op.attrs = type_, inputs, outputs, attrs
    return Step(op, get_op_def(type_), {slot: [ir.metas[n] for n in names] for slot, names in inputs.items()})


def _forward_link(g: _Graph, j):
    """(M_t's index, H_{t-1}, W, unstack index, output position) for lstm_unit step j, or None."""
    ir, unit = g.ir, g.ir.steps[j]
    x = unit.op.inputs["X"][0]
    i = g.producer.get(x)
    if i is None or not g.made_once_for(x, j) or any(len(unit.op.outputs.get(s, ())) != 1 for s in ("C", "H", "Gate")):
        return None
    prod = ir.steps[i]
    if prod.op.type != "mul_acc" or prod.op.attrs["x_num_col_dims"] != 1 or prod.op.attrs["y_num_col_dims"] != 1:
        return None
    (h,), (w,), (acc,) = prod.op.inputs["X"], prod.op.inputs["Y"], prod.op.inputs["Acc"]
    u = g.producer.get(acc)
    if u is None or ir.steps[u].op.type != "unstack" or not g.made_once_for(acc, i) or not _fits(ir, w, h):
        return None
    stack = ir.steps[u]
    if stack.op.attrs["axis"] != 0 or stack.op.attrs["indices"] or ir.metas[acc].shape != ir.metas[x].shape:
        return None
    return i, h, w, u, stack.out_names.index(acc)


def _forward(ir: PlanIR, g: _Graph, drop: set, replace: dict):
    chains, open_ends = [], {}  # open_ends: (H, C) of a chain's last step -> chain
    for j, step in enumerate(ir.steps):
        if step.op.type != "lstm_unit":
            continue
        link = _forward_link(g, j)
        if link is None:
            continue
        i, h, w, u, k = link
        c_prev = step.op.inputs["C_prev"][0]
        chain = open_ends.pop((h, c_prev), None)
        last = chain[-1] if chain else None
        if not (chain and last["w"] == w and last["u"] == u and last["k"] + 1 == k
                and last["fb"] == step.op.attrs["forget_bias"]):
            chain = []
            chains.append(chain)
        chain.append({"i": i, "j": j, "h": h, "c_prev": c_prev, "w": w, "u": u, "k": k,
                      "fb": step.op.attrs["forget_bias"]})
        open_ends[(step.op.outputs["H"][0], step.op.outputs["C"][0])] = chain
    for chain in chains:
        if len(chain) < 2:
            continue
        first, last = chain[0], chain[-1]
        units = [ir.steps[s["j"]] for s in chain]
        p = ir.steps[first["u"]].op.inputs["X"][0]
        reads = [p, first["w"], first["h"], first["c_prev"]]
        outs = [n for unit in units for n in unit.out_names]
        if not g.untouched(reads, first["i"], last["j"]) or not g.owned(outs):
            continue
        inputs = {"Pre": [p], "H0": [first["h"]], "C0": [first["c_prev"]], "W": [first["w"]]}
        outputs = {s: [u.op.outputs[s][0] for u in units] for s in ("C", "H", "Gate")}
        attrs = {"steps": len(chain), "first": first["k"], "forget_bias": first["fb"]}
        replace[first["i"]] = _step(ir, "lstm_sequence", inputs, outputs, attrs, units[0].op)
        drop.update(s["i"] for s in chain[1:])
        drop.update(s["j"] for s in chain)
        stack = ir.steps[first["u"]]
        if (all(set(g.readers.get(n, ())) <= {s["i"] for s in chain} for n in stack.out_names)
                and not set(stack.out_names) & set(ir.fetch_names)):
            drop.add(first["u"])


def _dx_product(g: _Graph, dx, w):
    """The index of the step making dx W^T from dx (or a sum_grad's view of it), or None: a mul_grad by W
    (which may make W's gradient for this step too), or a `mul` by batch_grad's transposed copy of W (a
    `mul_acc` when the mul_acc pass added it to another value)."""
    ir = g.ir
    views = [dx] + [o for r in g.readers.get(dx, ()) if ir.steps[r].op.type == "sum_grad"
                    for o in ir.steps[r].out_names]
    for v in views:
        for r in g.readers.get(v, ()):
            op = ir.steps[r].op
            if op.attrs.get("x_num_col_dims") != 1 or op.attrs.get("y_num_col_dims") != 1:
                continue
            if (op.type == "mul_grad" and op.inputs["Y"] == [w] and op.inputs["Out@GRAD"] == [v]
                    and len(op.outputs.get("X@GRAD", ())) == 1):
                return r
            if op.type in ("mul", "mul_acc") and op.inputs["X"] == [v] and _transposed(g, op.inputs["Y"][0]) == w:
                return r
    return None


def _transposed(g: _Graph, name):
    """The matrix whose `transpose` step alone makes `name`, or None."""
    t = g.producer.get(name)
    if t is None or len(g.writes[name]) != 1:
        return None
    op = g.ir.steps[t].op
    return op.inputs["X"][0] if op.type == "transpose" and list(op.attrs["axis"]) == [1, 0] else None


def _product_out(op) -> str:
    return op.outputs["X@GRAD" if op.type == "mul_grad" else "Out"][0]


def _backward(ir: PlanIR, g: _Graph, w_of: dict, drop: set, replace: dict):
    """w_of: a forward chain's Gate name -> its W (lstm_unit_grad does not name the weight)."""
    chains, next_of = [], {}  # next_of: (H@GRAD, C@GRAD) the next (earlier) step must read -> chain
    for j, step in enumerate(ir.steps):
        op = step.op
        if op.type != "lstm_unit_grad" or len(op.outputs.get("X@GRAD", ())) != 1:
            continue
        gate = op.inputs["Gate"][0]
        w = w_of.get(gate)
        if w is None:
            continue
        key = (op.inputs["H@GRAD"][0], op.inputs["C@GRAD"][0])
        chain = next_of.pop(key, None)
        if chain is None or chain[-1]["w"] != w or chain[-1]["c_prev"] != op.inputs["C"][0]:
            chain = []
            chains.append(chain)
        dx = op.outputs["X@GRAD"][0]
        r = _dx_product(g, dx, w)
        chain.append({"j": j, "w": w, "c_prev": op.inputs["C_prev"][0], "r": r, "sum": None, "extra": None})
        dcp = op.outputs.get("C_prev@GRAD", [None])[0]
        if r is None or dcp is None or not g.made_once_for(dcp, _only_reader(g, dcp)):
            continue
        dh = _product_out(ir.steps[r].op)
        if not g.made_once_for(dh, _only_reader(g, dh)):
            continue
        # dH_{t-1} = dX_t W^T + what else h_{t-1} feeds sends back: a sum, or the product added into it
        added = (None, ir.steps[r].op.inputs["Acc"][0]) if ir.steps[r].op.type == "mul_acc" else _added(g, dh)
        if added is not None:
            chain[-1]["sum"], chain[-1]["extra"] = added
            if added[0] is not None:
                dh = ir.steps[added[0]].out_names[0]
                if not g.made_once_for(dh, _only_reader(g, dh)):
                    continue
        if len(chain) == 1 or (chain[-2]["extra"] is None) == (added is None):  # the same form at every link
            next_of[(dh, dcp)] = chain
    for chain in chains:
        if len(chain) < 2:
            continue
        steps = [ir.steps[s["j"]] for s in chain]
        last = chain[-1]  # time step 1 (the plan runs the backward from step T)
        span_end = max(last["j"], last["r"] if last["r"] is not None else -1)
        extra = [s["extra"] for s in chain[:-1] if s["extra"] is not None][::-1]  # for h_1..h_{T-1}, in time order
        reads = [n for s in steps for n in (s.op.inputs["Gate"][0], s.op.inputs["C"][0])] + [last["c_prev"], last["w"]]
        if not g.untouched(reads + extra, chain[0]["j"], span_end) or any(
                g.producer.get(n, -1) >= chain[0]["j"] for n in extra):  # made after the loop would start
            continue
        order = steps[::-1]  # time order, step 1 first
        top = steps[0].op
        inputs = {"Gate": [s.op.inputs["Gate"][0] for s in order], "C": [s.op.inputs["C"][0] for s in order],
                  "C0": [last["c_prev"]], "W": [last["w"]], "LastH@GRAD": top.inputs["H@GRAD"],
                  "LastC@GRAD": top.inputs["C@GRAD"]}
        if extra:
            inputs["StepH@GRAD"] = extra
        outputs = {"X@GRAD": [s.op.outputs["X@GRAD"][0] for s in order]}
        first_dcp = steps[-1].op.outputs.get("C_prev@GRAD")
        if first_dcp:
            outputs["C0@GRAD"] = list(first_dcp)
        if last["r"] is not None and ir.steps[last["r"]].op.type == "mul_acc":
            last["r"] = None  # dH_0 = its addend + dX_1 W^T: left to that step, which reads dX_1 after the loop
        if last["r"] is not None:
            outputs["H0@GRAD"] = [_product_out(ir.steps[last["r"]].op)]
        if not g.owned([n for names in outputs.values() for n in names]):
            continue
        replace[chain[0]["j"]] = _step(ir, "lstm_sequence_backward", inputs, outputs, {}, top)
        drop.update(s["j"] for s in chain[1:])
        drop.update(s["sum"] for s in chain[:-1] if s["sum"] is not None)
        for r in (s["r"] for s in chain if s["r"] is not None):
            if "Y@GRAD" in ir.steps[r].op.outputs:  # without batch_grad: W's gradient of the step stays a product
                replace[r] = _weight_grad_only(ir.steps[r])
            drop.add(r)


def _only_reader(g: _Graph, name):
    readers = g.readers.get(name, ())
    return readers[0] if len(readers) == 1 else None


def _added(g: _Graph, dh):
    """(index, other input) of the `sum` of two that alone reads `dh`, or None."""
    r = _only_reader(g, dh)
    if r is None:
        return None
    op = g.ir.steps[r].op
    names = op.inputs.get("X", ())
    if op.type != "sum" or len(names) != 2 or names.count(dh) != 1:
        return None
    return r, names[1 - names.index(dh)]


def _weight_grad_only(step) -> Step:
    op = copy.copy(step.op)
    op.outputs = {"Y@GRAD": step.op.outputs["Y@GRAD"]}
    return Step(op, step.opdef, step.inputs)


def lstm_seq(ir: PlanIR, options) -> PlanIR:
    if "lstm_seq" in options.disabled:
        return ir
    g = _Graph(ir)
    drop, replace = set(), {}
    _forward(ir, g, drop, replace)
    w_of = {gate: s.op.inputs["W"][0] for s in replace.values() for gate in s.op.outputs["Gate"]}
    _backward(ir, g, w_of, drop, replace)
    for name in {ir.steps[r].op.inputs["Y"][0] for r in drop if ir.steps[r].op.type in ("mul", "mul_acc")}:
        if _transposed(g, name) is not None and set(g.readers[name]) <= drop and name not in ir.fetch_names:
            drop.add(g.producer[name])  # batch_grad's copy of W^T: gone with the products that read it
    ir.steps = [replace.get(i, s) for i, s in enumerate(ir.steps) if i not in drop or i in replace]
    return ir
