"""The timing protocol every engine of `bench_peers.py` runs in its own process: one function, any engine.

Standard library only, because the llama.cpp peer imports it from a virtualenv that has none of
fintune's packages (`benchmarks/peer_llama_cpp.py`).

An engine is `generate(prompt_ids, n) -> n greedy token ids` that starts from an empty cache on every
call. For each prompt and repeat, `generate(prompt, 1)` is the time to first token (prefill plus
picking the first token) and `generate(prompt, n + 1)` minus that isolates n decode steps with the KV
cache, so decode speed excludes prefill. Figures are medians over repeats; rates over the prompts
are total tokens / total seconds.
"""

from __future__ import annotations

import statistics
import time


class GenerationMismatch(RuntimeError):
    """An engine returned fewer tokens than asked, or different tokens on a repeat of the same prompt."""


def time_generation(generate, prompts: list[list[int]], new_tokens: int, repeats: int, warmup: int = 1) -> dict:
    """TTFT, prefill and decode tokens/s per prompt and over all prompts, and each prompt's greedy tokens."""
    for _ in range(warmup):  # first calls trace graphs, page in weights, size buffers
        generate(prompts[0], 2)
    per_prompt = []
    for index, prompt in enumerate(prompts):
        first_s, full_s, tokens = [], [], None
        for _ in range(repeats):
            started = time.perf_counter()
            generate(prompt, 1)
            first_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            ids = [int(t) for t in generate(prompt, new_tokens + 1)]
            full_s.append(time.perf_counter() - started)
            if len(ids) != new_tokens + 1:
                raise GenerationMismatch(f"prompt {index}: asked for {new_tokens + 1} tokens, got {len(ids)}")
            if tokens is not None and ids != tokens:  # greedy decoding must not vary between repeats
                raise GenerationMismatch(f"prompt {index}: greedy tokens differ between repeats")
            tokens = ids
        ttft_s = statistics.median(first_s)
        decode_s = max(statistics.median(full_s) - ttft_s, 1e-9)
        per_prompt.append({"prompt_tokens": len(prompt), "ttft_ms": ttft_s * 1000,
                           "prefill_tokens_per_s": len(prompt) / ttft_s, "decode_s": decode_s,
                           "decode_tokens_per_s": new_tokens / decode_s, "tokens": tokens})
    total_ttft_s = sum(p["ttft_ms"] for p in per_prompt) / 1000
    return {"ttft_ms": statistics.median(p["ttft_ms"] for p in per_prompt),
            "prefill_tokens_per_s": sum(p["prompt_tokens"] for p in per_prompt) / total_ttft_s,
            "decode_tokens_per_s": new_tokens * len(per_prompt) / sum(p["decode_s"] for p in per_prompt),
            "new_tokens": new_tokens, "repeats": repeats, "per_prompt": per_prompt}
