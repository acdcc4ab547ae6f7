"""One variant's benchmark, in its own process so its peak RSS is its own.

    python -m components.benchmark.measure SPEC.json RESULT.json

SPEC: {"name", "format": keras | saved_model | tflite | student_tflite, "path", "tokenizer_dir", "rows" (parquet with
task, model_text, target), "labels", "tree_nodes", "prompt_tokens", "repeats", "warmup",
"batch_sizes", "decode_tokens", "num_threads", and for the student "student": {output_tokens,
max_length, ...}}. Every timed request is end to end: tokenise, build
the prompt, score the labels. Warm-up is excluded; percentiles are over all timed requests and
the throughput/decode figures are medians over `repeats`.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def load_variant(spec: dict):
    """(classify(prompts, trie) -> predictions, generate(prompt, n) -> ids, or None: the student only classifies,
    generate_batch(prompts, n) -> [ids] or None: exported files with a `decode_batch` signature only)."""
    if spec["format"] == "student_tflite":
        from models.student.compression import tflite_student_fn
        from models.student.model import StudentScorer

        student = spec["student"]
        scorer = StudentScorer(tflite_student_fn(Path(spec["path"]), spec["num_threads"]), student["output_tokens"],
                               student["max_length"])
        return scorer.classify, None, None
    if spec["format"] == "keras":
        from models.llm.chat import generate_ids
        from models.llm.language_model import load_model
        from models.scoring.constrained import TreeScorer, classify

        causal_lm, _, _ = load_model(Path(spec["path"]))
        scorer = TreeScorer(causal_lm)
        return (lambda prompts, trie: classify(causal_lm, prompts, trie, len(prompts), scorer),
                lambda prompt, n: generate_ids(causal_lm, prompt, n), None)
    from models.export.exported import ExportedModel

    model = ExportedModel(Path(spec["path"]), num_threads=spec["num_threads"])
    return (lambda prompts, trie: model.classify(prompts, trie, spec["tree_nodes"]),
            lambda prompt, n: model.generate_ids(prompt, n),
            model.generate_batch if model.decode_rows > 1 else None)


def measure(spec: dict) -> dict:
    from components.common.metrics import overall_metrics
    from models.llm.prompts import encode_prompt
    from models.llm.tokenizer import ChatTokenizer
    from models.scoring.constrained import LabelTrie

    tokenizer = ChatTokenizer.load(Path(spec["tokenizer_dir"]))
    rows = pd.read_parquet(spec["rows"])
    tries = {task: LabelTrie(names, tokenizer) for task, names in spec["labels"].items()}
    started = time.perf_counter()
    classify, generate, generate_batch = load_variant(spec)
    load_s = time.perf_counter() - started

    def request(row):  # one end-to-end request
        prompt = encode_prompt(tokenizer, row.task, row.model_text, spec["prompt_tokens"])[0]
        return classify([prompt], tries[row.task])[0]

    records = list(rows.itertuples(index=False))
    for row in records[:spec["warmup"]]:
        request(row)
    latencies, predictions = [], []
    for _ in range(spec["repeats"]):
        predictions = []
        for row in records:
            t0 = time.perf_counter()
            predictions.append(request(row))
            latencies.append((time.perf_counter() - t0) * 1000)
    quality = overall_metrics(rows, predictions)

    # Throughput: batches of one task's texts (a batch shares its label tree), tokenisation included.
    task = rows["task"].value_counts().index[0]
    texts = list(rows[rows["task"] == task]["model_text"])
    throughput = {}
    for batch_size in spec["batch_sizes"]:
        batch = [texts[i % len(texts)] for i in range(batch_size)]
        timings = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            classify([encode_prompt(tokenizer, task, text, spec["prompt_tokens"])[0] for text in batch], tries[task])
            timings.append(time.perf_counter() - t0)
        throughput[f"examples_per_s_batch{batch_size}"] = batch_size / statistics.median(timings)

    decode = {"prefill_ms": None, "decode_tokens_per_s": None}
    if generate is not None:  # decode speed with the KV cache: (n + 1 tokens) - (1 token) isolates n steps
        prompt = encode_prompt(tokenizer, records[0].task, records[0].model_text, spec["prompt_tokens"])[0]
        n = spec["decode_tokens"]
        generate(prompt, 2)  # warm-up
        prefill_s = statistics.median(_timed(lambda: generate(prompt, 1)) for _ in range(spec["repeats"]))
        full_s = statistics.median(_timed(lambda: generate(prompt, n + 1)) for _ in range(spec["repeats"]))
        decode = {"prefill_ms": prefill_s * 1000, "decode_tokens_per_s": n / max(full_s - prefill_s, 1e-9)}
    if generate_batch is not None:
        decode.update(generation_throughput(generate, generate_batch, tokenizer, records, spec))
    return {"name": spec["name"], "format": spec["format"], "load_s": load_s,
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_p99_ms": float(np.percentile(latencies, 99)), "requests_timed": len(latencies),
            **throughput, **decode,
            "sample_accuracy": quality["accuracy"], "sample_macro_f1": quality["macro_f1"],
            "peak_rss_mb": peak_rss_mb()}


def generation_throughput(generate, generate_batch, tokenizer, records, spec: dict) -> dict:
    """Generations/s of `decode_tokens` new tokens each (prefill included), for one group of the export's
    `decode_batch` rows: one prompt after another through `decode`, then all at once through `decode_batch`."""
    from models.llm.prompts import encode_prompt

    rows, n = spec.get("decode_rows", 8), spec["decode_tokens"]
    prompts = [encode_prompt(tokenizer, r.task, r.model_text, spec["prompt_tokens"])[0]
               for r in (records[i % len(records)] for i in range(rows))]
    generate_batch(prompts, 2)  # warm-up of the batched signature
    alone_s = statistics.median(_timed(lambda: [generate(p, n) for p in prompts]) for _ in range(spec["repeats"]))
    batched_s = statistics.median(_timed(lambda: generate_batch(prompts, n)) for _ in range(spec["repeats"]))
    return {"generation_rows": rows, "generations_per_s_batch1": rows / alone_s,
            "generations_per_s_batched": rows / batched_s}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, because `ru_maxrss` survives exec and would
    report the parent's peak when that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, where /proc exists


def _timed(function) -> float:
    t0 = time.perf_counter()
    function()
    return time.perf_counter() - t0


if __name__ == "__main__":
    spec_path, result_path = map(Path, sys.argv[1:3])
    result_path.write_text(json.dumps(measure(json.loads(spec_path.read_text())), indent=2))
