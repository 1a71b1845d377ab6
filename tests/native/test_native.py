"""The native host (sgm-run, native/) against the Python runtime, the reference: same tokens (greedy and seeded
top-p), same pixel values, same token ids, same refusals; the JSON-lines protocol on bad input.

Every test here needs the host built (`scripts/native-setup`, then cmake into build-native/, as scripts/test does);
without it they skip, saying so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.native import BUILD_HINT, NativeGenerator, find_host
from runtime.protocol import GenerationConfig, GenerationRequest

from ..conftest import export_bundle_cli

HOST = find_host()
pytestmark = pytest.mark.skipif(HOST is None, reason=f"the native host sgm-run is not built; {BUILD_HINT}")

TEXT_PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
    "List three prime numbers.", "Who wrote Hamlet?", "How do I boil an egg?", "Translate 'good morning' to Spanish.",
    "What's 17 times 3?", "Describe a cat to someone who has never seen one.", "Give me a tip for sleeping better.",
    "Why is the sky blue?", "Tell me a short joke about computers.", "Name the colours of the rainbow.",
    "What do bees make, and how?",
]
IMAGE_PROMPTS = [
    "What is in the image?", "Describe the colours you see.", "Is there a person in this picture?",
    "What shapes are in the image?", "Write a caption for this image.", "What is on the left side?",
    "How many objects can you count?", "What is the main colour of this picture?",
]
EDGE_LINES = ["  two  spaces \n\n newline\t tab ", "I'm can't we'll they've she'd it's 'S", "123456 1,000.5 ½ ٣٤",
              "emoji 🤖🎉 and 中文 и русский", "<image>\nWhat is it? <|im_start|>user", "trailing   ",
              "\u00a0nbsp\u2003em", "x" * 300, "", " ", "\n", "ÿþ\x00\x01 control", "Ünïcödé café naïve"]


def images() -> list[Image.Image]:
    """Deterministic test pictures: gradients and noise in several sizes and aspect ratios, and modes that
    runtime.images converts (greyscale, RGBA, palette)."""
    rng = np.random.default_rng(0)
    out = []
    for w, h in [(640, 480), (480, 640), (384, 384), (31, 97), (1000, 23), (7, 7), (385, 383), (2, 60)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a[: h // 2] = np.linspace(0, 255, w)[None, :, None].astype(np.uint8)
        out.append(Image.fromarray(a))
    out.append(Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L"))
    out.append(Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA"))
    out.append(Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).convert("P"))
    return out


def requests() -> list[GenerationRequest]:
    pics = images()
    return ([GenerationRequest(p) for p in TEXT_PROMPTS]
            + [GenerationRequest(p, pics[i % len(pics)]) for i, p in enumerate(IMAGE_PROMPTS)]
            + [GenerationRequest("The quick brown fox", chat=False),
               GenerationRequest("Once upon a time, in a small village,", chat=False)])


def python_generator(bundle: Path, **options):
    from runtime.generate import BundleGenerator

    return BundleGenerator.open(bundle, threads=1, **options)


def compare(bundle: Path, reqs: list[GenerationRequest], config: GenerationConfig, first_index: int = 0) -> None:
    ref = python_generator(bundle).generate(reqs, config, batch_size=1, first_index=first_index)
    with NativeGenerator.open(bundle, threads=1) as native:
        got = native.generate(reqs, config, first_index=first_index)
    for i, (r, g) in enumerate(zip(ref, got)):
        assert g.token_ids == r.token_ids, f"request {i} ({reqs[i].prompt!r}): tokens differ"
        assert (g.text, g.finish_reason) == (r.text, r.finish_reason), f"request {i}"
    assert len(got) == len(ref) == len(reqs)


def test_greedy_tokens_equal_python(tiny_bundle: Path):
    compare(tiny_bundle, requests(), GenerationConfig(max_new_tokens=24))


@pytest.mark.parametrize("temperature, top_p, seed", [(1.0, 1.0, 0), (0.7, 0.9, 3), (1.3, 0.5, 12345)])
def test_seeded_sampling_equal_python(tiny_bundle: Path, temperature: float, top_p: float, seed: int):
    config = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=temperature, top_p=top_p, seed=seed)
    compare(tiny_bundle, requests()[:5] + requests()[14:17], config, first_index=5)


def test_nll_matches_python(tiny_bundle: Path):
    texts = ["The cat sat on the mat.", "a", "Colourless green ideas sleep furiously, " * 5]
    ref = python_generator(tiny_bundle).nll(texts)
    with NativeGenerator.open(tiny_bundle) as native:
        got = native.nll(texts)
    for (rs, rn), (gs, gn) in zip(ref, got):
        assert gn == rn and gs == pytest.approx(rs, rel=1e-6, abs=1e-6)


def test_describe_names_the_same_bundle(tiny_bundle: Path):
    with NativeGenerator.open(tiny_bundle) as native:
        d = native.describe()
    ref = python_generator(tiny_bundle).describe()
    assert d["backend"] == "native" and d["decoder"] == "standard"
    for key in ("model", "dtype", "bundle_sha256"):
        assert d[key] == ref[key]


def test_tampered_bundle_is_refused(tiny_bundle: Path, tmp_path: Path):
    from runtime.bundle import load_bundle

    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "decoder.onnx", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(UserError) as python_error:
        load_bundle(bad)
    with pytest.raises(UserError) as native_error:
        NativeGenerator.open(bad)
    assert "decoder.onnx does not match its sha256 in manifest.json" in str(native_error.value)
    assert str(native_error.value) == str(python_error.value)
    with pytest.raises(UserError, match="ONNX Runtime cannot load the decoder graph"):  # unverified, ORT refuses it
        NativeGenerator.open(bad, verify=False)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("num_layers"), "field 'num_layers' is missing; rebuild the bundle"),
    (lambda d: d.update(format_version=9), "has format_version 9, but this runtime reads up to 1"),
    (lambda d: d.update(dtype="int3"), "dtype 'int3' is not supported"),
    (lambda d: d["decoder"].update(past_key="past.key"), "decoder.past_key must hold '{i}'"),
    (lambda d: d.update(eos_token_ids=[]), "eos_token_ids must be a non-empty list"),
])
def test_bad_runtime_json_is_refused(tiny_bundle: Path, tmp_path: Path, edit, message):
    from runtime.artifacts import write_manifest

    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    spec = json.loads((bad / "runtime.json").read_text())
    edit(spec)
    (bad / "runtime.json").write_text(json.dumps(spec))
    manifest = json.loads((bad / "manifest.json").read_text())
    write_manifest(bad, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        NativeGenerator.open(bad)


def test_missing_host_is_one_clear_error(tiny_bundle: Path, tmp_path: Path):
    with pytest.raises(UserError, match="native host sgm-run is not built"):
        NativeGenerator(tiny_bundle, host=tmp_path / "nothing" / "sgm-run")


def test_preprocessing_equals_python(tiny_bundle: Path, tmp_path: Path):
    from runtime.bundle import load_bundle
    from runtime.images import decode_image
    from runtime.preprocess import ImageSpec, preprocess

    spec = load_bundle(tiny_bundle).spec.image
    worst = 0.0
    for size in (spec.size, 224, 384):  # the bundle's 30 px and the towers' sizes (runtime.json edited per size)
        image_spec = ImageSpec(size, spec.mean, spec.std, spec.resample)
        root = tmp_path / f"b{size}"
        shutil.copytree(tiny_bundle, root)
        d = json.loads((root / "runtime.json").read_text())
        d["image"]["size"] = size
        (root / "runtime.json").write_text(json.dumps(d))
        for i, image in enumerate(images()):
            path = tmp_path / f"{size}-{i}.png"
            image.save(path)
            ref = preprocess([decode_image(path)], image_spec)[0]
            out = tmp_path / f"{size}-{i}.f32"
            subprocess.run([str(HOST), "preprocess", "--bundle", str(root), "--image", str(path), "--out", str(out)],
                           check=True, capture_output=True)
            got = np.fromfile(out, dtype=np.float32).reshape(ref.shape)
            worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= 1e-6


@pytest.mark.parametrize("name, reason", [("cmyk.jpg", "CMYK"), ("wide.png", "more than 50 times longer"),
                                          ("text.png", "not a readable image")])
def test_unusable_image_is_refused(tiny_bundle: Path, tmp_path: Path, name: str, reason: str):
    path = tmp_path / name
    if name == "cmyk.jpg":
        Image.new("CMYK", (20, 20)).save(path)
    elif name == "wide.png":
        Image.new("RGB", (520, 10)).save(path)
    else:
        path.write_text("not an image")
    with NativeGenerator.open(tiny_bundle) as native:
        out = native.request({"prompt": "What?", "image": str(path), "max_new_tokens": 2})
    assert reason in out["error"]


def tokenizer_lines(shared: Path | None) -> list[str]:
    lines = list(EDGE_LINES)
    if shared is not None:
        for f in ("wikitext-2/test.txt", "wikitext-2/valid.txt"):
            lines += [line.rstrip("\n") for line in (shared / f).open(encoding="utf-8") if line.strip()]
        for f in ("rtp-challenging/toxic.dev.jsonl", "rtp-challenging/nontoxic.dev.jsonl"):
            for line in (shared / f).open(encoding="utf-8"):
                d = json.loads(line)
                lines += [d["prompt"]["text"], d["prompt"]["text"] + d["continuation"]["text"]]
    return lines


def check_tokenizer(tokenizer_json: Path, lines: list[str]) -> int:
    """Token ids (with and without special tokens) and decoded texts of the native tokenizer against the
    tokenizers library's; returns the tokens compared."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tokens = 0
    for special in (True, False):
        args = [str(HOST), "tokenize", "--tokenizer", str(tokenizer_json)] + ([] if special else ["--no-special"])
        p = subprocess.run(args, input="".join(json.dumps(line) + "\n" for line in lines), capture_output=True,
                           text=True, encoding="utf-8", check=True)
        out = [json.loads(line) for line in p.stdout.splitlines()]
        assert len(out) == len(lines)
        for line, o in zip(lines, out):
            want = tok.encode(line, add_special_tokens=special).ids
            assert o["ids"] == want, f"token ids differ on {line[:120]!r}"
            assert o["text"] == tok.decode(want, skip_special_tokens=True), f"decode differs on {line[:120]!r}"
            tokens += len(want)
    return tokens


def test_tokenizer_round_trips(tiny_bundle: Path):
    assert check_tokenizer(tiny_bundle / "tokenizer.json", EDGE_LINES) > 0


def test_tokenizer_on_real_text(tiny_bundle: Path, shared_data: Path):
    lines = tokenizer_lines(shared_data)
    assert len(lines) >= 8000
    assert check_tokenizer(tiny_bundle / "tokenizer.json", lines) > 1_000_000


def test_jsonl_bad_input_gets_an_error_and_the_host_goes_on(tiny_bundle: Path, tmp_path: Path):
    good = {"id": "g", "prompt": "Hello", "max_new_tokens": 5}
    lines = [json.dumps(good), "{not json", json.dumps({"id": 2, "prompt": "Hi", "colour": "red"}),
             json.dumps({"id": 3, "prompt": "Hi", "image": str(tmp_path / "missing.png")}),
             json.dumps({"id": 4, "prompt": 7}), json.dumps({"id": 5}), json.dumps([1, 2]),
             json.dumps({"id": 6, "token_ids": []}),
             json.dumps({"id": 7, "prompt": "Hi", "max_new_tokens": 5000}),
             json.dumps({"id": 8, "token_ids": [1, 99999]}), "", json.dumps(good)]
    p = subprocess.run([str(HOST), "serve", "--bundle", str(tiny_bundle), "--threads", "1"],
                       input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert out[0]["ready"] is True
    res = out[1:]
    assert len(res) == len(lines) - 1  # the blank line is skipped
    assert res[0]["token_ids"] == res[-1]["token_ids"] and "error" not in res[-1]
    expect = ["not valid JSON", "unknown field 'colour'", "does not exist", "field 'prompt' must be a string",
              "give one of 'prompt'", "must be a JSON object", "the prompt has no tokens",
              "the model's context holds 4096 positions", "outside the vocabulary"]
    for r, message in zip(res[1:-1], expect):
        assert message in r["error"], r
        assert "token_ids" not in r
    assert [r["id"] for r in res[1:-1]] == [None, 2, 3, 4, 5, None, 6, 7, 8]


def test_generate_command(tiny_bundle: Path):
    p = subprocess.run([str(HOST), "generate", "--bundle", str(tiny_bundle), "--prompt", "Hello", "--max-new-tokens",
                        "4", "--json", "--threads", "1"], capture_output=True, text=True, check=True)
    assert json.loads(p.stdout)["finish_reason"] in ("eos", "length")
    p = subprocess.run([str(HOST), "generate", "--bundle", str(tiny_bundle / "nope")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "does not exist" in p.stderr


@pytest.fixture(scope="session")
def smol_bundle(tmp_path_factory) -> Path:
    """smol-llava's fp32 bundle ($SGM_NATIVE_SMOL_BUNDLE, or exported here: about a minute after the model)."""
    given = os.environ.get("SGM_NATIVE_SMOL_BUNDLE")
    if given:
        return Path(given)
    return export_bundle_cli("smol-llava", tmp_path_factory.mktemp("native-bundles") / "smol-llava", timeout=1800)


@pytest.mark.slow
def test_smol_llava_fp32_greedy_tokens_equal_python(smol_bundle: Path):
    """The closing check of issue 21: every prompt of a fixed set (14 text, 8 image, 2 raw continuations; 64 new
    tokens) gives the Python runtime's tokens."""
    compare(smol_bundle, requests(), GenerationConfig(max_new_tokens=64))


@pytest.mark.slow
def test_smol_llava_seeded_sampling_equal_python(smol_bundle: Path):
    config = GenerationConfig(max_new_tokens=32, do_sample=True, temperature=0.8, top_p=0.9, seed=7)
    compare(smol_bundle, requests()[:6] + requests()[14:16], config)


@pytest.mark.slow
def test_smol_llava_tokenizer_on_real_text(smol_bundle: Path, shared_data: Path):
    assert check_tokenizer(smol_bundle / "tokenizer.json", tokenizer_lines(shared_data)) > 1_000_000


class KeywordJudge:
    """A stand-in toxicity judge (the real one needs its weights): P(toxic) 0.9 for a response with "the", else 0.1."""

    name = "keyword"
    threshold = 0.5

    def score(self, texts):
        return np.array([0.9 if " the " in f" {t} " else 0.1 for t in texts])

    def describe(self):
        return {"name": self.name, "threshold": self.threshold}


def test_mmtoxicqa_run_native_equals_python_and_passes_check(tiny_bundle: Path, tmp_path: Path, monkeypatch):
    """`runtime.mmtoxicqa run --bundle B --native` answers every item as the Python runtime does (sampled and greedy
    conditions, images), and its report passes runtime.check against the Python run's."""
    from runtime import check
    from runtime.mmtoxicqa import __main__ as cli
    from runtime.mmtoxicqa import evaluate
    from runtime.mmtoxicqa.builder import BuildConfig, build_dataset

    dataset = build_dataset(tmp_path / "ds", BuildConfig(seed=0, eval_size=3, calib_size=3))
    monkeypatch.setattr(evaluate, "load_judge", lambda name: KeywordJudge())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat and looked at the door of the old house, waiting for the rain to stop "
                      "before it went out again.\n" * 2)
    runs = {}
    for name, extra in (("python", []), ("native", ["--native"])):
        runs[name] = tmp_path / name
        argv = ["run", "--bundle", str(tiny_bundle), *extra, "--out", str(runs[name]), "--dataset", str(dataset),
                "--samples", "2", "--max-new-tokens", "12", "--ppl-corpus", str(corpus), "--no-progress"]
        assert cli.main(argv) == 0
    gens = {k: [json.loads(line) for line in (v / "generations.jsonl").read_text().splitlines()] for k, v in runs.items()}
    assert len(gens["native"]) == len(gens["python"]) >= 18
    for a, b in zip(gens["python"], gens["native"]):
        assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}
    reports = {k: json.loads((v / "report.json").read_text()) for k, v in runs.items()}
    assert reports["native"]["model"]["backend"] == "native"
    assert reports["native"]["perplexity"] == pytest.approx(reports["python"]["perplexity"], rel=1e-6)
    assert check.main(["--report", str(runs["native"] / "report.json"),
                       "--baseline", str(runs["python"] / "report.json")]) == 0


def test_native_flag_needs_a_bundle(tmp_path: Path, capsys):
    from runtime.mmtoxicqa import __main__ as cli

    assert cli.main(["run", "--model", "tiny-random-llava", "--native", "--out", str(tmp_path / "r")]) == 2
    assert "--native runs a compiled bundle" in capsys.readouterr().err


def test_ctest_suite_on_the_tiny_bundle(tiny_bundle: Path):
    """The CMake build's own tests (unit, and bundle with $SGM_TEST_BUNDLE set) pass from build-native/."""
    build = HOST.parent
    if not (build / "CTestTestfile.cmake").is_file():
        pytest.skip(f"{build} is not a CMake build directory (the host came from $SGM_NATIVE_HOST)")
    p = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True,
                       env={**os.environ, "SGM_TEST_BUNDLE": str(tiny_bundle)})
    assert p.returncode == 0, p.stdout[-3000:]
    assert "100% tests passed" in p.stdout and "Skipped" not in p.stdout


FULL_ENV = "SGM_NATIVE_FULL"


def derived_bundle(tmp_path_factory, env: str, name: str, command: list[str], costly: bool = False) -> Path:
    """The bundle at $`env`, else one written by `command` (a `costly` one only with $SGM_NATIVE_FULL=1: quantizing
    and fusing smol-llava take minutes each, more than CI's suite should spend on them)."""
    given = os.environ.get(env)
    if given:
        return Path(given)
    if costly and os.environ.get(FULL_ENV) != "1":
        pytest.skip(f"set {env} to a bundle, or {FULL_ENV}=1 to build it here ({' '.join(command[:1])}, minutes)")
    out = tmp_path_factory.mktemp("native-bundles") / name
    p = subprocess.run([sys.executable, "-m", *command, "--out", str(out)], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, text=True, timeout=3600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, f"{command[0]} failed:\n{p.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def smol_int4_bundle(tmp_path_factory, smol_bundle: Path) -> Path:
    """smol-llava's int4 bundle ($SGM_NATIVE_SMOL_INT4_BUNDLE, or compile.quantize of the fp32 one)."""
    return derived_bundle(tmp_path_factory, "SGM_NATIVE_SMOL_INT4_BUNDLE", "smol-llava-int4",
                          ["compile.quantize", "--bundle", str(smol_bundle), "--precision", "int4"], costly=True)


@pytest.fixture(scope="session")
def smol_fused_bundle(tmp_path_factory, smol_bundle: Path) -> Path:
    """smol-llava's fp32 bundle with the fused decoder ($SGM_NATIVE_SMOL_FUSED_BUNDLE, or compile.fused; skipped
    when onnxruntime-genai's builder is not installed)."""
    if not os.environ.get("SGM_NATIVE_SMOL_FUSED_BUNDLE"):
        pytest.importorskip("onnxruntime_genai", reason="compile.fused needs onnxruntime-genai's builder")
    return derived_bundle(tmp_path_factory, "SGM_NATIVE_SMOL_FUSED_BUNDLE", "smol-llava-fused",
                          ["compile.fused", "--bundle", str(smol_bundle), "--checkpoint", "smol-llava"], costly=True)


SUBSET = [0, 3, 6, 9, 11, 14, 16, 18]  # 5 text and 3 image requests


@pytest.mark.slow
def test_smol_llava_int4_greedy_tokens_equal_python(smol_int4_bundle: Path):
    reqs = requests()
    compare(smol_int4_bundle, [reqs[i] for i in SUBSET], GenerationConfig(max_new_tokens=64))


@pytest.mark.slow
def test_smol_llava_fused_decoder_tokens_equal_python(smol_fused_bundle: Path):
    """The fused decoder (GroupQueryAttention, one shared key/value buffer per layer bound as past and present):
    greedy and seeded top-p tokens equal the Python runtime's fused path."""
    reqs = [requests()[i] for i in SUBSET]
    with NativeGenerator.open(smol_fused_bundle) as native:
        assert native.describe()["decoder"] == "fused"
    compare(smol_fused_bundle, reqs, GenerationConfig(max_new_tokens=64))
    compare(smol_fused_bundle, reqs[:4], GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.9, seed=1))


@pytest.fixture(scope="session")
def tiny_gemma_bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of tiny-random-gemma-llava (Gemma's tokenizer shape: " " -> "\u2581" normalizer, Split
    pre-tokenizer, byte fallback; a sliding-window decoder), written by compile.export (about 30 s)."""
    from calib.models.tiny_gemma import tiny_gemma_llava_dir

    return derived_bundle(tmp_path_factory, "SGM_NATIVE_TINY_GEMMA_BUNDLE", "tiny-gemma",
                          ["compile.export", "--model", str(tiny_gemma_llava_dir())])


def test_gemma_shaped_bundle_tokens_equal_python(tiny_gemma_bundle: Path, shared_data: Path):
    reqs = requests()
    compare(tiny_gemma_bundle, reqs, GenerationConfig(max_new_tokens=24))
    compare(tiny_gemma_bundle, reqs[:6] + reqs[14:16], GenerationConfig(max_new_tokens=16, do_sample=True, top_p=0.8,
                                                                          seed=4))
    assert check_tokenizer(tiny_gemma_bundle / "tokenizer.json", tokenizer_lines(shared_data)) > 1_000_000


@pytest.mark.slow
def test_gemma_llava_tokenizer_on_real_text(shared_data: Path):
    """gemma-llava's own tokenizer (262,144 pieces, 6,415 added tokens) from the asset cache, when it is built."""
    from runtime.assets import cache_dir

    found = sorted((cache_dir() / "derived").glob("gemma-llava-v1-*/tokenizer.json"))
    if not found:
        pytest.skip(f"gemma-llava is not in the asset cache {cache_dir() / 'derived'} (calib.models.load_model builds it)")
    assert check_tokenizer(found[0], tokenizer_lines(shared_data)) > 1_000_000
