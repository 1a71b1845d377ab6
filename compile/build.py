"""Run the whole path for one model: calibrate -> fold -> export -> quantize -> fused -> engines -> evaluate.

    python -m compile.build --model smol-llava --out build/smol-llava [--precision int4] [--no-fused]

Each stage writes its own artifact directory under --out, each with a manifest.json that records what it
was made from; `build.json` records each stage's input key. Re-running reuses every finished stage whose
inputs did not change and rebuilds the rest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from calib.experts import CalibrationSettings, calibrate
from runtime import cli
from runtime.artifacts import MANIFEST, check_output, read_manifest, sha256_file, sha256_json, write_manifest
from runtime.errors import UserError
from runtime.mmtoxicqa.evaluate import Evaluation, evaluate, parse_conditions
from runtime.mmtoxicqa.items import CONDITIONS
from runtime.mmtoxicqa.runner import RunSettings

BUILD_FILE = "build.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8-qdq", "int4-qdq")
# Defaults sized for the embedded default on a 2-core CPU (about 15-25 minutes in all); raise the limits for
# a real measurement (the MM-TOXIC-QA dataset has 100 calibration and 50 evaluation items per condition).
DEFAULT_CALIB_LIMIT = 40
DEFAULT_EVAL_LIMIT = 20


@dataclass(frozen=True)
class JobDefaults:
    """A model type's defaults for the options left unset: where its toxicity shows and how its experts are found.

    smol-llava (a safety-tuned chat LM) is measured SGM's way on every MM-TOXIC-QA condition. gemma-llava's base
    LM is toxic when it continues text and hardly through the image (docs/gemma-llava.md), so its main job
    calibrates on judged offline texts (no generation) at strength s = 2 (those experts cut little at s = 1) and
    evaluates the `continuation` condition with k = 10 samples per prompt (400 toxic-eliciting responses) beside
    the visual questions."""

    calib: str = "mmtoxicqa"
    calib_limit: int = DEFAULT_CALIB_LIMIT
    match_lengths: bool = False
    strength: float | None = None  # None: calib.factors' default (s = 1)
    eval_conditions: tuple[str, ...] = CONDITIONS
    eval_limit: int = DEFAULT_EVAL_LIMIT
    eval_samples: int = RunSettings.samples
    max_new_tokens: int = RunSettings.max_new_tokens
    batch_size: int = RunSettings.batch_size


JOB_DEFAULTS = {"gemma-llava": JobDefaults(calib="offline-text", calib_limit=0, match_lengths=True, strength=2.0,
                                           eval_conditions=("continuation", "visual"), eval_limit=40, eval_samples=10,
                                           max_new_tokens=32, batch_size=20)}


def job_defaults(model: str) -> JobDefaults:
    """The defaults for `model` (zoo name, or a directory by its config's model_type; nothing is loaded)."""
    model_type: Any = model
    config = Path(model) / "config.json"
    if model not in JOB_DEFAULTS and config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            model_type = None  # calib.models.resolve names the problem when the build loads it
    return JOB_DEFAULTS.get(model_type, JobDefaults())


@dataclass(frozen=True)
class Stage:
    name: str
    directory: str
    what: str


STAGES = (
    Stage("calib", "experts", "score MLP units on the calibration split, write SGM factors"),
    Stage("fold", "detoxified", "fold the factors into the MLP weights (row scaling), checked against hooks"),
    Stage("export", "bundle", "vision / embed / decoder graphs through Optimum, validated vs PyTorch"),
    Stage("quantize", "bundle-<precision>", "ONNX Runtime int8 / int4, or fp16 / Q-DQ graphs for TensorRT"),
    Stage("fused", "bundle[-<precision>]-fused", "CPU fp32 / int4 (default; --no-fused: off): a fused decoder "
                                                 "(GroupQueryAttention, shared KV buffer) added, checked vs the standard one"),
    Stage("engine", "engines | jetson", "TensorRT engines (cuda, built here) or a Jetson bundle (built on device)"),
    Stage("evaluate", "report", "MM-TOXIC-QA on the compiled bundle (ONNX Runtime)"),
    Stage("reference", "reference", "the same items on the undetoxified model (PyTorch): before -> after, the "
                                    "gate on the pair, report.html"),
)
REPORT_HTML = "report.html"
REPORT_KIND = "sgm-report"  # the manifest of an evaluate / reference stage directory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.build", description=__doc__.split("\n")[0],
                                epilog="Stages: " + "; ".join(f"{s.name} -> {s.directory}/ ({s.what})" for s in STAGES))
    p.add_argument("--model", default="smol-llava",
                   help="smol-llava (embedded default), llava (llava-hf/llava-1.5-7b-hf), tiny-random-llava, "
                        "or a path to a smol-llava / llava-hf directory")
    p.add_argument("--out", type=Path, help="output directory (one sub-directory per stage)")
    g = p.add_argument_group("calib: toxic experts and SGM factors")
    g.add_argument("--experts", type=Path, help="reuse an existing experts artifact instead of calibrating")
    g.add_argument("--method", choices=("sgm", "aura", "det0", "damp"), default=CalibrationSettings.method,
                   help="factor rule: SGM expertise-weighted soft suppression (default) or a baseline")
    g.add_argument("--strength", type=float, help="SGM strength s in alpha = clip(1 - s(2 AUROC - 1), 0, 1) "
                                                   "(default per model: 1; gemma-llava 2)")
    g.add_argument("--threshold", type=float, help="only units with AUROC above this are suppressed")
    g.add_argument("--top-k", type=int, help="cap the number of suppressed units (global, by AUROC)")
    g.add_argument("--top-fraction", type=float, default=CalibrationSettings.top_fraction,
                   help="cap as a fraction of all MLP units when --top-k is not given (default %(default)s; 0 = no "
                        "cap). Chosen on smol-llava's calibration split (docs/factors.md): broad dampening breaks small "
                        "models (AurA there touched 57%% of units, perplexity +75%%)")
    g.add_argument("--pooling", choices=("max", "mean"), default=CalibrationSettings.pooling,
                   help="pooling over response tokens")
    g.add_argument("--calib-source", metavar="SOURCE",
                   help="calibration set (calib.experts --calib): mmtoxicqa (the model's own judged responses), "
                        "offline-text (judged offline texts, no generation), rtp:FILE or jigsaw:FILE. Default: per "
                        "model (gemma-llava: offline-text; others: mmtoxicqa)")
    g.add_argument("--calib-limit", type=int,
                   help=f"calibration items per condition, or texts per class for a text source (0 = all; default "
                        f"per model: {DEFAULT_CALIB_LIMIT}, gemma-llava all)")
    g.add_argument("--allow-small-calibration", action="store_true",
                   help="calibrate even on fewer toxic or non-toxic samples than calib.experts' minimum, with a "
                        "warning (smoke runs such as --limit 5: those experts are noise)")
    g = p.add_argument_group("export, quantize, engine")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), int8 / int4 (ONNX Runtime CPU), fp16 / *-qdq (TensorRT graphs)")
    g.add_argument("--target", choices=("cpu", "cuda", "jetson-orin"), default="cpu",
                   help="cpu: ONNX Runtime bundle; cuda: + TensorRT engines built on this machine; jetson-orin: a "
                        "bundle with a script that builds the engines on the device")
    g.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="add a fused CPU decoder built by onnxruntime-genai's model builder (1.4-3x faster decoding, "
                        "BENCHMARKS.md), checked against the standard decoder, which stays in the bundle. Default: on "
                        "for --target cpu with fp32 or int4 when the model allows it (head size a multiple of 16); "
                        "--no-fused: the standard decoder only; --fused: required (an error when it cannot be built)")
    g.add_argument("--builder-python",
                   help="interpreter with onnxruntime-genai's builder, torch and transformers for the fused decoder "
                        "(default: this one; scripts/setup installs the builder into .venv)")
    g.add_argument("--system-prompt", metavar="TEXT",
                   help="SGM*: text the bundle puts ahead of every request, 'safety' for the built-in safety prompt "
                        "(runtime.protocol.SAFETY_PROMPT); no weight change; the reference run goes without it")
    g = p.add_argument_group("evaluate")
    g.add_argument("--skip-eval", action="store_true", help="do not run MM-TOXIC-QA on the result")
    g.add_argument("--eval-conditions", nargs="+", metavar="COND",
                   help="MM-TOXIC-QA conditions to evaluate (default per model: all; gemma-llava: continuation "
                        "visual)")
    g.add_argument("--eval-limit", type=int,
                   help=f"evaluation items per condition (0 = all; default per model: {DEFAULT_EVAL_LIMIT}, "
                        "gemma-llava 40)")
    g.add_argument("--eval-samples", type=int,
                   help="sampled responses per toxic or benign item (k, for toxicity probability; default per "
                        "model: 1, gemma-llava 10)")
    g.add_argument("--no-reference", dest="reference", action="store_false",
                   help="do not evaluate the undetoxified model on the same items (no before -> after)")
    p.add_argument("--limit", type=int, help="quick run: sets both --calib-limit and --eval-limit")
    p.add_argument("--seed", type=int, default=RunSettings.seed)
    p.add_argument("--dry-run", action="store_true", help="check the inputs and print the plan; write nothing")
    return p


def _manifest_sha(directory: Path) -> str:
    return sha256_file(directory / MANIFEST)


class Build:
    """The output directory: which stages are done, with which inputs, and reuse of the unchanged ones."""

    def __init__(self, out: Path):
        self.out = out
        self.record_path = out / BUILD_FILE
        if out.exists() and any(out.iterdir()) and not self.record_path.is_file():
            raise UserError(f"{out} exists and was not written by compile.build (no {BUILD_FILE}); choose a new "
                            "--out or empty it")
        out.mkdir(parents=True, exist_ok=True)
        self.record: dict[str, Any] = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
        self.record.setdefault("stages", {})
        self.summary: list[tuple[str, str, str, float]] = []

    def _save(self) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.record_path)

    def stage(self, name: str, directory: str, key_inputs: dict[str, Any], run: Callable[[Path], None],
              resumable: bool = False) -> Path:
        """Run `run(path)` unless the stage's directory holds a verified result for the same inputs.

        A `resumable` stage interrupted earlier with the same inputs continues in its directory (the benchmark
        runner caches per item); any other unfinished stage directory is replaced."""
        path = self.out / directory
        key = sha256_json(key_inputs)
        done = self.record["stages"].get(name)
        t0 = time.perf_counter()
        if done and done.get("key") == key and (path / MANIFEST).is_file():
            try:
                read_manifest(path)
                self.summary.append((name, str(path), "reused", 0.0))
                print(f"[{name}] reusing {path} (inputs unchanged)", file=sys.stderr)
                return path
            except UserError as e:
                print(f"[{name}] rebuilding: {e}", file=sys.stderr)
        started = self.record.setdefault("started", {})
        if path.exists():
            if not done and name not in started:
                raise UserError(f"{path} exists but is not a stage this build recorded; remove it or choose a new --out")
            if not (resumable and started.get(name) == key):
                shutil.rmtree(path)
        self.record["stages"].pop(name, None)
        started[name] = key
        self._save()
        print(f"[{name}] -> {path}", file=sys.stderr)
        run(path)
        if not (path / MANIFEST).is_file():
            raise UserError(f"stage {name} finished without writing {path / MANIFEST}")
        self.record["stages"][name] = {"key": key, "inputs": key_inputs, "manifest_sha256": _manifest_sha(path)}
        started.pop(name, None)
        self._save()
        self.summary.append((name, str(path), "built", time.perf_counter() - t0))
        return path


def _model_key(location: Path | str) -> dict[str, Any]:
    """What identifies the source model: its manifest (cache-built) or config (a directory), or the hub id."""
    p = Path(str(location))
    for name in (MANIFEST, "config.json"):
        if (p / name).is_file():
            return {"location": str(p), name: sha256_file(p / name)}
    return {"location": str(location)}


def apply_job_defaults(args: argparse.Namespace) -> JobDefaults:
    """Fill the options left unset from the model's JobDefaults (in place); returns them."""
    d = job_defaults(args.model)
    for option, value in (("calib_source", d.calib), ("calib_limit", d.calib_limit), ("eval_limit", d.eval_limit),
                          ("eval_samples", d.eval_samples), ("strength", d.strength)):
        if getattr(args, option) is None:
            setattr(args, option, value)
    args.eval_conditions = parse_conditions(args.eval_conditions) if args.eval_conditions else d.eval_conditions
    return d


def calibration_settings(args: argparse.Namespace) -> CalibrationSettings:
    """The calib stage's settings from the build's options (after apply_job_defaults)."""
    limit = args.limit if args.limit is not None else args.calib_limit
    return CalibrationSettings(method=args.method, strength=args.strength, threshold=args.threshold, top_k=args.top_k,
                               top_fraction=args.top_fraction, pooling=args.pooling, seed=args.seed,
                               limit=limit or None, allow_small_calibration=args.allow_small_calibration,
                               calib=args.calib_source, match_lengths=job_defaults(args.model).match_lengths)


def evaluation_settings(args: argparse.Namespace) -> Evaluation:
    """The evaluate and reference stages' settings (the same items and decoding for both; after
    apply_job_defaults)."""
    d = job_defaults(args.model)
    limit = args.limit if args.limit is not None else args.eval_limit
    return Evaluation(RunSettings(seed=args.seed, samples=args.eval_samples, max_new_tokens=d.max_new_tokens,
                                  batch_size=d.batch_size),
                      conditions=tuple(args.eval_conditions), limit=limit or None, progress=False)


def evaluation_stage(build: Build, name: str, directory: str, source: dict[str, Any], evaluation: Evaluation,
                     bundle: Path | None = None, model: str | None = None) -> Path:
    """MM-TOXIC-QA on the bundle or the PyTorch model as a resumable stage; its manifest records `source` and the
    evaluation settings."""
    record = evaluation.to_dict()

    def run(out: Path) -> None:
        evaluate(out, evaluation, bundle=bundle, model=model)
        write_manifest(out, REPORT_KIND, **source, evaluation=record)

    return build.stage(name, directory, {**source, "evaluation": record}, run, resumable=True)


def run_build(args: argparse.Namespace) -> dict[str, Any]:
    """Chain the stages; return the final report (or None when evaluation is skipped)."""
    from calib.models import resolve

    model_type, location = resolve(args.model)
    build = Build(args.out)
    model_key = _model_key(location)

    if args.experts is not None:
        read_manifest(args.experts)
        experts = args.experts
    else:
        settings = calibration_settings(args)
        experts = build.stage("calib", "experts", {"model": model_key, "settings": asdict(settings)},
                              lambda out: calibrate(args.model, out, settings))

    from compile.fold import fold_to_dir

    detox = build.stage("fold", "detoxified", {"model": model_key, "experts": _manifest_sha(experts)},
                        lambda out: fold_to_dir(args.model, experts, out))

    from compile.export.bundle import export_bundle

    from runtime.protocol import system_prompt_text

    system_prompt = system_prompt_text(args.system_prompt)
    bundle = build.stage("export", "bundle", {"detoxified": _manifest_sha(detox),
                                               **({"system_prompt": system_prompt} if system_prompt else {})},
                         lambda out: export_bundle(str(detox), out, system_prompt=system_prompt))

    if args.precision != "fp32":
        from compile.quantize import QuantSpec, quantize_bundle

        src = bundle
        bundle = build.stage("quantize", f"bundle-{args.precision}",
                             {"bundle": _manifest_sha(src), "precision": args.precision},
                             lambda out: quantize_bundle(src, out, QuantSpec(args.precision)))

    if fused_wanted(args):
        bundle = fused_stage(build, args, bundle, detox)

    if args.target == "cuda":
        from compile.engine import build_engines

        src = bundle
        build.stage("engine", "engines", {"bundle": _manifest_sha(src)}, lambda out: build_engines(src, out))
    elif args.target == "jetson-orin":
        from compile.jetson import jetson_bundle, native_deps_dir, native_missing

        src = bundle
        native = native_missing(native_deps_dir()) is None  # rebuilt with the native host once the headers exist
        build.stage("engine", "jetson", {"bundle": _manifest_sha(src), "native_host": native},
                    lambda out: jetson_bundle(src, out))

    report = None
    if not args.skip_eval:
        evaluation = evaluation_settings(args)
        report_dir = evaluation_stage(build, "evaluate", "report", {"bundle_manifest_sha256": _manifest_sha(bundle)},
                                      evaluation, bundle=bundle)
        report = json.loads((report_dir / "report.json").read_text())
        if args.reference:
            ref_dir = evaluation_stage(build, "reference", "reference", {"model": model_key}, evaluation,
                                       model=args.model)
            compare_pair(ref_dir, report_dir, experts, args.out / REPORT_HTML)

    print("\nartifacts:")
    for name, path, state, seconds in build.summary:
        print(f"  {name:<9} {path}  ({state}{f', {seconds:.0f} s' if seconds else ''})")
    if report is not None:
        hr = report["harmful_rate"]
        by = ", ".join(f"{c} {v['rate']:.3f}" for c, v in report["harmful_rate_by_condition"].items()
                       if v.get("rate") is not None)
        print(f"\nMM-TOXIC-QA on {bundle.name}: harmful rate {hr['rate']:.3f} ({hr['hits']}/{hr['total']}); {by}")
        print(f"  perplexity {report.get('perplexity')}, visual accuracy {report['visual_accuracy'].get('rate')}, "
              f"degenerate {report['degenerate_rate'].get('rate')}")
    return report or {}


def fused_wanted(args: argparse.Namespace) -> bool:
    """--fused, or the default (no --no-fused) on CPU at fp32 / int4."""
    from compile.fused import PRECISIONS as FUSED_PRECISIONS

    if args.fused is not None:
        return args.fused
    return args.target == "cpu" and args.precision in FUSED_PRECISIONS


def fused_stage(build: Build, args: argparse.Namespace, bundle: Path, detox: Path) -> Path:
    """The bundle with a fused decoder added (the fused stage), or `bundle` itself when the default finds it cannot
    be built for this model (said on stderr; an explicit --fused raises instead)."""
    from compile.fused import add_fused_decoder, builder_missing, cannot_fuse, default_builder_python, summary
    from runtime.bundle import load_bundle

    python = args.builder_python or default_builder_python()
    why = cannot_fuse(load_bundle(bundle).spec, args.precision)
    missing = builder_missing(python) if why is None else None
    if missing:
        why = f"onnxruntime-genai's builder is not importable with {python} ({missing})"
    if why:
        if args.fused:
            raise UserError(why)
        print(f"[fused] skipped: {why} (the bundle keeps its standard decoder)", file=sys.stderr)
        return bundle

    def fuse(out: Path) -> None:
        print(summary(add_fused_decoder(bundle, detox, out, builder_python=python), out), file=sys.stderr)

    try:
        return build.stage("fused", f"{bundle.name}-fused",
                           {"bundle": _manifest_sha(bundle), "detoxified": _manifest_sha(detox)}, fuse)
    except UserError as e:
        if args.fused:
            raise
        print(f"[fused] not added: {e} (the bundle keeps its standard decoder; --no-fused skips this stage)",
              file=sys.stderr)
        return bundle


def compare_pair(before: Path, after: Path, experts: Path, html: Path) -> None:
    """Print before -> after for the undetoxified reference and the detoxified bundle, run the gate both ways
    and write report.html with both runs."""
    from runtime.check import gate, table
    from runtime.mmtoxicqa.summary import before_after
    from runtime.report.__main__ import build_report
    from runtime.mmtoxicqa.reports import load_run
    from runtime.stats import FAIL

    ref, det = load_run(before / "report.json", "undetoxified"), load_run(after / "report.json", "detoxified")
    print(f"\nbefore -> after (undetoxified {before} -> detoxified {after}, same items):")
    for line in before_after(ref.report, det.report, ref.rows, det.rows):
        print(f"  {line}")
    for title, base, now in (("the detoxified bundle against the undetoxified model (fluency kept?)", ref, det),
                             ("the undetoxified model against the detoxified bundle (would the gate catch an "
                              "engine that lost the detoxification?)", det, ref)):
        checks = gate(base, now)
        failed = [c.metric for c in checks if c.values["verdict"] == FAIL]
        print(f"\ngate: {title}")
        print("  " + table(checks).replace("\n", "\n  "))
        print(f"  result: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    print(f"\nreport: {build_report(after / 'report.json', html, [before / 'report.json'], experts=experts, labels=['detoxified', 'undetoxified'])}")


def written_dirs(args: argparse.Namespace) -> list[str]:
    """The stage directories under --out that this build writes (replacing what is there)."""
    bundle = "bundle" if args.precision == "fp32" else f"bundle-{args.precision}"
    dirs = [*(["experts"] if args.experts is None else []), "detoxified", "bundle",
            *([bundle] if bundle != "bundle" else []), *([f"{bundle}-fused"] if fused_wanted(args) else []),
            *({"cuda": ["engines"], "jetson-orin": ["jetson"]}.get(args.target, [])),
            *([] if args.skip_eval else ["report"]), *(["reference"] if args.reference and not args.skip_eval else [])]
    return dirs


def check_out(args: argparse.Namespace) -> None:
    """Refuse, before any stage runs, an --out that cannot be written or whose stage directories would replace an
    input (--model, --experts); inputs elsewhere under --out, such as a previous build's experts, are fine."""
    check_output(args.out)
    for name in written_dirs(args):
        check_output(args.out / name, [args.model, args.experts])


def check_calibration_size(args: argparse.Namespace) -> None:
    """Refuse (or, with --allow-small-calibration, warn about) a calibration too small to rank units when the
    limits alone show it, before any stage runs; a set that is too small only once labelled is refused by
    calib.experts after generating the responses."""
    from calib.scoring import check_possible

    limit = args.limit if args.limit is not None else args.calib_limit
    if args.experts is not None or not limit or args.calib_source != "mmtoxicqa":
        return  # a text source's class counts are known once labelled (calib.experts checks them then)
    fix = (f"Raise --limit / --calib-limit (default {DEFAULT_CALIB_LIMIT}), pass --experts DIR, or add "
           "--allow-small-calibration for a smoke run (its experts are noise)")
    conditions, samples = len(CalibrationSettings.conditions.split(",")), CalibrationSettings.samples_per_item
    try:
        check_possible(limit * conditions * samples,
                       f"a calibration limit of {limit} ({limit} items x {conditions} conditions x {samples} samples)",
                       fix)
    except UserError as e:
        if not args.allow_small_calibration:
            raise
        print(f"WARNING: {e}", file=sys.stderr)


def check_fused_options(args: argparse.Namespace) -> None:
    """Refuse an explicit --fused that cannot work before any stage runs (calibration alone takes minutes)."""
    from compile.fused import PRECISIONS as FUSED_PRECISIONS
    from compile.fused import builder_missing, default_builder_python

    if args.target != "cpu":
        raise UserError(f"--fused adds a CPU decoder; --target {args.target} builds TensorRT engines from the standard "
                        "decoder, so drop --fused there")
    if args.precision not in FUSED_PRECISIONS:
        raise UserError(f"--fused builds fp32 or int4 decoders, not {args.precision}; choose --precision fp32 or int4")
    python = args.builder_python or default_builder_python()
    why = builder_missing(python)
    if why:
        raise UserError(f"--fused needs onnxruntime-genai's builder, which {python} cannot import ({why}); "
                        "scripts/setup installs it into .venv, or pass --builder-python")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from calib.models import resolve

    apply_job_defaults(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.experts is None:
        calibration_settings(args).check()
    if args.eval_samples < 1:
        raise UserError(f"--eval-samples must be >= 1, got {args.eval_samples}")
    if args.calib_limit < 0:
        raise UserError(f"--calib-limit must be >= 0 (0 = all), got {args.calib_limit}")
    check_calibration_size(args)
    if args.out is not None:
        check_out(args)
    if args.fused:
        check_fused_options(args)
    fused = fused_wanted(args)
    model_type, location = resolve(args.model)
    print(f"model: {args.model} ({model_type}, {location})")
    if args.experts is None:
        c = calibration_settings(args)
        print(f"calibration: {c.calib}, {'all' if c.limit is None else c.limit} "
              f"{'items per condition' if c.calib == 'mmtoxicqa' else 'texts per class'}, {c.method}"
              f"{'' if c.strength is None else f' s={c.strength}'}, top {c.top_fraction:g} of units")
    if not args.skip_eval:
        e = evaluation_settings(args)
        print(f"evaluation: {', '.join(e.conditions)}; {'all' if e.limit is None else e.limit} items per condition, "
              f"{e.settings.samples} sample(s) per toxic or benign item, {e.settings.max_new_tokens} new tokens")
    if args.experts is not None and not (args.experts / MANIFEST).is_file():
        raise UserError(f"--experts {args.experts} is not an experts artifact (no manifest.json); "
                        "produce one with python -m calib.experts")
    out = args.out or Path("<out>")
    for s in STAGES:
        skipped = ((s.name == "calib" and args.experts is not None) or (s.name == "quantize" and args.precision == "fp32")
                   or (s.name == "engine" and args.target == "cpu") or (s.name == "evaluate" and args.skip_eval)
                   or (s.name == "fused" and not fused)
                   or (s.name == "reference" and (args.skip_eval or not args.reference)))
        print(f"  {s.name:<9} -> {out}/{s.directory:<20} {'skipped' if skipped else 'runs'}: {s.what}")
    if args.dry_run:
        return 0
    if args.out is None:
        raise UserError("--out is required (the directory that receives every stage's artifact)")
    run_build(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
