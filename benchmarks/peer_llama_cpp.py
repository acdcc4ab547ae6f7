"""The llama.cpp peer of `bench_peers.py`: greedy generation on the GGUF itself, from given token ids.

    <llama venv>/bin/python benchmarks/peer_llama_cpp.py SPEC.json RESULT.json

Runs in the llama.cpp virtualenv (`benchmarks/llama-requirements.txt`, `make bench-peers-venv`), never in
fintune's: it imports only `llama_cpp`, numpy and the standard-library `generation_timing` beside it.

SPEC: {"gguf", "prompts": [[token id, ...]], "texts": [prompt text, ...], "new_tokens", "repeats", "warmup",
"num_threads", "context"}. The prompts are fintune's own token ids (so tokenisation cannot differ);
`texts` are the same prompts as text, which llama.cpp's tokenizer encodes too, so the caller can check that
both tokenizers agree. Greedy = argmax of the last position's logits, as fintune's decoders do (no sampler
chain). The peak RSS is this process's own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_timing import time_generation  # noqa: E402


def peak_rss_mb() -> float:
    """VmHWM, the reading of `components.benchmark.measure.peak_rss_mb` (which this virtualenv cannot import:
    it has none of fintune's packages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def greedy_generator(llm: llama_cpp.Llama):
    """`generate(prompt_ids, n)` on a cleared KV cache: one batch for the prompt, then one token per step."""
    vocabulary = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocabulary,))
        return int(np.argmax(logits))

    def generate(prompt_ids: list[int], n: int) -> list[int]:
        llm.reset()  # eval() then drops every cached position from 0 on
        llm.eval(prompt_ids)
        tokens = []
        for step in range(n):
            tokens.append(next_token())
            if step + 1 < n:
                llm.eval([tokens[-1]])
        return tokens

    return generate


def main(spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    threads = spec["num_threads"]
    started = time.perf_counter()
    # Flash attention, as llama.cpp's own tools choose on CPU ("auto"): 6% more decode speed here than without.
    llm = llama_cpp.Llama(model_path=spec["gguf"], n_ctx=spec["context"], n_batch=max(512, spec["context"]),
                          n_threads=threads, n_threads_batch=threads, flash_attn=True, logits_all=False,
                          verbose=False, seed=0)
    load_s = time.perf_counter() - started
    if max(len(p) for p in spec["prompts"]) + spec["new_tokens"] + 1 > llm.n_ctx():
        raise SystemExit(f"a prompt and {spec['new_tokens']} new tokens do not fit the context of {llm.n_ctx()}")
    tokenized = [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in spec["texts"]]
    llama_cpp.llama_perf_context_reset(llm.ctx)
    timing = time_generation(greedy_generator(llm), spec["prompts"], spec["new_tokens"], spec["repeats"],
                             spec["warmup"])
    perf = llama_cpp.llama_perf_context(llm.ctx)  # llama.cpp's own clock, without Python: a cross-check
    counters = {"prompt_tokens_per_s": perf.n_p_eval / max(perf.t_p_eval_ms, 1e-9) * 1000,
                "decode_tokens_per_s": perf.n_eval / max(perf.t_eval_ms, 1e-9) * 1000,
                "prompt_tokens": perf.n_p_eval, "decoded_tokens": perf.n_eval}
    result = {**timing, "load_s": load_s, "llama_cpp_counters": counters, "peak_rss_mb": peak_rss_mb(),
              "tokenized_texts": tokenized,
              "engine_version": f"llama-cpp-python {llama_cpp.__version__}",
              "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
              "threads": threads, "context": llm.n_ctx(), "flash_attention": True}
    result_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:3]))
