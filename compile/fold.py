"""Fold an experts artifact into the model's weights: the deployed form of the SGM intervention.

Scaling a Linear's output by a per-unit vector equals scaling the rows of its weight (and its bias), so
every hooked MLP Linear (gate_proj, up_proj, down_proj alike) gets `W[i, :] *= alpha_i`, `b[i] *= alpha_i`
with the vectors of `calib.intervention.row_scales`, the same ones the hooks use. Before anything is written
the folded model is compared with the hook intervention on a check batch of image + text prompts; a fold
whose logits differ by more than the tolerance is refused.

    python -m compile.fold --model smol-llava --experts build/experts --out build/detoxified

The output is a normal checkpoint of the same model type (smol-llava directory, or llava-hf directory that
transformers loads as before) with `sgm_folded` recorded in its config.json and a manifest.json of kind
"sgm-detoxified" naming the experts artifact and the source model. Folding a folded checkpoint is refused.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from calib.experts import Experts, check_units, load_experts, model_units
from calib.intervention import row_scales, suppress
from calib.models import load_model, resolve
from calib.models.base import MultimodalModel
from compile.recipes import recipe
from runtime import cli
from runtime.artifacts import MANIFEST, atomic_dir, check_output, read_manifest, sha256_file, write_manifest
from runtime.compare import Comparison, compare_arrays, format_comparison
from runtime.errors import UserError

KIND = "sgm-detoxified"
FORMAT_VERSION = 1
FOLDED_KEY = "sgm_folded"
# fp32 rounding alone separates fold and hooks: on smol-llava (30 layers, |logits| ~ 40) they differ by 1.0e-4 to
# 1.7e-4, the hooks themselves sit 0.9e-4 to 2.5e-4 from the exact (fp64) intervention, and a random 1-ulp
# change of the MLP weights moves logits by up to 2.7e-4. A wrong fold moves them by 1.8 (one unit left out)
# to 31.6 (factors one layer off). The default sits between the two, with margins of ~4x and ~2000x.
DEFAULT_TOLERANCE = 1e-3
CHECK_QUESTIONS = ("What is in the image?", "Describe the picture in one sentence.")


@dataclass(frozen=True)
class FoldReport:
    """What a fold changed and how closely it reproduces the hooks on the check batch (runtime.compare)."""

    modules: int
    units_scaled: int
    vs_hook: Comparison
    vs_unfolded: Comparison

    def to_dict(self) -> dict[str, Any]:
        return {"modules": self.modules, "units_scaled": self.units_scaled, "vs_hook": self.vs_hook.to_dict(),
                "vs_unfolded": self.vs_unfolded.to_dict()}


@torch.no_grad()
def fold(model: MultimodalModel, experts: Experts | dict[str, torch.Tensor]) -> None:
    """Scale the rows (and bias) of every hooked Linear in place by its `row_scales` vector."""
    if isinstance(experts, Experts):
        check_units(experts, model_units(model), model.name)
        scales = row_scales(experts)
    else:
        scales = experts
    units = {u.key: u for u in model.mlp_units()}
    for key, scale in scales.items():
        if key not in units:
            raise UserError(f"scale for {key!r}, which {model.name} does not have; use factors built for this model")
        linear = model.mlp_linear(units[key])
        work = torch.promote_types(linear.weight.dtype, torch.float32)  # fp16/bf16 weights: scale in fp32
        s = scale.to(device=linear.weight.device, dtype=work)
        if s.shape != (linear.out_features,):
            raise UserError(f"scale for {key} has shape {tuple(s.shape)}, {model.name} needs ({linear.out_features},)")
        linear.weight.copy_((linear.weight.to(work) * s[:, None]).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.to(work) * s).to(linear.bias.dtype))


def experts_scales(experts_dir: str | Path) -> tuple[Experts, dict[str, np.ndarray]]:
    """The experts artifact and its row scales (`row_scales`, as float32 numpy), for folds into ONNX graphs."""
    experts = load_experts(experts_dir)
    return experts, {k: v.numpy() for k, v in row_scales(experts).items()}


def check_batch(model: MultimodalModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A left-padded batch of image + text prompts with answers, and one text-only prompt:
    (inputs_embeds, attention_mask, position_ids). Images are runtime.scenes' synthetic scenes."""
    from runtime.scenes import scene

    prompts = []
    for i, question in enumerate(CHECK_QUESTIONS):
        sc = scene(i)
        ids = model.tokenize(model.chat_prompt(question, True) + " " + sc.caption)
        prompts.append(model.inputs_embeds(ids, [sc.image]))
    prompts.append(model.inputs_embeds(model.tokenize(model.chat_prompt("Tell me about your day.", False)
                                                      + " It was long, but good.")))
    s = max(p.shape[0] for p in prompts)
    embeds = prompts[0].new_zeros((len(prompts), s, prompts[0].shape[-1]))
    mask = torch.zeros((len(prompts), s), dtype=torch.long)
    for i, p in enumerate(prompts):
        embeds[i, s - p.shape[0]:] = p
        mask[i, s - p.shape[0]:] = 1
    return embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def _logits(model: MultimodalModel, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    embeds, mask, pos = batch
    logits, _ = model.decode(embeds, mask, pos)
    return logits[mask.bool()].float()


def fold_and_check(model: MultimodalModel, experts: Experts, tolerance: float = DEFAULT_TOLERANCE) -> FoldReport:
    """Fold `experts` into `model` in place and compare with the hooks on the check batch.

    Raises UserError when the largest |logit difference| between fold and hooks exceeds `tolerance`
    (the model in memory is then folded but wrong: do not save it).
    """
    scales = row_scales(experts)
    batch = check_batch(model)
    unfolded = _logits(model, batch)
    with suppress(model, experts):
        hooked = _logits(model, batch)
    fold(model, experts)
    folded = _logits(model, batch)
    what = f"the check batch ({int(folded.shape[0])} positions)"
    report = FoldReport(modules=len(scales), units_scaled=int(sum(int((s != 1).sum()) for s in scales.values())),
                        vs_hook=compare_arrays("fold vs hooks", what, folded.numpy(), hooked.numpy(),
                                               tolerance=tolerance),
                        vs_unfolded=compare_arrays("fold vs unfolded", what, folded.numpy(), unfolded.numpy()))
    if not report.vs_hook.ok:
        raise UserError(f"the folded model differs from the hook intervention: {format_comparison(report.vs_hook)}; "
                        "nothing was written. A correct fold differs by rounding only (about 1e-4 in fp32); "
                        "1e-2 and more means the fold does not implement the intervention")
    return report


def folded_marker(model: MultimodalModel) -> dict[str, Any] | None:
    """The `sgm_folded` record of a loaded model's config (None for an unfolded model)."""
    return model.config_dict().get(FOLDED_KEY)


def _refuse_folded(model: MultimodalModel, location: Any) -> None:
    path = Path(str(location))
    manifest_kind = None
    if (path / MANIFEST).is_file():
        manifest_kind = read_manifest(path, verify=False).get("kind")
    marker = folded_marker(model)
    if marker is not None or manifest_kind == KIND:
        source = (marker or {}).get("experts_manifest_sha256", "unknown")
        raise UserError(f"{location} is already folded (experts manifest sha256 {str(source)[:12]}...); folding "
                        "twice would apply the factors twice. Fold the original checkpoint instead")


def _versions() -> dict[str, str]:
    from compile.provenance import package_versions

    return package_versions()


def fold_to_dir(model_name_or_path: str, experts_dir: str | Path, out_dir: str | Path,
                tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Fold an experts artifact into a model and write the detoxified checkpoint atomically; returns its manifest.

    Refuses a model that is already folded, an experts artifact made for another model, and a fold that
    does not reproduce the hooks within `tolerance` (max |dlogit| on the check batch), writing nothing.
    """
    out_dir = check_output(out_dir, [model_name_or_path, experts_dir], kind=KIND)
    if out_dir.exists():
        raise UserError(f"{out_dir} already exists; choose another output directory or remove it first")
    model_type, location = resolve(model_name_or_path)
    model = load_model(model_name_or_path)
    _refuse_folded(model, location)
    experts_dir = Path(experts_dir)
    experts = load_experts(experts_dir, model)
    source = {"name": model.name, "type": model_type, "location": str(location), **model.fingerprint()}
    report = fold_and_check(model, experts, tolerance)
    experts_sha = sha256_file(experts_dir / MANIFEST)
    marker = {"experts_manifest_sha256": experts_sha, "source_mlp_weights_sha256": source["mlp_weights_sha256"],
              "method": experts.spec.to_dict()}
    with atomic_dir(out_dir) as tmp:
        recipe(model_type).save_checkpoint(model, location, tmp, {FOLDED_KEY: marker})
        manifest = write_manifest(
            tmp, KIND, format_version=FORMAT_VERSION, model_type=model_type, source=source,
            experts={"path": str(experts_dir.resolve()), "manifest_sha256": experts_sha, "model": dict(experts.model),
                     "method": experts.spec.to_dict(), "counts": experts.counts()["totals"]},
            fold=report.to_dict(), model={"mlp_weights_sha256": model.fingerprint()["mlp_weights_sha256"]},
            versions=_versions())
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.fold", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="smol-llava, llava, tiny-random-llava, or a model directory")
    p.add_argument("--experts", required=True, type=Path, help="experts artifact made for this model")
    p.add_argument("--out", required=True, type=Path, help="new directory for the detoxified checkpoint")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest |logit difference| allowed between fold and hooks (default %(default)g)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    manifest = fold_to_dir(args.model, args.experts, args.out, args.tolerance)
    f = manifest["fold"]
    print(f"folded {f['units_scaled']} units in {f['modules']} modules of {args.model} into {args.out}")
    print(format_comparison(Comparison.from_dict(f["vs_hook"])))
    print(format_comparison(Comparison.from_dict(f["vs_unfolded"])))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
