"""SavedModel export and TFLite conversion of a (merged) causal LM, and a TFLite runner.

The route is the one that keeps the weights: `keras.export.ExportArchive` (track the model, add
a fixed-shape endpoint) then `TFLiteConverter.from_saved_model`. `from_concrete_functions` or
`tf.saved_model.save` on a Keras 3 model silently drop the weights (tiny file, NaN outputs), so
every conversion here is checked against the Keras model's logits before it is accepted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from models.child_process import ChildRunError, run_child
from models.export.endpoints import (  # noqa: F401  (re-exported: the names callers know this module by)
    ALL_ENDPOINTS,
    DECODE_BATCH_ENDPOINT,
    DECODE_ENDPOINT,
    ENDPOINT,
    FULL_INT8,
    INT4_BLOCKWISE,
    PREFILL_ENDPOINT,
    SCORE_ENDPOINT,
    TFLITE_VARIANTS,
    bucket_endpoint,
    optional_endpoints,
)
from models.scoring.constrained import right_padded


def export_saved_model(causal_lm, directory: Path, sequence_length: int,
                       tree_shape: tuple[int, int, int] | None = None,
                       cache_shape: tuple[int, int] | None = None, serving=None, decode_batch: int = 0,
                       prompt_buckets: tuple[int, ...] = ()) -> None:
    """A fixed-shape SavedModel with endpoints for stock tools (all int32 inputs, batch 1).

    `serve`: (token_ids, padding_mask) [1, T] -> logits [1, T, V].
    `score_labels` (when `tree_shape` = (prompt tokens P, tree nodes N, edges E) is given): a
    left-padded prompt with a flattened label tree -> the log-probability of every tree edge
    [1, E], i.e. every label scored in one pass (see `models.scoring.constrained`).
    `prefill` / `decode` (when `cache_shape` = (prompt tokens P, cache positions C) is given):
    prefill(token_ids [1, P] right-padded, last_index [1]) -> logits [1, V] at last_index, and the
    keys and values of every prompt position (`new_keys`, `new_values` [layers, kv heads, P, head dim]);
    decode(token_id [1, 1], index [1], key_cache_i [kv heads, C, head dim], value_cache_i [kv heads,
    head dim, C] per layer i) -> logits [1, V], new_keys/new_values [layers, kv heads, 1, head dim] of the
    token at position index. The caches are inputs only: the caller writes the new rows where the cache
    lives (the interpreter's own input tensors, `models.export.exported`), so no step copies the cache.
    `prefill_N` and `score_labels_N` for each N of `prompt_buckets` (shorter than P): the same for a prompt of
    at most N tokens, in N positions' time instead of P's (the runner picks the shortest that fits; the
    weights are shared, so the file barely grows).
    `decode_batch` (when `decode_batch` = B > 1, with `cache_shape`): `decode` for B sequences at their own
    positions, token_id [B, 1], index [B], key_cache_i [B, kv heads, C, head dim], value_cache_i [B, kv heads,
    head dim, C] -> logits [B, V], new_keys/new_values [layers, B, kv heads, 1, head dim].
    """
    import keras
    import tensorflow as tf

    from models.export.kv_cache import (
        NEW_KEYS,
        NEW_VALUES,
        CacheLayout,
        batched_decode_forward,
        cache_names,
        cached_forward,
    )
    from models.scoring.constrained import edge_log_probs, last_token_logits

    def serve(token_ids, padding_mask):
        return causal_lm({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)

    archive = keras.export.ExportArchive()
    archive.track(causal_lm)
    archive.add_endpoint(name=ENDPOINT, fn=serve, input_signature=[
        tf.TensorSpec([1, sequence_length], tf.int32, name="token_ids"),
        tf.TensorSpec([1, sequence_length], tf.int32, name="padding_mask")])
    if tree_shape is not None:
        def score_labels_after(prompt):
            def score_labels(token_ids, positions, attention_mask, edge_positions, edge_tokens):
                # `tree_inputs` puts the root at the prompt's last slot: a static start keeps shapes static.
                return edge_log_probs(causal_lm, token_ids, positions, attention_mask, edge_positions, edge_tokens,
                                      head_start=prompt - 1)
            return score_labels

        for name, prompt in _buckets(SCORE_ENDPOINT, tree_shape[0], prompt_buckets):
            length = prompt + tree_shape[1]
            archive.add_endpoint(name=name, fn=score_labels_after(prompt), input_signature=[
                tf.TensorSpec([1, length], tf.int32, name="token_ids"),
                tf.TensorSpec([length], tf.int32, name="positions"),
                tf.TensorSpec([1, length, length], tf.int32, name="attention_mask"),
                tf.TensorSpec([tree_shape[2]], tf.int32, name="edge_positions"),
                tf.TensorSpec([tree_shape[2]], tf.int32, name="edge_tokens")])
    if cache_shape is not None:
        backbone = causal_lm.backbone
        prompt_length, cache_length = cache_shape
        layout = CacheLayout.of(backbone, cache_length)
        key_names, value_names = cache_names(layout.num_layers)

        def prefill(token_ids, last_index):
            x, keys, values = cached_forward(backbone, token_ids, 0)
            return {"logits": last_token_logits(backbone, tf.gather(x, last_index, axis=1)[:, 0, :]),
                    NEW_KEYS: keys, NEW_VALUES: values}

        def decode(token_id, index, *caches):
            split = layout.num_layers
            x, keys, values = cached_forward(backbone, token_id, index[0], (caches[:split], caches[split:]))
            return {"logits": last_token_logits(backbone, x[:, 0, :]), NEW_KEYS: keys, NEW_VALUES: values}

        for name, length in _buckets(PREFILL_ENDPOINT, prompt_length, prompt_buckets):
            archive.add_endpoint(name=name, fn=prefill, input_signature=[
                tf.TensorSpec([1, length], tf.int32, name="token_ids"),
                tf.TensorSpec([1], tf.int32, name="last_index")])
        archive.add_endpoint(name=DECODE_ENDPOINT, fn=decode, input_signature=[
            tf.TensorSpec([1, 1], tf.int32, name="token_id"), tf.TensorSpec([1], tf.int32, name="index"),
            *[tf.TensorSpec(layout.key_shape, tf.float32, name=name) for name in key_names],
            *[tf.TensorSpec(layout.value_shape, tf.float32, name=name) for name in value_names]])
        if decode_batch > 1:
            rows = CacheLayout.of(backbone, cache_length, decode_batch)

            def decode_rows(token_id, index, *caches):
                split = layout.num_layers
                x, keys, values = batched_decode_forward(backbone, token_id, index, (caches[:split], caches[split:]))
                return {"logits": last_token_logits(backbone, x[:, 0, :]), NEW_KEYS: keys, NEW_VALUES: values}

            archive.add_endpoint(name=DECODE_BATCH_ENDPOINT, fn=decode_rows, input_signature=[
                tf.TensorSpec([decode_batch, 1], tf.int32, name="token_id"),
                tf.TensorSpec([decode_batch], tf.int32, name="index"),
                *[tf.TensorSpec(rows.key_shape, tf.float32, name=name) for name in key_names],
                *[tf.TensorSpec(rows.value_shape, tf.float32, name=name) for name in value_names]])
    if serving is not None:
        serving.add_endpoints(archive, causal_lm)
    archive.write_out(str(directory), verbose=False)


def _buckets(signature: str, prompt_tokens: int, buckets: tuple[int, ...]) -> list[tuple[str, int]]:
    """(name, prompt length) of `signature` and of its shorter-prompt copies."""
    if any(not 0 < n < prompt_tokens for n in buckets):
        raise ValueError(f"prompt buckets {buckets} must lie between 1 and {prompt_tokens - 1}")
    return [(signature, prompt_tokens)] + [(bucket_endpoint(signature, n), n) for n in buckets]


def _named_signatures(saved_model, keys: tuple[str, ...]) -> list:
    """Concrete functions that call the loaded SavedModel's signatures, named after them.

    Why not `from_saved_model(signature_keys=[...])`: with several keys it silently writes one
    subgraph (only `serving_default`) for this SavedModel. Converting the *loaded* SavedModel's
    functions, with the loaded object as the trackable, keeps every signature and the weights.
    """
    import tensorflow as tf

    functions = []
    for key in keys:
        signature = saved_model.signatures[key]
        specs = signature.structured_input_signature[1]
        names = sorted(specs)

        def call(*args, signature=signature, names=names):
            return signature(**dict(zip(names, args)))

        call.__name__ = key  # becomes the TFLite signature key
        functions.append(tf.function(call, input_signature=[
            tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]).get_concrete_function())
    return functions


def convert_to_tflite(saved_model_dir: Path, variant: str, signatures: tuple[str, ...] = (ENDPOINT,),
                      representative_dataset=None) -> bytes:
    """TFLite flatbuffer of the SavedModel's `signatures`, builtin ops only (no Flex), in the given precision.

    `int4_blockwise` is the float32 flatbuffer requantised by `ai-edge-quantizer` (`quantize_int4_blockwise`).
    `full_int8` needs `representative_dataset`: (signature key, {input name: array}) samples for
    every converted signature (`models.export.calibration`), checked against the signatures before converting,
    or a function of the loaded SavedModel returning them (so the model is loaded once).
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; choose from {TFLITE_VARIANTS}")
    if variant == FULL_INT8 and representative_dataset is None:
        raise ValueError("the full_int8 variant needs a representative data set (see models.export.calibration)")
    import tensorflow_text  # noqa: F401  (registers the ops the string signatures use, so the folder loads)

    saved_model = tf.saved_model.load(str(saved_model_dir))
    if variant == FULL_INT8:
        from models.export.calibration import check_representative_samples, input_specs

        if callable(representative_dataset):
            representative_dataset = representative_dataset(saved_model)
        samples = check_representative_samples(representative_dataset, input_specs(saved_model, signatures))
    # Only the weights go with the functions: the loaded object also holds the string signatures'
    # lookup tables, and the converter would convert their initialisers too (HashTableV2: no builtin).
    weights = tf.Module()
    weights.held = list(saved_model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(_named_signatures(saved_model, signatures), weights)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "dynamic_int8":  # int8 weights, float activations
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == FULL_INT8:
        # int8 weights and activations, with a float32 interface: int32 token ids in, float logits
        # and cache in and out (quantised/dequantised at the edges). Integer-only is not possible for
        # these graphs: COS/SIN (rotary angles), NEG (rotate-half), SELECT_V2, DYNAMIC_UPDATE_SLICE (the
        # cache write) and CAST have no int8 kernel, so the old quantizer with TFLITE_BUILTINS_INT8 only
        # fails. The MLIR quantizer (the default) ignores TFLITE_BUILTINS_INT8 and leaves those ops in
        # float anyway, so the ops set says what the file is: int8 with float fallback, builtins only.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(samples)
    flatbuffer = converter.convert()
    return quantize_int4_blockwise(flatbuffer) if variant == INT4_BLOCKWISE else flatbuffer


def quantize_int4_blockwise(float32_flatbuffer: bytes) -> bytes:
    """The float32 file with every FULLY_CONNECTED weight in int4, blocks of 32 along the input dimension, and
    activations quantised on the fly (ai-edge-quantizer's `dynamic_wi4b32_afp32`; TF 2.21's converter has
    no int4). LiteRT runs it with XNNPACK's blockwise-int4 kernels. The kernels take symmetric blocks only,
    so weights that came from an asymmetric 4-bit GGUF (SmolLM2's Q4_1: scale and minimum per block) are
    re-rounded onto another grid, not kept: see the README for what that costs in agreement.
    The embedding lookup (GATHER) stays float32, so the file is larger than dynamic_int8's."""
    from ai_edge_quantizer import quantizer, recipe

    engine = quantizer.Quantizer(bytearray(float32_flatbuffer))
    engine.load_quantization_recipe(recipe.dynamic_wi4b32_afp32())
    return bytes(engine.quantize().quantized_model)


CONVERSION_TIMEOUT_S = 3600  # full_int8 of the 135M model takes ~10 min here; a hung converter is killed


def convert_in_child_process(saved_model_dir: Path, variant: str, signatures: tuple[str, ...], output: Path,
                             calibration: tuple[Path, Path] | None = None,
                             calibration_examples: int | None = None) -> None:
    """`convert_to_tflite` into `output`, run in a fresh Python process.

    Why: converting the 135M model takes ~7 GB per variant and the converter leaves much of it
    allocated in the process; three variants in the pipeline's process peaked at 20 GB. A child
    returns all of it when it exits.

    `calibration` = (Transform datasets folder, model folder with the tokenizer): the child builds
    the full_int8 representative data set itself (`models.export.calibration.calibration_set`), with
    `calibration_examples` samples per signature (default `DEFAULT_CALIBRATION_EXAMPLES`).
    """
    command = [sys.executable, "-m", "models.export.convert", str(saved_model_dir), variant, ",".join(signatures),
               str(output)]
    if calibration is not None:
        command += ["--datasets", str(calibration[0]), "--tokenizer", str(calibration[1])]
    if calibration_examples is not None:
        command += ["--calibration-examples", str(calibration_examples)]
    what = f"TFLite conversion to {variant}"
    run_child(command, what, Path(str(output) + ".stderr.log"), CONVERSION_TIMEOUT_S)
    if not Path(output).is_file():
        raise ChildRunError(f"{what} exited 0 but wrote no {Path(output).name}")


def tflite_operators(path: Path) -> list[str]:
    """Every operator a `.tflite` file uses: builtin names, or `custom:<code>` (Flex ops are custom ops).

    Read from the flatbuffer itself (TensorFlow's generated schema reader), without an interpreter,
    so a file that would need the Flex delegate can still be inspected.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    operators = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # old files use the deprecated field
        if builtin == schema.BuiltinOperator.CUSTOM:
            operators.append(f"custom:{code.CustomCode().decode()}")
        else:
            operators.append(names[builtin])
    return operators


def non_builtin_operators(path: Path) -> list[str]:
    return [op for op in tflite_operators(path) if op.startswith("custom:")]


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


def _main(argv: list[str]) -> None:
    """python -m models.export.convert SAVED_MODEL VARIANT SIGNATURE[,SIGNATURE...] OUTPUT.tflite
    [--datasets DIR --tokenizer DIR [--calibration-examples N]]  (the last three for full_int8)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.export.convert")
    parser.add_argument("saved_model", type=Path)
    parser.add_argument("variant", choices=TFLITE_VARIANTS)
    parser.add_argument("signatures")
    parser.add_argument("output", type=Path)
    parser.add_argument("--datasets", type=Path, help="Transform datasets folder (full_int8 calibration rows)")
    parser.add_argument("--tokenizer", type=Path, help="model folder holding the tokenizer (label trees, pad id)")
    parser.add_argument("--calibration-examples", type=int, default=None, help="samples per signature")
    args = parser.parse_args(argv)
    signatures = tuple(args.signatures.split(","))
    samples = None
    if args.variant == FULL_INT8:
        if args.datasets is None or args.tokenizer is None:
            parser.error("full_int8 needs --datasets and --tokenizer to build its calibration data")
        from models.export.calibration import DEFAULT_CALIBRATION_EXAMPLES, calibration_set

        def samples(saved_model):  # built from the SavedModel convert_to_tflite has loaded
            return calibration_set(saved_model, args.datasets, args.tokenizer, signatures,
                                   args.calibration_examples or DEFAULT_CALIBRATION_EXAMPLES)
    args.output.write_bytes(convert_to_tflite(args.saved_model, args.variant, signatures, samples))


if __name__ == "__main__":
    _main(sys.argv[1:])
