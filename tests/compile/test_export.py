"""compile.export: the three graphs through Optimum, their I/O contract, and validation against PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compile.export import export_graphs, validate_graphs
from compile.export.graphs import MIN_OPSET
from compile.export.parts import head_dim, text_config
from compile.export.validate import left_pad, position_ids, session
from runtime.errors import UserError


@pytest.fixture(scope="module")
def graphs(tiny_llava, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("graphs")
    return out, export_graphs(tiny_llava, out)


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_configs_are_registered_with_optimum() -> None:
    from optimum.exporters.tasks import TasksManager

    import compile.export.configs  # noqa: F401  (registers on import)

    for model_type, task in (("sgm-llava-vision", "feature-extraction"), ("sgm-smol-llava-vision", "feature-extraction"),
                             ("sgm-embed", "feature-extraction"), ("sgm-llama-decoder", "text-generation-with-past")):
        assert task in TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")


def test_graph_io_matches_the_bundle_contract(graphs, tiny_llava) -> None:
    out, info = graphs
    cfg = text_config(tiny_llava)
    L, H, D = cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg)
    assert info["vision"]["inputs"] == ["pixel_values"] and info["vision"]["outputs"] == ["image_embeds"]
    assert info["embed"]["inputs"] == ["input_ids"] and info["embed"]["outputs"] == ["inputs_embeds"]
    past = [f"past_key_values.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    assert info["decoder"]["inputs"] == ["inputs_embeds", "attention_mask", "position_ids", *past]
    assert info["decoder"]["outputs"] == ["logits", *present]
    for name in ("vision", "embed", "decoder"):
        proto = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(proto)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
        assert info[name]["external_data"] is None
    dec = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
    ins = {v.name: dims(v) for v in dec.input}
    outs = {v.name: dims(v) for v in dec.output}
    assert isinstance(ins["inputs_embeds"][0], str) and isinstance(ins["inputs_embeds"][1], str)
    assert ins["inputs_embeds"][2] == cfg.hidden_size
    k = ins["past_key_values.0.key"]
    assert isinstance(k[0], str) and k[1] == H and isinstance(k[2], str) and k[3] == D
    assert isinstance(outs["logits"][1], str) and outs["logits"][2] == cfg.vocab_size
    vis = onnx.load(str(out / "vision.onnx")).graph
    s = tiny_llava.image_spec.size
    assert dims(vis.input[0])[1:] == [3, s, s] and isinstance(dims(vis.input[0])[0], str)
    assert dims(vis.output[0])[1:] == [tiny_llava.num_image_tokens, cfg.hidden_size]


def test_graphs_match_pytorch(graphs, tiny_llava) -> None:
    out, _ = graphs
    checks = validate_graphs(tiny_llava, out)
    print([(c.name, c.what, f"{c.max_abs_diff:.3g}") for c in checks])
    assert [c.name for c in checks] == ["vision", "embed", "decoder", "decoder", "decoder"]
    assert all(c.ok for c in checks)
    assert checks[1].max_abs_diff == 0.0  # an embedding lookup is exact
    assert all(c.max_abs_diff <= 1e-5 for c in checks)  # fp32 tiny model: rounding only


def test_decoder_takes_dynamic_batch_sequence_and_past(graphs, tiny_llava) -> None:
    """Batch 1 and 3, prefill of 1 and 7 tokens, past 0 and past > 0: all against PyTorch."""
    out, _ = graphs
    cfg = text_config(tiny_llava)
    sess = session(out / "decoder.onnx")
    rng = np.random.default_rng(0)
    for b, s in ((1, 1), (3, 7)):
        lengths = [s - (i % 2) * (s // 2) for i in range(b)]
        x, mask = left_pad([rng.standard_normal((n, cfg.hidden_size)).astype(np.float32) for n in lengths])
        pos = position_ids(mask)
        empty = np.zeros((b, cfg.num_key_value_heads, 0, head_dim(cfg)), np.float32)
        feed = {"inputs_embeds": x, "attention_mask": mask, "position_ids": pos,
                **{f"past_key_values.{i}.{kv}": empty for i in range(cfg.num_hidden_layers) for kv in ("key", "value")}}
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(names, feed)))
        with torch.no_grad():
            ref, past = tiny_llava.decode(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(pos))
        real = mask.astype(bool)
        assert np.abs(got["logits"][real] - ref.numpy()[real]).max() <= 1e-5
        assert got["present.0.key"].shape == (b, cfg.num_key_value_heads, s, head_dim(cfg))
        step = rng.standard_normal((b, 2, cfg.hidden_size)).astype(np.float32)  # two new tokens on a past
        mask2 = np.concatenate([mask, np.ones((b, 2), np.int64)], 1)
        pos2 = pos[:, -1:] + np.arange(1, 3)
        feed = {"inputs_embeds": step, "attention_mask": mask2, "position_ids": pos2,
                **{f"past_key_values.{i}.{kv}": got[f"present.{i}.{kv}"]
                   for i in range(cfg.num_hidden_layers) for kv in ("key", "value")}}
        got2 = dict(zip(names, sess.run(names, feed)))
        with torch.no_grad():
            ref2, _ = tiny_llava.decode(torch.from_numpy(step), torch.from_numpy(mask2), torch.from_numpy(pos2), past)
        assert np.abs(got2["logits"] - ref2.numpy()).max() <= 1e-5
        assert got2["present.0.key"].shape[2] == s + 2


def test_validation_catches_graphs_of_another_model(graphs, tmp_path) -> None:
    """Graphs checked against a model whose MLP rows were scaled: the decoder check must fail."""
    from calib.models import load_model
    from compile.fold import fold

    other = load_model("tiny-random-llava")
    unit = other.mlp_units()[1]
    fold(other, {unit.key: torch.full((unit.width,), 0.9)})
    with pytest.raises(UserError, match="decoder on prefill logits"):
        validate_graphs(other, graphs[0])


def test_external_data_is_one_file_per_graph(tiny_llava, tmp_path) -> None:
    info = export_graphs(tiny_llava, tmp_path, external_data=True)
    for name in ("vision", "embed", "decoder"):
        assert info[name]["external_data"] == f"{name}.onnx.data"
        assert (tmp_path / f"{name}.onnx.data").stat().st_size > 0
        proto = onnx.load(str(tmp_path / f"{name}.onnx"), load_external_data=False)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations <= {f"{name}.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.onnx{x}" for n in ("vision", "embed", "decoder") for x in ("", ".data"))
    assert all(c.ok for c in validate_graphs(tiny_llava, tmp_path))


def test_opset_below_17_is_refused(tiny_llava, tmp_path) -> None:
    with pytest.raises(ValueError, match="opset 13"):
        export_graphs(tiny_llava, tmp_path, opset=13)
