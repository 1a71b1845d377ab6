"""The bundle quantizers, one registered class per method (compile.quantize.registry):

- `rtn`: int4 / int8 decoder MatMuls -> MatMulNBits blocks by ONNX Runtime's quantizer (round to nearest), the
  int4 embedding table -> GatherBlockQuantized;
- `dynamic`: int8 quantize_dynamic, per channel with reduce_range;
- `fp16`: all three graphs cast to float16 (TensorRT);
- `qdq`: float16 graphs with the decoder's weights as symmetric blockwise int4 DequantizeLinear -> MatMul;
- `static-qdq`: int8 Q/DQ on decoder activations and weights, ranges calibrated on the source bundle;
- `gguf-exact`: the GGUF's own blocks (compile.quantize.gguf), as MatMulNBits or, for int4-qdq, Q/DQ;
- `gptq`: int4 MatMulNBits blocks chosen by GPTQ on the bundle's own calibration activations (compile.quantize.gptq),
  the embedding table as the GGUF's exact 8-bit one where the model has a GGUF, else RTN int4; with
  `exact_modules` (mixed precision, gemma-llava's default int4) the named Linears keep the GGUF's exact blocks.
Each returns the manifest's `precision` record; `method` in it keeps the names bundles have always recorded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from compile.quantize import ort_cpu, trt_graphs
from compile.quantize.derive import copy_graph
from compile.quantize.graphs import graph_bytes, load_graph, save_graph
from compile.quantize.registry import QuantMethod, register
from compile.quantize.spec import TARGETS
from runtime.bundle import GRAPHS, Bundle
from runtime.errors import UserError


GPTQ_IMAGE_SHARE = 4  # one calibration prompt in this many is an image prompt (the rest: corpus paragraphs)


def _rewrite(src: Bundle, out: Path, graph: str, model: Any) -> dict[str, Any]:
    rel = src.spec.graphs[graph]
    external = save_graph(model, out / rel)
    return {"bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel), "external_data": external}


def _decoder_file(src: Bundle, out: Path, write: Callable[[Path, Path], dict[str, Any]]) -> dict[str, Any]:
    """The decoder's record when a tool rewrites it file to file: `write(source graph, new graph)` -> its stats."""
    rel = src.spec.graphs["decoder"]
    stats = write(src.graph_path("decoder"), out / rel)
    return {"decoder": {**stats, "bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel)}}


def _external(src: Bundle) -> bool:
    return (src.root / (src.spec.graphs["decoder"] + ".data")).is_file()


class _Recorded(QuantMethod):
    """A method whose graphs go into the `precision` record beside the spec (the graphs it leaves are copied)."""

    recorded: ClassVar[str]  # the `method` the manifest records

    def __call__(self, src: Bundle, out: Path) -> dict[str, Any]:
        graphs = self.graphs(src, out)
        for graph in GRAPHS:
            if graph not in graphs:
                copy_graph(src, graph, out)
                graphs[graph] = "unchanged"
        p = self.spec.precision
        return {"precision": {"name": p, "target": TARGETS[p], **self.spec.to_dict(), "method": self.recorded,
                              "graphs": graphs}}

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        """Write the graphs this method changes; returns their records by graph."""
        raise NotImplementedError


@register("rtn", ("int4", "int8"), recorded="rtn")
class RoundToNearest(_Recorded):
    """int4 / int8 weight-only MatMulNBits blocks (and, for int4, the embedding table)."""

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        s = self.spec
        bits = 4 if s.precision == "int4" else 8
        model, stats = ort_cpu.nbits(load_graph(src.graph_path("decoder")), bits, s.block_size, s.accuracy_level,
                                     s.symmetric, s.lm_head)
        graphs = {"decoder": {**stats, **_rewrite(src, out, "decoder", model)}}
        if s.precision == "int4" and s.embeddings:
            model, stats = ort_cpu.int4_embeddings(load_graph(src.graph_path("embed")), s.block_size, s.symmetric)
            graphs["embed"] = {**stats, **_rewrite(src, out, "embed", model)}
        return graphs


@register("dynamic", ("int8",), default=False, recorded="dynamic")
class DynamicInt8(_Recorded):
    """int8 quantize_dynamic of the decoder (per channel, reduce_range)."""

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        return _decoder_file(src, out, lambda a, b: ort_cpu.dynamic_int8(a, b, self.spec.lm_head, _external(src)))


@register("fp16", ("fp16",), recorded="cast", qdq=False)
class Float16(_Recorded):
    """Every graph in float16; with `qdq`, the decoder's weights as symmetric int4 DequantizeLinear -> MatMul."""

    qdq: ClassVar[bool]

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        s, graphs = self.spec, {}
        for graph in GRAPHS:
            model = trt_graphs.fp16(load_graph(src.graph_path(graph)), s.keep_fp32)
            stats: dict[str, Any] = {"dtype": "float16"}
            if graph == "decoder" and self.qdq:
                model, q = ort_cpu.nbits(model, 4, s.block_size, None, True, s.lm_head, qdq=True)
                stats.update(q)
            graphs[graph] = {**stats, **_rewrite(src, out, graph, model)}
        return graphs


@register("qdq", ("int4-qdq",), recorded="rtn", qdq=True)
class Int4QDQ(Float16):
    """TensorRT's int4 weight-only form with RTN scales: float16 graphs, int4 Q/DQ decoder weights."""


@register("static-qdq", ("int8-qdq",), recorded="static")
class StaticInt8QDQ(_Recorded):
    """TensorRT explicit INT8: Q/DQ on decoder MatMul activations and weights, ranges from the source bundle."""

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        from compile.quantize.calibration import calibration_items, decoder_feeds

        s = self.spec
        items = s.items_for(self.name)
        n_img = items // 2
        feeds = decoder_feeds(src.root, calibration_items(n_img, items - n_img))
        return _decoder_file(src, out, lambda a, b: trt_graphs.static_int8(a, b, feeds, s.lm_head, _external(src),
                                                                            s.skip_modules))


@register("gptq", ("int4",), default=False, recorded="gptq")
class GPTQ(_Recorded):
    """int4 decoder Linears by GPTQ (integer zero points, or symmetric), fitted on prefill activations of
    `calibration_items` prompts (a quarter image prompts, the rest corpus paragraphs; none of them the check's or
    the perplexity's)."""

    def graphs(self, src: Bundle, out: Path) -> dict[str, Any]:
        from compile.quantize.calibration import calibration_items, decoder_feeds
        from compile.quantize.gptq import quantize_decoder

        s = self.spec
        if s.block_size != 32:
            raise UserError(f"GPTQ writes blocks of 32 (got --block-size {s.block_size})")
        exact = self._exact(src)  # refused before the calibration pass
        items = s.items_for(self.name)
        n_img = items // GPTQ_IMAGE_SHARE
        feeds = decoder_feeds(src.root, calibration_items(n_img, items - n_img))
        model, stats = quantize_decoder(load_graph(src.graph_path("decoder")), feeds, s.accuracy_level, s.symmetric,
                                        s.lm_head, act_order=s.act_order, exact=exact,
                                        lm_head_block_size=s.lm_head_block_size)
        graphs = {"decoder": {**stats, **_rewrite(src, out, "decoder", model)}}
        if s.embeddings:
            graphs["embed"] = self._embeddings(src, out)
        return graphs

    def _exact(self, src: Bundle) -> Any:
        """The --exact-modules with the model's GGUF (refused for a model the recipes do not quantize from one)."""
        from compile.quantize.gguf import GGUFWeights, default_gguf, folded_row_scales
        from compile.quantize.gptq import ExactModules
        from compile.recipes import RECIPES

        s = self.spec
        if not s.exact_modules:
            return None
        recipe = RECIPES.get(src.manifest.get("model_type"))
        if s.gguf is None and (recipe is None or not recipe.quantizes_from_gguf(src.manifest, "int4")):
            raise UserError(f"--exact-modules keeps a GGUF's blocks, and {src.root} is not a model quantized from a "
                            "GGUF (smol-llava, gemma-llava); pass --gguf FILE for its checkpoint's GGUF")
        weights = GGUFWeights(s.gguf or default_gguf(src.manifest.get("model_type")))
        return ExactModules(s.exact_modules, weights, folded_row_scales(src))

    def _embeddings(self, src: Bundle, out: Path) -> dict[str, Any]:
        """The GGUF's exact 8-bit table for a model the recipes quantize from a GGUF, else RTN int4 blocks."""
        from compile.recipes import RECIPES

        recipe = RECIPES.get(src.manifest.get("model_type"))
        s = self.spec
        if recipe is not None and recipe.quantizes_from_gguf(src.manifest, "int4"):
            from compile.quantize.gguf import GGUFWeights, convert_embed, default_gguf

            weights = GGUFWeights(s.gguf or default_gguf(src.manifest.get("model_type")))
            model, stats = convert_embed(load_graph(src.graph_path("embed")), weights)
        else:
            model, stats = ort_cpu.int4_embeddings(load_graph(src.graph_path("embed")), s.block_size, s.symmetric)
        return {**stats, **_rewrite(src, out, "embed", model)}


@register("gguf-exact", ("int4", "int4-qdq"), default=False)
class GGUFExact(QuantMethod):
    """The GGUF's own int4 / int8 blocks, exactly (compile.quantize.gguf); a folded bundle's factors in the scales."""

    def __call__(self, src: Bundle, out: Path) -> dict[str, Any]:
        from compile.quantize.gguf import GGUFWeights, convert, default_gguf

        from compile.quantize.gguf import Approximation

        s = self.spec
        weights = GGUFWeights(s.gguf or default_gguf(src.manifest.get("model_type")))
        return convert(src, out, weights, s.accuracy_level, s.embeddings, qdq=s.precision == "int4-qdq",
                       approximation=Approximation(s.gguf_zero_points, s.gguf_lm_head))

    @staticmethod
    def blocks_of(bundle: Bundle) -> tuple[Any, Any, int, Any]:
        """(GGUF weights, the folded row scales or None, accuracy level, approximation) a gguf-exact `bundle` was
        written with, to convert another graph of its model the same way (compile.fused's decoder)."""
        from compile.quantize.gguf import Approximation, GGUFWeights, folded_row_scales

        q = bundle.quantization
        return (GGUFWeights(Path(q["gguf"]["path"])), folded_row_scales(bundle), q.get("accuracy_level") or 4,
                Approximation.from_record(q.get("approximation")))
