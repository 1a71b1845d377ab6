"""The runtime never imports torch, transformers, calib or compile: every runtime module is imported, and a bundle
answers an image request, in a subprocess where importing any of those raises."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "calib", "compile")

SCRIPT = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = {blocked!r}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the runtime imported {{name}}")
        return None


sys.meta_path.insert(0, Block())
import runtime

modules = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime."))
for name in modules:
    importlib.import_module(name)

from PIL import Image
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest

gen = BundleGenerator.open(sys.argv[1], threads=1)
image = Image.new("RGB", (48, 40), (200, 30, 30))
[r] = gen.generate([GenerationRequest("What is in the image?", image)], GenerationConfig(max_new_tokens=16))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({{"modules": modules, "token_ids": list(r.token_ids), "text": r.text, "loaded": loaded}}))
"""


def test_runtime_runs_with_torch_transformers_calib_compile_blocked(tiny_bundle: Path):
    p = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=BLOCKED), str(tiny_bundle)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    for name in ("runtime.bundle", "runtime.backends.ort", "runtime.generate", "runtime.chat", "runtime.tokenizer"):
        assert name in out["modules"]
    expected = BundleGenerator.open(tiny_bundle, threads=1).generate(
        [GenerationRequest("What is in the image?", Image.new("RGB", (48, 40), (200, 30, 30)))],
        GenerationConfig(max_new_tokens=16))[0]
    assert out["token_ids"] == list(expected.token_ids) and len(out["token_ids"]) == 16
    assert out["text"] == expected.text
