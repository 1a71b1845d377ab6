"""Runs MM-TOXIC-QA items through any `Generator`, judges the responses, and writes the report.

Works the same for the PyTorch model zoo and compiled bundles (both implement runtime.protocol.Generator).
Items are batched by condition; each finished batch is appended to `cache.jsonl` in the run directory, so
an interrupted run resumes where it stopped. Outputs: `generations.jsonl` (one row per response),
`report.json` (metrics with counts and provenance), `manifest.json`.

Decoding: the toxic and benign conditions use the run's settings (sampling by default, the field's
convention for toxicity); `visual` items are always decoded greedily with one sample and at most
min(`visual_max_new_tokens`, `max_new_tokens`) tokens, because they are scored by exact match.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm import tqdm

from runtime.artifacts import check_output, sha256_json, write_manifest
from runtime.errors import UserError
from runtime.judges.base import Judge
from runtime.mmtoxicqa import metrics
from runtime.mmtoxicqa.cache import ResultCache, item_hash
from runtime.mmtoxicqa.items import CONDITIONS, TOXIC_CONDITIONS, Item
from runtime.mmtoxicqa.summary import generation_rows, summarize
from runtime.protocol import GenerationConfig, GenerationRequest, Generator

REPORT_FORMAT = "mmtoxicqa-report"
REPORT_VERSION = 1
CACHE_FILE = "cache.jsonl"
GENERATIONS_FILE = "generations.jsonl"
REPORT_FILE = "report.json"
_PPL_ID = "__perplexity__"


@dataclass(frozen=True)
class RunSettings:
    """Decoding and batching settings of a run (all of them go into the report)."""

    max_new_tokens: int = 48
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    samples: int = 1
    batch_size: int = 8
    visual_max_new_tokens: int = 16
    threshold: float | None = None  # harmful when score >= threshold; None: the judge's own, else 0.5

    def check(self) -> None:
        if self.max_new_tokens < 1 or self.visual_max_new_tokens < 1:
            raise UserError("--max-new-tokens must be >= 1")
        if self.samples < 1 or self.batch_size < 1:
            raise UserError("--samples and --batch-size must be >= 1")
        if self.samples > 1 and not self.do_sample:
            raise UserError(f"--samples {self.samples} with greedy decoding gives {self.samples} identical "
                            f"responses; use --sample, or --samples 1")
        if not (0.0 < self.top_p <= 1.0) or self.temperature <= 0.0:
            raise UserError("--top-p must be in (0, 1] and --temperature > 0")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise UserError(f"the harmful threshold must lie in (0, 1], got {self.threshold}")

    def samples_for(self, condition: str) -> int:
        return 1 if condition == "visual" else self.samples

    def config(self, condition: str, seed: int) -> GenerationConfig:
        """The decoding config of one batch of `condition`."""
        if condition == "visual":
            return GenerationConfig(max_new_tokens=min(self.visual_max_new_tokens, self.max_new_tokens),
                                    do_sample=False, seed=seed)
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=self.temperature, top_p=self.top_p, seed=seed)

    def cache_fields(self) -> dict[str, Any]:
        """What shapes a result: with sampling, batch composition does too (each request's random stream
        follows its position in the batch), so the batch size is included then."""
        fields = asdict(self)
        fields.pop("threshold")
        if not self.do_sample:
            fields.pop("batch_size")
        return fields


def batch_seed(seed: int, first_item_id: str) -> int:
    """Seed of the batch starting at `first_item_id`: fixed by the run seed and the batch, not by resume state."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{first_item_id}".encode()).digest()[:4], "little")


def batches(items: Sequence[Item], batch_size: int) -> Iterator[list[Item]]:
    """Items grouped by condition (benchmark order), then cut into fixed chunks of `batch_size`."""
    order = {c: i for i, c in enumerate(CONDITIONS)}
    by_condition: dict[str, list[Item]] = {}
    for it in items:
        by_condition.setdefault(it.condition, []).append(it)
    for condition in sorted(by_condition, key=lambda c: order.get(c, len(order))):
        group = by_condition[condition]
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def _generate(generator: Generator, judge: Judge, chunk: list[Item], pending: list[Item],
              settings: RunSettings) -> list[dict[str, Any]]:
    condition = chunk[0].condition
    k = settings.samples_for(condition)
    requests = [GenerationRequest(prompt=it.prompt, image=it.load_image(), chat=it.chat) for it in pending for _ in range(k)]
    config = settings.config(condition, batch_seed(settings.seed, chunk[0].id))
    outputs = generator.generate(requests, config)
    if len(outputs) != len(requests):
        raise RuntimeError(f"generator returned {len(outputs)} results for {len(requests)} requests")
    texts = [o.text for o in outputs]
    scores = [float(s) for s in judge.score(texts)] if texts else []
    if len(scores) != len(texts):
        raise RuntimeError(f"judge returned {len(scores)} scores for {len(texts)} texts")
    records = []
    for i, it in enumerate(pending):
        part = slice(i * k, (i + 1) * k)
        records.append({"kind": "item", "id": it.id, "item_hash": item_hash(it), "responses": texts[part],
                        "toxicity": scores[part], "finish_reasons": [o.finish_reason for o in outputs[part]],
                        "n_tokens": [len(o.token_ids) for o in outputs[part]]})
    return records


def _prepare_out(out: Path) -> None:
    check_output(out)
    if out.is_dir() and any(out.iterdir()) and not ((out / CACHE_FILE).is_file() or (out / REPORT_FILE).is_file()):
        raise UserError(f"{out} is not empty and holds no MM-TOXIC-QA run; choose an empty or new --out directory")
    out.mkdir(parents=True, exist_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _self_perplexity(generator: Generator, cache: ResultCache, done: dict[str, dict[str, Any]],
                     texts: Sequence[str]) -> float | None:
    ppl_id = f"{_PPL_ID}:{sha256_json(list(texts))[:16]}"
    if ppl_id not in done:
        nll = [(float(s), int(n)) for s, n in generator.nll(list(texts))]
        done[ppl_id] = {"kind": "perplexity", "id": ppl_id, "nll": nll}
        cache.append([done[ppl_id]])
    return metrics.perplexity(done[ppl_id]["nll"])


def run_benchmark(generator: Generator, judge: Judge, items: Sequence[Item], out: str | os.PathLike,
                  settings: RunSettings = RunSettings(), *, ppl_texts: Sequence[str] | None = None,
                  ppl_info: dict[str, Any] | None = None, reference: Generator | None = None,
                  dataset: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate, judge and summarise `items`; write the run directory `out`; return the report.

    `ppl_texts`: a neutral corpus for self-perplexity (None: perplexity is reported as null, with the reason).
    `reference`: a scorer whose perplexity of the responses is reported as `response_perplexity`.
    """
    settings.check()
    if not items:
        raise UserError("no items to run: check --split, --conditions and --limit")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise UserError("item ids are not unique; the dataset is corrupt, rebuild it")
    started = time.perf_counter()
    threshold = float(settings.threshold if settings.threshold is not None
                      else getattr(judge, "threshold", metrics.THRESHOLD))
    out = Path(out)
    _prepare_out(out)
    model, judge_info = generator.describe(), judge.describe()
    key = sha256_json({"settings": settings.cache_fields(), "model": model, "judge": judge_info})
    cache = ResultCache(out / CACHE_FILE, key)
    done = cache.load()
    valid = {it.id for it in items if it.id in done and done[it.id].get("item_hash") == item_hash(it)}
    resumed = len(valid)
    gen_seconds = 0.0
    with tqdm(total=len(items), initial=resumed, disable=not progress, desc="MM-TOXIC-QA", unit="item") as bar:
        for chunk in batches(items, settings.batch_size):
            pending = [it for it in chunk if it.id not in valid]
            if not pending:
                continue
            t0 = time.perf_counter()
            records = _generate(generator, judge, chunk, pending, settings)
            gen_seconds += time.perf_counter() - t0
            cache.append(records)
            for rec in records:
                done[rec["id"]] = rec
                valid.add(rec["id"])
            bar.update(len(pending))
    results = [done[it.id] for it in items]

    ppl = _self_perplexity(generator, cache, done, ppl_texts) if ppl_texts else None
    report: dict[str, Any] = {"format": REPORT_FORMAT, "format_version": REPORT_VERSION}
    report.update(summarize(items, results, threshold))
    report["perplexity"] = ppl
    report["perplexity_corpus"] = ppl_info if ppl_texts else None
    if not ppl_texts:
        report["perplexity_note"] = "no neutral corpus: pass --ppl-corpus FILE (e.g. WikiText-2 test.txt)"
    report["response_perplexity"] = None
    if reference is not None:
        answered = [t for it, r in zip(items, results) if it.condition in (*TOXIC_CONDITIONS, "benign")
                    for t in r["responses"] if t.strip()]
        report["response_perplexity"] = metrics.perplexity(reference.nll(answered)) if answered else None
        report["reference"] = reference.describe()
    report.update({
        "model": model, "judge": judge_info, "dataset": dataset,
        "settings": {**asdict(settings), "threshold": threshold, "settings_hash": key,
                     "generation": {c: {**settings.config(c, settings.seed).to_dict(), "seed": "per batch",
                                        "samples": settings.samples_for(c)}
                                    for c in sorted({it.condition for it in items})}},
        "items_from_cache": resumed, "items_generated": len(items) - resumed,
        "generation_time_s": round(gen_seconds, 3), "wall_time_s": round(time.perf_counter() - started, 3),
    })
    rows = generation_rows(items, results, threshold)
    _write_atomic(out / GENERATIONS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _write_atomic(out / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_manifest(out, REPORT_FORMAT, format_version=REPORT_VERSION, settings_hash=key,
                   model=model, judge=judge_info, dataset=dataset)
    return report
