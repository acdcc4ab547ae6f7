"""Optimizer: post-training compression of the fine-tuned model into TFLite variants.

    plan (fixed shapes from the data, the rows every variant is measured on)
      -> one fixed-shape SavedModel (+ string signatures, checked on raw test texts)
      -> each TFLite variant converted in its own process, its logits and labels checked
      -> keras_int8 (optional, last: it quantises the Keras model in place)
      -> the compression gate -> variants.json (with the seconds of each step)

Each variant is converted from one fixed-shape SavedModel and checked against the Keras model's
logits on real test prompts before it is accepted. The SavedModel's string `classify` must
reproduce Keras's probabilities in every run (the export kept the weights); a float32 TFLite file,
when listed, must reproduce its logits (the converter kept them); non-finite logits from any
variant are an error (the silent weight-dropping trap); quantised variants report their agreement.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.common.laps import Laps
from components.config import param
from models.export.endpoints import FULL_INT8, TFLITE_VARIANTS
from schemas.artifacts import DatasetsFiles, EvaluationFiles, VariantsFiles

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

    float32_eval_examples: int = param(0, "of those rows, how many per task the float32 file classifies (0 = all): "
                                          "it must reproduce Keras (logits within 1e-3, labels 99%), so a few rows "
                                          "prove it; the quantised files, which may drift, are measured on all")
    ptq_max_macro_f1_drop: float = param(2.0, "compression gate: a quantised variant is eligible for export only if "
                                              "its macro-F1 is at most this many points below the Keras model's")
    decode_batch: int = param(8, "rows of the TFLite files' and SavedModel's `decode_batch` signature: one decode "
                                 "step advances that many generations at once (0 or 1 = no such signature; "
                                 "full_int8 files never have it: they are calibrated per signature)")
    prompt_buckets: int = param(3, "prefill and score_labels signatures for evenly spaced prompt lengths up to the "
                                   "longest prompt (a prompt runs through the shortest that holds it; 1 = one of "
                                   "each; full_int8 files have one of each)")
    calibration_examples: int = param(16, "full_int8: representative Transform rows per signature (conversion "
                                          "time grows ~22 s per unit on the 135M model; models/export/calibration.py)")

    def __post_init__(self):
        unknown = set(self.variants) - set(TFLITE_VARIANTS) - {KERAS_INT8}
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {TFLITE_VARIANTS + (KERAS_INT8,)}, got {self.variants}")
        if self.calibration_examples < 1 or self.prompt_buckets < 1:
            raise ValueError("calibration_examples and prompt_buckets must be at least 1")
        if min(self.verify_prompts, self.eval_examples, self.float32_eval_examples, self.ptq_max_macro_f1_drop,
               self.decode_batch) < 0:
            raise ValueError("verify_prompts, eval_examples, float32_eval_examples, decode_batch and the budget "
                             "must be >= 0")


def export_sequence_length(longest_prompt: int, labels: dict, tokenizer) -> int:
    """Fixed TFLite input length: the longest prompt seen plus the longest label, rounded up to 16.

    Fixed shapes are what the TFLite benchmark tool and mobile runtimes want; sizing them to the
    data rather than to `max_prompt_tokens` keeps every uncached forward pass short. Longer inputs
    are cut by `encode_prompt`'s documented rule (the end of the text goes).
    """
    from models.llm.prompts import format_answer, label_answer

    longest_label = max(len(tokenizer.encode(format_answer(label_answer(label)))) for names in labels.values()
                        for label in names)
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


@dataclass
class OptimizerPlan:
    """Shapes and rows shared by every variant of one run."""

    causal_lm: object
    tokenizer: object
    labels: dict
    tries: dict
    sequence_length: int
    tree_shape: tuple[int, int, int]
    cache_shape: tuple[int, int]
    decode_batch: int  # rows of the decode_batch signature (0 = none)
    prompt_buckets: tuple[int, ...]  # prompt lengths of the shorter prefill_N / score_labels_N signatures
    max_prompt_tokens: int
    rows: pd.DataFrame  # the Evaluator's scored test rows every variant classifies
    checked: pd.DataFrame  # the first `verify_prompts` of them per task: logits compared with Keras


def plan_optimizer(ctx: ExecutionContext, p: OptimizerParams) -> OptimizerPlan:
    from components.common.variant_quality import evaluation_rows
    from models.export.endpoints import prompt_buckets
    from models.llm.language_model import load_model
    from models.scoring.constrained import LabelTrie

    datasets = DatasetsFiles(ctx.input("datasets"))
    causal_lm, tokenizer, _ = load_model(ctx.input("model").uri)
    transform, labels = datasets.transform(), datasets.labels()
    splits = [pd.read_parquet(datasets.split_table(split), columns=["task", "prompt_ids"])
              for split in ("train", "validation", "test")]
    longest = min(transform["max_prompt_tokens"], max(int(s["prompt_ids"].map(len).max()) for s in splits))
    tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
    test = pd.read_parquet(datasets.split_table("test"), columns=["id", "prompt_ids"])
    rows = evaluation_rows(EvaluationFiles(ctx.input("evaluation")).predictions_file, test, p.eval_examples)
    return OptimizerPlan(
        causal_lm, tokenizer, labels, tries, export_sequence_length(longest, labels, tokenizer),
        tree_shape_for(tries.values(), longest),
        (longest, max(transform["max_length"], longest + 16)),  # room for an answer after the prompt
        p.decode_batch if p.decode_batch > 1 else 0, prompt_buckets(longest, p.prompt_buckets),
        transform["max_prompt_tokens"], rows,
        rows.groupby("task", group_keys=False).head(p.verify_prompts))


def export_checked_saved_model(plan: OptimizerPlan, saved_model, log):
    """The fixed-shape SavedModel with string-in `classify`/`generate` (tokenisation in the graph), whose
    `classify` must reproduce the Evaluator's Keras predictions on the raw test texts; returns
    (serving signatures, the check)."""
    from models.export.convert import export_saved_model
    from models.export.string_signatures import ServingSignatures
    from models.scoring.constrained import Prediction

    serving = ServingSignatures(plan.tokenizer, plan.labels, plan.max_prompt_tokens)
    export_saved_model(plan.causal_lm, saved_model, plan.sequence_length, plan.tree_shape, plan.cache_shape,
                       serving=serving, decode_batch=plan.decode_batch, prompt_buckets=plan.prompt_buckets)
    groups = plan.checked.groupby("task")
    check = string_signature_check(
        saved_model, {task: list(g["model_text"]) for task, g in groups},
        {task: [Prediction(label, probability) for label, probability in zip(g["after"], g["after_probability"])]
         for task, g in groups})
    if not check["max_abs_probability_diff"] <= FLOAT32_TOLERANCE:  # (labels may swap only at a tie)
        raise PipelineError(f"the SavedModel's classify signature disagrees with Keras ({check}): "
                            "its in-graph tokenisation differs from the Transform's prompts")
    log(f"  classify signature (raw text in): max |dp| {check['max_abs_probability_diff']:.2g} "
        f"on {check['examples']} test texts")
    return serving, check


def parity_rows(plan: OptimizerPlan, per_task: int) -> pd.DataFrame:
    """The first `per_task` evaluated rows of each task (0 = all), indexed 0..n-1, for the float32 file."""
    if not per_task:
        return plan.rows
    return plan.rows.groupby("task", group_keys=False).head(per_task).reset_index(drop=True)


def measure_variant(plan: OptimizerPlan, reference, name: str, precision: str, path, fmt: str, log,
                    rows: pd.DataFrame | None = None) -> dict:
    """Logits on the checked prompts and quality on the evaluated rows (or `rows`, a subset of them),
    through the exported file; non-finite logits, or a float32 file that does not reproduce Keras, are an error."""
    from components.common.variant_quality import variant_quality
    from models.export.convert import compare_logits
    from models.export.exported import ExportedModel
    from models.files import size_on_disk

    exported = ExportedModel(path)
    check = compare_logits(reference, exported.logits, list(plan.checked["prompt_ids"]), plan.sequence_length,
                           plan.tokenizer.pad_id)
    if not math.isfinite(check["max_abs_diff"]):  # the silent weight-dropping trap (models/export/convert.py)
        raise PipelineError(f"{name} returns non-finite logits on test prompts; the conversion lost the weights")
    if precision == "float32" and not check["max_abs_diff"] <= FLOAT32_TOLERANCE:
        raise PipelineError(f"float32 TFLite logits differ from Keras by {check['max_abs_diff']:.3g}; "
                            "the conversion lost the weights")
    generation = batched_generation_check(exported, list(plan.checked["prompt_ids"]), plan.cache_shape[0])
    if precision == "float32" and generation and generation["identical"] < 1.0:
        raise PipelineError(f"the float32 file's decode_batch signature generates other tokens than its decode "
                            f"signature ({generation})")
    rows = plan.rows if rows is None else rows
    quality = variant_quality(rows, plan.tries, functools.partial(exported.classify, num_nodes=plan.tree_shape[1]))
    if precision == "float32" and quality["label_agreement"] < MIN_FLOAT32_AGREEMENT:
        raise PipelineError(f"the float32 TFLite file agrees with Keras on only {quality['label_agreement']:.1%} of "
                            f"{quality['examples']} test rows (at least {MIN_FLOAT32_AGREEMENT:.0%} expected)")
    size = size_on_disk(path)
    log(f"  {precision}: {size / 1e6:.2f} MB, max |dlogit| {check['max_abs_diff']:.2g}, next-token top-1 "
        f"{check['top1_agreement']:.1%}; on {quality['examples']} test rows: label agreement "
        f"{quality['label_agreement']:.1%}, accuracy {quality['accuracy']:.3f}, macro-F1 {quality['macro_f1']:.3f}")
    return {"name": name, "format": fmt, "precision": precision, "file": path.name, "size_bytes": size,
            "signatures": sorted(exported.shapes), "check_vs_keras": check, "batched_generation": generation,
            "quality": quality,
            "row_ids": list(rows["id"])}


BATCH_CHECK_TOKENS = 8


def batched_generation_check(exported, prompts: list[list[int]], prompt_tokens: int) -> dict | None:
    """Greedy tokens of `decode_batch` (one group of its rows) against `decode` one prompt at a time, on the
    checked prompts: the share of identical generations. None when the file has no `decode_batch`, or there are
    fewer than 2 checked prompts (`optimizer.verify_prompts`; one prompt is never batched)."""
    rows = exported.decode_rows
    if rows == 1 or len(prompts) < 2:
        return None
    group = [list(p)[-prompt_tokens:] for p in prompts[:rows]]
    batched = exported.generate_batch(group, BATCH_CHECK_TOKENS)
    alone = [exported.generate_ids(p, BATCH_CHECK_TOKENS) for p in group]
    return {"rows": rows, "prompts": len(group), "tokens": BATCH_CHECK_TOKENS,
            "identical": sum(a == b for a, b in zip(batched, alone)) / len(group)}


def convert_tflite(ctx: ExecutionContext, p: OptimizerParams, plan: OptimizerPlan, variant: str, saved_model,
                   path) -> dict:
    """Convert one TFLite variant in its own process (builtin operators only) and say how it was made."""
    from models.export.convert import (
        ALL_ENDPOINTS,
        convert_in_child_process,
        non_builtin_operators,
        optional_endpoints,
    )

    # full_int8: the child draws its representative data from the Transform's loader itself, for the four
    # signatures it knows (the prompt buckets and decode_batch would each need their own samples).
    calibration = (ctx.input("datasets").uri, ctx.input("model").uri) if variant == FULL_INT8 else None
    signatures = ALL_ENDPOINTS + (() if calibration else optional_endpoints(plan.prompt_buckets, plan.decode_batch))
    try:
        convert_in_child_process(saved_model, variant, signatures, path, calibration,
                                 p.calibration_examples if calibration else None)
    except RuntimeError as error:
        raise PipelineError(str(error)) from None
    flex = non_builtin_operators(path)
    if flex:  # benchmark_model and mobile runtimes have no Flex delegate
        raise PipelineError(f"{path.name} needs non-builtin operators: {flex}")
    return {"calibration_examples_per_signature": p.calibration_examples} if calibration else {}


def keras_int8_saved_model(plan: OptimizerPlan, path) -> None:
    """Keras 3's own int8 quantisation exported as a SavedModel. Quantises the Keras model in place."""
    from models.export.convert import export_saved_model

    with warnings.catch_warnings():  # layers without weights (norms, rotary, dropout) say they can't
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        plan.causal_lm.quantize("int8")  # int8 kernels and embeddings, per-channel scales (Keras 3)
    export_saved_model(plan.causal_lm, path, plan.sequence_length, plan.tree_shape, plan.cache_shape,
                       decode_batch=plan.decode_batch, prompt_buckets=plan.prompt_buckets)


def gate_variants(variants: list[dict], plan: OptimizerPlan, budget: float, log) -> None:
    """Put the compression gate's verdict into every variant (the Exporter ships only eligible ones): its
    macro-F1 against the Keras model's on the same rows."""
    from components.common.compression_gate import compression_gate
    from components.common.variant_quality import keras_quality

    verdicts = []
    for v in variants:
        rows = plan.rows[plan.rows["id"].isin(set(v.pop("row_ids")))].reset_index(drop=True)
        baseline = keras_quality(rows, plan.tries)["macro_f1"]
        verdicts += compression_gate([{"kind": "ptq", **v, "macro_f1": v["quality"]["macro_f1"]}], baseline,
                                     {"ptq": budget})
    for variant, verdict in zip(variants, verdicts):
        variant["gate"] = {k: verdict[k] for k in ("kind", "drop_points", "allowed_points", "eligible", "reason")}
        log(f"  gate {variant['name']}: {'eligible' if verdict['eligible'] else 'NOT eligible'} ({verdict['reason']})")


class Optimizer(Component):
    name = "optimizer"
    version = "7"
    description = "Export a fixed-shape SavedModel and convert it to verified TFLite variants."
    inputs = {"model": "Model", "datasets": "Datasets", "evaluation": "Evaluation"}
    outputs = {"variants": "ModelVariants"}
    Params = OptimizerParams

    def execute(self, ctx: ExecutionContext):
        from components.common.variant_quality import keras_quality
        from models.export.convert import keras_logits_fn

        p: OptimizerParams = ctx.params
        laps = Laps()
        plan = plan_optimizer(ctx, p)
        out = VariantsFiles(ctx.output_dir("variants"))
        laps.lap("plan")
        serving, string_check = export_checked_saved_model(plan, out.saved_model_dir, ctx.log)
        laps.lap("saved_model")
        # Memoised: the keras_int8 variant quantises the model in place, after which its float logits are gone.
        reference = memoised(keras_logits_fn(plan.causal_lm))
        variants = []
        for variant in [v for v in p.variants if v in TFLITE_VARIANTS]:
            path = out.tflite(variant)
            made = convert_tflite(ctx, p, plan, variant, out.saved_model_dir, path)
            laps.lap(f"convert_{variant}")
            rows = parity_rows(plan, p.float32_eval_examples) if variant == "float32" else None
            variants.append({**measure_variant(plan, reference, f"tflite_{variant}", variant, path, "tflite", ctx.log,
                                               rows), **made})
            laps.lap(f"measure_{variant}")
        if KERAS_INT8 in p.variants:  # last: it quantises the Keras model in place
            int8_dir = out.file("saved_model_int8")
            keras_int8_saved_model(plan, int8_dir)
            variants.append(measure_variant(plan, reference, "saved_model_int8", KERAS_INT8, int8_dir, "saved_model",
                                            ctx.log))
            laps.lap(KERAS_INT8)
        baseline = keras_quality(plan.rows, plan.tries)
        gate_variants(variants, plan, p.ptq_max_macro_f1_drop, ctx.log)
        strings = {"max_prompt_tokens": serving.max_prompt_tokens,
                   "max_chat_prompt_tokens": serving.max_chat_prompt_tokens, "max_new_tokens": serving.max_new_tokens,
                   "top_k": serving.top_k, "classify_check_vs_keras": string_check}
        document = {"sequence_length": plan.sequence_length,
                    "tree": dict(zip(("prompt_tokens", "nodes", "edges"), plan.tree_shape)),
                    "cache": {**dict(zip(("prompt_tokens", "positions"), plan.cache_shape)),
                              "decode_rows": plan.decode_batch, "prompt_buckets": list(plan.prompt_buckets)},
                    "string_signatures": strings, "keras_quality": baseline, "variants": variants,
                    "seconds": laps.total()}
        out.manifest_file.write_text(json.dumps(document, indent=2))
        ctx.log(f"  seconds: {document['seconds']}")
        return {"variants": {"sequence_length": plan.sequence_length,
                             **{f"{v['name']}_size_bytes": v["size_bytes"] for v in variants}}}
