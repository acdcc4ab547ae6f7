"""The Optimizer's student stage: distil the fine-tuned teacher into a small tf-keras decoder, prune
it, train it quantisation-aware and ship it as a full-integer int8 TFLite file, measuring each step.

    teacher top-k soft targets (train split)
      -> one student per (alpha, temperature) candidate, the best on validation kept
      -> magnitude pruning to `target_sparsity` -> pruning-preserving QAT -> int8 TFLite (builtin ops only)
      -> float / pruned / int8 students scored on the same test rows as the teacher

Every setting and the data are checked first (`plan_student`): nothing trains or calls the
teacher until the student fits the tokenizer and the longest input, the sparsity schedule is
reachable and the calibration samples have the converter's input shape.

Quality is label-constrained and exact (`classify_with_logits_fn`: one full forward pass per label,
the only scoring a plain [1, T] token-ids -> logits TFLite file allows); a single request is one
test prompt scored over its task's labels, so its latency grows with the number of labels.
"""

from __future__ import annotations

import gzip
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import param

SELECT_ON = ("macro_f1", "answer_loss")
STAGES = ("float", "pruned", "int8")


class StudentExportError(RuntimeError):
    """The student could not become a builtin-ops-only full-integer int8 TFLite file."""


@dataclass
class StudentSettings:
    """The student's size and its distillation, pruning, QAT and evaluation budgets."""

    num_layers: int = param(6, "student transformer blocks (the measured 'M' size: 6 x 192, MLP 768, ~21.6M "
                               "parameters with SmolLM2's 49,152-token vocabulary)")
    hidden_dim: int = param(192, "width of the student's residual stream")
    num_heads: int = param(6, "attention heads; hidden_dim must split into heads of an even size")
    mlp_dim: int = param(768, "width of each block's MLP")
    max_length: int = param(0, "longest input the student covers (0 = the data's: Transform's max_length or the "
                               "TFLite sequence length, whichever is longer)")
    steps: int = param(150, "distillation steps per (alpha, temperature) candidate")
    batch_size: int = param(16, "sequences per distillation / pruning / QAT step")
    learning_rate: float = param(2e-3, "Adam learning rate of distillation (pruning and QAT fine-tune lower)")
    alphas: list[float] = param([0.5, 0.9], "candidate soft-target shares of the loss (1 = teacher only)")
    temperatures: list[float] = param([1.0, 2.0], "candidate softmax temperatures of the soft targets")
    select_on: str = param("macro_f1", "validation figure that picks the candidate: macro_f1 (ties broken by "
                                       "answer_loss) or answer_loss")
    top_k: int = param(64, "teacher logits kept per answer token (top-k soft targets)")
    target_sparsity: float = param(0.5, "share of zero weights in every Dense kernel and the embedding after pruning")
    pruning_steps: int = param(100, "distillation steps with magnitude pruning (the schedule ends at 3/4 of them)")
    pruning_frequency: int = param(10, "steps between pruning mask updates")
    qat_steps: int = param(50, "quantisation-aware distillation steps after pruning")
    calibration_examples: int = param(128, "representative train sequences for the int8 converter's ranges")
    eval_examples: int = param(25, "test examples per label task, the same rows for teacher and every stage")
    selection_examples: int = param(10, "validation examples per label task for the candidates' macro-F1 (0 = "
                                        "select on answer loss only)")
    validation_batches: int = param(20, "validation batches for the candidates' answer loss (0 = all)")
    latency_runs: int = param(5, "timed repeats of each single request (median reported)")
    num_threads: int = param(2, "LiteRT interpreter threads (the Benchmark's default)")
    seed: int = param(0, "seed of the student's weights, the data order and the example samples")

    def __post_init__(self):
        counts = {name: getattr(self, name) for name in (
            "steps", "batch_size", "top_k", "pruning_steps", "pruning_frequency", "qat_steps", "calibration_examples",
            "eval_examples", "latency_runs", "num_threads")}
        bad = {name: value for name, value in counts.items() if not value >= 1}
        if bad:
            raise ValueError(f"student settings must be at least 1: {bad}")
        if min(self.max_length, self.selection_examples, self.validation_batches) < 0:
            raise ValueError("max_length, selection_examples and validation_batches must be >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {self.alphas}")
        if not self.temperatures or not all(t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be a non-empty list of values > 0, got {self.temperatures}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.select_on == "macro_f1" and self.selection_examples == 0:
            raise ValueError("select_on=macro_f1 needs selection_examples >= 1")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        # The student's shape and the pruning schedule are checked against the data in plan_student
        # (StudentConfig, check_pruning_schedule): that needs TensorFlow, which parameters do not import.

    def grid(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.alphas, self.temperatures))


@dataclass
class StudentPlan:
    """Everything `plan_student` checked, ready for training."""

    config: object  # models.student.StudentConfig
    sequence_length: int  # the TFLite input length (longest prompt + longest label, rounded up to 16)
    data_max_length: int  # Transform's max_length: the longest training input
    pad_id: int
    tries: dict  # {task: LabelTrie}
    eval_rows: pd.DataFrame  # test rows: task, target, prompt_ids
    selection_rows: pd.DataFrame  # validation rows for the candidates' macro-F1 (may be empty)
    calibration: list  # [1, sequence_length] int32 arrays
    paths: dict  # split -> tfrecord path


def _label_rows(frame: pd.DataFrame, per_task: int, seed: int, tasks) -> pd.DataFrame:
    from components.evaluator.component import sample_label_rows

    rows = sample_label_rows(frame, per_task, seed) if per_task else frame.iloc[:0]
    rows = rows[rows["task"].isin(tasks)].reset_index(drop=True)
    return rows.assign(prompt_ids=rows["prompt_ids"].map(lambda ids: [int(i) for i in ids]))


def plan_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, settings: StudentSettings) -> StudentPlan:
    """Check the student, the schedule and the calibration data against the data set; nothing trains."""
    from components.optimizer.component import export_sequence_length
    from components.transform.tensors import load_dataset
    from models.constrained import LabelTrie
    from models.student import StudentConfig
    from models.student_compression import (
        calibration_samples,
        check_calibration_samples,
        check_pruning_schedule,
        default_end_step,
    )

    datasets_dir = Path(datasets_dir)
    paths = {split: datasets_dir / f"{split}.tfrecord" for split in ("train", "validation", "test")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the student stage needs Transform's TFRecord splits; missing {missing}")
    transform = json.loads((datasets_dir / "transform.json").read_text())
    columns = ["id", "task", "target", "prompt_ids"]
    splits = {split: pd.read_parquet(datasets_dir / f"{split}.parquet", columns=columns) for split in paths}
    tasks = [task for task in labels if labels[task]]
    tries = {task: LabelTrie(labels[task], tokenizer) for task in tasks}
    longest = min(transform["max_prompt_tokens"], max(int(s["prompt_ids"].map(len).max()) for s in splits.values()))
    sequence_length = export_sequence_length(longest, labels, tokenizer)
    needed = max(int(transform["max_length"]), sequence_length)
    vocabulary = max(int(causal_lm.backbone.vocabulary_size), tokenizer.vocabulary_size)
    config = StudentConfig(vocabulary_size=vocabulary, num_layers=settings.num_layers, hidden_dim=settings.hidden_dim,
                           num_heads=settings.num_heads, mlp_dim=settings.mlp_dim,
                           max_length=settings.max_length or needed)
    config.check_fits(tokenizer.vocabulary_size, needed)
    check_pruning_schedule(settings.target_sparsity, settings.pruning_steps, 0,
                           default_end_step(settings.pruning_steps, 0, settings.pruning_frequency),
                           settings.pruning_frequency)
    eval_rows = _label_rows(splits["test"], settings.eval_examples, settings.seed, tasks)
    if eval_rows.empty:
        raise ValueError(f"the test split has no rows of the label tasks {tasks} to evaluate the student on")
    selection_rows = _label_rows(splits["validation"], settings.selection_examples, settings.seed, tasks)
    if settings.select_on == "macro_f1" and selection_rows.empty:
        raise ValueError("the validation split has no label-task rows to choose alpha and temperature on")
    # Calibration: real train sequences (prompt + answer) at the served input length, drawn shuffled so
    # every length bucket is represented. 128: the int8 ranges are min/max over 128 x T token positions
    # (>20k values per activation tensor), which TF's guide ("~100-500 samples") finds stable; QAT
    # has already learned the Dense ranges, and conversion time grows linearly with the count.
    loader = load_dataset(paths["train"], settings.batch_size, int(transform["max_length"]), tokenizer.pad_id,
                          shuffle=True, seed=settings.seed)
    calibration = check_calibration_samples(
        calibration_samples(loader, sequence_length, tokenizer.pad_id, settings.calibration_examples),
        sequence_length, config.vocabulary_size)
    return StudentPlan(config, sequence_length, int(transform["max_length"]), tokenizer.pad_id, tries, eval_rows,
                       selection_rows, calibration, paths)


def hard_label_batches(dataset, limit: int = 0) -> list[dict]:
    """Soft-batch dicts without a teacher (a one-logit dummy), for `answer_loss(alpha=0)`: hard-label CE."""
    batches = []
    for x, y, weights in itertools.islice(dataset, limit or None):
        answers = int(np.sum(np.asarray(weights) > 0))
        batches.append({"token_ids": np.asarray(x["token_ids"], np.int32), "targets": np.asarray(y, np.int32),
                        "weights": np.asarray(weights, np.float32),
                        "teacher_logits": np.zeros((answers, 1), np.float32),
                        "teacher_indices": np.zeros((answers, 1), np.int32)})
    return batches


def predict(rows: pd.DataFrame, tries: dict, classify: Callable) -> list:
    """A Prediction per row (rows' index order), `classify(prompts, trie)` run once per task."""
    predictions = [None] * len(rows)
    for task, group in rows.groupby("task"):
        for index, prediction in zip(group.index, classify(list(group["prompt_ids"]), tries[task])):
            predictions[index] = prediction
    return predictions


def latency(logits_fn, plan: StudentPlan, runs: int) -> dict:
    """Median ms of one forward pass [1, T] and of one single request (one test prompt of each task scored
    over its labels), after one untimed warm-up of each."""
    from models.constrained import classify_with_logits_fn, right_padded

    requests = [(group["prompt_ids"].iloc[0], plan.tries[task]) for task, group in plan.eval_rows.groupby("task")]
    inputs = right_padded(requests[0][0], plan.sequence_length, plan.pad_id)
    logits_fn(*inputs)
    forward = []
    for _ in range(runs):
        t0 = time.perf_counter()
        logits_fn(*inputs)
        forward.append((time.perf_counter() - t0) * 1000)

    def score(prompt, trie):
        return classify_with_logits_fn(logits_fn, [prompt], trie, plan.sequence_length, plan.pad_id)

    for prompt, trie in requests:
        score(prompt, trie)
    timed = []
    for _ in range(runs):
        for prompt, trie in requests:
            t0 = time.perf_counter()
            score(prompt, trie)
            timed.append((time.perf_counter() - t0) * 1000)
    return {"forward_ms": statistics.median(forward), "request_ms": statistics.median(timed),
            "requests_timed": len(timed)}


def weights_size(model) -> dict:
    """Bytes of a Keras student's float32 weights as stored, and gzipped (pruning zeros compress)."""
    raw = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
    return {"size_bytes": len(raw), "gzipped_bytes": len(gzip.compress(raw, compresslevel=6))}


def convert_int8(quantized, plan: StudentPlan, path: Path) -> None:
    """Write the full-integer int8 TFLite file; StudentExportError naming any op that is not an int8 builtin."""
    from models.export import non_builtin_operators
    from models.student_compression import to_full_integer_tflite

    try:
        flatbuffer = to_full_integer_tflite(quantized, plan.calibration, plan.sequence_length)
    except Exception as error:  # the converter refuses ops with no int8 builtin kernel, and names them
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise StudentExportError("full-integer int8 conversion of the student failed (builtin int8 ops only): "
                                 + " | ".join(lines[-6:])) from error
    path.write_bytes(flatbuffer)
    custom = non_builtin_operators(path)
    if custom:
        raise StudentExportError(f"{path.name} needs non-builtin operators {custom}; on-device runtimes have no "
                                 "Flex delegate")


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def distill_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, out_dir: Path,
                    settings: StudentSettings | None = None, log: Callable[[str], None] = print) -> dict:
    """Distil, prune, QAT and convert the student; write `student.tflite` and `student.json` into
    `out_dir`; return the Optimizer variant entry of the int8 student (kind "student")."""
    import tensorflow as tf

    from components.optimizer.quality import quality_of
    from components.transform.tensors import load_dataset
    from models import student_compression as compression
    from models.constrained import classify, classify_with_logits_fn
    from models.distillation import answer_loss, distill, top_k_soft_targets
    from models.student import build_student, student_logits_fn

    settings = settings or StudentSettings()
    started = time.perf_counter()
    seconds = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    plan = plan_student(causal_lm, tokenizer, datasets_dir, labels, settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"  student: {settings.num_layers} x {settings.hidden_dim} (MLP {settings.mlp_dim}), "
        f"{plan.config.parameter_count() / 1e6:.1f}M parameters, TFLite input [1, {plan.sequence_length}]")
    t = lap("plan", started)

    # Teacher soft targets on the train split: computed once, cycled by every candidate and stage.
    forward = tf.function(lambda ids, mask: causal_lm({"token_ids": ids, "padding_mask": mask}, training=False),
                          input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)
    train = load_dataset(plan.paths["train"], settings.batch_size, plan.data_max_length, plan.pad_id,
                         shuffle=True, seed=settings.seed)
    needed = max(settings.steps, settings.pruning_steps, settings.qat_steps)
    soft = list(itertools.islice(top_k_soft_targets(lambda x: forward(x["token_ids"], x["padding_mask"]), train,
                                                    settings.top_k), needed))
    teacher = {"batches": len(soft), "positions": int(sum(b["token_ids"].size for b in soft)),
               "answer_tokens": int(sum(len(b["teacher_logits"]) for b in soft)),
               "top_k": settings.top_k, "top_k_mass": float(np.mean(np.concatenate([b["top_k_mass"] for b in soft])))}
    log(f"  teacher soft targets: {teacher['batches']} batches, {teacher['answer_tokens']} answer tokens, "
        f"top-{settings.top_k} mass {teacher['top_k_mass']:.3f}")
    t = lap("teacher_targets", t)

    rows = plan.eval_rows
    teacher_predictions = predict(rows, plan.tries, lambda prompts, trie: classify(causal_lm, prompts, trie))
    reference = [p.label for p in teacher_predictions]
    teacher["quality"] = quality_of(rows, teacher_predictions, plan.tries, reference)
    t = lap("teacher_evaluation", t)

    # One student per (alpha, temperature); the best on validation is kept.
    validation = hard_label_batches(load_dataset(plan.paths["validation"], settings.batch_size, plan.data_max_length,
                                                 plan.pad_id), settings.validation_batches)
    grid, best, best_key = [], None, None
    for alpha, temperature in settings.grid():
        t0 = time.perf_counter()
        student = build_student(plan.config, seed=settings.seed)
        history = distill(student, soft, alpha, temperature, settings.steps, settings.learning_rate, log=log,
                          log_every=max(settings.steps // 3, 1))
        entry = {"alpha": alpha, "temperature": temperature, "train_loss_first": history[0]["loss"],
                 "train_loss_last": history[-1]["loss"], "validation_answer_loss": answer_loss(student, validation)}
        if not plan.selection_rows.empty:
            found = predict(plan.selection_rows, plan.tries, lambda prompts, trie, fn=student_logits_fn(student):
                            classify_with_logits_fn(fn, prompts, trie, plan.sequence_length, plan.pad_id))
            measured = quality_of(plan.selection_rows, found, plan.tries, None)
            entry.update(validation_macro_f1=measured["macro_f1"], validation_accuracy=measured["accuracy"])
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        grid.append(entry)
        log(f"  alpha {alpha:g}, T {temperature:g}: validation answer loss {entry['validation_answer_loss']:.4f}"
            + (f", macro-F1 {entry['validation_macro_f1']:.3f}" if "validation_macro_f1" in entry else ""))
        key = ((-entry["validation_macro_f1"], entry["validation_answer_loss"]) if settings.select_on == "macro_f1"
               else (entry["validation_answer_loss"],))
        if best_key is None or key < best_key:
            best, best_key, chosen = student, key, {"alpha": alpha, "temperature": temperature}
    chosen["selected_on"] = settings.select_on + (" (ties: answer_loss)" if settings.select_on == "macro_f1" else "")
    log(f"  chosen: alpha {chosen['alpha']:g}, temperature {chosen['temperature']:g}")
    t = lap("distillation_grid", t)

    pruned, prune_history = compression.prune(best, soft, settings.target_sparsity, settings.pruning_steps,
                                              frequency=settings.pruning_frequency, alpha=chosen["alpha"],
                                              temperature=chosen["temperature"])
    zeros = {"float": compression.zero_fractions(best), "pruned": compression.zero_fractions(pruned)}
    log(f"  pruned: {zeros['pruned']['overall']:.1%} zero weights (target {settings.target_sparsity:.0%})")
    t = lap("pruning", t)
    quantized, qat_history = compression.quantization_aware(pruned, soft, settings.qat_steps, alpha=chosen["alpha"],
                                                            temperature=chosen["temperature"])
    zeros["qat"] = compression.zero_fractions(quantized)
    t = lap("qat", t)
    path = out_dir / "student.tflite"
    convert_int8(quantized, plan, path)
    zeros["int8"] = compression.tflite_weight_zero_fraction(path)
    t = lap("conversion", t)

    stages = {}
    logits_fns = {"float": student_logits_fn(best), "pruned": student_logits_fn(pruned),
                  "int8": compression.tflite_logits_fn(path, settings.num_threads)}
    for stage, logits_fn in logits_fns.items():
        t0 = time.perf_counter()
        found = predict(rows, plan.tries, lambda prompts, trie, fn=logits_fn: classify_with_logits_fn(
            fn, prompts, trie, plan.sequence_length, plan.pad_id))
        size = ({"size_bytes": path.stat().st_size, "gzipped_bytes": compression.gzipped_size(path)}
                if stage == "int8" else weights_size(best if stage == "float" else pruned))
        stages[stage] = {**size, "zero_fraction": zeros[stage]["overall"],
                         "quality": quality_of(rows, found, plan.tries, reference),
                         **latency(logits_fn, plan, settings.latency_runs)}
        stages[stage]["seconds"] = round(time.perf_counter() - t0, 2)
        q = stages[stage]["quality"]
        log(f"  {stage}: accuracy {q['accuracy']:.3f}, macro-F1 {q['macro_f1']:.3f}, agreement "
            f"{q['label_agreement']:.1%}, {stages[stage]['size_bytes'] / 1e6:.2f} MB "
            f"({stages[stage]['gzipped_bytes'] / 1e6:.2f} gzipped), request {stages[stage]['request_ms']:.1f} ms")
    lap("evaluation", t)
    seconds["total"] = round(time.perf_counter() - started, 2)

    report = {
        "student": {**plan.config.to_dict(), "parameters": int(best.count_params())},
        "settings": asdict(settings), "sequence_length": plan.sequence_length,
        "teacher": teacher, "grid": grid, "chosen": chosen,
        "pruning": {"target_sparsity": settings.target_sparsity, "steps": settings.pruning_steps,
                    "frequency": settings.pruning_frequency,
                    "end_step": compression.default_end_step(settings.pruning_steps, 0, settings.pruning_frequency),
                    "loss_first": prune_history[0]["loss"], "loss_last": prune_history[-1]["loss"]},
        "qat": {"steps": settings.qat_steps, "loss_first": qat_history[0]["loss"],
                "loss_last": qat_history[-1]["loss"]},
        "zero_fractions": zeros, "calibration_examples": len(plan.calibration),
        "stages": stages, "seconds": seconds,
    }
    (out_dir / "student.json").write_text(json.dumps(_json_ready(report), indent=2))
    int8 = stages["int8"]
    return _json_ready({"name": "student_int8", "format": "tflite", "precision": "full_int8", "file": path.name,
                        "size_bytes": int8["size_bytes"], "kind": "student",
                        "quality": {key: int8["quality"][key] for key in ("accuracy", "macro_f1", "label_agreement",
                                                                          "answer_perplexity", "examples")},
                        "sequence_length": plan.sequence_length, "report": "student.json",
                        "stages": {stage: {key: value for key, value in entry.items() if key != "seconds"}
                                   for stage, entry in stages.items()}})
