"""Small ONNX graph rewrites applied after export (each one is covered by the export parity check).

fold_pads_into_conv: EfficientNet-Lite's TensorFlow-SAME stride-2 convolutions are exported as a
constant zero `Pad` followed by a `Conv` with no padding (torch's Conv2d has no asymmetric padding;
ONNX's Conv does).  onnxruntime keeps the `Pad` (its pads arrive through a Cast of a folded
constant chain), and because `Pad` has no NCHWc kernel every one of them also forces a layout
round trip (ReorderOutput -> Pad -> ReorderInput).  Profiled on the ReContrast-Lite0 graph at
256 px that is ~20% of the network time; moving the pads into the Conv attribute removes all of it.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def _producers(graph) -> dict:  # type: ignore[no-untyped-def]
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph) -> dict:  # type: ignore[no-untyped-def]
    out: dict = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def constant_value(model, name: str) -> Optional[np.ndarray]:  # type: ignore[no-untyped-def]
    """Value of tensor `name` when it depends on initializers and Constant nodes only, else None."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name])
    prod = _producers(graph)
    graph_inputs = {i.name for i in graph.input}
    needed, used_inits, stack, seen = [], set(), [name], set()
    while stack:
        t = stack.pop()
        if t in seen or t == "":
            continue
        seen.add(t)
        if t in inits:
            used_inits.add(t)
            continue
        if t in graph_inputs or t not in prod:
            return None  # depends on the image (or is dangling): not a constant
        node = prod[t]
        if node not in needed:
            needed.append(node)
        stack.extend(node.input)
    order = [n for n in graph.node if n in needed]  # graph order is topological
    sub = helper.make_graph(order, "const", [], [helper.make_tensor_value_info(name, 0, None)],
                            initializer=[inits[i] for i in sorted(used_inits)])
    sub_model = helper.make_model(sub, opset_imports=model.opset_import)
    return np.asarray(ReferenceEvaluator(sub_model).run(None, {})[0])


def _attr(node, name: str, default):  # type: ignore[no-untyped-def]
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_ints(node, name: str, values: list[int]) -> None:  # type: ignore[no-untyped-def]
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, [int(v) for v in values]))


def prune_dead_nodes(model) -> int:  # type: ignore[no-untyped-def]
    """Drop nodes whose outputs nobody reads (the pad-computing constant chains, after folding)."""
    graph = model.graph
    removed = 0
    while True:
        live = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in live for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    live = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in live]:
        graph.initializer.remove(init)
    return removed


def fold_pads_into_conv(model) -> int:  # type: ignore[no-untyped-def]
    """Merge constant zero spatial `Pad` nodes into every consuming 2-D `Conv`. Returns the count."""
    graph = model.graph
    cons = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    folded = []
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        if _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # opset-18 `axes` input: not produced by our exporter, not handled
        users = cons.get(pad.output[0], [])
        if not users or pad.output[0] in graph_outputs or any(u.op_type != "Conv" for u in users):
            continue
        if any(_attr(u, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") for u in users):
            continue
        if len(pad.input) > 2 and pad.input[2]:
            cval = constant_value(model, pad.input[2])
            if cval is None or np.any(cval != 0):
                continue
        pads = constant_value(model, pad.input[1])
        if pads is None or pads.size != 8:
            continue
        pads = [int(v) for v in pads.reshape(-1)]
        # [n_b, c_b, h_b, w_b, n_e, c_e, h_e, w_e]: batch/channel pads cannot move into a Conv
        if pads[0] or pads[1] or pads[4] or pads[5] or min(pads) < 0:
            continue
        for conv in users:
            cp = list(_attr(conv, "pads", [0, 0, 0, 0]))
            _set_ints(conv, "pads", [cp[0] + pads[2], cp[1] + pads[3], cp[2] + pads[6], cp[3] + pads[7]])
            conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    if folded:
        prune_dead_nodes(model)
    return len(folded)
