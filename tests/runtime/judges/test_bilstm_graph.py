"""The Keras BiLSTM classifier as an ONNX graph, checked against an independent implementation (torch.nn.LSTM)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.judges import bilstm_graph
from runtime.judges.onnx_io import cpu_session

torch = pytest.importorskip("torch", reason="torch is the independent reference implementation of the LSTM")

VOCAB, EMBED, HIDDEN, DENSE, LABELS, MAXLEN = 37, 5, 4, 6, 3, 9


def _random_keras_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"embedding": (VOCAB, EMBED), "forward.kernel": (EMBED, 4 * HIDDEN),
              "forward.recurrent": (HIDDEN, 4 * HIDDEN), "forward.bias": (4 * HIDDEN,),
              "backward.kernel": (EMBED, 4 * HIDDEN), "backward.recurrent": (HIDDEN, 4 * HIDDEN),
              "backward.bias": (4 * HIDDEN,), "hidden.kernel": (2 * HIDDEN, DENSE), "hidden.bias": (DENSE,),
              "output.kernel": (DENSE, LABELS), "output.bias": (LABELS,)}
    return {k: rng.normal(0, 0.8, s).astype(np.float32) for k, s in shapes.items()}


def _torch_reference(t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Keras semantics in torch: gate blocks (i, f, c, o) are torch's (i, f, g, o); one bias; no masking."""
    lstm = torch.nn.LSTM(EMBED, HIDDEN, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, d in (("", "forward"), ("_reverse", "backward")):
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(t[f"{d}.kernel"].T))
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(t[f"{d}.recurrent"].T))
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(t[f"{d}.bias"]))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
        x = torch.from_numpy(t["embedding"])[torch.from_numpy(ids)]
        states, _ = lstm(x)
        pooled = states.max(dim=1).values
        hidden = torch.relu(pooled @ torch.from_numpy(t["hidden.kernel"]) + torch.from_numpy(t["hidden.bias"]))
        return torch.sigmoid(hidden @ torch.from_numpy(t["output.kernel"]) + torch.from_numpy(t["output.bias"])).numpy()


def test_graph_matches_torch_lstm(tmp_path):
    weights = _random_keras_weights(0)
    path = tmp_path / "model.onnx"
    path.write_bytes(bilstm_graph.build(weights, MAXLEN).SerializeToString())
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(7, MAXLEN)).astype(np.int64)
    ids[0, :6] = 0  # left padding, as the Keras tokenizer produces it
    got = cpu_session(path, "test").run(None, {bilstm_graph.INPUT: ids})[0]
    want = _torch_reference(weights, ids)
    assert got.shape == (7, LABELS)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.ptp(got, axis=0).min() > 0.05  # the rows differ: the check compares real outputs, not constants


def test_gate_order_matters(tmp_path, monkeypatch):
    """Keeping Keras' gate order in the ONNX LSTM must give different outputs (so the reorder is tested)."""
    weights = _random_keras_weights(2)
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(4, MAXLEN)).astype(np.int64)
    want = _torch_reference(weights, ids)
    monkeypatch.setattr(bilstm_graph, "_onnx_gates", lambda keras: keras)
    model = bilstm_graph.build(weights, MAXLEN)
    path = tmp_path / "unordered.onnx"
    path.write_bytes(model.SerializeToString())
    got = cpu_session(path, "test").run(None, {bilstm_graph.INPUT: ids})[0]
    assert np.abs(got - want).max() > 1e-2


def test_missing_tensor_is_refused():
    weights = _random_keras_weights(0)
    del weights["backward.bias"]
    with pytest.raises(ValueError, match="backward.bias"):
        bilstm_graph.build(weights, MAXLEN)
