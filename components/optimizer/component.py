"""Optimizer: post-training compression of the fine-tuned model into TFLite variants.

Each variant is converted from one fixed-shape SavedModel and checked against the Keras model's
logits on real test prompts before it is accepted: a float32 file whose logits differ is an
error (the silent weight-dropping trap), and quantised variants report their top-1 agreement.
"""

from __future__ import annotations

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
    verify_prompts: int = param(4, "test prompts the logits of every variant are compared on")

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


class Optimizer(Component):
    name = "optimizer"
    version = "1"
    description = "Export a fixed-shape SavedModel and convert it to verified TFLite variants."
    inputs = {"model": "Model", "datasets": "Datasets"}
    outputs = {"variants": "ModelVariants"}
    Params = OptimizerParams

    def execute(self, ctx: ExecutionContext):
        from models.export import TFLiteLogits, compare_logits, convert_to_tflite, export_saved_model, keras_logits_fn
        from models.language_model import load_model

        p: OptimizerParams = ctx.params
        datasets = ctx.input("datasets")
        causal_lm, tokenizer, _ = load_model(ctx.input("model").uri)
        transform = json.loads(datasets.path("transform.json").read_text())
        labels = json.loads(datasets.path("labels.json").read_text())
        splits = [pd.read_parquet(datasets.path(f"{split}.parquet"), columns=["prompt_ids"])
                  for split in ("train", "validation", "test")]
        longest = min(transform["max_prompt_tokens"], max(int(s["prompt_ids"].map(len).max()) for s in splits))
        sequence_length = export_sequence_length(longest, labels, tokenizer)
        prompts = [list(ids) for ids in splits[2]["prompt_ids"][:p.verify_prompts]]
        out = ctx.output_dir("variants")
        saved_model = out / "saved_model"
        export_saved_model(causal_lm, saved_model, sequence_length)
        reference = keras_logits_fn(causal_lm)
        variants = []
        for variant in p.variants:
            path = out / f"{variant}.tflite"
            path.write_bytes(convert_to_tflite(saved_model, variant))
            check = compare_logits(reference, TFLiteLogits(path), prompts, sequence_length, tokenizer.pad_id)
            if variant == "float32" and not check["max_abs_diff"] <= FLOAT32_TOLERANCE:
                raise PipelineError(f"float32 TFLite logits differ from Keras by {check['max_abs_diff']:.3g}; "
                                    "the conversion lost the weights")
            variants.append({"name": f"tflite_{variant}", "format": "tflite", "precision": variant,
                             "file": path.name, "size_bytes": path.stat().st_size, "check_vs_keras": check})
            ctx.log(f"  {variant}: {path.stat().st_size / 1e6:.2f} MB, max |dlogit| {check['max_abs_diff']:.2g}, "
                    f"top-1 agreement {check['top1_agreement']:.1%}")
        manifest = {"sequence_length": sequence_length, "variants": variants}
        (out / "variants.json").write_text(json.dumps(manifest, indent=2))
        return {"variants": {"sequence_length": sequence_length,
                             **{f"{v['name']}_size_bytes": v["size_bytes"] for v in variants}}}
