"""Optimizer: post-training compression of the fine-tuned model into TFLite variants.

Each variant is converted from one fixed-shape SavedModel and checked against the Keras model's
logits on real test prompts before it is accepted: a float32 file whose logits differ is an
error (the silent weight-dropping trap), and quantised variants report their top-1 agreement.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.config import param
from models.export import TFLITE_VARIANTS

FLOAT32_TOLERANCE = 1e-3  # max |logit diff| of the float32 TFLite file vs Keras


@dataclass
class OptimizerParams:
    """Which compressed variants are produced."""

    variants: list[str] = param(["float32", "dynamic_int8"], "TFLite variants: " + ", ".join(TFLITE_VARIANTS))
    verify_prompts: int = param(4, "test prompts per label task on which every variant's logits and labels "
                                   "are compared with the Keras model")

    def __post_init__(self):
        unknown = set(self.variants) - set(TFLITE_VARIANTS)
        if unknown or not self.variants:
            raise ValueError(f"variants must be among {TFLITE_VARIANTS}, got {self.variants}")
        if "float32" not in self.variants:
            raise ValueError("variants must include float32: it is the reference the others are checked against")


def export_sequence_length(longest_prompt: int, labels: dict, tokenizer) -> int:
    """Fixed TFLite input length: the longest prompt seen plus the longest label, rounded up to 16.

    Fixed shapes are what the TFLite benchmark tool and mobile runtimes want; sizing them to the
    data rather than to `max_prompt_tokens` keeps every uncached forward pass short. Longer inputs
    are cut by `encode_prompt`'s documented rule (the end of the text goes).
    """
    from models.prompts import format_answer

    longest_label = max(len(tokenizer.encode(format_answer(label))) for names in labels.values() for label in names)
    return -(-(longest_prompt + longest_label) // 16) * 16


def tree_shape_for(tries, prompt_tokens: int) -> tuple[int, int, int]:
    """(prompt tokens, tree nodes, edges) of the `score_labels` signature: room for every task's label tree."""
    return prompt_tokens, max(t.num_nodes for t in tries), max(len(t.edge_tokens) for t in tries)


def label_score_check(tries: dict, prompts: dict, reference: dict, candidate) -> dict:
    """Max |label probability difference| and top-1 label agreement of `candidate(prompts, trie)`
    against `reference` predictions ({task: [Prediction]})."""
    max_diff, agree, total = 0.0, 0, 0
    for task, trie in tries.items():
        for ref, cand in zip(reference[task], candidate(prompts[task], trie)):
            ref_p, cand_p = dict(ref.ranking), dict(cand.ranking)
            max_diff = max(max_diff, max(abs(ref_p[label] - cand_p[label]) for label in trie.labels))
            agree += ref.label == cand.label
            total += 1
    return {"max_abs_probability_diff": max_diff, "label_agreement": agree / max(total, 1), "examples": total}


class Optimizer(Component):
    name = "optimizer"
    version = "2"
    description = "Export a fixed-shape SavedModel and convert it to verified TFLite variants."
    inputs = {"model": "Model", "datasets": "Datasets"}
    outputs = {"variants": "ModelVariants"}
    Params = OptimizerParams

    def execute(self, ctx: ExecutionContext):
        from models.constrained import LabelTrie, classify
        from models.export import (
            ALL_ENDPOINTS,
            compare_logits,
            convert_to_tflite,
            export_saved_model,
            keras_logits_fn,
            non_builtin_operators,
        )
        from models.exported import ExportedModel
        from models.language_model import load_model

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
        test = splits[2]
        prompts = [list(ids) for ids in test["prompt_ids"][:p.verify_prompts]]
        task_prompts = {task: [list(ids) for ids in test[test["task"] == task]["prompt_ids"][:p.verify_prompts]]
                        for task in tries}
        out = ctx.output_dir("variants")
        saved_model = out / "saved_model"
        cache_shape = (longest, max(transform["max_length"], longest + 16))  # room for an answer after the prompt
        export_saved_model(causal_lm, saved_model, sequence_length, tree_shape, cache_shape)
        reference = keras_logits_fn(causal_lm)
        keras_labels = {task: classify(causal_lm, task_prompts[task], trie) for task, trie in tries.items()}
        variants = []
        for variant in p.variants:
            path = out / f"{variant}.tflite"
            path.write_bytes(convert_to_tflite(saved_model, variant, ALL_ENDPOINTS))
            flex = non_builtin_operators(path)
            if flex:  # benchmark_model and mobile runtimes have no Flex delegate
                raise PipelineError(f"{path.name} needs non-builtin operators: {flex}")
            exported = ExportedModel(path)
            check = compare_logits(reference, exported.logits, prompts, sequence_length, tokenizer.pad_id)
            check.update(label_score_check(tries, task_prompts, keras_labels,
                                           functools.partial(exported.classify, num_nodes=tree_shape[1])))
            if variant == "float32" and not check["max_abs_diff"] <= FLOAT32_TOLERANCE:
                raise PipelineError(f"float32 TFLite logits differ from Keras by {check['max_abs_diff']:.3g}; "
                                    "the conversion lost the weights")
            variants.append({"name": f"tflite_{variant}", "format": "tflite", "precision": variant,
                             "file": path.name, "size_bytes": path.stat().st_size, "check_vs_keras": check})
            ctx.log(f"  {variant}: {path.stat().st_size / 1e6:.2f} MB, max |dlogit| {check['max_abs_diff']:.2g}, "
                    f"top-1 agreement {check['top1_agreement']:.1%}, label agreement {check['label_agreement']:.1%}")
        shapes = {"sequence_length": sequence_length,
                  "tree": dict(zip(("prompt_tokens", "nodes", "edges"), tree_shape)),
                  "cache": dict(zip(("prompt_tokens", "positions"), cache_shape))}
        (out / "variants.json").write_text(json.dumps({**shapes, "variants": variants}, indent=2))
        return {"variants": {"sequence_length": sequence_length,
                             **{f"{v['name']}_size_bytes": v["size_bytes"] for v in variants}}}
