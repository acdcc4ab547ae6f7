"""Optimizer: post-training compression of the fine-tuned model into TFLite variants.

Each variant is converted from one fixed-shape SavedModel and checked against the Keras model's
logits on real test prompts before it is accepted: a float32 file whose logits differ is an
error (the silent weight-dropping trap), and quantised variants report their top-1 agreement.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.config import param
from components.optimizer.student_stage import StudentSettings
from models.export.endpoints import FULL_INT8, TFLITE_VARIANTS

FLOAT32_TOLERANCE = 1e-3  # max |logit diff| of the float32 TFLite file vs Keras
KERAS_INT8 = "keras_int8"
MIN_FLOAT32_AGREEMENT = 0.99  # top-1 label agreement of the float32 TFLite file with Keras on the test rows


@dataclass
class OptimizerParams:
    """Which compressed variants are produced."""

    variants: list[str] = param(["float32", "dynamic_int8"], "TFLite variants (" + ", ".join(TFLITE_VARIANTS)
                                + "), and keras_int8: Keras's own quantize('int8') exported as a SavedModel")
    verify_prompts: int = param(4, "test prompts per label task on which every variant's logits (and the "
                                   "SavedModel's string signatures) are compared with the Keras model")
    eval_examples: int = param(0, "of the Evaluator's test rows, how many per label task every variant classifies "
                                  "for its accuracy, macro-F1, agreement with Keras and answer perplexity (0 = all)")

    ptq_max_macro_f1_drop: float = param(2.0, "compression gate: a quantised variant is eligible for export only if "
                                              "its macro-F1 is at most this many points below the Keras model's")
    calibration_examples: int = param(16, "full_int8: representative Transform rows per signature (conversion "
                                          "time grows ~22 s per unit on the 135M model; models/export/calibration.py)")
    student: StudentSettings = param(StudentSettings(), "the distilled on-device student")
    student_max_macro_f1_drop: float = param(5.0, "compression gate for the student: at most this many macro-F1 "
                                                  "points below the Keras model's")

    def __post_init__(self):
        unknown = set(self.variants) - set(TFLITE_VARIANTS) - {KERAS_INT8}
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {TFLITE_VARIANTS + (KERAS_INT8,)}, got {self.variants}")
        if self.calibration_examples < 1:
            raise ValueError("calibration_examples must be at least 1")
        if min(self.verify_prompts, self.eval_examples, self.ptq_max_macro_f1_drop, self.student_max_macro_f1_drop) < 0:
            raise ValueError("verify_prompts, eval_examples and the macro-F1 budgets must be >= 0")
        if "float32" not in self.variants:
            raise ValueError("variants must include float32: it is the reference the others are checked against")


def export_sequence_length(longest_prompt: int, labels: dict, tokenizer) -> int:
    """Fixed TFLite input length: the longest prompt seen plus the longest label, rounded up to 16.

    Fixed shapes are what the TFLite benchmark tool and mobile runtimes want; sizing them to the
    data rather than to `max_prompt_tokens` keeps every uncached forward pass short. Longer inputs
    are cut by `encode_prompt`'s documented rule (the end of the text goes).
    """
    from models.llm.prompts import format_answer

    longest_label = max(len(tokenizer.encode(format_answer(label))) for names in labels.values() for label in names)
    return -(-(longest_prompt + longest_label) // 16) * 16


def tree_shape_for(tries, prompt_tokens: int) -> tuple[int, int, int]:
    """(prompt tokens, tree nodes, edges) of the `score_labels` signature: room for every task's label tree."""
    return prompt_tokens, max(t.num_nodes for t in tries), max(len(t.edge_tokens) for t in tries)


def memoised(logits_fn):
    """`logits_fn(token_ids, padding_mask)` that computes each distinct input once."""
    results = {}

    def call(token_ids, padding_mask):
        key = (token_ids.tobytes(), padding_mask.tobytes())
        if key not in results:
            results[key] = logits_fn(token_ids, padding_mask)
        return results[key]

    return call


def string_signature_check(saved_model_dir, texts: dict, reference: dict) -> dict:
    """The SavedModel's `classify` signature on raw texts ({task: [text]}) against `reference` Keras
    predictions on the Transform's prompt ids: max |top-1 probability difference| and label agreement.
    Any tokenisation or truncation difference inside the graph shows up here."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the regex-split op the signature uses)

    classify = tf.saved_model.load(str(saved_model_dir)).signatures["classify"]
    max_diff, agree, total = 0.0, 0, 0
    for task, task_texts in texts.items():
        if not task_texts:
            continue
        out = classify(text=tf.constant(task_texts), task=tf.constant(task))
        for ref, label, probability in zip(reference[task], out["label"].numpy(), out["probability"].numpy()):
            max_diff = max(max_diff, abs(ref.probability - float(probability)))
            agree += ref.label == label.decode()
            total += 1
    return {"max_abs_probability_diff": max_diff, "label_agreement": agree / max(total, 1), "examples": total}


class Optimizer(Component):
    name = "optimizer"
    version = "5"
    description = "Export a fixed-shape SavedModel and convert it to verified TFLite variants."
    inputs = {"model": "Model", "datasets": "Datasets", "evaluation": "Evaluation"}
    outputs = {"variants": "ModelVariants"}
    Params = OptimizerParams

    def execute(self, ctx: ExecutionContext):
        from components.optimizer.gate import compression_gate
        from components.optimizer.quality import evaluation_rows, keras_quality, variant_quality
        from components.optimizer.student_stage import StudentExportError, distill_student
        from models.export.convert import (
            ALL_ENDPOINTS,
            compare_logits,
            convert_in_child_process,
            export_saved_model,
            keras_logits_fn,
            non_builtin_operators,
        )
        from models.export.exported import ExportedModel
        from models.export.string_signatures import ServingSignatures
        from models.files import size_on_disk
        from models.llm.language_model import load_model
        from models.scoring.constrained import LabelTrie, Prediction

        p: OptimizerParams = ctx.params
        datasets = ctx.input("datasets")
        causal_lm, tokenizer, _ = load_model(ctx.input("model").uri)
        transform = json.loads(datasets.path("transform.json").read_text())
        labels = json.loads(datasets.path("labels.json").read_text())
        splits = [pd.read_parquet(datasets.path(f"{split}.parquet"), columns=["task", "prompt_ids"])
                  for split in ("train", "validation", "test")]
        longest = min(transform["max_prompt_tokens"], max(int(s["prompt_ids"].map(len).max()) for s in splits))
        sequence_length = export_sequence_length(longest, labels, tokenizer)
        tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
        tree_shape = tree_shape_for(tries.values(), longest)
        test = pd.read_parquet(datasets.path("test.parquet"), columns=["id", "prompt_ids"])
        rows = evaluation_rows(ctx.input("evaluation").path("predictions.jsonl"), test, p.eval_examples)
        checked = rows.groupby("task", group_keys=False).head(p.verify_prompts)
        out = ctx.output_dir("variants")
        saved_model = out / "saved_model"
        cache_shape = (longest, max(transform["max_length"], longest + 16))  # room for an answer after the prompt
        # String-in `classify`/`generate` too (tokenisation in the graph); TFLite converts only ALL_ENDPOINTS.
        serving = ServingSignatures(tokenizer, labels, transform["max_prompt_tokens"])
        export_saved_model(causal_lm, saved_model, sequence_length, tree_shape, cache_shape, serving=serving)
        # Memoised: the keras_int8 variant quantises the model in place, after which its float logits are gone.
        reference = memoised(keras_logits_fn(causal_lm))
        # The Evaluator's Keras predictions on these rows are the reference labels and probabilities.
        string_check = string_signature_check(
            saved_model, {task: list(g["model_text"]) for task, g in checked.groupby("task")},
            {task: [Prediction(label, probability) for label, probability in zip(g["after"], g["after_probability"])]
             for task, g in checked.groupby("task")})
        if not string_check["max_abs_probability_diff"] <= FLOAT32_TOLERANCE:  # (labels may swap only at a tie)
            raise PipelineError(f"the SavedModel's classify signature disagrees with Keras ({string_check}): "
                                "its in-graph tokenisation differs from the Transform's prompts")
        ctx.log(f"  classify signature (raw text in): max |dp| {string_check['max_abs_probability_diff']:.2g} "
                f"on {string_check['examples']} test texts")
        variants = []

        def measured(name: str, precision: str, path, fmt: str) -> dict:
            """Logits on the checked prompts and quality on the evaluated rows, through the exported file."""
            exported = ExportedModel(path)
            check = compare_logits(reference, exported.logits, list(checked["prompt_ids"]), sequence_length,
                                   tokenizer.pad_id)
            if precision == "float32" and not check["max_abs_diff"] <= FLOAT32_TOLERANCE:
                raise PipelineError(f"float32 TFLite logits differ from Keras by {check['max_abs_diff']:.3g}; "
                                    "the conversion lost the weights")
            quality = variant_quality(rows, tries, functools.partial(exported.classify, num_nodes=tree_shape[1]))
            if precision == "float32" and quality["label_agreement"] < MIN_FLOAT32_AGREEMENT:
                raise PipelineError(f"the float32 TFLite file agrees with Keras on only "
                                    f"{quality['label_agreement']:.1%} of {quality['examples']} test rows "
                                    f"(at least {MIN_FLOAT32_AGREEMENT:.0%} expected)")
            size = size_on_disk(path)
            ctx.log(f"  {precision}: {size / 1e6:.2f} MB, max |dlogit| {check['max_abs_diff']:.2g}, "
                    f"next-token top-1 {check['top1_agreement']:.1%}; on {quality['examples']} test rows: label "
                    f"agreement {quality['label_agreement']:.1%}, accuracy {quality['accuracy']:.3f}, "
                    f"macro-F1 {quality['macro_f1']:.3f}")
            return {"name": name, "format": fmt, "precision": precision, "file": path.name, "size_bytes": size,
                    "check_vs_keras": check, "quality": quality}

        for variant in [v for v in p.variants if v in TFLITE_VARIANTS]:
            path = out / f"{variant}.tflite"
            # full_int8: the child draws its representative data from the Transform's loader itself.
            calibration = (datasets.uri, ctx.input("model").uri) if variant == FULL_INT8 else None
            try:
                convert_in_child_process(saved_model, variant, ALL_ENDPOINTS, path, calibration,
                                         p.calibration_examples if calibration else None)
            except RuntimeError as error:
                raise PipelineError(str(error)) from None
            flex = non_builtin_operators(path)
            if flex:  # benchmark_model and mobile runtimes have no Flex delegate
                raise PipelineError(f"{path.name} needs non-builtin operators: {flex}")
            variants.append(measured(f"tflite_{variant}", variant, path, "tflite"))
            if calibration:
                variants[-1]["calibration_examples_per_signature"] = p.calibration_examples
        if p.student.enabled:  # before keras_int8, which quantises the teacher in place
            try:
                variants.append(distill_student(causal_lm, tokenizer, datasets.uri, labels, out, p.student, ctx.log,
                                                eval_rows=rows))
            except (ValueError, StudentExportError) as error:
                raise PipelineError(f"student: {error}") from None
        if KERAS_INT8 in p.variants:  # last: it quantises the Keras model in place
            with warnings.catch_warnings():  # layers without weights (norms, rotary, dropout) say they can't
                warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
                causal_lm.quantize("int8")  # int8 kernels and embeddings, per-channel scales (Keras 3)
            export_saved_model(causal_lm, out / "saved_model_int8", sequence_length, tree_shape, cache_shape)
            variants.append(measured("saved_model_int8", KERAS_INT8, out / "saved_model_int8", "saved_model"))
        shapes = {"sequence_length": sequence_length,
                  "tree": dict(zip(("prompt_tokens", "nodes", "edges"), tree_shape)),
                  "cache": dict(zip(("prompt_tokens", "positions"), cache_shape))}
        strings = {"max_prompt_tokens": serving.max_prompt_tokens,
                   "max_chat_prompt_tokens": serving.max_chat_prompt_tokens, "max_new_tokens": serving.max_new_tokens,
                   "top_k": serving.top_k, "classify_check_vs_keras": string_check}
        baseline = keras_quality(rows, tries)
        verdicts = compression_gate([{"kind": "ptq", **v, "macro_f1": v["quality"]["macro_f1"]} for v in variants],
                                    baseline["macro_f1"],
                                    {"ptq": p.ptq_max_macro_f1_drop, "student": p.student_max_macro_f1_drop})
        for variant, verdict in zip(variants, verdicts):
            variant["gate"] = {k: verdict[k] for k in ("kind", "drop_points", "allowed_points", "eligible", "reason")}
            ctx.log(f"  gate {variant['name']}: {'eligible' if verdict['eligible'] else 'NOT eligible'} "
                    f"({verdict['reason']})")
        document = {**shapes, "string_signatures": strings, "keras_quality": baseline, "variants": variants}
        (out / "variants.json").write_text(json.dumps(document, indent=2))
        return {"variants": {"sequence_length": sequence_length,
                             **{f"{v['name']}_size_bytes": v["size_bytes"] for v in variants}}}
