"""compile.quantize on tiny-random-llava: each precision writes a loadable bundle whose graphs hold the
quantized form it claims (node types, bits, block sizes, symmetric Q/DQ for TensorRT), records it in the
manifest with a teacher-forced check against the source, and refuses bad input without leaving files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compile.quantize import QuantSpec, quantize_bundle
from runtime.bundle import load_bundle
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from compile.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("quant") / "fp32"
    export_bundle("tiny-random-llava", out)
    return out


@pytest.fixture(scope="module")
def built(source: Path, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("quantized")
    specs = {"int4": QuantSpec("int4"), "int4-no-head": QuantSpec("int4", lm_head=False, embeddings=False),
             "int8": QuantSpec("int8"), "int8-dynamic": QuantSpec("int8", int8_mode="dynamic"),
             "fp16": QuantSpec("fp16"), "int4-qdq": QuantSpec("int4-qdq"), "int8-qdq": QuantSpec("int8-qdq")}
    return {name: (root / name, quantize_bundle(source, root / name, spec, threads=1)) for name, spec in specs.items()}


def nodes(bundle: Path, graph: str = "decoder") -> list[onnx.NodeProto]:
    return list(onnx.load(str(bundle / f"{graph}.onnx"), load_external_data=False).graph.node)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_int4_is_matmulnbits_with_the_chosen_blocks(built):
    path, manifest = built["int4"]
    q = [n for n in nodes(path) if n.op_type == "MatMulNBits"]
    assert len(q) == 15 and not [n for n in nodes(path) if n.op_type == "MatMul" and "proj" in n.name]
    assert {(attrs(n)["bits"], attrs(n)["block_size"], attrs(n)["accuracy_level"]) for n in q} == {(4, 32, 4)}
    assert any("lm_head" in n.name for n in q)
    assert [n.op_type for n in nodes(path, "embed") if "Gather" in n.op_type] == ["GatherBlockQuantized"]
    p = manifest["precision"]
    assert p["name"] == "int4" and p["method"] == "rtn" and p["target"] == "onnxruntime-cpu"
    assert p["graphs"]["decoder"]["quantized"] == 15 and p["graphs"]["vision"] == "unchanged"
    assert p["graphs"]["decoder"]["bytes_after"] < 0.7 * p["graphs"]["decoder"]["bytes_before"]  # tiny: graph overhead
    assert manifest["source"]["precision"] == "fp32" and manifest["model"]["name"] == "tiny-random-llava"
    assert load_bundle(path).spec.dtype == "float32"


def test_lm_head_and_embeddings_can_stay_float(built):
    path, manifest = built["int4-no-head"]
    assert [n.name for n in nodes(path) if n.op_type == "MatMul" and "lm_head" in n.name] == ["/inner/lm_head/MatMul"]
    assert manifest["precision"]["graphs"]["decoder"]["kept_float"] == ["/inner/lm_head/MatMul"]
    assert manifest["precision"]["graphs"]["embed"] == "unchanged"


def test_int8_modes(built):
    path, manifest = built["int8"]
    assert {attrs(n)["bits"] for n in nodes(path) if n.op_type == "MatMulNBits"} == {8}
    path, manifest = built["int8-dynamic"]
    assert sum(n.op_type == "MatMulInteger" for n in nodes(path)) == 15
    g = manifest["precision"]["graphs"]["decoder"]
    assert g["reduce_range"] is True and g["per_channel"] is True and manifest["precision"]["method"] == "dynamic"


def test_fp16_graphs_are_float16_end_to_end(built):
    path, manifest = built["fp16"]
    bundle = load_bundle(path)
    assert bundle.spec.dtype == "float16"
    for graph in ("vision", "embed", "decoder"):
        model = onnx.load(str(path / f"{graph}.onnx"))
        floats = {i.data_type for i in model.graph.initializer if i.data_type in (1, 10)}
        assert floats == {10}, graph  # no float32 weights left
    dec = onnx.load(str(path / "decoder.onnx"), load_external_data=False)
    assert {i.name: i.type.tensor_type.elem_type for i in dec.graph.input}["inputs_embeds"] == 10


def test_int4_qdq_is_tensorrt_weight_only_form(built):
    path, _ = built["int4-qdq"]
    model = onnx.load(str(path / "decoder.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    inits = {t.name: t for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 15
    for n in dq:
        assert len(n.input) == 2  # symmetric: no zero point (TensorRT rejects int4 zero points)
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT4
        assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16
        assert attrs(n) == {"axis": 0, "block_size": 32}


def test_int8_qdq_is_symmetric_and_calibrated(built):
    path, manifest = built["int8-qdq"]
    model = onnx.load(str(path / "decoder.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q) >= 15
    for n in q:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()  # symmetric, as TensorRT requires
    # 8 images + 8 paragraphs of the perplexity corpus
    assert manifest["precision"]["graphs"]["decoder"]["calibration"] == {"method": "minmax", "samples": 16}


@pytest.mark.parametrize("name, floor", [("int4", 0.6), ("int8", 0.95), ("fp16", 0.99), ("int4-qdq", 0.6),
                                         ("int8-qdq", 0.7)])
def test_check_is_recorded_and_close_to_the_source(built, name: str, floor: float):
    c = built[name][1]["check"]
    # 4 captioned images and 8 corpus paragraphs (up to 96 words each) give > 1000 positions
    assert c["positions"] > 1000 and c["top1_agreement"] >= floor
    assert abs(c["mean_nll_new"] - c["mean_nll_source"]) < 0.05 * c["mean_nll_source"]


@pytest.mark.parametrize("name", ["int4", "int8", "fp16", "int4-qdq", "int8-qdq", "int8-dynamic"])
def test_quantized_bundles_generate(built, name: str):
    gen = BundleGenerator.open(built[name][0], threads=1)
    [r] = gen.generate([GenerationRequest("The capital of France is", chat=False)], GenerationConfig(max_new_tokens=8))
    assert len(r.token_ids) > 0


def test_bad_input_is_refused_and_leaves_nothing(source: Path, built, tmp_path: Path):
    with pytest.raises(UserError, match="already a int4 bundle"):
        quantize_bundle(built["int4"][0], tmp_path / "a", QuantSpec("int8"))
    with pytest.raises(UserError, match="block size must be a power of two"):
        quantize_bundle(source, tmp_path / "b", QuantSpec("int4", block_size=48))
    with pytest.raises(UserError, match="precision 'int3' is not one of"):
        quantize_bundle(source, tmp_path / "c", QuantSpec("int3"))
    with pytest.raises(UserError, match="not the checkpoint the bundle was exported from"):  # tiny-random is not the GGUF's model
        from compile.quantize.gguf import default_gguf

        quantize_bundle(source, tmp_path / "d", QuantSpec("int4", method="gguf", gguf=str(default_gguf())))
    with pytest.raises(UserError, match="already exists"):
        quantize_bundle(source, built["int8"][0], QuantSpec("int8"))
    assert list(tmp_path.iterdir()) == []


def test_cli(source: Path, tmp_path: Path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "compile.quantize", "--bundle", str(source), "--out", str(out),
                           "--precision", "int8", "--threads", "1"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "teacher-forced: new bundle vs source on" in done.stdout and "top-1 agreement" in done.stdout
    assert json.loads((out / "manifest.json").read_text())["precision"]["name"] == "int8"
    bad = subprocess.run([sys.executable, "-m", "compile.quantize", "--bundle", str(source), "--out", str(out),
                          "--precision", "int8", "--block-size", "20"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "block size must be a power of two" in bad.stderr


def test_int8_qdq_can_keep_outlier_modules_float(source: Path, tmp_path: Path):
    """W8A8 with per-tensor activation ranges breaks on MLP down_proj inputs (massive activations) in real
    LLMs; those MatMuls can stay float."""
    manifest = quantize_bundle(source, tmp_path / "q", QuantSpec("int8-qdq", skip_modules=("down_proj", "lm_head"),
                                                                  calibration_items=4), check=False)
    d = manifest["precision"]["graphs"]["decoder"]
    assert d["quantized_matmuls"] == 12 and d["kept_float"] == ["down_proj", "lm_head"]  # 2 layers x 6 Linears
    assert d["calibration"] == {"method": "minmax", "samples": 4}
    names = [n.name for n in nodes(tmp_path / "q") if n.op_type == "MatMul"]
    assert any("down_proj" in n for n in names) and any("lm_head" in n for n in names)
