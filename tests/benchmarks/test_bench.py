"""benchmarks/bench.py: statistics, interleaving, the worker protocol and weight accounting (nothing here is timed)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
_spec = importlib.util.spec_from_file_location("bench", BENCH / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_summary_median_spread_and_ratio():
    s = bench.summary([10.0, 30.0, 20.0, 40.0])
    assert s == {"median": 25.0, "min": 10.0, "max": 40.0, "n": 4, "spread": 30.0 / 25.0}
    assert bench.summary([5.0])["spread"] == 0.0
    with pytest.raises(ValueError):
        bench.summary([])
    assert bench.ratio({"median": 50.0}, {"median": 100.0}) == 0.5
    assert bench.ratio(None, {"median": 1.0}) is None and bench.ratio({"median": 1.0}, {"median": 0.0}) is None


def test_summarise_takes_numeric_metrics_only():
    s = bench.summarise([{"a": 1, "b": 2.0, "tag": "x"}, {"a": 3}])
    assert set(s) == {"a", "b"} and s["a"]["median"] == 2.0 and s["b"]["n"] == 1


def test_rotation_gives_every_runner_every_position():
    names = ["a", "b", "c"]
    orders = [bench.rotation(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for i in range(3):
        assert sorted(o[i] for o in orders) == names
    assert bench.rotation([], 5) == []


def test_run_interleaved_keeps_measured_rounds_only():
    calls: list[tuple[str, int]] = []

    def runner(name):
        def run(p):
            calls.append((name, p))
            return {"x": float(len(calls))} if name != "none" else None
        return run

    records = bench.run_interleaved({n: runner(n) for n in ("a", "b", "none")}, prompts=2, warmup=1, repeats=2)
    assert len(calls) == 3 * 2 * 3  # runners x prompts x rounds
    assert [len(records[n]) for n in ("a", "b", "none")] == [4, 4, 0]  # warm-up round dropped
    assert min(r["x"] for r in records["a"]) > 6  # the first 6 calls were the warm-up round
    firsts = [calls[i][0] for i in range(0, len(calls), 3)]
    assert len(set(firsts)) == 3  # the runner that goes first changes


def test_worker_round_trip_and_errors():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import json; from bench import serve; "
            "spec = json.loads(sys.argv[2]); print('noise on stdout'); "
            "serve({'add': lambda a, b: {'sum': a + b + spec['k']}, 'fail': lambda: 1 / 0})")
    w = bench.Worker([sys.executable, "-c", code, str(BENCH)], {"k": 10})
    try:
        answer = w.call("add", a=1, b=2)
        assert answer["sum"] == 13 and answer["peak_rss_mb"] > 0
        with pytest.raises(bench.WorkerError, match="ZeroDivisionError"):
            w.call("fail")
        assert w.call("add", a=0, b=0)["sum"] == 10  # a failed call leaves the worker serving
    finally:
        w.close()
    assert w.proc.returncode == 0
    with pytest.raises(bench.WorkerError, match="exited"):
        w.call("add", a=1, b=1)


def test_floor():
    assert bench.floor_tokens_per_s(100e6, 10.0) == pytest.approx(100.0)


def test_onnx_weight_bytes_leaves_out_gather_only_tables(tmp_path: Path):
    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")  # 3200 bytes, gathered only
    w = numpy_helper.from_array(np.zeros((8, 4), np.float32), "w")  # 128 bytes
    tied = numpy_helper.from_array(np.zeros((10, 8), np.float32), "tied")  # 320 bytes, gathered and multiplied
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("Gather", ["tied", "ids"], ["e2"]),
             helper.make_node("Gemm", ["e2", "tied"], ["o"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
                              initializer=[table, w, tied])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert bench.onnx_weight_bytes(path) == 128 + 320
    onnx.save_model(onnx.load(str(path)), str(tmp_path / "x.onnx"), save_as_external_data=True,
                    location="x.onnx.data", size_threshold=0)
    assert bench.onnx_weight_bytes(tmp_path / "x.onnx") == 128 + 320  # external data counted by length


def test_gguf_weight_bytes_counts_the_embedding_only_when_tied(tmp_path: Path):
    gguf = pytest.importorskip("gguf")

    def write(path: Path, with_output: bool) -> Path:
        wr = gguf.GGUFWriter(str(path), "llama")
        wr.add_tensor("token_embd.weight", np.zeros((10, 4), np.float32))
        wr.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 4), np.float32))
        if with_output:
            wr.add_tensor("output.weight", np.zeros((10, 4), np.float32))
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
        return path

    assert bench.gguf_weight_bytes(write(tmp_path / "tied.gguf", False)) == (40 + 16) * 4
    assert bench.gguf_weight_bytes(write(tmp_path / "untied.gguf", True)) == (16 + 40) * 4


def test_machine_and_bandwidth_report_shapes():
    m = bench.machine()
    assert m["cores"] >= 1 and "cpu" in m
    bw = bench.read_bandwidth(mbytes=4, repeats=1)
    assert bw["best"] > 0 and set(bw) == {"dot", "sum", "best"}


def test_paired_ratio_pairs_runs_of_the_same_round():
    a = [{"decode_tok_s": 110.0}, {"decode_tok_s": 60.0}, {"decode_tok_s": 90.0}]
    b = [{"decode_tok_s": 100.0}, {"decode_tok_s": 50.0}, {"decode_tok_s": 100.0}]  # a noisy host: round 2 slow
    r = bench.paired_ratio(a, b, "decode_tok_s")
    assert r["median"] == pytest.approx(1.1) and r["min"] == pytest.approx(0.9) and r["max"] == pytest.approx(1.2)
    assert r["above_1"] == pytest.approx(2 / 3) and r["n"] == 3
    assert bench.paired_ratio(a[:2], b, "decode_tok_s") is None  # runs that do not pair up
    assert bench.paired_ratio(a, [{"prefill_ms": 1.0}] * 3, "decode_tok_s") is None


def test_median_interval_brackets_the_median_and_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 0.1, 30), rng.normal(1.0, 0.1, 300)
    for v in (small, large):
        lo, hi = bench.median_interval(v)
        assert lo <= np.median(v) <= hi
    assert np.subtract(*bench.median_interval(large)[::-1]) < np.subtract(*bench.median_interval(small)[::-1])
    assert bench.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # few runs: the whole range
    # the interval covers the true median in about 95% of samples
    hits = sum(lo <= 0 <= hi for lo, hi in (bench.median_interval(rng.standard_normal(40)) for _ in range(400)))
    assert 0.9 < hits / 400 < 0.995
