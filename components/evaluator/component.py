"""Evaluator: the fine-tuned model against the base model on the same test split.

The base model's side is the `base_evaluator`'s (`components/evaluator/baseline.py`): it depends on the
data and the base model only, so it is a cache hit for every run that changes only the training.

Label tasks are decoded under the label constraint (every prediction is a valid label with a
probability); perplexity is measured on answer tokens with the shared tf.data loader. The
headline metrics (`accuracy`, `macro_f1`, `perplexity` and `base_*`) go into artifact.json;
`blessing.json` says whether the model may be pushed, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.common.laps import Laps
from components.common.metrics import overall_metrics, sample_label_rows, score_model
from components.config import param
from components.evaluator.report import write_report
from schemas.artifacts import BaseEvaluationFiles, DatasetsFiles, EvaluationFiles


@dataclass
class EvaluatorParams:
    """What is measured and what blesses a model."""

    max_examples: int = param(500, "test examples scored per label task (0 = all)")
    batch_size: int = param(0, "prompts per label-scoring batch; 0 = the best the Benchmark measured on this "
                               "machine (runs root's tuning.json), else 8")
    top_k: int = param(3, "top-k accuracy is reported for k = 1..top_k")
    base_shots: int = param(0, "solved training examples in the base model's prompt (k-shot; 0 = zero-shot)")
    unconstrained_examples: int = param(16, "examples per label task decoded without the label constraint, "
                                            "for the invalid-output rate (0 = skip)")
    perplexity_batches: int = param(0, "test batches scored for perplexity (0 = the whole test split)")
    min_macro_f1: float = param(0.0, "blessing: absolute macro-F1 floor")
    min_macro_f1_gain: float = param(0.0, "blessing: macro-F1 must beat the base model by this much")
    max_perplexity_ratio: float = param(1.0, "blessing: perplexity at most this times the base model's")
    seed: int = param(0, "seed of the example sample and of the k-shot examples")

    def __post_init__(self):
        if min(self.max_examples, self.perplexity_batches, self.base_shots, self.unconstrained_examples) < 0:
            raise ValueError("max_examples, perplexity_batches, base_shots and unconstrained_examples must be >= 0")
        if self.batch_size < 0 or self.top_k < 1:
            raise ValueError("batch_size must be >= 0 (0 = measured) and top_k at least 1")


DEFAULT_BATCH_SIZE = 8  # `make bench-eval`'s best on 2 cores, float32 and bfloat16, until the Benchmark measures


def scoring_batch_size(configured: int, runs_root, architecture: dict, log) -> int:
    """The configured label-scoring batch size, or (0) the Benchmark's measured best here for this model shape."""
    from components.tuning import measured_batch_size

    if configured:
        return configured
    measured = measured_batch_size(runs_root, architecture)
    if measured is None:
        log(f"  label-scoring batch size {DEFAULT_BATCH_SIZE} (nothing measured on this machine yet)")
        return DEFAULT_BATCH_SIZE
    log(f"  label-scoring batch size {measured[0]}: the best measured on this machine by {measured[1]}")
    return measured[0]


def few_shot_prompts(rows: pd.DataFrame, train: pd.DataFrame, tokenizer, shots: int, max_prompt_tokens: int,
                     seed: int) -> list[list[int]]:
    """k-shot prompt ids for every row: the same `shots` solved training examples per task, distinct labels first."""
    from models.llm.prompts import answer_text, encode_prompt

    rng = np.random.default_rng(seed)
    examples = {}
    for task, group in train[train["task"].isin(rows["task"].unique())].groupby("task"):
        # One example per label in a seeded order, then more rounds, so few shots still cover many labels.
        shuffled = group.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
        rounds = shuffled.groupby("target").cumcount()
        picked = shuffled.assign(round=rounds.values).sort_values("round", kind="stable").head(shots)
        examples[task] = [(text, answer_text(task, target)) for text, target in zip(picked["model_text"],
                                                                                   picked["target"])]
    budget = max_prompt_tokens * (shots + 1)  # the text-cut rule of zero-shot prompts, room for the shots
    return [encode_prompt(tokenizer, task, text, budget, examples.get(task, []))[0]
            for task, text in zip(rows["task"], rows["model_text"])]


def invalid_output_rate(causal_lm, tokenizer, rows: pd.DataFrame, labels: dict, per_task: int, seed: int,
                        prompt_column: str = "prompt_ids") -> dict:
    """Greedy decoding *without* the label constraint on a sample: how often the answer is not a label.

    Outputs are PII-masked before they are kept: they end up in the report.
    """
    from components.common.pii import mask_pii
    from models.llm.chat import generate_ids
    from models.llm.prompts import label_answer

    sample = sample_label_rows(rows, per_task, seed)
    per_task_rates, invalid = {}, []
    for task, group in sample.groupby("task"):
        allowed = {label_answer(label) for label in labels[task]}  # the answers as the model writes them
        max_new = max(len(tokenizer.encode(answer)) for answer in allowed) + 4
        bad = 0
        for prompt, gold in zip(group[prompt_column], group["target"]):
            ids = generate_ids(causal_lm, list(prompt), max_new, stop_ids=(tokenizer.im_end_id,
                                                                          tokenizer.end_of_text_id))
            answer = tokenizer.decode(ids).strip()
            if answer not in allowed:
                bad += 1
                invalid.append({"task": task, "gold": gold, "output": mask_pii(answer)[0][:80]})
        per_task_rates[task] = bad / len(group)
    rate = float(np.mean(list(per_task_rates.values()))) if per_task_rates else float("nan")
    return {"invalid_output_rate": rate, "per_task": per_task_rates, "examples": len(sample),
            "invalid_examples": invalid[:20]}


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


def evaluation_rows(p: EvaluatorParams, datasets: DatasetsFiles) -> pd.DataFrame:
    """The test rows both models are scored on: `max_examples` per label task, seeded."""
    rows = sample_label_rows(pd.read_parquet(datasets.split_table("test")), p.max_examples, p.seed)
    if rows.empty:
        raise PipelineError("the test split has no label-task examples to evaluate")
    return rows


def evaluate_model(ctx: ExecutionContext, p: EvaluatorParams, datasets: DatasetsFiles, rows: pd.DataFrame,
                   model_dir, role: str, laps: Laps) -> tuple[dict, list, dict | None]:
    """(metrics, predictions, unconstrained-decoding result or None) of one model on `rows`: exact label
    scoring, answer-token perplexity and (optionally) greedy decoding without the constraint."""
    from models.llm.language_model import load_model
    from models.llm.tfrecords import answer_token_perplexity, load_dataset

    labels, transform = datasets.labels(), datasets.transform()
    causal_lm, tokenizer, config = load_model(model_dir)
    laps.lap(f"{role}_load")
    batch_size = scoring_batch_size(p.batch_size, ctx.run_dir.parent, config["architecture"], ctx.log)
    prompt_column = "prompt_ids"
    if role == "base" and p.base_shots:
        train = pd.read_parquet(datasets.split_table("train"))
        rows = rows.assign(shot_prompt_ids=few_shot_prompts(rows, train, tokenizer, p.base_shots,
                                                            transform["max_prompt_tokens"], p.seed))
        prompt_column = "shot_prompt_ids"
    predicted = score_model(causal_lm, tokenizer, rows, labels, batch_size, role, prompt_column=prompt_column)
    laps.lap(f"{role}_label_scoring")
    # Perplexity batches keep a fixed size: `perplexity_batches` counts them, so the rows scored
    # must not change with the measured label-scoring batch size.
    test_ds = load_dataset(datasets.tfrecord("test"), p.batch_size or DEFAULT_BATCH_SIZE, transform["max_length"],
                           tokenizer.pad_id)
    if p.perplexity_batches:
        test_ds = test_ds.take(p.perplexity_batches)
    perplexity, answer_tokens = answer_token_perplexity(causal_lm, test_ds)
    laps.lap(f"{role}_perplexity")
    unconstrained = None
    if p.unconstrained_examples:
        unconstrained = invalid_output_rate(causal_lm, tokenizer, rows, labels, p.unconstrained_examples, p.seed,
                                            prompt_column)
        laps.lap(f"{role}_unconstrained")
    result = {**overall_metrics(rows, predicted, p.top_k), "perplexity": perplexity, "answer_tokens": answer_tokens,
              "label_mass": float(np.mean([x.label_mass for x in predicted])),
              "invalid_output_rate": (unconstrained or {}).get("invalid_output_rate")}
    ctx.log(f"  {role}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}, "
            f"perplexity {perplexity:.2f}")
    return result, predicted, unconstrained


class Evaluator(Component):
    name = "evaluator"
    version = "5"
    description = "Perplexity and label-constrained accuracy/macro-F1, fine-tuned vs base; blessing."
    inputs = {"datasets": "Datasets", "model": "Model", "base_evaluation": "BaseEvaluation"}
    outputs = {"evaluation": "Evaluation"}
    Params = EvaluatorParams

    def execute(self, ctx: ExecutionContext):
        p: EvaluatorParams = ctx.params
        datasets = DatasetsFiles(ctx.input("datasets"))
        labels = datasets.labels()
        rows = evaluation_rows(p, datasets)
        base = BaseEvaluationFiles(ctx.input("base_evaluation"))
        base_predictions = base.predictions()
        if list(base_predictions["id"]) != list(rows["id"]):  # same section, same data: only a bug gets here
            raise PipelineError("the base model's evaluation was made on other test rows; rerun with --force")
        unknown = ~rows.apply(lambda r: r["target"] in labels.get(r["task"], []), axis=1)
        if unknown.any():  # counted and reported, never silently dropped
            ctx.log(f"  {int(unknown.sum())} test rows have labels unseen in training; they count as errors")
        laps = Laps()  # step seconds in metrics.json: where the Evaluator's minutes go
        base_document = base.results()
        results, unconstrained = {"base": base_document["results"]}, {}
        if base_document["unconstrained"] is not None:
            unconstrained["base"] = base_document["unconstrained"]
        ctx.log(f"  base (from the base_evaluator): accuracy {results['base']['accuracy']:.3f}, "
                f"macro-F1 {results['base']['macro_f1']:.3f}, perplexity {results['base']['perplexity']:.2f}")
        results["tuned"], predicted, tuned_unconstrained = evaluate_model(
            ctx, p, datasets, rows, ctx.input("model").uri, "tuned", laps)
        if tuned_unconstrained is not None:
            unconstrained["tuned"] = tuned_unconstrained
        metrics = {key: results["tuned"][key] for key in ("accuracy", "macro_f1", "perplexity")}
        metrics.update({f"base_{key}": results["base"][key] for key in ("accuracy", "macro_f1", "perplexity")})
        metrics["unknown_gold_labels"] = int(unknown.sum())
        out = ctx.output_dir("evaluation")
        files = EvaluationFiles(out)
        verdict = blessing(p, metrics)
        files.blessing_file.write_text(json.dumps(verdict, indent=2))
        scored = rows.drop(columns=["prompt_ids"])
        scored["before"], scored["before_probability"] = list(base_predictions["label"]), list(
            base_predictions["probability"])
        scored["after"] = [x.label for x in predicted]
        scored["after_probability"] = [x.probability for x in predicted]
        scored["after_top"] = [x.top(p.top_k) for x in predicted]
        # log P(gold answer | prompt): the answer perplexity of exported variants is compared with it.
        scored["after_gold_log_prob"] = [x.log_probabilities.get(gold) for x, gold in
                                         zip(predicted, scored["target"])]
        scored.to_json(files.predictions_file, orient="records", lines=True)
        files.labels_file.write_text(json.dumps(labels, indent=2))
        settings = {"top_k": p.top_k, "base_shots": p.base_shots, "unknown_gold_labels": int(unknown.sum())}
        extras = write_report(out, scored, labels, results, verdict, unconstrained, settings)
        files.metrics_file.write_text(json.dumps({"headline": metrics, **results, **extras,
                                                  "unconstrained": unconstrained,
                                                  "seconds": laps.total()},
                                                 indent=2))
        log_to_tensorboard(ctx.tensorboard_dir, results, out)
        ctx.log(f"  blessed: {verdict['blessed']}")
        return {"evaluation": {**metrics, "blessed": verdict["blessed"]}}
