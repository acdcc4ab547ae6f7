"""Benchmark: every variant side by side — size, load time, latency, throughput, decode speed, memory, quality.

Variants: the Keras float32 fine-tuned model, the SavedModel and every TFLite file the Exporter
bundled. Each is measured in its own process (`measure.py`), so peak RSS is the variant's own.
Latency is one request end to end (tokenise, build the prompt, score every label). Quality is
measured through the variant itself, never assumed from the Keras model: accuracy / macro-F1 /
label agreement / answer perplexity of every TFLite file come from the Optimizer, which ran it over
the Evaluator's test rows (the Keras figures are the Evaluator's on the same rows); the SavedModel,
which only the Benchmark runs, is scored on the Benchmark's own sample (`quality_examples` says which).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.config import param
from models.child_process import ChildRunError, run_child
from schemas.artifacts import BenchmarkFiles, DatasetsFiles, ModelFiles, VariantsFiles


@dataclass
class BenchmarkParams:
    """How variants are timed."""

    max_examples: int = param(32, "test examples per variant (timed and scored)")
    repeats: int = param(3, "timed passes over the examples")
    warmup: int = param(2, "untimed requests before timing")
    batch_sizes: list[int] = param([1, 8, 32], "batch sizes whose throughput (examples/s) is measured")
    decode_tokens: int = param(32, "tokens generated with the KV cache for the decode speed")
    num_threads: int = param(2, "interpreter threads (this machine's cores)")

    def __post_init__(self):
        if min(self.max_examples, self.repeats, self.num_threads, self.decode_tokens) < 1 or self.warmup < 0:
            raise ValueError("max_examples, repeats, decode_tokens and num_threads must be >= 1, warmup >= 0")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or 8 not in self.batch_sizes:
            raise ValueError(f"batch_sizes must be positive integers including 8 (the report's reference "
                             f"throughput), got {self.batch_sizes}")


# (header, field, scale, format, relative to the float32 baseline?)
COLUMNS = [("size MB", "size_bytes", 1e-6, ".1f", False), ("size vs float32", "size_bytes", 1, ".2f", True),
           ("load s", "load_s", 1, ".1f", False), ("p50 ms", "latency_p50_ms", 1, ".0f", False),
           ("p95 ms", "latency_p95_ms", 1, ".0f", False), ("p50 vs float32", "latency_p50_ms", 1, ".2f", True),
           ("ex/s b1", "examples_per_s_batch1", 1, ".2f", False), ("ex/s b8", "examples_per_s_batch8", 1, ".2f", False),
           ("ex/s b32", "examples_per_s_batch32", 1, ".2f", False),
           ("decode tok/s", "decode_tokens_per_s", 1, ".1f", False),
           ("decode vs float32", "decode_tokens_per_s", 1, ".2f", True),
           ("gen/s b1", "generations_per_s_batch1", 1, ".2f", False),
           ("gen/s batched", "generations_per_s_batched", 1, ".2f", False),
           ("peak RSS MB", "peak_rss_mb", 1, ".0f", False),
           ("accuracy", "accuracy", 1, ".3f", False), ("macro-F1", "macro_f1", 1, ".3f", False),
           ("agreement", "label_agreement", 1, ".3f", False), ("answer ppl", "answer_perplexity", 1, ".3f", False),
           ("quality rows", "quality_examples", 1, ".0f", False)]


def markdown_table(results: list[dict]) -> str:
    """One row per variant, each relative to the Keras float32 fine-tuned model."""
    baseline = next(r for r in results if r["name"] == "keras_float32")

    def cell(r, key, scale, fmt, relative):
        value = (float("nan") if r.get(key) is None else r[key]) * scale
        return format(value / baseline.get(key, float("nan")) if relative else value, fmt)

    eligible = {None: "baseline", True: "yes", False: "no"}
    lines = ["| variant | eligible | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    lines += [f"| {r['name']} | {eligible[r.get('eligible')]} | " + " | ".join(cell(r, *c[1:]) for c in COLUMNS)
              + " |" for r in results]
    return "\n".join(lines) + "\n"


def plot_results(results: list[dict], path: Path) -> None:
    """Bar charts of size, latency, throughput and decode speed per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("size_bytes", "size (MB)", 1e-6), ("latency_p50_ms", "latency p50 (ms)", 1),
              ("examples_per_s_batch8", "examples/s, batch 8", 1), ("decode_tokens_per_s", "decode tokens/s", 1),
              ("peak_rss_mb", "peak RSS (MB)", 1), ("macro_f1", "macro-F1", 1)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    names = [r["name"] for r in results]
    for ax, (key, title, scale) in zip(axes.flat, panels):
        ax.barh(names, [float("nan") if r.get(key) is None else r[key] * scale for r in results], color="#4c72b0")
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compression(results: list[dict], path: Path) -> None:
    """Size vs macro-F1 and latency vs macro-F1 of every variant, relative to the Keras float32 model (1.0).

    Only variants scored on the same test rows as the baseline are placed: a macro-F1 from the timed
    sample (the SavedModel's) is not comparable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = next(r for r in results if r["name"] == "keras_float32")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in ((axes[0], "size_bytes", "size"), (axes[1], "latency_p50_ms", "latency p50")):
        for r in (r for r in results if r["quality_examples"] == baseline["quality_examples"]):
            x, y = r[key] / baseline[key], r["macro_f1"] / baseline["macro_f1"]
            colour = {None: "#333333", True: "#2a9d4b", False: "#c0392b"}[r.get("eligible")]
            ax.scatter([x], [y], color=colour)
            ax.annotate(r["name"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.axhline(1.0, color="#999999", lw=0.8)
        ax.axvline(1.0, color="#999999", lw=0.8)
        ax.set_xlabel(f"{title} vs Keras float32")
        ax.set_ylabel("macro-F1 vs Keras float32")
    fig.suptitle("green: eligible, red: over the compression budget, black: baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MEASURE_TIMEOUT_S = 1800  # one variant's measurement takes minutes on the 135M model; a hung one is killed


def run_in_subprocess(spec: dict, work: Path) -> dict:
    """Measure one variant in a fresh Python process (its own peak RSS, no shared caches)."""
    spec_path, result_path = work / f"{spec['name']}.spec.json", work / f"{spec['name']}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    what = f"benchmarking {spec['name']}"
    try:
        run_child([sys.executable, "-m", "components.benchmark.measure", str(spec_path), str(result_path)], what,
                  work / f"{spec['name']}.stderr.log", MEASURE_TIMEOUT_S, cwd=Path(__file__).resolve().parents[2])
    except ChildRunError as error:
        raise PipelineError(str(error)) from None
    if not result_path.exists():
        raise PipelineError(f"{what} exited 0 but wrote no result")
    return json.loads(result_path.read_text())


class Benchmark(Component):
    name = "benchmark"
    version = "7"
    description = "Size, load time, latency, throughput, decode speed, memory and accuracy of every variant."
    inputs = {"bundles": "Bundles", "model": "Model", "datasets": "Datasets", "variants": "ModelVariants",
              "student": "StudentModel"}
    outputs = {"report": "BenchmarkReport"}
    Params = BenchmarkParams

    def execute(self, ctx: ExecutionContext):
        from components.common.metrics import sample_label_rows
        from components.tuning import record_best_batch_size
        from models.files import size_on_disk

        p: BenchmarkParams = ctx.params
        bundles, datasets, model = ctx.input("bundles"), DatasetsFiles(ctx.input("datasets")), ctx.input("model")
        variants = VariantsFiles(ctx.input("variants"))
        labels = datasets.labels()
        test = pd.read_parquet(datasets.split_table("test"), columns=["task", "model_text", "target"])
        rows = sample_label_rows(test, 0, 0).sample(frac=1.0, random_state=0).head(p.max_examples)
        work = ctx.work_dir
        rows.reset_index(drop=True).to_parquet(work / "rows.parquet", index=False)
        optimized = variants.manifest()
        student_variants = VariantsFiles(ctx.input("student")).manifest()["variants"]
        # Every compressed variant with the folder its file is in (the Optimizer's, then the Student's).
        compressed = [(v, variants) for v in optimized["variants"]] + \
                     [(v, VariantsFiles(ctx.input("student"))) for v in student_variants]
        quality = {"keras_float32": optimized["keras_quality"], **{v["name"]: v["quality"] for v, _ in compressed}}
        gate = {v["name"]: v["gate"] for v, _ in compressed}
        students = {v["name"]: v for v in student_variants}

        def file_format(name: str, path: Path) -> str:
            if name in students:
                return "student_tflite"  # its own inputs and head: not the teacher's four signatures
            return "tflite" if path.suffix == ".tflite" else "saved_model"

        candidates = [("keras_float32", "keras", model.uri)]
        bundle_dirs = sorted(d for d in Path(bundles.uri).iterdir() if d.is_dir())
        for bundle in bundle_dirs:
            files = list(bundle.glob("*.tflite")) + [d for d in bundle.iterdir() if (d / "saved_model.pb").is_file()]
            candidates += [(bundle.name, file_format(bundle.name, f), f) for f in files]
        # Variants the compression gate kept out of the bundles are measured too, so the report shows why.
        bundled = {name for name, _, _ in candidates}
        candidates += [(v["name"], file_format(v["name"], Path(v["file"])), folder.file(v["file"]))
                       for v, folder in compressed if v["name"] not in bundled]
        tree = optimized["tree"]  # one export, shared by all
        results = []
        for name, fmt, path in candidates:
            spec = {"name": name, "format": fmt, "path": str(path), "tokenizer_dir": str(model.uri),
                    "rows": str(work / "rows.parquet"), "labels": labels, "tree_nodes": tree["nodes"],
                    "prompt_tokens": tree["prompt_tokens"], "repeats": p.repeats, "warmup": p.warmup,
                    "batch_sizes": p.batch_sizes, "decode_tokens": p.decode_tokens, "num_threads": p.num_threads,
                    "decode_rows": optimized["cache"].get("decode_rows", 0)}
            if name in students:
                spec["student"] = {"output_tokens": students[name]["output_tokens"], **students[name]["input"]}
            result = {**run_in_subprocess(spec, work), "size_bytes": size_on_disk(path)}
            result.update(quality_fields(quality.get(name), result, len(rows)))
            # The gate judges compressed variants; the Keras model is the baseline, the SavedModel always ships.
            result["eligible"] = gate[name]["eligible"] if name in gate else (None if fmt == "keras" else True)
            results.append(result)
            decode = "none" if result["decode_tokens_per_s"] is None else f"{result['decode_tokens_per_s']:.1f} tok/s"
            ctx.log(f"  {name}: {result['size_bytes'] / 1e6:.1f} MB, p50 {result['latency_p50_ms']:.0f} ms, "
                    f"decode {decode}, peak RSS {result['peak_rss_mb']:.0f} MB, "
                    f"accuracy {result['accuracy']:.3f}")
        report = BenchmarkFiles(ctx.output_dir("report"))
        report.results_file.write_text(json.dumps(results, indent=2))
        plot_results(results, report.plot_file)
        plot_compression(results, report.compression_plot_file)
        best = "".join(f"- {r['name']}: batch {best_batch_size(r, p.batch_sizes)}\n" for r in results)
        reasons = "".join(f"- {name}: {'eligible' if g['eligible'] else 'not eligible'}, {g['reason']}\n"
                          for name, g in gate.items())
        report.markdown_file.write_text(
            f"# Benchmark\n\n{len(rows)} test examples x {p.repeats} repeats per variant, {p.warmup} warm-up "
            f"requests excluded, {p.num_threads} threads, each variant in its own process. Latency is one "
            "request end to end (tokenise, prompt, score every label); throughput is examples/s for a batch "
            "of one task's texts (the exported `score_labels` takes batch 1, so their batches run one by one); "
            f"decode is greedy generation of {p.decode_tokens} tokens with the KV cache, prefill excluded (nan for "
            "the student, which only scores labels); " + generation_note(optimized["cache"].get("decode_rows", 0))
            + " Ratios are "
            "against the Keras float32 fine-tuned model. Quality columns are on `quality rows` test examples: "
            "the Evaluator's rows for Keras and every TFLite file (agreement = same top-1 label as Keras, "
            "answer ppl = perplexity of the gold label answers; the student's over its answer vocabulary), the "
            "timed sample for the SavedModel.\n\n"
            + markdown_table(results) + "\n## Best batch size on this machine (highest examples/s)\n\nThe Keras "
            "model's becomes the Evaluator's label-scoring batch size on later runs (`evaluator.batch_size=0`, "
            "the runs root's tuning.json).\n\n" + best
            + "\n## Compression gate\n\n" + reasons
            + f"\n![benchmark]({report.plot_file.name})\n\n"
            f"![size and latency vs macro-F1]({report.compression_plot_file.name})\n")
        log_scalars(ctx.tensorboard_dir, results)
        keras_best = best_batch_size(next(r for r in results if r["name"] == "keras_float32"), p.batch_sizes)
        architecture = ModelFiles(model).config()["architecture"]
        record_best_batch_size(ctx.run_dir.parent, architecture, keras_best, f"the benchmark of run {ctx.run_dir.name}")
        ctx.log(f"  best Keras label-scoring batch size here: {keras_best} (the Evaluator's default from now on)")
        return {"report": {r["name"]: {k: r[k] for k in ("size_bytes", "latency_p50_ms", "decode_tokens_per_s",
                                                          "accuracy")} for r in results}}


def best_batch_size(result: dict, batch_sizes: list[int]) -> int:
    return max(batch_sizes, key=lambda b: result[f"examples_per_s_batch{b}"])


def quality_fields(measured: dict | None, result: dict, sample_size: int) -> dict:
    """Test-row quality of a variant: the Optimizer's/Evaluator's figures when it has them, else the sample's."""
    if measured is None:
        return {"accuracy": result["sample_accuracy"], "macro_f1": result["sample_macro_f1"],
                "label_agreement": None, "answer_perplexity": None, "quality_examples": sample_size}
    return {"accuracy": measured["accuracy"], "macro_f1": measured["macro_f1"],
            "label_agreement": measured["label_agreement"], "answer_perplexity": measured["answer_perplexity"],
            "quality_examples": measured["examples"]}


def log_scalars(directory: Path, results: list[dict]) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default(step=0):
        for r in results:
            for key in ("size_bytes", "latency_p50_ms", "examples_per_s_batch8", "decode_tokens_per_s",
                        "peak_rss_mb", "accuracy", "macro_f1"):
                if r.get(key) is not None:  # the student has no decode speed
                    tf.summary.scalar(f"{r['name']}/{key}", r[key])
    writer.flush()


def generation_note(rows: int) -> str:
    """The benchmark.md sentence on the gen/s columns."""
    if rows < 2:
        return "the exports of this run have no `decode_batch` signature (`optimizer.decode_batch`), so no gen/s."
    return (f"gen/s is generations of that many tokens per second, prefill included, for {rows} prompts one after "
            "another (b1) and all at once through the exported `decode_batch` signature (batched; exported files "
            "only).")
