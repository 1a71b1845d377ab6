"""compile.export.bundle: the bundle contract, greedy generation through ONNX Runtime equal to PyTorch, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compile.export.bundle import export_bundle
from runtime.artifacts import read_manifest
from runtime.bundle import BUNDLE_KIND
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ("What is in the image?", "How many shapes are there?", "Describe the colours you see.")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("b") / "bundle"
    return out, export_bundle("tiny-random-llava", out)


def requests() -> list[GenerationRequest]:
    from runtime.scenes import scene

    return [GenerationRequest(q, scene(10 + i).image) for i, q in enumerate(QUESTIONS)]


def ort_generate(bundle_dir: Path, reqs: list[GenerationRequest], max_new_tokens: int) -> list[list[int]]:
    """A minimal greedy KV-cache loop that reads only the bundle (numpy, onnxruntime, tokenizers, pillow)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from runtime.preprocess import ImageSpec, preprocess

    cfg = json.loads((bundle_dir / "runtime.json").read_text())
    tok = Tokenizer.from_file(str(bundle_dir / "tokenizer.json"))
    sess = {k: ort.InferenceSession(str(bundle_dir / f), providers=["CPUExecutionProvider"])
            for k, f in cfg["graphs"].items()}
    io, n_img, img_id = cfg["decoder"], cfg["num_image_tokens"], cfg["image_token_id"]
    prompts = []
    for r in reqs:
        fmt = cfg["prompt"]["image_format" if r.image is not None else "text_format"]
        ids = tok.encode(fmt.replace("{question}", r.prompt), add_special_tokens=cfg["prompt"]["add_special_tokens"]).ids
        ids = np.array([i for t in ids for i in ([t] * n_img if t == img_id else [t])], dtype=np.int64)
        is_img = ids == img_id
        x = sess["embed"].run([cfg["embed"]["output"]], {cfg["embed"]["input"]: np.where(is_img, 0, ids)[None]})[0][0]
        if r.image is not None:
            pixels = preprocess([r.image], ImageSpec.from_dict(cfg["image"]))
            feats = sess["vision"].run([cfg["vision"]["output"]], {cfg["vision"]["input"]: pixels})[0]
            x[is_img] = feats.reshape(-1, cfg["hidden_size"])
        prompts.append(x)
    b, s = len(prompts), max(len(p) for p in prompts)
    x = np.zeros((b, s, cfg["hidden_size"]), np.float32)
    mask = np.zeros((b, s), np.int64)
    for i, p in enumerate(prompts):
        x[i, s - len(p):], mask[i, s - len(p):] = p, 1
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    L = cfg["num_layers"]
    past = {io[kv].format(i=i): np.zeros((b, cfg["num_kv_heads"], 0, cfg["head_dim"]), np.float32)
            for i in range(L) for kv in ("past_key", "past_value")}
    out_names = [io["logits"]] + [io[kv].format(i=i) for i in range(L) for kv in ("present_key", "present_value")]
    tokens: list[list[int]] = [[] for _ in range(b)]
    finished = [False] * b
    for n in range(max_new_tokens):
        res = sess["decoder"].run(out_names, {io["inputs_embeds"]: x, io["attention_mask"]: mask,
                                              io["position_ids"]: pos, **past})
        step = []
        for i in range(b):
            t = cfg["pad_token_id"] if finished[i] else int(np.argmax(res[0][i, -1]))
            if not finished[i]:
                if t in cfg["eos_token_ids"]:
                    finished[i] = True
                else:
                    tokens[i].append(t)
            step.append(t)
        if all(finished):
            break
        past = {io[kv].format(i=i): res[1 + 2 * i + j]
                for i in range(L) for j, kv in enumerate(("past_key", "past_value"))}
        x = sess["embed"].run([cfg["embed"]["output"]], {cfg["embed"]["input"]: np.array(step, np.int64)[:, None]})[0]
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], 1)
        pos = pos[:, -1:] + 1
    return tokens


def test_runtime_json_follows_the_contract(bundle, tiny_llava) -> None:
    out, _ = bundle
    cfg = json.loads((out / "runtime.json").read_text())
    text = tiny_llava.hf.config.text_config
    assert cfg["format_version"] == 1 and cfg["dtype"] == "float32" and cfg["model"] == "tiny-random-llava"
    assert cfg["graphs"] == {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"}
    assert cfg["decoder"]["past_key"] == "past_key_values.{i}.key" and cfg["decoder"]["present_value"] == "present.{i}.value"
    assert (cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"], cfg["hidden_size"], cfg["vocab_size"]) == (
        text.num_hidden_layers, text.num_key_value_heads, text.hidden_size // text.num_attention_heads,
        text.hidden_size, text.vocab_size)
    assert cfg["image_token_id"] == tiny_llava.image_token_id and cfg["num_image_tokens"] == 25
    assert cfg["image"] == json.loads(json.dumps(tiny_llava.image_spec.to_dict()))
    assert cfg["prompt"] == {"text_format": "USER: {question} ASSISTANT:", "image_format": "USER: <image>\n{question} ASSISTANT:",
                             "image_placeholder": "<image>", "add_special_tokens": True}
    assert cfg["eos_token_ids"] == list(tiny_llava.eos_token_ids) and cfg["pad_token_id"] == tiny_llava.pad_token_id
    assert cfg["clean_up_tokenization_spaces"] == tiny_llava.tokenizer.clean_up_tokenization_spaces


def test_manifest_records_files_and_provenance(bundle, tiny_llava) -> None:
    out, manifest = bundle
    assert read_manifest(out) == manifest and manifest["kind"] == BUNDLE_KIND
    assert sorted(manifest["files"]) == ["decoder.onnx", "embed.onnx", "runtime.json", "tokenizer.json", "vision.onnx"]
    assert manifest["model"]["mlp_weights_sha256"] == tiny_llava.fingerprint()["mlp_weights_sha256"]
    assert manifest["model"]["folded"] is False and manifest["model"]["experts"] is None
    assert manifest["export"]["opset"] >= 17 and all(c["ok"] for c in manifest["export"]["validation"])
    assert {"torch", "transformers", "optimum-onnx", "onnxruntime"} <= set(manifest["versions"])


def test_tokenizer_json_tokenizes_like_the_model(bundle, tiny_llava) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle[0] / "tokenizer.json"))
    text = tiny_llava.chat_prompt("Is the cat on the mat?", True)
    ids = tok.encode(text, add_special_tokens=True).ids
    assert tok.token_to_id("<image>") == tiny_llava.image_token_id
    assert [i for t in ids for i in ([t] * 25 if t == tiny_llava.image_token_id else [t])] == tiny_llava.tokenize(text)


def test_greedy_generation_through_the_bundle_equals_pytorch(bundle, tiny_llava) -> None:
    reqs = requests()
    ref = tiny_llava.generate(reqs, GenerationConfig(max_new_tokens=64))
    batched = ort_generate(bundle[0], reqs, 64)
    for r, got in zip(ref, batched):
        assert list(r.token_ids) == got
    for req, r in zip(reqs, ref):  # one at a time as well: no padding in play
        assert ort_generate(bundle[0], [req], 64)[0] == list(r.token_ids)
    print([len(r.token_ids) for r in ref], [r.finish_reason for r in ref])
    assert sum(len(r.token_ids) for r in ref) >= 3 * 32  # the comparison covers long generations


def test_bundle_of_a_folded_checkpoint_records_the_experts(tiny_llava, random_experts, tmp_path) -> None:
    from calib.experts import save_experts
    from compile.fold import fold_to_dir

    ex = random_experts(tiny_llava)
    save_experts(ex, tmp_path / "experts")
    fold_manifest = fold_to_dir("tiny-random-llava", tmp_path / "experts", tmp_path / "detox")
    manifest = export_bundle(str(tmp_path / "detox"), tmp_path / "bundle")
    m = manifest["model"]
    assert json.loads((tmp_path / "bundle" / "runtime.json").read_text())["model"] == "tiny-random-llava-detoxified"
    assert m["folded"] is True
    assert m["experts"]["manifest_sha256"] == fold_manifest["experts"]["manifest_sha256"]
    assert m["fold"]["vs_hook"] == fold_manifest["fold"]["vs_hook"]
    assert m["mlp_weights_sha256"] == fold_manifest["model"]["mlp_weights_sha256"]


def test_tampered_or_truncated_files_are_caught(bundle, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle[0], copy)
    cfg = json.loads((copy / "runtime.json").read_text())
    cfg["eos_token_ids"] = [0]
    (copy / "runtime.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="runtime.json does not match its sha256"):
        read_manifest(copy)
    shutil.copy2(bundle[0] / "runtime.json", copy / "runtime.json")
    read_manifest(copy)
    data = (copy / "decoder.onnx").read_bytes()
    (copy / "decoder.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="decoder.onnx does not match its sha256"):
        read_manifest(copy)
    (copy / "embed.onnx").unlink()
    (copy / "decoder.onnx").write_bytes(data)
    with pytest.raises(UserError, match="embed.onnx is listed in manifest.json but missing"):
        read_manifest(copy)


def test_output_directory_rules(bundle, tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        export_bundle("tiny-random-llava", foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="--overwrite"):
        export_bundle("tiny-random-llava", bundle[0])
    read_manifest(bundle[0])  # untouched
    empty = tmp_path / "empty"
    empty.mkdir()
    export_bundle("tiny-random-llava", empty)
    read_manifest(empty)
    export_bundle("tiny-random-llava", empty, overwrite=True)
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_cli_writes_a_bundle_and_reports_validation(tmp_path) -> None:
    run = [sys.executable, "-m", "compile.export", "--model", "tiny-random-llava", "--out", str(tmp_path / "b")]
    ok = subprocess.run(run, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "decoder on prefill logits" in ok.stdout and "max |diff|" in ok.stdout
    assert (tmp_path / "b" / "manifest.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "compile.export", "--model", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "c")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "does not exist" in bad.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_smol_llava_bundle_generates_like_pytorch(smol_llava, tmp_path) -> None:
    """Measured once for the report: export + validation, and greedy 64 tokens on 3 image + text prompts."""
    import time

    t = time.time()
    manifest = export_bundle("smol-llava", tmp_path / "bundle")
    print(f"export + validate {time.time() - t:.0f} s;", [(c["what"], f"{c['max_abs_diff']:.3g}")
                                                          for c in manifest["export"]["validation"]])
    reqs = requests()
    t = time.time()
    ref = smol_llava.generate(reqs, GenerationConfig(max_new_tokens=64))
    t_torch = time.time() - t
    t = time.time()
    got = ort_generate(tmp_path / "bundle", reqs, 64)
    t_ort = time.time() - t
    same = [sum(a == b for a, b in zip(r.token_ids, g)) for r, g in zip(ref, got)]
    print(f"torch {t_torch:.1f} s, ort {t_ort:.1f} s; lengths {[len(r.token_ids) for r in ref]} / "
          f"{[len(g) for g in got]}; equal prefix tokens {same}")
    assert [list(r.token_ids) for r in ref] == got


def test_the_runtime_generator_on_the_bundle_equals_pytorch(bundle, tiny_llava) -> None:
    """The runtime worker's torch-free generator (runtime.generate) reads this bundle and answers like PyTorch."""
    generate = pytest.importorskip("runtime.generate")
    gen = generate.load_generator(bundle[0])
    reqs = requests() + [GenerationRequest("Say something kind about cats.")]
    for config in (GenerationConfig(max_new_tokens=64),
                   GenerationConfig(max_new_tokens=32, do_sample=True, temperature=0.8, top_p=0.9, seed=3)):
        ref = tiny_llava.generate(reqs, config)
        got = gen.generate(reqs, config)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref]
        assert [r.text for r in got] == [r.text for r in ref]
    texts = ["The cat sat on the mat.", "USER: What is in the image? ASSISTANT: A red circle."]
    for (a, n), (b, m) in zip(gen.nll(texts), tiny_llava.nll(texts)):
        assert n == m and abs(a - b) <= 1e-4 * max(1.0, abs(b))
