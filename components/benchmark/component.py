"""Benchmark: every exported variant side by side — size, load time, latency, quality.

Latency is one request end to end: tokenise the text, build the prompt, decode the label under the
constraint. Warm-up requests are excluded; each variant runs `repeats` times over the same
examples and the percentiles are taken over all timed requests. Quality (accuracy, macro-F1) is
measured through the variant itself, not assumed from the Keras model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.base import Component, ExecutionContext
from components.config import param


@dataclass
class BenchmarkParams:
    """How variants are timed."""

    max_examples: int = param(32, "test examples per variant (timed and scored)")
    repeats: int = param(3, "timed passes over the examples")
    warmup: int = param(2, "untimed requests before timing")
    num_threads: int = param(2, "interpreter threads (this machine's cores)")

    def __post_init__(self):
        if self.max_examples < 1 or self.repeats < 1 or self.warmup < 0 or self.num_threads < 1:
            raise ValueError("max_examples, repeats and num_threads must be >= 1, warmup >= 0")


def time_requests(classify_one, rows: pd.DataFrame, repeats: int, warmup: int) -> tuple[list[float], list[str]]:
    """Per-request latencies in ms over `repeats` passes, and the predictions of the last pass."""
    for _, row in rows.head(warmup).iterrows():
        classify_one(row)
    latencies, predicted = [], []
    for _ in range(repeats):
        predicted = []
        for _, row in rows.iterrows():
            started = time.perf_counter()
            predicted.append(classify_one(row))
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies, predicted


def markdown_table(results: list[dict]) -> str:
    baseline = next(r for r in results if r["name"] == "keras_float32")
    lines = ["| variant | size MB | size vs keras | load s | p50 ms | p95 ms | p50 vs keras | accuracy | macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['size_bytes'] / 1e6:.2f} | {r['size_bytes'] / baseline['size_bytes']:.2f} | "
            f"{r['load_s']:.2f} | {r['latency_p50_ms']:.1f} | {r['latency_p95_ms']:.1f} | "
            f"{r['latency_p50_ms'] / baseline['latency_p50_ms']:.2f} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |")
    return "\n".join(lines) + "\n"


class Benchmark(Component):
    name = "benchmark"
    version = "1"
    description = "Size, load time, latency percentiles and accuracy of every variant."
    inputs = {"bundles": "Bundles", "model": "Model", "datasets": "Datasets"}
    outputs = {"report": "BenchmarkReport"}
    Params = BenchmarkParams

    def execute(self, ctx: ExecutionContext):
        from components.evaluator.component import label_metrics, sample_label_rows
        from models.constrained import CachedScorer, LabelTrie, classify_with_cache, classify_with_logits_fn
        from models.export import TFLiteLogits
        from models.files import size_on_disk
        from models.language_model import load_model
        from models.prompts import encode_prompt

        p: BenchmarkParams = ctx.params
        bundles, datasets = ctx.input("bundles"), ctx.input("datasets")
        labels = json.loads(datasets.path("labels.json").read_text())
        max_prompt = json.loads(datasets.path("transform.json").read_text())["max_prompt_tokens"]
        rows = sample_label_rows(pd.read_parquet(datasets.path("test.parquet")), 0, 0).head(p.max_examples)

        started = time.perf_counter()
        causal_lm, tokenizer, _ = load_model(ctx.input("model").uri)
        keras_load = time.perf_counter() - started
        tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
        scorer = CachedScorer(causal_lm)

        def prompt_of(row, limit: int = max_prompt) -> list[int]:  # tokenisation is part of the timed request
            return encode_prompt(tokenizer, row["task"], row["model_text"], limit)[0]

        def classify_keras(row) -> str:
            return classify_with_cache(causal_lm, [prompt_of(row)], tries[row["task"]], 1, scorer)[0].label

        candidates = [("keras_float32", "keras", ctx.input("model").uri, keras_load, classify_keras)]
        for bundle in sorted(Path(bundles.uri).iterdir()):
            tflite_files = list(bundle.glob("*.tflite"))
            if not tflite_files:
                continue
            started = time.perf_counter()
            runner = TFLiteLogits(tflite_files[0], num_threads=p.num_threads)
            load_s = time.perf_counter() - started
            def classify_tflite(row, runner=runner) -> str:
                trie = tries[row["task"]]
                prompt = prompt_of(row, runner.sequence_length - trie.max_depth)
                (prediction,) = classify_with_logits_fn(runner, [prompt], trie, runner.sequence_length,
                                                        tokenizer.pad_id)
                return prediction.label

            candidates.append((bundle.name, "tflite", tflite_files[0], load_s, classify_tflite))
        results = []
        for name, fmt, path, load_s, classify_one in candidates:
            latencies, predicted = time_requests(classify_one, rows, p.repeats, p.warmup)
            size = size_on_disk(path)
            quality = label_metrics(list(rows["target"]), predicted)
            results.append({"name": name, "format": fmt, "size_bytes": size, "load_s": load_s,
                            "latency_p50_ms": float(np.percentile(latencies, 50)),
                            "latency_p95_ms": float(np.percentile(latencies, 95)),
                            "latency_p99_ms": float(np.percentile(latencies, 99)),
                            "requests_timed": len(latencies),
                            "accuracy": quality["accuracy"], "macro_f1": quality["macro_f1"]})
            ctx.log(f"  {name}: {size / 1e6:.2f} MB, p50 {results[-1]['latency_p50_ms']:.1f} ms, "
                    f"accuracy {quality['accuracy']:.3f}")
        out = ctx.output_dir("report")
        (out / "benchmark.json").write_text(json.dumps(results, indent=2))
        (out / "benchmark.md").write_text(
            f"# Benchmark\n\n{len(rows)} test examples x {p.repeats} repeats per variant, "
            f"{p.warmup} warm-up requests excluded, {p.num_threads} threads.\n\n" + markdown_table(results))
        return {"report": {r["name"]: {"size_bytes": r["size_bytes"], "latency_p50_ms": r["latency_p50_ms"],
                                       "accuracy": r["accuracy"]} for r in results}}
