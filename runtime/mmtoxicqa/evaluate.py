"""The evaluate stage as a function: MM-TOXIC-QA on a compiled bundle or a PyTorch model, judged, into a run
directory. `python -m runtime.mmtoxicqa run` is a thin CLI over `evaluate`; compile.build calls it directly."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from runtime.errors import UserError
from runtime.judges.base import Judge
from runtime.mmtoxicqa import corpus
from runtime.mmtoxicqa.dataset import dataset_info
from runtime.mmtoxicqa.items import CONDITIONS, Item, check_conditions
from runtime.mmtoxicqa.runner import REPORT_FILE, RunSettings, run_benchmark
from runtime.mmtoxicqa.spec import load_spec, parse_dataset
from runtime.mmtoxicqa.summary import headline
from runtime.protocol import Generator, SystemPrompted


@dataclass(frozen=True)
class Evaluation:
    """What a run answers and how: the items (dataset, split, conditions, limits), the decoding settings, the
    judge and the perplexity corpus (`ppl_corpus` None: the default corpus; `ppl` False: no perplexity);
    `system_prompt`: text put ahead of every request of the model under test (runtime.protocol.SystemPrompted: SGM*
    when the model is detoxified), recorded in the report's model provenance."""

    settings: RunSettings = RunSettings()
    dataset: str | None = None
    split: str = "evaluation"
    conditions: tuple[str, ...] = CONDITIONS
    limit: int | None = None
    condition_limits: Mapping[str, int] = field(default_factory=dict)
    judge: str | None = None
    ppl: bool = True
    ppl_corpus: Path | None = None
    ppl_texts: int = corpus.N_TEXTS
    reference_model: str | None = None
    progress: bool = True
    system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (for stage keys and manifests; `system_prompt` only when set)."""
        record = {**asdict(self), "conditions": list(self.conditions), "condition_limits": dict(self.condition_limits),
                  "ppl_corpus": None if self.ppl_corpus is None else str(self.ppl_corpus)}
        if record["system_prompt"] is None:
            del record["system_prompt"]
        return record


def load_model(name: str) -> Generator:
    """A PyTorch model from the model zoo (imported only here: it needs torch)."""
    try:
        from calib.models import load_generator
    except ImportError as e:
        raise UserError(f"--model needs the PyTorch model zoo (calib.models, toolchain extra): "
                        f"pip install 'sgm-edge[toolchain]' ({e})") from e
    return load_generator(name)


def load_bundle(directory: Path, native: bool = False) -> Generator:
    """A compiled bundle through the torch-free runtime (ONNX Runtime, CPU), or with `native` through the native
    host sgm-run (runtime.native: the program that ships to the device)."""
    if native:
        from runtime.native import NativeGenerator

        return NativeGenerator.open(directory)
    from runtime.generate import BundleGenerator

    return BundleGenerator.open(directory)


def load_judge(name: str | None) -> Judge:
    """A toxicity judge by name (runtime.judges; its default when None)."""
    from runtime.judges import load_judge as _load

    return _load() if name is None else _load(name)


def limit_items(items: Sequence[Item], limit: int | None,
                per_condition: Mapping[str, int] | None = None) -> list[Item]:
    """The first `limit` items of each condition, in dataset order (all when None); `per_condition` overrides
    the limit for the conditions it names (jailbreak prompts are ~650 tokens: the costly ones on a CPU)."""
    overrides = dict(per_condition or {})
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    for cond, value in overrides.items():
        if value < 1:
            raise UserError(f"--condition-limit {cond}={value}: the limit must be >= 1")
    taken: dict[str, int] = {}
    out = []
    for it in items:
        cap = overrides.get(it.condition, limit)
        if cap is None or taken.get(it.condition, 0) < cap:
            taken[it.condition] = taken.get(it.condition, 0) + 1
            out.append(it)
    return out


def condition_limits(values: Sequence[str] | None) -> dict[str, int]:
    """`--condition-limit COND=N` values as a mapping, with the condition and the number checked."""
    out: dict[str, int] = {}
    for value in values or ():
        cond, eq, n = value.partition("=")
        if not eq or not n.strip().isdigit():
            raise UserError(f"--condition-limit {value!r}: expected CONDITION=N, e.g. jailbreak=16")
        check_conditions([cond])
        out[cond] = int(n)
    return out


def parse_conditions(values: Sequence[str] | None) -> tuple[str, ...]:
    """`--conditions` values (space or comma separated) as checked condition names; all when none are given."""
    if not values:
        return CONDITIONS
    return check_conditions([c for v in values for c in v.split(",") if c])


def dataset_record(root: Path | Mapping[str, Any], split: str, conditions: Sequence[str], limit: int | None,
                   per_condition: Mapping[str, int] | None) -> dict[str, Any]:
    """What a run answered, as its report records it (runtime.check compares these fields between runs);
    `root` is a dataset directory or the provenance of an external set (runtime.mmtoxicqa.spec)."""
    info = dict(root) if isinstance(root, Mapping) else dataset_info(root)
    return {**info, "split": split, "conditions": list(conditions), "limit": limit,
            **({"condition_limits": dict(per_condition)} if per_condition else {})}


def evaluate(out: Path, evaluation: Evaluation = Evaluation(), *, bundle: Path | None = None,
             model: str | None = None, native: bool = False) -> dict[str, Any]:
    """Run MM-TOXIC-QA on `bundle` (the torch-free runtime) or `model` (the PyTorch zoo) into `out`; returns the
    report. The settings, items, corpus and judge are checked and loaded before the model."""
    if (bundle is None) == (model is None):
        raise UserError("evaluate one source: a --bundle or a --model")
    if native and bundle is None:
        raise UserError("--native runs a compiled bundle: give --bundle, not --model")
    ev = evaluation
    ev.settings.check()
    selected, provenance = load_spec(parse_dataset(ev.dataset), ev.split, ev.conditions)
    items = limit_items(selected, ev.limit, ev.condition_limits)
    ppl_path = (ev.ppl_corpus or corpus.default_corpus()) if ev.ppl else None
    ppl_texts = corpus.load_corpus(ppl_path, n_texts=ev.ppl_texts) if ppl_path is not None else None
    ppl_info = corpus.corpus_info(ppl_path, ppl_texts) if ppl_texts else None
    judge = load_judge(ev.judge)
    generator = load_bundle(bundle, native) if bundle is not None else load_model(model)
    if ev.system_prompt:
        generator = SystemPrompted(generator, ev.system_prompt)
    reference = load_model(ev.reference_model) if ev.reference_model else None
    info = dataset_record(provenance, ev.split, ev.conditions, ev.limit, ev.condition_limits)
    report = run_benchmark(generator, judge, items, out, ev.settings, ppl_texts=ppl_texts, ppl_info=ppl_info,
                           reference=reference, dataset=info, progress=ev.progress)
    print("\n".join(headline(report)))
    print(f"wrote {out / REPORT_FILE}")
    return report
