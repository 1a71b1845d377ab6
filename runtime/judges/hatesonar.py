"""The HateSonar judge (hatesonar 0.1.0): TF-IDF + logistic regression on Davidson et al.'s tweets, in ONNX Runtime.

Classes: hate speech, offensive language, neither. `score` is P(hate) + P(offensive) = 1 - P(neither).
The wheel's graph asks ONNX Runtime for the en_US.UTF-8 locale (to lowercase), which many machines lack,
and ends in a ZipMap (a list of dicts per text). We convert it once into the asset cache (the `onnx`
package is needed for that conversion only): the lowercasing node uses the always-present "C" locale
(equivalent here: the graph's tokenizer keeps only ASCII [a-zA-Z0-9_] runs), and the graph outputs the
probability tensor [N, 3] directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import assets
from runtime.artifacts import read_manifest, sha256_file
from runtime.errors import UserError
from runtime.judges.onnx_io import cpu_session, import_onnx
from runtime.judges.texts import as_texts, check_settings

ASSET = "hatesonar"
MODEL_MEMBER = "hatesonar/model/model.onnx"
DERIVED_KEY = "judge-hatesonar-v1"
CLASSES = ("hate_speech", "offensive_language", "neither")
LOCALE = "C"
_PROBABILITIES = "probabilities"


def _convert(tmp: Path) -> dict[str, Any]:
    onnx = import_onnx("converting the HateSonar judge's graph")
    src = assets.extract(ASSET, MODEL_MEMBER)
    model = onnx.load(str(src))
    graph = model.graph
    normalizers = [n for n in graph.node if n.op_type == "StringNormalizer"]
    producers = {o for n in graph.node for o in n.output}
    if len(normalizers) != 1 or _PROBABILITIES not in producers:
        raise UserError(f"{src} is not the HateSonar graph this judge expects (one StringNormalizer and a "
                        f"{_PROBABILITIES!r} tensor); check the pinned wheel")
    node = normalizers[0]
    kept = [a for a in node.attribute if a.name != "locale"]
    del node.attribute[:]
    node.attribute.extend(kept + [onnx.helper.make_attribute("locale", LOCALE)])
    zipmaps = [n for n in graph.node if n.op_type == "ZipMap"]
    for n in zipmaps:
        graph.node.remove(n)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(_PROBABILITIES, onnx.TensorProto.FLOAT, [None, 3]))
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp / "model.onnx"))
    return {"source": assets.WHEELS[ASSET].requirement, "wheel_sha256": assets.WHEELS[ASSET].sha256,
            "source_files": {MODEL_MEMBER: sha256_file(src)}, "classes": list(CLASSES), "locale": LOCALE}


def converted() -> Path:
    """Directory of the converted judge in the asset cache (model.onnx), built once."""
    return assets.derived(DERIVED_KEY, _convert)


class HateSonarJudge:
    """P(hate or offensive) from HateSonar; `class_scores` gives the three class probabilities."""

    name = "hatesonar"

    def __init__(self, threshold: float = 0.5, batch_size: int = 256, directory: str | Path | None = None) -> None:
        check_settings(threshold, batch_size)
        self.threshold = threshold
        self.batch_size = batch_size
        self.directory = Path(directory) if directory is not None else converted()
        self.manifest = read_manifest(self.directory)
        self.session = cpu_session(self.directory / "model.onnx", self.name)

    def class_scores(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), 3]: probabilities of CLASSES, in order."""
        items = as_texts(texts, self.name)
        out = np.zeros((len(items), len(CLASSES)), dtype=np.float32)
        for start in range(0, len(items), self.batch_size):
            batch = np.array(items[start:start + self.batch_size], dtype=object)
            (probs,) = self.session.run([_PROBABILITIES], {"text": batch})
            out[start:start + len(batch)] = probs
        return out

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """P(hate speech) + P(offensive language) per text, in order."""
        return 1.0 - self.class_scores(texts)[:, CLASSES.index("neither")]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "asset": self.manifest["source"], "wheel_sha256": self.manifest["wheel_sha256"],
                "converted": DERIVED_KEY, "score": "P(hate_speech) + P(offensive_language)",
                "threshold": self.threshold, "harmful": "score >= threshold"}
