"""The optional fused decoder of a bundle: runtime.json's section, the loader's checks, the backend's choice.

Graphs here are hand-made stand-ins (tests/bundle_fakes.py); the numerics of a real fused decoder against the
standard one are checked in tests/compile/test_fused.py, which needs onnxruntime-genai's builder.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.artifacts import MANIFEST, write_manifest
from runtime.backends.ort import OrtBackend, OrtOptions
from runtime.bundle import RUNTIME_FILE, load_bundle
from runtime.errors import UserError
from runtime.generate import decode_loop
from runtime.protocol import GenerationConfig

_spec = importlib.util.spec_from_file_location("bundle_fakes", Path(__file__).resolve().parents[1] / "bundle_fakes.py")
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)
SPEC, make_bundle = _fakes.SPEC, _fakes.make_bundle

FUSED = {"graph": "decoder-fused.onnx", "inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask",
         "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value", "logits": "logits",
         "present_key": "present.{i}.key", "present_value": "present.{i}.value", "logits_positions": "last",
         "kv_buffer": "concat", "providers": ["cpu"]}


def fused_graph(spec: dict, fused: dict) -> onnx.ModelProto:
    """A stand-in fused decoder: logits = the last position's embeddings (hidden = vocab here); present =
    past with the new positions' first head_dim features appended (so the cache length is checkable)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    h, hd, hid = spec["num_kv_heads"], spec["head_dim"], spec["hidden_size"]
    ins = [helper.make_tensor_value_info(fused["inputs_embeds"], f, ["b", "s", hid]),
           helper.make_tensor_value_info(fused["attention_mask"], i64, ["b", "t"])]
    outs = [helper.make_tensor_value_info(fused["logits"], f, ["b", 1, hid])]
    inits = [helper.make_tensor("starts", i64, [1], [-1]), helper.make_tensor("ends", i64, [1], [2 ** 62]),
             helper.make_tensor("axis1", i64, [1], [1]), helper.make_tensor("f0", i64, [1], [0]),
             helper.make_tensor("fhd", i64, [1], [hd]), helper.make_tensor("axis2", i64, [1], [2]),
             helper.make_tensor("shape", i64, [4], [0, 0, 1, hd])]
    nodes = [helper.make_node("Slice", [fused["inputs_embeds"], "starts", "ends", "axis1"], [fused["logits"]]),
             helper.make_node("Slice", [fused["inputs_embeds"], "f0", "fhd", "axis2"], ["head"]),
             helper.make_node("Unsqueeze", ["head", "axis1"], ["head4"]),  # [b, 1, s, hd]
             helper.make_node("Concat", ["head4"] * h, ["new"], axis=1)]  # [b, h, s, hd]
    if fused["kv_buffer"] == "shared":
        # like GroupQueryAttention with a shared buffer: present is past (same capacity) with the new positions
        # [t - s, t) written in, t = the mask's length
        inits += [helper.make_tensor("one", i64, [1], [1]), helper.make_tensor("four", i64, [4], [1, 1, -1, 1])]
        nodes += [helper.make_node("Shape", [fused["attention_mask"]], ["t"], start=1, end=2),
                  helper.make_node("Shape", [fused["inputs_embeds"]], ["s"], start=1, end=2),
                  helper.make_node("Sub", ["t", "s"], ["t0"]),
                  helper.make_node("Squeeze", ["t0"], ["t0s"]), helper.make_node("Squeeze", ["t"], ["ts"]),
                  helper.make_node("Squeeze", ["one"], ["ones"]),
                  helper.make_node("Range", ["t0s", "ts", "ones"], ["pos"]),
                  helper.make_node("Reshape", ["pos", "four"], ["pos4"]),
                  helper.make_node("Shape", ["new"], ["new_shape"]),
                  helper.make_node("Expand", ["pos4", "new_shape"], ["idx"])]
    for i in range(spec["num_layers"]):
        for kind in ("key", "value"):
            past, present = fused[f"past_{kind}"].format(i=i), fused[f"present_{kind}"].format(i=i)
            ins.append(helper.make_tensor_value_info(past, f, ["b", h, "p", hd]))
            outs.append(helper.make_tensor_value_info(present, f, ["b", h, "t", hd]))
            if fused["kv_buffer"] == "shared":
                nodes.append(helper.make_node("ScatterElements", [past, "idx", "new"], [present], axis=2))
            else:
                nodes.append(helper.make_node("Concat", [past, "new"], [present], axis=2))
    graph = helper.make_graph(nodes, "fused", ins, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bundle_with_fused(root: Path, fused: dict | None = None, write_graph: bool = True) -> Path:
    spec = copy.deepcopy(SPEC)
    spec["vocab_size"] = spec["hidden_size"]
    fused = dict(FUSED if fused is None else fused)
    spec["fused_decoder"] = fused
    make_bundle(root, spec)
    if write_graph:
        onnx.save(fused_graph(spec, fused), str(root / fused["graph"]))
    manifest = json.loads((root / MANIFEST).read_text())
    write_manifest(root, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})
    return root


def test_section_is_parsed_and_optional(tmp_path: Path):
    b = load_bundle(bundle_with_fused(tmp_path / "b"))
    f = b.spec.fused_decoder
    assert f.graph == "decoder-fused.onnx" and f.logits_positions == "last" and f.kv_buffer == "concat"
    assert f.past_names(2)[:3] == ["past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key"]
    assert b.graph_path("fused_decoder") == b.root / "decoder-fused.onnx"
    plain = load_bundle(make_bundle(tmp_path / "plain"))
    assert plain.spec.fused_decoder is None
    with pytest.raises(UserError, match="no fused decoder"):
        plain.graph_path("fused_decoder")


def test_unlisted_fused_graph_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="fused_decoder graph decoder-fused.onnx is not listed"):
        load_bundle(bundle_with_fused(tmp_path / "b", write_graph=False))


@pytest.mark.parametrize("change, message", [
    ({"past_key": "past.key"}, "must hold '{i}'"),
    ({"logits_positions": "some"}, "logits_positions must be 'last' or 'all'"),
    ({"kv_buffer": "paged"}, "kv_buffer must be 'shared' or 'concat'"),
    ({"graph": None}, "fused_decoder.graph is missing"),
])
def test_bad_sections_are_named(tmp_path: Path, change: dict, message: str):
    root = bundle_with_fused(tmp_path / "b")
    spec = json.loads((root / RUNTIME_FILE).read_text())
    spec["fused_decoder"].update(change)
    spec["fused_decoder"] = {k: v for k, v in spec["fused_decoder"].items() if v is not None}
    (root / RUNTIME_FILE).write_text(json.dumps(spec))
    manifest = json.loads((root / MANIFEST).read_text())
    write_manifest(root, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        load_bundle(root)


def test_backend_chooses_the_fused_decoder_on_cpu_unless_told(tmp_path: Path):
    bundle = load_bundle(bundle_with_fused(tmp_path / "b"))
    auto = OrtBackend(bundle, OrtOptions(threads=1))
    assert auto.fused and not auto.left_padding and auto.describe()["decoder"] == "fused"
    assert "decoder" not in auto._sessions  # the standard decoder is opened only when needed
    std = OrtBackend(bundle, OrtOptions(threads=1, decoder="standard"))
    assert not std.fused and std.left_padding and std.describe()["decoder"] == "standard"
    with pytest.raises(UserError, match="decoder 'best' is not one of"):
        OrtBackend(bundle, OrtOptions(threads=1, decoder="best"))
    plain = load_bundle(make_bundle(tmp_path / "plain"))
    assert not OrtBackend(plain, OrtOptions(threads=1)).fused
    with pytest.raises(UserError, match="no fused decoder"):
        OrtBackend(plain, OrtOptions(threads=1, decoder="fused"))


def test_fused_cache_grows_and_logits_are_last_only(tmp_path: Path):
    bundle = load_bundle(bundle_with_fused(tmp_path / "b"))
    be = OrtBackend(bundle, OrtOptions(threads=1))
    hid = bundle.spec.hidden_size
    x = np.random.default_rng(0).standard_normal((1, 5, hid)).astype(np.float32)
    logits, cache = be.decode(x, np.ones((1, 5), np.int64), np.arange(5)[None], be.empty_cache(1))
    assert logits.shape == (1, hid) and np.array_equal(logits[0], x[0, -1])
    assert cache.length == 5 and cache.tensors[0].shape()[2] == 5
    logits, cache = be.decode(x[:, :1], np.ones((1, 6), np.int64), np.array([[5]]), cache)
    assert cache.length == 6 and np.array_equal(logits[0], x[0, 0])
    with pytest.raises(ValueError, match="not made by the fused decoder"):
        be.decode(x, np.ones((1, 5), np.int64), np.arange(5)[None], type(cache)(1, 0, ()))


def test_shared_buffer_is_written_in_place_and_logits_are_a_reused_view(tmp_path: Path):
    """With a shared key/value buffer the binding (and the preallocated logits it writes) is kept across steps;
    each step's logits are right when returned and are a view of that one buffer (valid until the next decode,
    the Backend contract), so a step allocates and copies nothing."""
    bundle = load_bundle(bundle_with_fused(tmp_path / "b", {**FUSED, "kv_buffer": "shared"}))
    be = OrtBackend(bundle, OrtOptions(threads=1))
    hid, hd = bundle.spec.hidden_size, bundle.spec.head_dim
    x = np.random.default_rng(0).standard_normal((1, 7, hid)).astype(np.float32)
    cache = be.empty_cache(1, capacity=8)
    first, cache = be.decode(x[:, :5], np.ones((1, 5), np.int64), np.arange(5)[None], cache)
    assert first.shape == (1, hid) and first.dtype == np.float32 and np.array_equal(first[0], x[0, 4])
    buffers, binding = cache.tensors, be._bound
    second, cache = be.decode(x[:, 5:6], np.ones((1, 6), np.int64), np.array([[5]]), cache)
    assert np.array_equal(second[0], x[0, 5])
    third, cache = be.decode(x[:, 6:7], np.ones((1, 7), np.int64), np.array([[6]]), cache)
    assert np.array_equal(third[0], x[0, 6]) and np.shares_memory(first, third)
    assert cache.tensors is buffers and be._bound is binding and be._bound.logits is not None
    stored = cache.tensors[0].numpy()
    assert stored.shape[2] == 8 and np.array_equal(stored[0, 0, :7], x[0, :, :hd])
    grown, cache = be.decode(x[:, :2], np.ones((1, 9), np.int64), np.array([[7, 8]]), cache)  # past capacity 8
    assert cache.length == 9 and cache.tensors[0].shape()[2] >= 9 and np.array_equal(grown[0], x[0, 1])
    assert np.array_equal(cache.tensors[0].numpy()[0, 0, :9], np.concatenate([x[0, :, :hd], x[0, :2, :hd]]))


def _echo_backend(tmp_path: Path, kv_buffer: str) -> OrtBackend:
    """A backend on the stand-in fused decoder whose embed graph is one-hot: token t's logits peak at t."""
    bundle = load_bundle(bundle_with_fused(tmp_path / "b", {**FUSED, "kv_buffer": kv_buffer}))
    be = OrtBackend(bundle, OrtOptions(threads=1))
    hid = bundle.spec.hidden_size
    eye = np.eye(hid, dtype=np.float32)
    be._sessions["embed"] = type("OneHot", (), {"run": staticmethod(lambda names, feed: [eye[feed["input_ids"]]])})()
    return be


@pytest.mark.parametrize("kv_buffer", ["shared", "concat"])
def test_token_stepper_gives_the_tokens_of_embed_and_decode(tmp_path: Path, kv_buffer: str, monkeypatch):
    """decode_loop's fast path (a shared buffer's stepper) and the embed + decode path generate the same tokens;
    with a concat buffer there is no stepper."""
    be = _echo_backend(tmp_path, kv_buffer)
    hid = be.bundle.spec.hidden_size
    rng = np.random.default_rng(3)
    prompt = rng.standard_normal((4, hid)).astype(np.float32)
    config = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=2.0, seed=5)
    made = []
    original = be.token_stepper
    monkeypatch.setattr(be, "token_stepper", lambda *a: made.append(original(*a)) or made[-1])
    fast, _ = decode_loop(be, [prompt], config, eos_token_ids=(), pad_token_id=0)
    assert (made[0] is not None) == (kv_buffer == "shared")
    monkeypatch.setattr(be, "token_stepper", lambda *a: None)
    slow, _ = decode_loop(be, [prompt], config, eos_token_ids=(), pad_token_id=0)
    assert fast == slow and len(fast[0][0]) == 6


def test_token_stepper_is_refused_or_stops_where_it_cannot_run(tmp_path: Path):
    be = _echo_backend(tmp_path, "shared")
    hid = be.bundle.spec.hidden_size
    x = np.ones((1, 3, hid), np.float32)
    assert be.token_stepper(be.empty_cache(1, capacity=5), np.ones((1, 5), np.int64)) is None  # nothing bound yet
    _, cache = be.decode(x, np.ones((1, 3), np.int64), np.arange(3)[None], be.empty_cache(1, capacity=5))
    assert be.token_stepper(cache, np.ones((1, 6), np.int64)) is None  # the mask outgrows the buffer
    step = be.token_stepper(cache, np.ones((1, 5), np.int64))
    assert int(np.argmax(step([2])[0])) == 2 and int(np.argmax(step([7])[0])) == 7
    stored = cache.tensors[0].numpy()[0, 0]  # each step wrote its key at the position the mask's length gives
    hd = be.bundle.spec.head_dim
    assert np.array_equal(stored[3, :hd], np.eye(hid)[2, :hd]) and np.array_equal(stored[4, :hd], np.eye(hid)[7, :hd])
    with pytest.raises(ValueError, match="room for 5 positions"):
        step([1])
    row = be.embed(np.array([[7]]))
    with pytest.raises(ValueError, match="read-only"):
        row[0, 0, 0] = 1.0  # a view of the embedding cache


def test_all_position_logits_come_from_the_standard_decoder(tmp_path: Path):
    bundle = load_bundle(bundle_with_fused(tmp_path / "b"))
    be = OrtBackend(bundle, OrtOptions(threads=1))
    hid = bundle.spec.hidden_size
    x = np.ones((1, 4, hid), np.float32)
    logits, cache = be.decode(x, np.ones((1, 4), np.int64), np.arange(4)[None], be.empty_cache(1), last_only=False)
    assert logits.shape == (1, 4, hid) and "decoder" in be._sessions and cache.tensors == ()
    with pytest.raises(ValueError, match="empty cache only"):
        _, c = be.decode(x, np.ones((1, 4), np.int64), np.arange(4)[None], be.empty_cache(1))
        be.decode(x[:, :1], np.ones((1, 5), np.int64), np.array([[4]]), c, last_only=False)


def test_prompts_of_different_lengths_run_one_at_a_time(tmp_path: Path):
    """A fused decoder cannot take a left-padded batch: decode_loop runs each prompt alone, same results."""
    bundle = load_bundle(bundle_with_fused(tmp_path / "b"))
    be = OrtBackend(bundle, OrtOptions(threads=1))
    rng = np.random.default_rng(1)
    hid = bundle.spec.hidden_size
    be.embed = lambda ids: np.eye(hid, dtype=np.float32)[ids]  # token t -> one-hot: the stand-in echoes it
    prompts = [rng.standard_normal((n, hid)).astype(np.float32) for n in (3, 5)]
    config = GenerationConfig(max_new_tokens=4)
    batch, timings = decode_loop(be, prompts, config, eos_token_ids=(), pad_token_id=0)
    alone = [decode_loop(be, [p], config, eos_token_ids=(), pad_token_id=0)[0][0] for p in prompts]
    assert batch == alone and timings.batch == 2 and timings.decode_steps == 2 * 3
