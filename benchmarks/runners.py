"""Timed generation runners shared by decode_speed.py and peers.py: one function per engine, each
(prompt, new tokens) -> a record with the tokens, prefill, time to first token and decode rate.

Every runner can ignore end-of-sequence (`ignore_eos`), so all runners decode the same number of tokens.
Times: prefill = the forward pass over the prompt (to its logits); ttft = from the prompt's token ids to the
first generated token (embedding lookup or tokenizer-free input, prefill, selection); decode = tokens after
the first, per second.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

Record = dict[str, Any]


def record(tokens: Sequence[int], prefill_s: float, ttft_s: float, decode_s: float, steps: int) -> Record:
    out: Record = {"tokens": [int(t) for t in tokens], "prefill_ms": prefill_s * 1e3, "ttft_ms": ttft_s * 1e3,
                   "steps": steps}
    if steps > 0 and decode_s > 0:
        out["decode_tok_s"] = steps / decode_s
    return out


def torch_runner(model: Any, threads: int, ignore_eos: bool = False) -> Callable[[Any, int], Record]:
    """transformers `generate()` on a calib.models model's language model; the prompt is token ids (a list)
    or embeddings [s, hidden] (a tensor). Timed by a logits processor, which generate() calls right after
    every forward pass."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(threads)
    lm = model.module.language_model if hasattr(model.module, "language_model") and \
        hasattr(model.module.language_model, "generate") else model.module

    class Stamp(LogitsProcessor):
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.times.append(time.perf_counter())
            return scores

    @torch.no_grad()
    def run(prompt: Any, new_tokens: int) -> Record:
        stamp = Stamp()
        t0 = time.perf_counter()
        if isinstance(prompt, torch.Tensor):
            x = {"inputs_embeds": prompt[None]}
            n = prompt.shape[0]
        else:
            x = {"input_ids": torch.tensor([list(prompt)], dtype=torch.long)}
            n = len(prompt)
        out = lm.generate(**x, attention_mask=torch.ones((1, n), dtype=torch.long),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens if ignore_eos else None,
                          do_sample=False, temperature=None, top_p=None, top_k=None,
                          eos_token_id=list(model.eos_token_ids), pad_token_id=model.pad_token_id,
                          logits_processor=LogitsProcessorList([stamp]))
        t1 = time.perf_counter()
        seq = out[0].tolist()[0 if "inputs_embeds" in x else n:]
        tokens = seq if ignore_eos else [t for t in seq if t not in model.eos_token_ids]
        first = stamp.times[0] - t0
        return record(tokens, first, first, t1 - stamp.times[0], len(stamp.times) - 1)

    return run


def ort_runner(generator: Any, ignore_eos: bool = False) -> Callable[[Any, int], Record]:
    """Our runtime (runtime.generate.decode_loop on a BundleGenerator's backend); the prompt is token ids (a
    list, embedded by the bundle's embed graph inside the timed span) or embeddings [s, hidden] (an array)."""
    import numpy as np

    from runtime.generate import decode_loop
    from runtime.protocol import GenerationConfig

    spec = generator.spec
    eos = () if ignore_eos else spec.eos_token_ids

    def run(prompt: Any, new_tokens: int) -> Record:
        t0 = time.perf_counter()
        if isinstance(prompt, np.ndarray):
            embeds = prompt
        else:
            embeds = generator.backend.embed(np.asarray([list(prompt)], dtype=np.int64))[0]
        t_embed = time.perf_counter() - t0
        [(tokens, _)], t = decode_loop(generator.backend, [embeds], GenerationConfig(max_new_tokens=new_tokens), eos,
                                       spec.pad_token_id)
        return record(tokens, t.prefill_s, t_embed + t.prefill_s, t.decode_s, t.decode_steps)

    return run


def genai_runner(model_dir: str, threads: int) -> tuple[Callable[[Sequence[int], int], Record], Any]:
    """onnxruntime-genai's own generation loop on a model its builder wrote (greedy; end-of-sequence ignored
    through min_length). Returns (run, the og.Model)."""
    import json

    import onnxruntime_genai as og

    config = og.Config(model_dir)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def run(prompt: Sequence[int], new_tokens: int) -> Record:
        params = og.GeneratorParams(model)
        total = len(prompt) + new_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(list(prompt))
        t1 = time.perf_counter()
        gen.generate_next_token()  # selects the first token from the prompt's logits
        t2 = time.perf_counter()
        steps = 0
        while steps < new_tokens - 1 and not gen.is_done():
            gen.generate_next_token()  # one forward pass over the last token, then selection
            steps += 1
        t3 = time.perf_counter()
        tokens = list(gen.get_sequence(0))[len(prompt):]
        return record(tokens, t1 - t0, t2 - t0, t3 - t2, steps)

    return run, model


def llama_runner(gguf: str, threads: int, context: int = 1024) -> tuple[Callable[[Sequence[int], int], Record], Any]:
    """llama-cpp-python's generate() (greedy, top_k 1; it never stops by itself). Its first token comes out of
    the prompt's forward pass, so prefill here is the time to the first token."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False)

    def run(prompt: Sequence[int], new_tokens: int) -> Record:
        llm.reset()  # no reuse of the previous run's prompt cache
        t0 = time.perf_counter()
        it = llm.generate(list(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
        tokens = [next(it)]
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            tokens.append(next(it))
        t2 = time.perf_counter()
        return record(tokens, t1 - t0, t1 - t0, t2 - t1, new_tokens - 1)

    return run, llm
