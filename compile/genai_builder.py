"""onnxruntime-genai's model builder, run as compile.fused needs it (a script: it imports nothing of this project, so
any interpreter with onnxruntime-genai runs it).

    python compile/genai_builder.py -i LM_DIR -o OUT -p fp32 -e cpu -c CACHE --extra_options exclude_embeds=true ...

The arguments are the builder's own (`python -m onnxruntime_genai.models.builder`). One fix is applied first: the
builder's Gemma 3 takes every sixth layer as the full-attention one (`(layer_id + 1) % 6`), which is Gemma 3's
released pattern but not what a config's `layer_types` may say (the tiny test model's: sliding, sliding, full,
sliding); with the fix the layer types come from the config when it lists them, so the two agree on every model.
"""
from __future__ import annotations

import os
import runpy
import sys


def patch_gemma3_layer_types() -> None:
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's directory on sys.path, as the builder expects)
    from builders import gemma

    cls = getattr(gemma, "Gemma3Model", None)
    if cls is None or getattr(cls, "_sgm_layer_types_patched", False):
        return
    init, is_local = cls.__init__, cls.is_local

    def __init__(self, config, *args, **kwargs):
        types = getattr(config, "layer_types", None) or getattr(getattr(config, "text_config", None), "layer_types",
                                                                None)
        self._sgm_layer_types = list(types) if types else None
        init(self, config, *args, **kwargs)

    def local(self, layer_id):
        types = getattr(self, "_sgm_layer_types", None)
        if types and layer_id < len(types):
            return types[layer_id] == "sliding_attention"
        return is_local(self, layer_id)

    cls.__init__, cls.is_local, cls._sgm_layer_types_patched = __init__, local, True


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # compile/'s modules must not shadow
    patch_gemma3_layer_types()
    sys.argv[0] = "onnxruntime_genai.models.builder"
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
