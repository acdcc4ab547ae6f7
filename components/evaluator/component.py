"""Evaluator: the fine-tuned model against the base model on the same test split.

Label tasks are decoded under the label constraint (every prediction is a valid label with a
probability); perplexity is measured on answer tokens with the shared tf.data loader. The
headline metrics (`accuracy`, `macro_f1`, `perplexity` and `base_*`) go into artifact.json;
`blessing.json` says whether the model may be pushed, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.config import param
from components.evaluator.report import write_report
from schemas.examples import LABEL_TASKS


@dataclass
class EvaluatorParams:
    """What is measured and what blesses a model."""

    max_examples: int = param(500, "test examples scored per label task (0 = all)")
    batch_size: int = param(8, "prompts per constrained-decoding batch")
    perplexity_batches: int = param(0, "test batches scored for perplexity (0 = the whole test split)")
    min_macro_f1: float = param(0.0, "blessing: absolute macro-F1 floor")
    min_macro_f1_gain: float = param(0.0, "blessing: macro-F1 must beat the base model by this much")
    max_perplexity_ratio: float = param(1.0, "blessing: perplexity at most this times the base model's")
    seed: int = param(0, "seed of the example sample")

    def __post_init__(self):
        if self.max_examples < 0 or self.batch_size < 1 or self.perplexity_batches < 0:
            raise ValueError("max_examples and perplexity_batches must be >= 0, batch_size >= 1")


def label_metrics(gold: list[str], predicted: list[str]) -> dict:
    """Accuracy and macro/weighted F1 from scikit-learn (labels = union of gold and predicted)."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = sorted(set(gold) | set(predicted))
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, labels=labels, average="weighted", zero_division=0)),
        "examples": len(gold),
    }


def sample_label_rows(test: pd.DataFrame, max_examples: int, seed: int) -> pd.DataFrame:
    rows = test[test["task"].isin(LABEL_TASKS)]
    if max_examples and len(rows):
        rows = pd.concat([group.sample(min(len(group), max_examples), random_state=seed)
                          for _, group in rows.groupby("task")])
    return rows.reset_index(drop=True)


def score_model(causal_lm, tokenizer, rows: pd.DataFrame, labels: dict, batch_size: int,
                role: str = "", scorer=None) -> tuple[list, list]:
    """(predicted labels, probabilities) for every row, decoded under its task's label set.

    `role` names the progress bars (none without it); pass a `CachedScorer` to reuse its trace.
    """
    from models.constrained import CachedScorer, LabelTrie, classify_with_cache

    predicted, probabilities = [None] * len(rows), [None] * len(rows)
    scorer = scorer or CachedScorer(causal_lm)
    for task, group in rows.groupby("task"):
        trie = LabelTrie(labels[task], tokenizer)
        results = classify_with_cache(causal_lm, list(group["prompt_ids"].map(list)), trie, batch_size, scorer,
                                      progress=f"  {role} {task}" if role else None)
        for index, result in zip(group.index, results):
            predicted[index], probabilities[index] = result.label, result.probability
    return predicted, probabilities


def overall_metrics(rows: pd.DataFrame, predicted: list[str]) -> dict:
    """Per-task metrics, and the headline as the mean over label tasks."""
    per_task = {task: label_metrics(list(group["target"]), [predicted[i] for i in group.index])
                for task, group in rows.groupby("task")}
    headline = {key: sum(m[key] for m in per_task.values()) / len(per_task) for key in ("accuracy", "macro_f1")}
    return {**headline, "per_task": per_task}


def blessing(p: EvaluatorParams, metrics: dict) -> dict:
    reasons, blessed = [], True
    checks = [
        (metrics["macro_f1"] >= p.min_macro_f1, f"macro-F1 {metrics['macro_f1']:.3f} vs floor {p.min_macro_f1:.3f}"),
        (metrics["macro_f1"] >= metrics["base_macro_f1"] + p.min_macro_f1_gain,
         f"macro-F1 {metrics['macro_f1']:.3f} vs base {metrics['base_macro_f1']:.3f} + {p.min_macro_f1_gain:.3f}"),
        (metrics["perplexity"] <= metrics["base_perplexity"] * p.max_perplexity_ratio,
         f"perplexity {metrics['perplexity']:.2f} vs base {metrics['base_perplexity']:.2f} x {p.max_perplexity_ratio}"),
    ]
    for ok, text in checks:
        reasons.append(("pass: " if ok else "FAIL: ") + text)
        blessed &= ok
    return {"blessed": bool(blessed), "reasons": reasons}


def log_to_tensorboard(directory, results: dict, out) -> None:
    """Headline scalars of both models and the fine-tuned confusion matrices as images."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(directory))
    with writer.as_default(step=0):
        for role, result in results.items():
            for key in ("accuracy", "macro_f1", "perplexity"):
                tf.summary.scalar(f"{role}/{key}", result[key])
        for image in sorted(out.glob("confusion_*.png")):
            png = tf.io.decode_png(tf.io.read_file(str(image)), channels=3)
            tf.summary.image(image.stem, png[None])
    writer.flush()


class Evaluator(Component):
    name = "evaluator"
    version = "2"
    description = "Perplexity and label-constrained accuracy/macro-F1, fine-tuned vs base; blessing."
    inputs = {"datasets": "Datasets", "model": "Model", "base_model": "BaseModel"}
    outputs = {"evaluation": "Evaluation"}
    Params = EvaluatorParams

    def execute(self, ctx: ExecutionContext):
        from components.transform.tensors import answer_token_perplexity, load_dataset
        from models.language_model import load_model

        p: EvaluatorParams = ctx.params
        datasets = ctx.input("datasets")
        test = pd.read_parquet(datasets.path("test.parquet"))
        labels = json.loads(datasets.path("labels.json").read_text())
        max_length = json.loads(datasets.path("transform.json").read_text())["max_length"]
        rows = sample_label_rows(test, p.max_examples, p.seed)
        if rows.empty:
            raise PipelineError("the test split has no label-task examples to evaluate")
        unknown = ~rows.apply(lambda r: r["target"] in labels.get(r["task"], []), axis=1)
        if unknown.any():  # counted and reported, never silently dropped
            ctx.log(f"  {int(unknown.sum())} test rows have labels unseen in training; they count as errors")
        results, predictions = {}, {}
        for role, artifact in (("base", ctx.input("base_model")), ("tuned", ctx.input("model"))):
            causal_lm, tokenizer, _ = load_model(artifact.uri)
            predicted, probability = score_model(causal_lm, tokenizer, rows, labels, p.batch_size, role)
            test_ds = load_dataset(datasets.path("test.tfrecord"), p.batch_size, max_length, tokenizer.pad_id)
            if p.perplexity_batches:
                test_ds = test_ds.take(p.perplexity_batches)
            perplexity, answer_tokens = answer_token_perplexity(causal_lm, test_ds)
            results[role] = {**overall_metrics(rows, predicted), "perplexity": perplexity,
                             "answer_tokens": answer_tokens}
            predictions[role] = (predicted, probability)
            ctx.log(f"  {role}: accuracy {results[role]['accuracy']:.3f}, macro-F1 {results[role]['macro_f1']:.3f}, "
                    f"perplexity {perplexity:.2f}")
        metrics = {key: results["tuned"][key] for key in ("accuracy", "macro_f1", "perplexity")}
        metrics.update({f"base_{key}": results["base"][key] for key in ("accuracy", "macro_f1", "perplexity")})
        metrics["unknown_gold_labels"] = int(unknown.sum())
        out = ctx.output_dir("evaluation")
        verdict = blessing(p, metrics)
        (out / "blessing.json").write_text(json.dumps(verdict, indent=2))
        scored = rows.assign(before=predictions["base"][0], before_probability=predictions["base"][1],
                             after=predictions["tuned"][0], after_probability=predictions["tuned"][1]
                             ).drop(columns=["prompt_ids"])
        scored.to_json(out / "predictions.jsonl", orient="records", lines=True)
        (out / "labels.json").write_text(json.dumps(labels, indent=2))
        extras = write_report(out, scored, labels, results, verdict)
        (out / "metrics.json").write_text(json.dumps({"headline": metrics, **results, **extras}, indent=2))
        log_to_tensorboard(ctx.tensorboard_dir, results, out)
        ctx.log(f"  blessed: {verdict['blessed']}")
        return {"evaluation": {**metrics, "blessed": verdict["blessed"]}}
