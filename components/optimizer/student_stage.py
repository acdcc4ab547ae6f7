"""The Optimizer's student stage: distil the fine-tuned teacher into a small tf-keras decoder, prune
it, train it quantisation-aware and ship it as a full-integer int8 TFLite file, measuring each step.

    teacher soft targets over the answer vocabulary (label rows of the train split)
      -> one student per (alpha, temperature) candidate, the best on validation kept
      -> magnitude pruning to `target_sparsity` -> pruning-preserving QAT -> int8 TFLite (builtin ops only)
      -> float / pruned / int8 students scored on the same test rows as the teacher

Every setting and the data are checked first (`plan_student`): nothing trains or calls the
teacher until the student fits the tokenizer and the longest input, the sparsity schedule is
reachable and the calibration samples have the converter's input shape.

Quality is label-constrained and exact, like the teacher's: one forward pass over the prompt with
its task's label tree appended (`models.student.model.StudentScorer`), so a single request is one pass
of the int8 file, whose input length is free: [1, prompt tokens + that task's tree nodes].
The student serves the label tasks; free-text replies stay with the teacher.
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

    enabled: bool = param(False, "distil, prune, QAT and convert the on-device student (opt-in: see README for "
                                 "its wall time)")
    num_layers: int = param(6, "student transformer blocks (the measured size: 6 x 192, MLP 768, 12.1M "
                               "parameters, 9.4M of them SmolLM2's 49,152-token input embedding)")
    hidden_dim: int = param(192, "width of the student's residual stream")
    num_heads: int = param(6, "attention heads; hidden_dim must split into heads of an even size")
    mlp_dim: int = param(768, "width of each block's MLP")
    max_length: int = param(0, "longest input the student covers (0 = the data's: Transform's max_length or "
                               "max_prompt_tokens + the largest label tree, whichever is longer)")
    steps: int = param(1000, "distillation steps per (alpha, temperature) candidate")
    batch_size: int = param(16, "sequences per distillation / pruning / QAT step")
    learning_rate: float = param(5e-4, "Adam learning rate of distillation (measured: 5e-4 reached validation "
                                       "macro-F1 0.44 in 400 steps where 1e-3 reached 0.25 and 2e-3 0.05)")
    alphas: list[float] = param([0.5, 0.9], "candidate soft-target shares of the loss (1 = teacher only)")
    temperatures: list[float] = param([2.0], "candidate softmax temperatures of the soft targets")
    select_on: str = param("macro_f1", "validation figure that picks the candidate: macro_f1 (ties broken by "
                                       "answer_loss) or answer_loss")
    teacher_batches: int = param(0, "train batches of label rows the teacher labels once (0 = the whole split); "
                                    "every stage cycles through them")
    teacher_precision: str = param("mixed_bfloat16", "teacher's compute precision for the soft targets: "
                                                     "mixed_bfloat16 (1.6x faster here) or float32")
    teacher_init: bool = param(True, "start the student's token embedding and head from the teacher's token "
                                     "embeddings (principal axes) instead of random numbers")
    target_sparsity: float = param(0.5, "share of zero weights in every Dense kernel and the embedding after pruning")
    pruning_steps: int = param(200, "distillation steps with magnitude pruning (the schedule ends at 3/4 of them)")
    pruning_frequency: int = param(10, "steps between pruning mask updates")
    qat_steps: int = param(100, "quantisation-aware distillation steps after pruning")
    calibration_examples: int = param(128, "representative train requests for the int8 converter's ranges")
    eval_examples: int = param(25, "test examples per label task when run alone (in the pipeline: the Evaluator's "
                                   "rows, as for every variant)")
    selection_examples: int = param(10, "validation examples per label task for the candidates' macro-F1 (0 = "
                                        "select on answer loss only)")
    validation_batches: int = param(20, "validation batches for the candidates' answer loss (0 = all)")
    latency_runs: int = param(5, "timed repeats of each single request (median reported)")
    num_threads: int = param(2, "LiteRT interpreter threads (the Benchmark's default)")
    seed: int = param(0, "seed of the student's weights, the data order and the example samples")

    def __post_init__(self):
        counts = {name: getattr(self, name) for name in (
            "steps", "batch_size", "pruning_steps", "pruning_frequency", "qat_steps", "calibration_examples",
            "eval_examples", "latency_runs", "num_threads")}
        bad = {name: value for name, value in counts.items() if not value >= 1}
        if bad:
            raise ValueError(f"student settings must be at least 1: {bad}")
        if min(self.max_length, self.selection_examples, self.validation_batches, self.teacher_batches) < 0:
            raise ValueError("max_length, selection_examples, validation_batches and teacher_batches must be >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {self.alphas}")
        if not self.temperatures or not all(t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be a non-empty list of values > 0, got {self.temperatures}")
        if self.teacher_precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(f"teacher_precision must be float32 or mixed_bfloat16, got {self.teacher_precision!r}")
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

    config: object  # models.student.model.StudentConfig
    max_prompt_tokens: int  # Transform's prompt budget: the longest prompt a request can have
    num_nodes: int  # the largest task's label tree
    data_max_length: int  # Transform's max_length: the longest training input
    pad_id: int
    tries: dict  # {task: LabelTrie}
    eval_rows: pd.DataFrame  # test rows: task, target, prompt_ids
    selection_rows: pd.DataFrame  # validation rows for the candidates' macro-F1 (may be empty)
    calibration: list  # dicts of the TFLite file's three int32 inputs
    paths: dict  # split -> tfrecord path


def _label_rows(frame: pd.DataFrame, per_task: int, seed: int, tasks) -> pd.DataFrame:
    from components.common.metrics import sample_label_rows

    rows = sample_label_rows(frame, per_task, seed) if per_task else frame.iloc[:0]
    rows = rows[rows["task"].isin(tasks)].reset_index(drop=True)
    return rows.assign(prompt_ids=rows["prompt_ids"].map(lambda ids: [int(i) for i in ids]))


def plan_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, settings: StudentSettings) -> StudentPlan:
    """Check the student, the schedule and the calibration data against the data set; nothing trains."""
    from models.scoring.constrained import LabelTrie
    from models.student.compression import (
        calibration_samples,
        check_calibration_samples,
        check_pruning_schedule,
        default_end_step,
    )
    from models.student.model import StudentConfig, answer_vocabulary

    datasets_dir = Path(datasets_dir)
    paths = {split: datasets_dir / f"{split}.tfrecord" for split in ("train", "validation", "test")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the student stage needs Transform's TFRecord splits; missing {missing}")
    transform = json.loads((datasets_dir / "transform.json").read_text())
    columns = ["id", "task", "target", "prompt_ids"]
    splits = {split: pd.read_parquet(datasets_dir / f"{split}.parquet", columns=columns) for split in paths}
    tasks = [task for task in labels if labels[task]]
    if not tasks:
        raise ValueError("the data set has no label tasks: the student scores labels")
    tries = {task: LabelTrie(labels[task], tokenizer) for task in tasks}
    max_prompt_tokens = int(transform["max_prompt_tokens"])
    num_nodes = max(trie.num_nodes for trie in tries.values())
    needed = max(int(transform["max_length"]), max_prompt_tokens + num_nodes)  # any request fits
    vocabulary = max(int(causal_lm.backbone.vocabulary_size), tokenizer.vocabulary_size)
    config = StudentConfig(vocabulary_size=vocabulary, output_tokens=answer_vocabulary(tries.values()),
                           num_layers=settings.num_layers, hidden_dim=settings.hidden_dim,
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
    # Calibration: real train prompts of every label task, shuffled, each with its task's label tree
    # (padded to one shape, see `calibration_samples`). 128: the int8 ranges are min/max over 128 x L
    # token positions (>20k values per activation tensor), which TF's guide ("~100-500 samples") finds
    # stable; QAT has already learned the Dense ranges, and conversion time grows linearly with the
    # count. Measured on a random-weight student: top-1 agreement with float saturates at ~4 samples.
    train = splits["train"][splits["train"]["task"].isin(tasks)].sample(frac=1.0, random_state=settings.seed)
    calibration = check_calibration_samples(
        calibration_samples(((ids, tries[task]) for ids, task in zip(train["prompt_ids"], train["task"])),
                            settings.calibration_examples),
        config.vocabulary_size, config.max_length)
    return StudentPlan(config, max_prompt_tokens, num_nodes, int(transform["max_length"]), tokenizer.pad_id, tries,
                       eval_rows, selection_rows, calibration, paths)


def hard_label_batches(dataset, output_tokens, limit: int = 0) -> list[dict]:
    """Soft batches of label rows without a teacher (flat logits), for `answer_loss(alpha=0)`: hard-label CE."""
    from models.student.distillation import answer_soft_targets

    def no_teacher(x, answer):
        return np.zeros((int(np.sum(answer)), max(output_tokens) + 1), np.float32)

    return list(itertools.islice(answer_soft_targets(no_teacher, dataset, output_tokens), limit or None))


def latency(scorer, rows: pd.DataFrame, tries: dict, runs: int) -> dict:
    """Median ms of one single request (the first of `rows` of each task, scored over its labels by
    `scorer.classify`), after one untimed warm-up of each."""
    requests = [(group["prompt_ids"].iloc[0], tries[task]) for task, group in rows.groupby("task")]
    for prompt, trie in requests:
        scorer.classify([prompt], trie)
    timed = []
    for _ in range(runs):
        for prompt, trie in requests:
            t0 = time.perf_counter()
            scorer.classify([prompt], trie)
            timed.append((time.perf_counter() - t0) * 1000)
    return {"request_ms": statistics.median(timed), "requests_timed": len(timed)}


def weights_size(model) -> dict:
    """Bytes of a Keras student's float32 weights as stored, and gzipped (pruning zeros compress)."""
    raw = b"".join(np.asarray(w, np.float32).tobytes() for w in model.get_weights())
    return {"size_bytes": len(raw), "gzipped_bytes": len(gzip.compress(raw, compresslevel=6))}


def convert_int8(quantized, plan: StudentPlan, path: Path) -> None:
    """Write the full-integer int8 TFLite file; StudentExportError naming any op that is not an int8 builtin."""
    from models.export.convert import non_builtin_operators
    from models.student.compression import to_full_integer_tflite

    try:
        flatbuffer = to_full_integer_tflite(quantized, plan.calibration)
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


def teacher_embeddings(causal_lm) -> np.ndarray:
    """The teacher's (vocabulary, hidden) input token embeddings as float32 numpy."""
    import keras

    return keras.ops.convert_to_numpy(causal_lm.backbone.token_embedding.embeddings).astype(np.float32)


def distill_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, out_dir: Path,
                    settings: StudentSettings | None = None, log: Callable[[str], None] = print,
                    eval_rows: pd.DataFrame | None = None) -> dict:
    """Distil, prune, QAT and convert the student; write `student.tflite` and `student.json` into
    `out_dir`; return the Optimizer variant entry of the int8 student (kind "student").

    `eval_rows`: the Evaluator's scored test rows (`quality.evaluation_rows`, with the Keras labels in
    `after`), so the student is measured on the same rows as every other variant; None samples
    `settings.eval_examples` per task and scores the teacher on them here.
    """
    from components.optimizer.quality import keras_quality, predictions_by_task, quality_of
    from models.llm.tfrecords import load_dataset
    from models.scoring.constrained import classify
    from models.student import compression
    from models.student.distillation import answer_loss, answer_soft_targets, distill, keras_answer_logits
    from models.student.model import StudentScorer, build_student

    settings = settings or StudentSettings()
    started = time.perf_counter()
    seconds = {}

    def lap(name: str, since: float) -> float:
        seconds[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    plan = plan_student(causal_lm, tokenizer, datasets_dir, labels, settings)
    output_tokens = plan.config.output_tokens
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"  student: {settings.num_layers} x {settings.hidden_dim} (MLP {settings.mlp_dim}), "
        f"{plan.config.parameter_count() / 1e6:.1f}M parameters, head over {len(output_tokens)} answer tokens, "
        f"inputs up to {plan.config.max_length} tokens (a {plan.max_prompt_tokens}-token prompt + the "
        f"{plan.num_nodes}-node largest label tree)")
    t = lap("plan", started)

    # Teacher soft targets on the train split's label rows: computed once, cycled by every candidate and stage.
    train = load_dataset(plan.paths["train"], settings.batch_size, plan.data_max_length, plan.pad_id,
                         shuffle=True, seed=settings.seed)
    soft = list(itertools.islice(answer_soft_targets(keras_answer_logits(causal_lm, settings.teacher_precision),
                                                     train, output_tokens), settings.teacher_batches or None))
    if not soft:
        raise ValueError("the train split has no label rows to distil")
    teacher = {"batches": len(soft), "rows": int(sum(len(b["token_ids"]) for b in soft)),
               "skipped_rows": int(sum(b["skipped_rows"] for b in soft)),
               "answer_tokens": int(sum(len(b["teacher_logits"]) for b in soft)),
               "answer_vocabulary": len(output_tokens),
               "answer_mass": float(np.mean(np.concatenate([b["answer_mass"] for b in soft])))}
    log(f"  teacher soft targets: {teacher['rows']} label rows in {teacher['batches']} batches "
        f"({teacher['skipped_rows']} free-text rows left out), {teacher['answer_tokens']} answer tokens; "
        f"the answer vocabulary holds {teacher['answer_mass']:.1%} of the teacher's probability there")
    t = lap("teacher_targets", t)

    if eval_rows is None:
        rows = plan.eval_rows
        teacher_predictions = predictions_by_task(rows, plan.tries,
                                                  lambda prompts, trie: classify(causal_lm, prompts, trie))
        reference = [p.label for p in teacher_predictions]
        teacher["quality"] = quality_of(rows, teacher_predictions, plan.tries, reference)
    else:
        rows = eval_rows[eval_rows["task"].isin(plan.tries)].reset_index(drop=True)
        reference = list(rows["after"])
        teacher["quality"] = keras_quality(rows, plan.tries)
    t = lap("teacher_evaluation", t)

    # One student per (alpha, temperature); the best on validation is kept.
    validation = hard_label_batches(load_dataset(plan.paths["validation"], settings.batch_size, plan.data_max_length,
                                                 plan.pad_id), output_tokens, settings.validation_batches)
    embeddings = teacher_embeddings(causal_lm) if settings.teacher_init else None
    grid, best, best_key = [], None, None
    for alpha, temperature in settings.grid():
        t0 = time.perf_counter()
        student = build_student(plan.config, seed=settings.seed, teacher_embeddings=embeddings)
        history = distill(student, soft, alpha, temperature, settings.steps, settings.learning_rate, log=log,
                          log_every=max(settings.steps // 3, 1))
        entry = {"alpha": alpha, "temperature": temperature, "train_loss_first": history[0]["loss"],
                 "train_loss_last": history[-1]["loss"], "validation_answer_loss": answer_loss(student, validation)}
        if not plan.selection_rows.empty:
            found = predictions_by_task(plan.selection_rows, plan.tries, StudentScorer(student, output_tokens).classify)
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
    zeros["int8"] = compression.tflite_weight_zero_fraction(path, compression.prunable_shapes(pruned))
    t = lap("conversion", t)

    stages = {}
    int8_fn = compression.tflite_student_fn(path, settings.num_threads)
    scorers = {"float": StudentScorer(best, output_tokens), "pruned": StudentScorer(pruned, output_tokens),
               "int8": StudentScorer(int8_fn, output_tokens, plan.config.max_length)}
    for stage, scorer in scorers.items():
        t0 = time.perf_counter()
        found = predictions_by_task(rows, plan.tries, scorer.classify)
        size = ({"size_bytes": path.stat().st_size, "gzipped_bytes": compression.gzipped_size(path)}
                if stage == "int8" else weights_size(best if stage == "float" else pruned))
        stages[stage] = {**size, "zero_fraction": zeros[stage]["overall"],
                         "quality": quality_of(rows, found, plan.tries, reference),
                         **latency(scorer, rows, plan.tries, settings.latency_runs)}
        stages[stage]["seconds"] = round(time.perf_counter() - t0, 2)
        q = stages[stage]["quality"]
        log(f"  {stage}: accuracy {q['accuracy']:.3f}, macro-F1 {q['macro_f1']:.3f}, agreement "
            f"{q['label_agreement']:.1%}, {stages[stage]['size_bytes'] / 1e6:.2f} MB "
            f"({stages[stage]['gzipped_bytes'] / 1e6:.2f} gzipped), request {stages[stage]['request_ms']:.1f} ms")
    lap("evaluation", t)
    seconds["total"] = round(time.perf_counter() - started, 2)

    shape = {"max_length": plan.config.max_length, "max_prompt_tokens": plan.max_prompt_tokens,
             "nodes": plan.num_nodes}
    report = {
        "student": {**plan.config.to_dict(), "parameters": int(best.count_params())},
        "settings": asdict(settings), "input": shape,
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
                                                                          "answer_perplexity", "examples", "per_task")},
                        "input": shape, "output_tokens": list(output_tokens), "report": "student.json",
                        "stages": {stage: {key: value for key, value in entry.items() if key != "seconds"}
                                   for stage, entry in stages.items()}})
