"""Representative data for the teacher's full-integer (int8 activations) TFLite variant.

Post-training int8 quantisation needs the range of every activation, which the converter records
by running the float model on representative inputs. The samples here are real Transform rows, read
through the Transform's own tf.data loader (`models.llm.tfrecords.load_dataset`), one set per
exported signature, shaped as the Optimizer and `models.export.exported.ExportedModel` call them:

- `serve`: a train sequence (prompt + answer), right-padded to the fixed length with its padding mask;
- `score_labels`: the row's prompt with its task's label tree (`tree_inputs`), for rows whose answer
  is a label (free-text replies are never scored as labels, so they would only skew the ranges);
- `prefill`: the row's prompt, right-padded with 0 as `ExportedModel.generate_ids` pads it;
- `decode`: a real cache (the float SavedModel's `prefill` of the prompt and the first k answer
  tokens, written into per-layer caches as `ExportedModel.generate_ids` writes them), the next answer
  token and its position, k varying from row to row.

The converter takes a multi-signature representative data set as `(signature key, {input name:
array})` tuples (TF 2.21 `lite/python/optimize/calibrator.py`, `_feed_tensors`). Every sample is
checked against the signatures' input specs before converting: a wrong shape or dtype would
otherwise surface, if at all, as an opaque error after minutes of conversion.

Known limit, measured on the fine-tuned SmolLM2-135M (52 test rows; Keras accuracy 0.865): the
full_int8 file scores 0.10 (dynamic_int8: 0.865). SmolLM2 has "massive activations": from layer 11
the residual stream holds values up to ~24,700 (median ~3-8), and the MLP input of layers 11 and 28
up to ~3,000, so a per-tensor int8 scale rounds every ordinary value to zero. Keeping only the
FULLY_CONNECTED ops int8 (everything else float) still scores 0.15. Keeping the residual stream
float (ops ADD, MEAN, RSQRT, MUL, SELECT_V2, SOFTMAX) and the 61 projections that write into it
(FC outputs calibrated beyond +-100) recovers 0.827 (macro-F1 -4 points), at 336 MB and ~5x the
dynamic_int8 latency. So the variant stays opt-in (the 2-point compression gate would reject both).
Beware when reading calibrated ranges: in layers 12-27 the recorded output range of the attention
and MLP output projections equals the residual sum's (+-24,700) although Keras shows each whole
layer adding at most a few hundred, as if the logger read the buffer the residual ADD had overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from models.export.endpoints import DECODE_ENDPOINT, ENDPOINT, PREFILL_ENDPOINT, SCORE_ENDPOINT
from models.export.kv_cache import NEW_KEYS, NEW_VALUES, CacheLayout, HostCache
from models.scoring.constrained import right_padded, tree_inputs
from schemas.artifacts import DatasetsFiles

# Samples per signature (so 4x this many calibration passes for the four signatures). Measured on
# SmolLM2-135M, 2 shared cores: conversion takes ~175 s plus ~22 s per unit of this count (one float
# interpreter pass per signature with every tensor's range recorded), and ~2 s per unit to build the
# samples; 64 would take ~30 min. The converter records min/max ranges, so each LLM sample (50-270
# tokens, i.e. that many activation vectors per tensor) covers far more than one image does in the TF
# guide's "100-500 samples"; more samples only widen ranges towards rare outliers.
DEFAULT_CALIBRATION_EXAMPLES = 16
SEED = 0


def loader_rows(dataset: Iterable, num_rows: int, enough=None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of Transform-loader rows, read batch by batch until `num_rows` rows
    are read and `enough(rows)` (if given) holds, or the data set ends.

    A loader row is x = ids[:-1] with padding, and its sample weight is 1 where the target ids[i + 1]
    is an answer token, so the prompt is ids[:first weighted position + 1].
    """
    rows = []
    for x, y, weight in dataset:
        mask, targets, weight = np.asarray(x["padding_mask"]), np.asarray(y), np.asarray(weight)
        for inputs, real, target, w in zip(np.asarray(x["token_ids"]), mask.sum(axis=1), targets, weight):
            ids = [*inputs[:real].tolist(), int(target[real - 1])]
            answer_start = int(np.argmax(w[:real] > 0)) + 1 if w[:real].any() else len(ids)
            rows.append((ids[:answer_start], ids[answer_start:]))
        if len(rows) >= num_rows and (enough is None or enough(rows)):
            break
    if not rows:
        raise ValueError("the calibration data set is empty")
    return rows


def input_specs(saved_model, signatures: tuple[str, ...]) -> dict[str, dict[str, tuple[tuple, np.dtype]]]:
    """{signature: {input name: (shape, numpy dtype)}} of a loaded SavedModel's signatures."""
    specs = {}
    for key in signatures:
        if key not in saved_model.signatures:
            raise ValueError(f"the SavedModel has no '{key}' signature (it has {sorted(saved_model.signatures)})")
        inputs = saved_model.signatures[key].structured_input_signature[1]
        specs[key] = {name: (tuple(spec.shape), np.dtype(spec.dtype.as_numpy_dtype)) for name, spec in inputs.items()}
    return specs


def representative_samples(saved_model, rows: list[tuple[list[int], list[int]]], tries: dict, pad_id: int,
                           num_examples: int, signatures: tuple[str, ...],
                           num_nodes: int | None = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Up to `num_examples` (signature, inputs) samples per signature from `rows` (see the module doc).

    `tries` ({task: LabelTrie}) give each label answer its task's tree; `num_nodes` is the export's
    tree node count (default: the largest tree, as the Optimizer sizes it). `saved_model` (the loaded
    float SavedModel) computes the decode samples' caches.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    specs = input_specs(saved_model, signatures)
    task_of = {sequence: task for task, trie in tries.items() for sequence in trie.sequences}
    samples = []
    if ENDPOINT in signatures:
        length = specs[ENDPOINT]["token_ids"][0][1]
        for prompt, answer in rows[:num_examples]:
            token_ids, padding_mask = right_padded(prompt + answer, length, pad_id)
            samples.append((ENDPOINT, {"token_ids": token_ids, "padding_mask": padding_mask}))
    if SCORE_ENDPOINT in signatures:
        shapes = specs[SCORE_ENDPOINT]
        nodes = num_nodes or max(trie.num_nodes for trie in tries.values())
        prompt_length, edges = shapes["positions"][0][0] - nodes, shapes["edge_tokens"][0][0]
        if prompt_length < 1:
            raise ValueError(f"a {nodes}-node label tree does not fit the score_labels signature "
                             f"({shapes['positions'][0][0]} positions)")
        labelled = [(prompt, task_of[tuple(answer)]) for prompt, answer in rows if tuple(answer) in task_of]
        if not labelled:
            raise ValueError("no calibration row's answer is a label of labels.json: nothing to calibrate "
                             "score_labels with")
        for prompt, task in labelled[:num_examples]:
            samples.append((SCORE_ENDPOINT, tree_inputs([prompt[-prompt_length:]], tries[task], prompt_length,
                                                        nodes, edges)))
    if PREFILL_ENDPOINT in signatures or DECODE_ENDPOINT in signatures:
        samples += _cache_samples(saved_model, rows[:num_examples], signatures)
    return samples


def _cache_samples(saved_model, rows, signatures) -> list:
    prefill = saved_model.signatures[PREFILL_ENDPOINT]  # also for decode alone: it makes the caches
    prompt_length = prefill.structured_input_signature[1]["token_ids"].shape[1]
    if DECODE_ENDPOINT in signatures:
        decode_specs = saved_model.signatures[DECODE_ENDPOINT].structured_input_signature[1]
        layout = CacheLayout.from_input_shapes({name: tuple(spec.shape) for name, spec in decode_specs.items()})
    samples = []
    for i, (prompt, answer) in enumerate(rows):
        prompt = prompt[-prompt_length:]
        if PREFILL_ENDPOINT in signatures:
            token_ids, _ = right_padded(prompt, prompt_length, 0)
            samples.append((PREFILL_ENDPOINT, {"token_ids": token_ids,
                                               "last_index": np.array([len(prompt) - 1], np.int32)}))
        if DECODE_ENDPOINT in signatures and answer:
            # Decode answer token k after a cache holding the prompt and answer[:k] (as k decode steps
            # would have left it); k cycles over the answer so positions along a reply are covered.
            k = min(i % len(answer), prompt_length - len(prompt))
            context = prompt + answer[:k]
            token_ids, _ = right_padded(context, prompt_length, 0)
            out = prefill(token_ids=token_ids, last_index=np.array([len(context) - 1], np.int32))
            cache = HostCache(layout)
            cache.write(np.asarray(out[NEW_KEYS]), np.asarray(out[NEW_VALUES]), 0, len(context))
            samples.append((DECODE_ENDPOINT, {"token_id": np.array([[answer[k]]], np.int32),
                                              "index": np.array([len(context)], np.int32),
                                              **{name: array.copy() for name, array in cache.inputs.items()}}))
    return samples


def check_representative_samples(samples: Iterable, specs: dict) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The samples with arrays in the signatures' dtypes; ValueError (before converting) when a sample
    cannot feed its signature (wrong shape, dtype, input names, or unknown signature), when a float
    input is not finite, or when a signature gets no sample (its activations would have no range)."""
    checked, counts = [], dict.fromkeys(specs, 0)
    for i, sample in enumerate(samples):
        if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[1], dict)):
            raise ValueError(f"calibration sample {i} is not a (signature key, {{input name: array}}) tuple")
        key, inputs = sample
        if key not in specs:
            raise ValueError(f"calibration sample {i} is for signature {key!r}; converting {sorted(specs)}")
        if set(inputs) != set(specs[key]):
            raise ValueError(f"calibration sample {i} for {key!r} has inputs {sorted(inputs)}; the signature "
                             f"takes {sorted(specs[key])}")
        arrays = {}
        for name, (shape, dtype) in specs[key].items():
            array = np.asarray(inputs[name])
            same_kind = (np.issubdtype(array.dtype, np.integer) if np.issubdtype(dtype, np.integer)
                         else np.issubdtype(array.dtype, np.floating))
            if array.shape != shape or not same_kind:
                raise ValueError(f"calibration data of the wrong shape: sample {i} for {key!r} has {name} "
                                 f"{array.dtype} {array.shape}; the signature takes {dtype} {shape}")
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise ValueError(f"calibration sample {i} for {key!r} has non-finite values in {name}")
            arrays[name] = array.astype(dtype, copy=False)
        checked.append((key, arrays))
        counts[key] += 1
    missing = [key for key, count in counts.items() if not count]
    if missing:
        raise ValueError(f"the representative data set has no sample for {missing}: every converted signature "
                         "needs some to calibrate its activation ranges")
    return checked


def calibration_set(saved_model, datasets_dir: Path, tokenizer_dir: Path, signatures: tuple[str, ...],
                    num_examples: int = DEFAULT_CALIBRATION_EXAMPLES, seed: int = SEED) -> list:
    """`representative_samples` from a Transform `Datasets` folder's train split (shuffled with `seed`)
    and the model's tokenizer (for the label trees and the pad id): what the conversion child builds.
    `saved_model`: the float SavedModel's folder, or the SavedModel already loaded."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the ops of the string signatures, so the folder loads)

    from models.llm.tfrecords import load_dataset
    from models.llm.tokenizer import ChatTokenizer
    from models.scoring.constrained import LabelTrie

    datasets = DatasetsFiles(datasets_dir)
    tokenizer = ChatTokenizer.load(Path(tokenizer_dir))
    labels = datasets.labels()
    transform = datasets.transform()
    tries = {task: LabelTrie(names, tokenizer) for task, names in labels.items()}
    label_answers = {sequence for trie in tries.values() for sequence in trie.sequences}
    dataset = load_dataset(datasets.tfrecord("train"), batch_size=8, max_length=transform["max_length"],
                           pad_id=tokenizer.pad_id, shuffle=True, seed=seed)
    need_labels = SCORE_ENDPOINT in signatures
    rows = loader_rows(dataset, num_examples, enough=lambda rows: not need_labels or sum(
        tuple(answer) in label_answers for _, answer in rows) >= num_examples)
    if isinstance(saved_model, (str, Path)):
        saved_model = tf.saved_model.load(str(saved_model))
    return representative_samples(saved_model, rows, tries, tokenizer.pad_id, num_examples, signatures)
