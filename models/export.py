"""SavedModel export and TFLite conversion of a (merged) causal LM, and a TFLite runner.

The route is the one that keeps the weights: `keras.export.ExportArchive` (track the model, add
a fixed-shape endpoint) then `TFLiteConverter.from_saved_model`. `from_concrete_functions` or
`tf.saved_model.save` on a Keras 3 model silently drop the weights (tiny file, NaN outputs), so
every conversion here is checked against the Keras model's logits before it is accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.constrained import right_padded

ENDPOINT = "serve"
TFLITE_VARIANTS = ("float32", "float16", "dynamic_int8")


def export_saved_model(causal_lm, directory: Path, sequence_length: int) -> None:
    """A SavedModel with one endpoint: (token_ids, padding_mask) [1, T] int32 -> logits [1, T, V]."""
    import keras
    import tensorflow as tf

    def serve(token_ids, padding_mask):
        return causal_lm({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)

    archive = keras.export.ExportArchive()
    archive.track(causal_lm)
    archive.add_endpoint(name=ENDPOINT, fn=serve, input_signature=[
        tf.TensorSpec([1, sequence_length], tf.int32, name="token_ids"),
        tf.TensorSpec([1, sequence_length], tf.int32, name="padding_mask")])
    archive.write_out(str(directory), verbose=False)


def convert_to_tflite(saved_model_dir: Path, variant: str) -> bytes:
    """TFLite flatbuffer of the SavedModel, builtin ops only (no Flex), in the given precision."""
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {TFLITE_VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[ENDPOINT])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "dynamic_int8":  # int8 weights, float activations
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


class TFLiteLogits:
    """Runs an exported `.tflite` file's `serve` signature with LiteRT (no Flex delegate)."""

    def __init__(self, path: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(ENDPOINT)
        details = self.runner.get_input_details()
        self.sequence_length = int(details["token_ids"]["shape"][1])
        (self.output_name,) = self.runner.get_output_details().keys()

    def __call__(self, token_ids: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
        outputs = self.runner(token_ids=token_ids.astype(np.int32), padding_mask=padding_mask.astype(np.int32))
        return outputs[self.output_name]  # (1, T, vocab)


def keras_logits_fn(causal_lm):
    """The Keras model behind the same (token_ids, padding_mask) -> logits interface."""
    import keras

    def logits(token_ids, padding_mask):
        return keras.ops.convert_to_numpy(
            causal_lm({"token_ids": token_ids, "padding_mask": padding_mask}, training=False))

    return logits


def compare_logits(reference_fn, candidate_fn, prompts: list[list[int]], sequence_length: int,
                   pad_id: int) -> dict:
    """Max |logit difference| and next-token top-1 agreement over the real positions of prompts."""
    max_diff, agree, total = 0.0, 0, 0
    for prompt in prompts:
        token_ids, padding_mask = right_padded(prompt, sequence_length, pad_id)
        real = int(padding_mask.sum())
        ref = reference_fn(token_ids, padding_mask)[0, :real]
        cand = candidate_fn(token_ids, padding_mask)[0, :real]
        if not np.all(np.isfinite(cand)):
            return {"max_abs_diff": float("inf"), "top1_agreement": 0.0, "positions": real}
        max_diff = max(max_diff, float(np.abs(ref - cand).max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += real
    return {"max_abs_diff": max_diff, "top1_agreement": agree / max(total, 1), "positions": total}
