"""Export a multimodal model to three ONNX graphs through Optimum and validate them against PyTorch.

- `export_graphs(model, out_dir, opset)`: vision.onnx (pixel_values -> image_embeds), embed.onnx
  (input_ids -> inputs_embeds), decoder.onnx (inputs_embeds + attention_mask + position_ids + past key
  values -> logits + present key values), via `optimum.exporters.onnx.export_models` and the OnnxConfigs
  registered in compile.export.configs;
- `validate_graphs(model, out_dir)`: ONNX Runtime vs PyTorch on real inputs, one runtime.compare.Comparison per check.

`export_bundle` (compile.export.bundle) writes a whole bundle; `python -m compile.export --model M --out DIR` is its CLI.
"""
from compile.export.graphs import DEFAULT_OPSET, export_graphs
from compile.provenance import package_versions
from compile.export.validate import validate_graphs

__all__ = ["DEFAULT_OPSET", "export_graphs", "package_versions", "validate_graphs"]
