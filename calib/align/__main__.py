"""Train smol-llava's projector, evaluate it against the seeded-random one, and write the shippable artifact.

    python -m calib.align --out DIR [--model smol-llava|gemma-llava] [--seed 0] [--threads 2]

DIR gets `<model>_projector.safetensors` (fp16, e.g. smol_llava_projector.safetensors), `evaluation.json`
(every held-out answer and photo description) and `manifest.json` (settings, data seed, metrics, sha256 of each
file). Shipping it means copying DIR's files to where calib.models.SHIPPED_PROJECTORS points for that model
(calib/models/assets/ for smol-llava, calib/models/assets/gemma-llava/ for gemma-llava).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

EVALUATION_FILE = "evaluation.json"


def projector_file(model_type: str) -> str:
    """The shipped file name of a family model's projector."""
    return f"{model_type.replace('-', '_')}_projector.safetensors"


def projector_kind(model_type: str) -> str:
    """The manifest kind of a family model's projector artifact."""
    return f"{model_type}-projector"


PROJECTOR_FILE, KIND = projector_file("smol-llava"), projector_kind("smol-llava")


def lora_file(model_type: str) -> str:
    """The shipped file name of a family model's LoRA deltas (when trained with --lora-rank)."""
    return f"{model_type.replace('-', '_')}_lora.safetensors"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m calib.align", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--model", default="smol-llava", choices=("smol-llava", "gemma-llava"),
                   help="the family model whose projector to train (its language model stays frozen unless --lora-rank)")
    p.add_argument("--seed", type=int, default=0, help="data, initialisation and shuffling seed")
    p.add_argument("--scenes", type=int, default=2400, help="training scenes (runtime.scenes train split)")
    p.add_argument("--multi-group-fraction", type=float, default=None,
                   help="share of training scenes with two groups (default: the split's own, about a third)")
    p.add_argument("--every-binding-question", dest="every_binding", action="store_true",
                   help="a two-group scene gets every colour and shape question instead of one random question "
                        "of each kind (measured worse: docs/projector.md)")
    p.add_argument("--photo-views", type=int, default=8, help="views (original + crops/flips) of each photo")
    p.add_argument("--tokens-per-patch", type=int, default=1,
                   help="image tokens per 7x7 patch (2: a patch's colour and shape can sit in adjacent tokens)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4, help="images per step (each with all its chats)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (2e-3 ended at a lower loss than 1e-3 in the same steps: docs/projector.md)")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    p.add_argument("--eval-scenes", type=int, default=50, help="held-out test scenes (3 questions each)")
    p.add_argument("--novel-scenes", type=int, default=30, help="also evaluate on this many `novel`-split scenes")
    p.add_argument("--group-by-length", action="store_true",
                   help="batch samples of similar length together (about 12%% less padding; off in the shipped run)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="also tune the language model with LoRA adapters of this rank (0: frozen, LLaVA's first "
                        "stage; > 0: LLaVA-1.5's second stage in small, shipped as deltas merged at build time)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (scaling = alpha / rank)")
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated Linear names to adapt")
    p.add_argument("--lora-lr", type=float, default=5e-4, help="peak learning rate of the LoRA weights")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 can be faster on a busy machine)")
    p.add_argument("--no-standardise", dest="standardise", action="store_false",
                   help="train on the raw features (default: per-channel standardised, folded into the first Linear)")
    p.add_argument("--feature-cache", type=Path, help="directory to keep vision features between runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _accuracy_table(metrics: dict[str, Any]) -> str:
    lines = [f"{'split/kind':<16}{'seeded-random':>16}{'trained':>16}"]
    for split, kinds in metrics["trained"].items():
        for kind, m in kinds.items():
            r = metrics["seeded_random"][split][kind]
            lines.append(f"{split + '/' + kind:<16}{r['accuracy']:>10.1%} ({r['correct']:>2}/{r['n']})"
                         f"{m['accuracy']:>9.1%} ({m['correct']:>2}/{m['n']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole recipe; returns the manifest fields."""
    import torch
    from safetensors.torch import save_file

    from calib.align import data, evaluate, features, packing
    from calib.align.forward import FrozenLM
    from calib.align.train import STD_FLOOR, Standardiser, TrainConfig, train_projector
    from calib.models import efficientnet, family_dir, load_model, lora, smol_llava
    from runtime.artifacts import atomic_dir, write_manifest
    from runtime.errors import UserError

    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists; choose another --out or pass --force to replace it")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.lora_rank < 0:
        raise UserError(f"--lora-rank must be >= 0, got {args.lora_rank}")
    if args.tokens_per_patch < 1:
        raise UserError(f"--tokens-per-patch must be >= 1, got {args.tokens_per_patch}")
    torch.set_num_threads(args.threads)
    progress = not args.quiet
    config = TrainConfig(seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         warmup_fraction=args.warmup, group_by_length=args.group_by_length)
    t0 = time.perf_counter()
    # Start from the seeded-random projector: the shipped one may be of an older feature format.
    model = load_model(str(family_dir(args.model, shipped=False, tokens_per_patch=args.tokens_per_patch)))
    samples = data.training_samples(args.scenes, args.photo_views, args.seed, args.multi_group_fraction,
                                    args.every_binding)
    feats = features.cached_encode(model.module.vision_tower, [s.image for s in samples], efficientnet.FEATURES_ID,
                                   args.feature_cache, progress=progress)
    t_features = time.perf_counter() - t0
    layout, encoded = packing.encode_samples(model, samples)
    adapter_params: list = []
    if args.lora_rank:
        adapter_params = lora.attach(model.module.language_model, args.lora_rank, args.lora_alpha,
                                     [t for t in args.lora_targets.split(",") if t], args.seed)
    lm = FrozenLM(model, layout, adapters=bool(adapter_params))
    hidden = model.config["projector_config"]["hidden_size"]
    text_hidden = model.config["text_config"]["hidden_size"]
    projector = smol_llava.seed_projector(
        smol_llava.build_projector(hidden, text_hidden, tokens_per_patch=args.tokens_per_patch), args.seed)
    standardiser = Standardiser.fit(feats) if args.standardise else None
    result = train_projector(projector, lm, layout, encoded, feats, model.pad_token_id, config, progress,
                             standardiser=standardiser, adapter_params=adapter_params, adapter_lr=args.lora_lr)
    deltas = lora.adapter_state(model.module.language_model) if adapter_params else {}
    shipped = {k: v.to(torch.float16).contiguous() for k, v in result.state.items()}
    print(f"trained in {result.seconds / 60:.1f} min: loss {result.losses[0]:.3f} -> "
          f"{sum(result.losses[-10:]) / len(result.losses[-10:]):.3f} (mean of the last 10 steps)", flush=True)

    t1 = time.perf_counter()
    splits = {"test": evaluate.heldout_questions(args.eval_scenes, args.seed, "test")}
    if args.novel_scenes:
        splits["novel"] = evaluate.heldout_questions(args.novel_scenes, args.seed, "novel")
    random_state = smol_llava.seed_projector(
        smol_llava.build_projector(hidden, text_hidden, tokens_per_patch=args.tokens_per_patch)).state_dict()
    report: dict[str, Any] = {}
    for name, state in (("seeded_random", random_state), ("trained", shipped)):
        model.module.projector.load_state_dict({k: v.float() for k, v in state.items()})
        untuned = lora.disabled(model.module.language_model) if deltas and name == "seeded_random" else nullcontext()
        with untuned:
            report[name] = {split: evaluate.visual_accuracy(model, qs, f"{name} {split}", progress)
                            for split, qs in splits.items()}
    photos = evaluate.describe_photos(model, progress)
    t_eval = time.perf_counter() - t1
    metrics = {name: {split: r["by_kind"] for split, r in per.items()} for name, per in report.items()}
    print(_accuracy_table(metrics))
    for p in photos:
        print(f"  {p['photo']:<22}{'(trained on)' if p['trained_on'] else '(held out)':<14}{p['description']}")

    fields = {
        "architecture": model.config["projector_config"]["type"], "tokens_per_patch": args.tokens_per_patch,
        "keys": sorted(shipped), "dtype": "float16",
        "model_type": args.model,
        "lora": ({"file": lora_file(args.model), "rank": args.lora_rank, "alpha": args.lora_alpha,
                  "scaling": args.lora_alpha / args.lora_rank, "targets": args.lora_targets.split(","),
                  "lr": args.lora_lr, "keys": len(deltas)} if deltas else None),
        "base": {"language_model": smol_llava.RECIPES[args.model].language_model,
                 "vision_tower": model.config["vision_config"]["source"], "frozen": ["vision_tower"] + ([] if deltas else ["language_model"])},
        "data": {"seed": args.seed, "train_scenes": args.scenes, "scene_split": "train",
                 "photos": [p.name for p in data.PHOTOS], "photo_views": args.photo_views,
                 "heldout_photos": [p.name for p in data.HELDOUT_PHOTOS], "eval_split": "test",
                 "eval_scenes": args.eval_scenes, "novel_scenes": args.novel_scenes,
                 "multi_group_fraction": args.multi_group_fraction,
                 "turns_per_scene": ("caption + one count question + every colour and shape question (one of each "
                                     "on one-group scenes)" if args.every_binding
                                     else "caption + one colour, shape and count question"),
                 "short_answer_suffix": data.SHORT_SUFFIX.strip()},
        "training": {**config.to_dict(), "steps": len(result.losses), "optimizer": "AdamW, linear warm-up, cosine",
                     "loss": "cross-entropy on answer tokens (+ the end-of-response token), each chat weighted equally",
                     "input_standardisation": ({"std_floor": STD_FLOOR, "fitted_on": "every training patch",
                                                "folded_into": ["0.weight", "0.bias"]} if args.standardise else None),
                     "threads": args.threads, "torch": torch.__version__, "machine": platform.machine()},
        "losses": [round(x, 4) for x in result.losses],
        "metrics": {"accuracy": metrics, "photo_descriptions": photos,
                    "evaluation": "greedy, exact match on the normalised answer (calib.align.evaluate)"},
        "wall_seconds": {"features_and_load": round(t_features, 1), "training": round(result.seconds, 1),
                         "evaluation": round(t_eval, 1)},
    }
    with atomic_dir(args.out, overwrite=args.force) as tmp:
        save_file(shipped, str(tmp / projector_file(args.model)), metadata={"format": "pt"})
        if deltas:
            save_file(deltas, str(tmp / lora_file(args.model)),
                      metadata={"format": "pt", "scaling": repr(args.lora_alpha / args.lora_rank)})
        (tmp / EVALUATION_FILE).write_text(json.dumps({name: {s: r["responses"] for s, r in per.items()}
                                                       for name, per in report.items()}, indent=1) + "\n")
        write_manifest(tmp, projector_kind(args.model), **fields)
    print(f"wrote {args.out} (training {result.seconds / 60:.1f} min, evaluation {t_eval / 60:.1f} min)")
    return fields


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and write the projector; a user error prints one line and returns 2."""
    from runtime import cli

    def _main(a: Sequence[str] | None) -> None:
        run(_parser().parse_args(a))

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
