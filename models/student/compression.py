"""TF-MOT on the student: magnitude pruning, quantisation-aware training, full-integer int8 TFLite.

Order (TF-MOT's "pruning-preserving QAT" recipe): prune the Dense and Embedding layers with a
polynomial schedule while distilling, strip the pruning wrappers, then QAT the Dense layers with
`Default8BitPrunePreserveQuantizeScheme` so the fine-tune keeps the zeros, then convert with a
representative data set to a TFLite file whose ops are all int8 builtins.

Every argument is checked before any training or conversion starts (an unreachable sparsity,
calibration data of the wrong shape): a clear ValueError instead of a model that silently misses.
"""

from __future__ import annotations

import gzip
import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from models.student.distillation import distill, student_limits


def import_tfmot():
    """`tensorflow_model_optimization`, without turning `tf.keras` into Keras 2 for the whole process.

    TF-MOT 0.8.1 sets TF_USE_LEGACY_KERAS=1 when imported and then reads `tf.keras`; if nothing had
    resolved TensorFlow's lazy `tf.keras` yet, it becomes tf-keras for the rest of the process, and
    the variable is inherited by subprocesses. Resolving `tf.keras` first (Keras 3 here) makes
    TF-MOT pick `tf_keras` itself; the variable is then put back as it was.
    """
    getattr(tf.keras, "version", None)  # resolves the lazy loader now, under the caller's environment
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as tfmot
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot


def copy_student(student) -> tf_keras.Model:
    """An independent copy (TF-MOT's clone_function wraps the *same* layer objects, sharing weights)."""
    copy = tf_keras.models.clone_model(student)
    copy.set_weights(student.get_weights())
    return copy


def _kernel(layer):
    """The pruned weight variable of a Dense/Embedding layer, also inside TF-MOT wrappers; else None.

    Read from the wrapper's variables: a QAT wrapper replaces the inner layer's `kernel` attribute
    with its fake-quantised tensor.
    """
    inner = getattr(layer, "layer", layer)
    if not isinstance(inner, (tf_keras.layers.Dense, tf_keras.layers.Embedding)):
        return None
    name = "/kernel:0" if isinstance(inner, tf_keras.layers.Dense) else "/embeddings:0"
    return next(w for w in layer.weights if w.name.endswith(name))


def zero_fractions(model) -> dict:
    """Share of exactly-zero weights in every Dense kernel / Embedding table, and over all of them."""
    layers, zeros, total = {}, 0, 0
    for layer in model.layers:
        kernel = _kernel(layer)
        if kernel is None:
            continue
        values = np.asarray(kernel)
        layers[layer.name] = float(np.mean(values == 0))
        zeros, total = zeros + int(np.sum(values == 0)), total + values.size
    return {"layers": layers, "overall": zeros / max(total, 1), "zero_weights": zeros, "weights": total}


def check_pruning_schedule(target_sparsity: float, steps: int, begin_step: int, end_step: int,
                           frequency: int) -> None:
    """Raise ValueError unless `steps` training steps reach `target_sparsity` with this schedule.

    The pruning wrapper counts training forward passes 1..steps and updates the masks at counts
    begin + j * frequency up to end_step; the target is set only by an update at end_step itself.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    if begin_step < 0 or frequency < 1:
        raise ValueError(f"pruning needs begin_step >= 0 and frequency >= 1, got {begin_step} and {frequency}")
    if not begin_step < end_step <= steps or (end_step - begin_step) % frequency:
        raise ValueError(f"target sparsity {target_sparsity:.0%} is unreachable: the schedule reaches it at step "
                         f"{end_step}, which must be after begin_step ({begin_step}), at most the {steps} training "
                         f"steps, and begin_step plus a multiple of frequency ({frequency})")


def default_end_step(steps: int, begin_step: int, frequency: int) -> int:
    """The last reachable mask update at or before 3/4 of training: the rest fine-tunes at full sparsity."""
    return begin_step + frequency * (int(0.75 * (steps - begin_step)) // frequency)


def prune(student, batches: Iterable[dict], target_sparsity: float, steps: int, begin_step: int = 0,
          end_step: int | None = None, frequency: int = 10, alpha: float = 0.5, temperature: float = 2.0,
          learning_rate: float = 5e-4) -> tuple[tf_keras.Model, list[dict]]:
    """(pruned and stripped copy of `student`, distillation loss history); `student` is untouched.

    Magnitude pruning (`prune_low_magnitude`, `PolynomialDecay` from 0 to `target_sparsity` between
    begin_step and end_step) of every Dense kernel and Embedding table, fine-tuned with the
    distillation loss; the stripped model's kernels hold `target_sparsity` zeros (see zero_fractions).
    """
    end_step = default_end_step(steps, begin_step, frequency) if end_step is None else end_step
    check_pruning_schedule(target_sparsity, steps, begin_step, end_step, frequency)
    tfmot = import_tfmot()
    sparsity = tfmot.sparsity.keras
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target_sparsity,
                                        begin_step=begin_step, end_step=end_step, frequency=frequency)

    def wrap(layer):
        if isinstance(layer, (tf_keras.layers.Dense, tf_keras.layers.Embedding)):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = tf_keras.models.clone_model(copy_student(student), clone_function=wrap)
    history = distill(pruned, batches, alpha, temperature, steps, learning_rate,
                      callbacks=[sparsity.UpdatePruningStep()])
    if len(history) < end_step:  # a streamed iterator that ran out
        raise ValueError(f"the soft batches ran out after {len(history)} steps, before the schedule's end step "
                         f"{end_step}: the target sparsity was not reached")
    return sparsity.strip_pruning(pruned), history


def quantization_aware(student, batches: Iterable[dict], steps: int, preserve_sparsity: bool = True,
                       alpha: float = 0.5, temperature: float = 2.0,
                       learning_rate: float = 1e-4) -> tuple[tf_keras.Model, list[dict]]:
    """(QAT copy of `student`, distillation loss history): fake-quantised int8 Dense layers, fine-tuned.

    Only Dense layers are annotated (TF-MOT's default 8-bit registry has no Embedding entry); the
    other ops get their int8 ranges from the representative data set at conversion. With
    `preserve_sparsity`, a pruned student keeps its zeros through QAT: the Dense kernels through
    TF-MOT's prune-preserving quantizers, the embedding table by staying frozen.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tfmot = import_tfmot()
    quantization = tfmot.quantization.keras

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.Embedding) and preserve_sparsity:
            layer.trainable = False  # not QAT-wrapped, so nothing would keep its pruned zeros (measured: 50% -> 1%)
        return quantization.quantize_annotate_layer(layer) if isinstance(layer, tf_keras.layers.Dense) else layer

    annotated = tf_keras.models.clone_model(copy_student(student), clone_function=annotate)
    scheme = (_prune_preserve_scheme(tfmot) if preserve_sparsity
              else quantization.default_8bit.Default8BitQuantizeScheme())
    with quantization.quantize_scope():
        quantized = quantization.quantize_apply(annotated, scheme)
    history = distill(quantized, batches, alpha, temperature, steps, learning_rate)
    return quantized, history


def _prune_preserve_scheme(tfmot):
    """TF-MOT's pruning-preserving 8-bit scheme, with one fix for weightless custom layers.

    In TF-MOT 0.8.1 its registry claims every layer without trainable weights (our MaskedAttention,
    which feeds an annotated Dense), then asks the default registry for its config, which raises.
    Deferring `supports` to the default registry leaves such layers unwrapped, as the plain scheme does.
    """
    default = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()

    class PrunePreserveScheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_quantize_registry(self):
            registry = super().get_quantize_registry()
            registry.supports = default.supports
            return registry

    return PrunePreserveScheme()


def calibration_samples(requests: Iterable, num_examples: int) -> list[dict]:
    """`num_examples` served inputs (one prompt and its task's label tree, `tree_student_inputs`) from
    `(prompt_ids, LabelTrie)` pairs, for `to_full_integer_tflite`.

    All are padded to one shape (the longest prompt, the largest tree): TFLite's calibrator sizes
    the model once, on the first sample. Padding is masked out, as in a served request.
    """
    from models.student.model import INPUT_NAMES, tree_student_inputs

    requests = [(list(prompt), trie) for prompt, trie in itertools.islice(requests, num_examples)]
    if not requests:
        raise ValueError("the calibration data set is empty")
    prompt_length = max(len(prompt) for prompt, _ in requests)
    num_nodes = max(trie.num_nodes for _, trie in requests)
    samples = []
    for prompt, trie in requests:
        inputs = tree_student_inputs([prompt], trie, prompt_length, num_nodes)
        samples.append({name: inputs[name] for name in INPUT_NAMES})
    return samples


def check_calibration_samples(samples: Iterable, vocabulary_size: int, max_length: int | None = None) -> list[dict]:
    """The samples as dicts of int32 arrays; ValueError (before converting) when one cannot feed the model:
    token_ids and positions (1, L), attention_mask (1, L, L), integer, L within the student's max_length."""
    from models.student.model import INPUT_NAMES

    checked = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or set(sample) != set(INPUT_NAMES):
            got = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise ValueError(f"calibration sample {i} is {got}; the student's inputs are {sorted(INPUT_NAMES)}")
        arrays = {name: np.asarray(value) for name, value in sample.items()}
        length = arrays["token_ids"].shape[-1]
        expected = {"token_ids": (1, length), "positions": (1, length), "attention_mask": (1, length, length)}
        for name, array in arrays.items():
            if array.shape != expected[name] or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"calibration sample {i}'s {name} is {array.dtype} {array.shape}; the model's "
                                 f"input is int32 of shape {expected[name]} (batch 1, one length L for all three)")
        if arrays["token_ids"].min() < 0 or arrays["token_ids"].max() >= vocabulary_size:
            raise ValueError(f"calibration sample {i} has token ids outside 0..{vocabulary_size - 1}")
        if max_length is not None and (length > max_length or arrays["positions"].max() >= max_length):
            raise ValueError(f"calibration sample {i} ({length} tokens) goes beyond the student's max_length "
                             f"{max_length}")
        if checked and length != checked[0]["token_ids"].shape[-1]:
            raise ValueError(f"calibration sample {i} has {length} tokens, sample 0 has "
                             f"{checked[0]['token_ids'].shape[-1]}: TFLite's calibrator needs one shape for all")
        checked.append({name: array.astype(np.int32) for name, array in arrays.items()})
    if not checked:
        raise ValueError("the representative data set is empty")
    return checked


def to_full_integer_tflite(model, representative_dataset: Iterable | Callable, output_type=tf.int8) -> bytes:
    """A full-integer TFLite flatbuffer: (token_ids, positions [1, L], attention_mask [1, L, L]) int32 ->
    answer-vocabulary logits [1, L, A] of `output_type`, L free (each request its own length).

    Every op is an int8 TFLite builtin (`TFLITE_BUILTINS_INT8` only: the converter fails rather
    than fall back to float or Flex). Weights, and the activation ranges QAT did not learn, are
    calibrated on `representative_dataset` (dicts of the three inputs, or a callable returning
    them), which is checked against the model's inputs first.
    """
    from models.student.model import INPUT_NAMES

    vocabulary_size, _, max_length = student_limits(model)
    samples = check_calibration_samples(
        representative_dataset() if callable(representative_dataset) else representative_dataset,
        vocabulary_size, max_length)
    shapes = {"token_ids": [1, None], "positions": [1, None], "attention_mask": [1, None, None]}
    forward = tf.function(lambda *inputs: model(list(inputs), training=False), input_signature=[
        tf.TensorSpec(shapes[name], tf.int32, name=name) for name in INPUT_NAMES])
    # tf-keras variables are tracked by the model itself, so the concrete function keeps the weights.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)  # dicts: matched to the inputs by name
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_output_type = output_type
    return converter.convert()


def tflite_student_fn(path, num_threads: int = 1):
    """An (inputs dict) -> float answer-vocabulary logits function over a (quantised) student TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    names = list(runner.get_input_details())
    (output, detail), = runner.get_output_details().items()
    scale, zero_point = detail["quantization"]

    def logits(inputs: dict) -> np.ndarray:
        out = runner(**{name: np.asarray(inputs[name], np.int32) for name in names})[output].astype(np.float32)
        return (out - zero_point) * scale if scale else out

    return logits


def gzipped_size(path) -> int:
    """Bytes of the gzipped file: pruning zeros do not shrink a .tflite (weights are stored dense), they
    make it compress, which is what an app download or OTA update ships (TF-MOT's guides measure it so)."""
    return len(gzip.compress(Path(path).read_bytes()))


def prunable_shapes(model) -> set[tuple[int, ...]]:
    """Shapes of the Dense kernels and Embedding tables of a student (what pruning zeroes)."""
    return {tuple(_kernel(layer).shape) for layer in model.layers if _kernel(layer) is not None}


def tflite_weight_zero_fraction(path, shapes: set[tuple[int, ...]] | None = None) -> dict:
    """Zeros among the int8 weights of FULLY_CONNECTED and GATHER ops in a TFLite file (did sparsity survive?).

    `shapes` (`prunable_shapes` of the Keras model) keeps only the pruned weights: the constant
    position-code table is a GATHER table too. TFLite stores Dense kernels transposed.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    zeros = total = 0
    seen = set()
    for op in interpreter._get_ops_details():  # the public API lists tensors, not which op reads them
        if op["op_name"] not in ("FULLY_CONNECTED", "GATHER") or len(op["inputs"]) < 2:
            continue
        index = op["inputs"][1] if op["op_name"] == "FULLY_CONNECTED" else op["inputs"][0]
        if index in seen:
            continue
        seen.add(index)
        try:
            values = interpreter.get_tensor(index)
        except ValueError:  # not a constant
            continue
        if shapes is not None and values.shape not in shapes and values.shape[::-1] not in shapes:
            continue
        if values.dtype == np.int8:
            # A per-tensor quantised table (GATHER) stores 0.0 as its zero point; per-channel weights use 0.
            zero_points = details[index]["quantization_parameters"]["zero_points"]
            zero = int(zero_points[0]) if len(zero_points) == 1 else 0
            zeros, total = zeros + int(np.sum(values == zero)), total + values.size
    return {"zero_weights": zeros, "weights": total, "overall": zeros / max(total, 1)}
