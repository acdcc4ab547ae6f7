"""The timing protocol every engine of `bench_peers.py` runs in its own process: one function, any engine.

Standard library only, because the llama.cpp peer imports it from a virtualenv that has none of
fintune's packages (`benchmarks/peer_llama_cpp.py`).

An engine is `generate(prompt_ids, n) -> n greedy token ids` that starts from an empty cache on every
call. For each prompt and repeat, `generate(prompt, 1)` is the time to first token (prefill plus
picking the first token) and `generate(prompt, n + 1)` minus that isolates n decode steps with the KV
cache, so decode speed excludes prefill. Figures are medians over repeats; rates over the prompts
are total tokens / total seconds. Two cores are shared, so the result also says how much CPU every
other process on the machine used while this one was timed (`other_cpu_cores`, from /proc/stat).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


class GenerationMismatch(RuntimeError):
    """An engine returned fewer tokens than asked, or different tokens on a repeat of the same prompt."""


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used since boot, seconds stolen by the hypervisor for
    other guests), from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def time_generation(generate, prompts: list[list[int]], new_tokens: int, repeats: int, warmup: int = 1) -> dict:
    """TTFT, prefill and decode tokens/s per prompt and over all prompts, each prompt's greedy tokens, and
    the other processes' CPU use meanwhile (in cores, averaged over the timed part)."""
    for _ in range(warmup):  # first calls trace graphs, page in weights, size buffers
        generate(prompts[0], 2)
    machine_before, own_before, wall_before = machine_cpu_seconds(), own_cpu_seconds(), time.monotonic()
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
    machine_after, own_s, wall_s = machine_cpu_seconds(), own_cpu_seconds() - own_before, time.monotonic() - wall_before
    other_cores = stolen_cores = None
    if machine_before is not None and machine_after is not None:
        other_cores = max(0.0, machine_after[0] - machine_before[0] - own_s) / max(wall_s, 1e-9)
        stolen_cores = (machine_after[1] - machine_before[1]) / max(wall_s, 1e-9)
    total_ttft_s = sum(p["ttft_ms"] for p in per_prompt) / 1000
    return {"ttft_ms": statistics.median(p["ttft_ms"] for p in per_prompt),
            "prefill_tokens_per_s": sum(p["prompt_tokens"] for p in per_prompt) / total_ttft_s,
            "decode_tokens_per_s": new_tokens * len(per_prompt) / sum(p["decode_s"] for p in per_prompt),
            "new_tokens": new_tokens, "repeats": repeats, "timed_s": wall_s, "own_cpu_s": own_s,
            "other_cpu_cores": other_cores, "stolen_cpu_cores": stolen_cores, "per_prompt": per_prompt}
