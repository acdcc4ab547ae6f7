"""The student stage: distil the fine-tuned teacher into a small tf-keras decoder, prune it, train it
quantisation-aware and ship it as a full-integer int8 TFLite file, measuring each step.

    plan (components/student/planning.py: every setting checked against the data, nothing trains)
      -> teacher soft targets over the answer vocabulary (label rows of the train split)
      -> one student per (alpha, temperature) candidate, the best on validation kept
      -> magnitude pruning to `target_sparsity` -> pruning-preserving QAT -> int8 TFLite (builtin ops only)
      -> float / pruned / int8 students scored on the same test rows as the teacher

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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.laps import Laps
from components.student.planning import StudentPlan, plan_student
from components.student.settings import StudentSettings
from schemas.artifacts import VariantsFiles

STAGES = ("float", "pruned", "int8")


class StudentExportError(RuntimeError):
    """The student could not become a builtin-ops-only full-integer int8 TFLite file."""


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


def teacher_soft_targets(causal_lm, plan: StudentPlan, settings: StudentSettings, log) -> tuple[list, dict]:
    """The teacher's answer-position logits over the answer vocabulary on the train split's label rows,
    computed once and cycled by every candidate and stage; and what they cover."""
    from models.llm.tfrecords import load_dataset
    from models.student.distillation import answer_soft_targets, keras_answer_logits

    train = load_dataset(plan.paths["train"], settings.batch_size, plan.data_max_length, plan.pad_id,
                         shuffle=True, seed=settings.seed)
    soft = list(itertools.islice(answer_soft_targets(keras_answer_logits(causal_lm, settings.teacher_precision),
                                                     train, plan.config.output_tokens),
                                 settings.teacher_batches or None))
    if not soft:
        raise ValueError("the train split has no label rows to distil")
    teacher = {"batches": len(soft), "rows": int(sum(len(b["token_ids"]) for b in soft)),
               "skipped_rows": int(sum(b["skipped_rows"] for b in soft)),
               "answer_tokens": int(sum(len(b["teacher_logits"]) for b in soft)),
               "answer_vocabulary": len(plan.config.output_tokens),
               "answer_mass": float(np.mean(np.concatenate([b["answer_mass"] for b in soft])))}
    log(f"  teacher soft targets: {teacher['rows']} label rows in {teacher['batches']} batches "
        f"({teacher['skipped_rows']} free-text rows left out), {teacher['answer_tokens']} answer tokens; "
        f"the answer vocabulary holds {teacher['answer_mass']:.1%} of the teacher's probability there")
    return soft, teacher


def teacher_reference(causal_lm, plan: StudentPlan, eval_rows: pd.DataFrame | None) -> tuple[pd.DataFrame, list, dict]:
    """The rows the student is measured on, the teacher's labels on them and the teacher's quality there:
    the Evaluator's predictions when given (`eval_rows` with `after`), else the teacher scored here."""
    from components.common.variant_quality import keras_quality, predictions_by_task, quality_of
    from models.scoring.constrained import classify

    if eval_rows is None:
        rows = plan.eval_rows
        predictions = predictions_by_task(rows, plan.tries, lambda prompts, trie: classify(causal_lm, prompts, trie))
        reference = [p.label for p in predictions]
        return rows, reference, quality_of(rows, predictions, plan.tries, reference)
    rows = eval_rows[eval_rows["task"].isin(plan.tries)].reset_index(drop=True)
    return rows, list(rows["after"]), keras_quality(rows, plan.tries)


def distil_candidates(causal_lm, plan: StudentPlan, soft: list, settings: StudentSettings, log):
    """One student per (alpha, temperature) of the grid; returns (the best on validation, its choice, the grid)."""
    from components.common.variant_quality import predictions_by_task, quality_of
    from models.llm.tfrecords import load_dataset
    from models.student.distillation import answer_loss, distill
    from models.student.model import StudentScorer, build_student

    output_tokens = plan.config.output_tokens
    validation = hard_label_batches(load_dataset(plan.paths["validation"], settings.batch_size, plan.data_max_length,
                                                 plan.pad_id), output_tokens, settings.validation_batches)
    embeddings = teacher_embeddings(causal_lm) if settings.teacher_init else None
    grid, best, best_key, chosen = [], None, None, None
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
    return best, chosen, grid


def evaluate_stages(models: dict, plan: StudentPlan, rows: pd.DataFrame, reference: list, path: Path,
                    settings: StudentSettings, zeros: dict, log) -> dict:
    """Quality, size, zero share and single-request latency of the float, pruned and int8 students."""
    from components.common.variant_quality import predictions_by_task, quality_of
    from models.student import compression
    from models.student.model import StudentScorer

    output_tokens = plan.config.output_tokens
    int8_fn = compression.tflite_student_fn(path, settings.num_threads)
    scorers = {"float": StudentScorer(models["float"], output_tokens),
               "pruned": StudentScorer(models["pruned"], output_tokens),
               "int8": StudentScorer(int8_fn, output_tokens, plan.config.max_length)}
    stages = {}
    for stage, scorer in scorers.items():
        t0 = time.perf_counter()
        found = predictions_by_task(rows, plan.tries, scorer.classify)
        size = ({"size_bytes": path.stat().st_size, "gzipped_bytes": compression.gzipped_size(path)}
                if stage == "int8" else weights_size(models[stage]))
        stages[stage] = {**size, "zero_fraction": zeros[stage]["overall"],
                         "quality": quality_of(rows, found, plan.tries, reference),
                         **latency(scorer, rows, plan.tries, settings.latency_runs)}
        stages[stage]["seconds"] = round(time.perf_counter() - t0, 2)
        q = stages[stage]["quality"]
        log(f"  {stage}: accuracy {q['accuracy']:.3f}, macro-F1 {q['macro_f1']:.3f}, agreement "
            f"{q['label_agreement']:.1%}, {stages[stage]['size_bytes'] / 1e6:.2f} MB "
            f"({stages[stage]['gzipped_bytes'] / 1e6:.2f} gzipped), request {stages[stage]['request_ms']:.1f} ms")
    return stages


def distill_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, out_dir: Path,
                    settings: StudentSettings | None = None, log: Callable[[str], None] = print,
                    eval_rows: pd.DataFrame | None = None) -> dict:
    """Distil, prune, QAT and convert the student; write `student.tflite` and `student.json` into
    `out_dir`; return the variant entry of the int8 student (kind "student").

    `eval_rows`: the Evaluator's scored test rows (`variant_quality.evaluation_rows`, with the Keras labels
    in `after`), so the student is measured on the same rows as every other variant; None samples
    `settings.eval_examples` per task and scores the teacher on them here.
    """
    from models.student import compression

    settings = settings or StudentSettings()
    laps = Laps()
    plan = plan_student(causal_lm, tokenizer, datasets_dir, labels, settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"  student: {settings.num_layers} x {settings.hidden_dim} (MLP {settings.mlp_dim}), "
        f"{plan.config.parameter_count() / 1e6:.1f}M parameters, head over {len(plan.config.output_tokens)} answer "
        f"tokens, inputs up to {plan.config.max_length} tokens (a {plan.max_prompt_tokens}-token prompt + the "
        f"{plan.num_nodes}-node largest label tree)")
    laps.lap("plan")
    soft, teacher = teacher_soft_targets(causal_lm, plan, settings, log)
    laps.lap("teacher_targets")
    rows, reference, teacher["quality"] = teacher_reference(causal_lm, plan, eval_rows)
    laps.lap("teacher_evaluation")
    best, chosen, grid = distil_candidates(causal_lm, plan, soft, settings, log)
    laps.lap("distillation_grid")
    pruned, prune_history = compression.prune(best, soft, settings.target_sparsity, settings.pruning_steps,
                                              frequency=settings.pruning_frequency, alpha=chosen["alpha"],
                                              temperature=chosen["temperature"])
    zeros = {"float": compression.zero_fractions(best), "pruned": compression.zero_fractions(pruned)}
    log(f"  pruned: {zeros['pruned']['overall']:.1%} zero weights (target {settings.target_sparsity:.0%})")
    laps.lap("pruning")
    quantized, qat_history = compression.quantization_aware(pruned, soft, settings.qat_steps, alpha=chosen["alpha"],
                                                            temperature=chosen["temperature"])
    zeros["qat"] = compression.zero_fractions(quantized)
    laps.lap("qat")
    files = VariantsFiles(out_dir)
    path = files.student_file
    convert_int8(quantized, plan, path)
    zeros["int8"] = compression.tflite_weight_zero_fraction(path, compression.prunable_shapes(pruned))
    laps.lap("conversion")
    stages = evaluate_stages({"float": best, "pruned": pruned}, plan, rows, reference, path, settings, zeros, log)
    laps.lap("evaluation")

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
        "stages": stages, "seconds": laps.total(),
    }
    files.student_report_file.write_text(json.dumps(_json_ready(report), indent=2))
    int8 = stages["int8"]
    return _json_ready({"name": "student_int8", "format": "tflite", "precision": "full_int8", "file": path.name,
                        "size_bytes": int8["size_bytes"], "kind": "student",
                        "quality": {key: int8["quality"][key] for key in ("accuracy", "macro_f1", "label_agreement",
                                                                          "answer_perplexity", "examples", "per_task")},
                        "input": shape, "output_tokens": list(plan.config.output_tokens),
                        "report": files.student_report_file.name,
                        "stages": {stage: {key: value for key, value in entry.items() if key != "seconds"}
                                   for stage, entry in stages.items()}})

