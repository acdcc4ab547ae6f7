"""Full-integer (int8 activations) post-training quantisation of the teacher, calibrated on Transform rows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.export.calibration import calibration_set, check_representative_samples, input_specs, loader_rows
from models.export.convert import (
    ALL_ENDPOINTS,
    DECODE_ENDPOINT,
    ENDPOINT,
    FULL_INT8,
    SCORE_ENDPOINT,
    convert_in_child_process,
    convert_to_tflite,
    non_builtin_operators,
)
from models.export.exported import ExportedModel
from models.llm.prompts import answer_text, format_answer, format_prompt
from models.llm.tfrecords import load_dataset, write_tfrecord
from models.llm.tokenizer import train_byte_level_bpe
from schemas.artifacts import DatasetsFiles
from tests.helpers import export_for_labels, tiny_model_with_spread

LABELS = {"intent": ["card_arrival", "card_lost", "charged_twice", "exchange_rate", "top_up_failed", "refund"],
          "ticket_priority": ["low", "medium", "high", "urgent"]}
TEXTS = ["where is my new card", "I lost my card yesterday", "I was charged twice for coffee",
         "what rate do you use for EUR", "my top up failed again", "refund not showing in my account"]
REPLY = "Dear customer, thank you for your message. We have refunded the payment."
EXAMPLES = 4  # calibration samples per signature


def rows():
    """(task, text, answer) rows: two label tasks and a free-text reply task (never a label)."""
    out = []
    for i, text in enumerate(TEXTS * 2):
        out.append(("intent", text, LABELS["intent"][i % 6]))
        out.append(("ticket_priority", text, LABELS["ticket_priority"][i % 4]))
        out.append(("ticket_reply", text, REPLY))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tokenizer folder, a Transform datasets folder and the tiny model's fixed-shape SavedModel."""
    root = tmp_path_factory.mktemp("full-int8")
    corpus = [format_prompt(task, text) + format_answer(answer_text(task, answer))
              for task, text, answer in rows()] * 10
    tokenizer = train_byte_level_bpe(corpus, 400)
    tokenizer.save(root / "model")
    datasets = root / "datasets"
    datasets.mkdir()
    prompts = [tokenizer.encode(format_prompt(task, text)) for task, text, _ in rows()]
    answers = [tokenizer.encode(format_answer(answer_text(task, answer))) for task, _, answer in rows()]
    files = DatasetsFiles(datasets)
    write_tfrecord(files.tfrecord("train"), [p + a for p, a in zip(prompts, answers)], [len(p) for p in prompts])
    files.labels_file.write_text(json.dumps(LABELS))
    files.transform_file.write_text(json.dumps({"max_length": 128, "max_prompt_tokens": 96}))
    model = tiny_model_with_spread(tokenizer.vocabulary_size, seed=1, spread=0.08, rng_seed=0)
    longest = max(map(len, prompts))
    tries, tree_shape = export_for_labels(model, tokenizer, LABELS, root / "saved_model", longest,
                                          (longest, longest + 16))
    return {"root": root, "tokenizer": tokenizer, "datasets": datasets, "saved_model": root / "saved_model",
            "model": model, "tries": tries, "tree_shape": tree_shape, "prompts": prompts, "answers": answers}


def subgraph_tensor_types(path: Path) -> dict[str, Counter]:
    """{signature: Counter of (operator, input 0 type, output 0 type)}, read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    types = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    codes = [names[max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())]
             for i in range(model.OperatorCodesLength())]
    result = {}
    for s in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(s)
        graph = model.Subgraphs(signature.SubgraphIndex())
        ops = Counter()
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            ops[(codes[op.OpcodeIndex()], types[graph.Tensors(op.Inputs(0)).Type()],
                 types[graph.Tensors(op.Outputs(0)).Type()])] += 1
        result[signature.SignatureKey().decode()] = ops
    return result


def test_loader_rows_recover_prompt_and_answer(setup):
    dataset = load_dataset(DatasetsFiles(setup["datasets"]).tfrecord("train"), batch_size=4, max_length=128,
                           pad_id=setup["tokenizer"].pad_id)
    got = loader_rows(dataset, num_rows=10_000)
    expected = [(p, a) for p, a in zip(setup["prompts"], setup["answers"])]
    assert sorted(got) == sorted(expected)


@pytest.fixture(scope="module")
def samples(setup):
    return calibration_set(setup["saved_model"], setup["datasets"], setup["root"] / "model", ALL_ENDPOINTS,
                           num_examples=EXAMPLES)


def test_calibration_set_covers_every_signature_with_real_rows(setup, samples):
    counts = Counter(key for key, _ in samples)
    assert counts == {key: EXAMPLES for key in ALL_ENDPOINTS}
    tries, (prompt_length, _, _) = setup["tries"], setup["tree_shape"]
    label_trees = [tuple(trie.node_tokens) for trie in tries.values()]
    for key, inputs in samples:
        if key == SCORE_ENDPOINT:  # a label row's prompt with its own task's tree (no free-text reply rows)
            tree = inputs["token_ids"][0, prompt_length:]
            assert any(tuple(tree[:len(t)]) == t for t in label_trees)
            assert inputs["attention_mask"].sum() > 0
        if key == ENDPOINT:  # a real prompt + answer: its padding mask ends where the ids do
            assert inputs["padding_mask"].sum() > 10
        if key == DECODE_ENDPOINT:  # a real cache: prefill wrote every position before index, none after it
            index = int(inputs["index"][0])
            keys = np.stack([inputs[n] for n in sorted(inputs) if n.startswith("key_cache")])  # [L, kv, C, D]
            values = np.stack([inputs[n] for n in sorted(inputs) if n.startswith("value_cache")])  # [L, kv, D, C]
            assert np.abs(keys[:, :, :index]).max(axis=(0, 1, 3)).min() > 0
            assert np.abs(values[..., :index]).max(axis=(0, 1, 2)).min() > 0
            assert np.all(keys[:, :, index:] == 0) and np.all(values[..., index:] == 0)
            assert 0 < index <= prompt_length


@pytest.fixture(scope="module")
def full_int8_file(setup, samples):
    """The full_int8 file, converted in this process while counting what the calibrator was fed."""
    from tensorflow.lite.python.optimize import calibrator

    fed = Counter()
    original = calibrator.Calibrator._feed_tensors

    def counting(self, dataset_gen, resize_input):
        def gen():
            for sample in dataset_gen():
                fed[sample[0]] += 1
                yield sample
        return original(self, gen, resize_input)

    calibrator.Calibrator._feed_tensors = counting
    try:
        content = convert_to_tflite(setup["saved_model"], FULL_INT8, ALL_ENDPOINTS, samples)
    finally:
        calibrator.Calibrator._feed_tensors = original
    path = setup["root"] / "full_int8.tflite"
    path.write_bytes(content)
    return path, fed


def test_full_int8_is_calibrated_on_every_signature_and_has_int8_activations(setup, full_int8_file):
    path, fed = full_int8_file
    assert fed == {key: EXAMPLES for key in ALL_ENDPOINTS}, "the converter did not consume every sample"
    assert non_builtin_operators(path) == []
    dynamic = setup["root"] / "dynamic_int8.tflite"
    dynamic.write_bytes(convert_to_tflite(setup["saved_model"], "dynamic_int8", (ENDPOINT,)))
    dynamic_ops = next(iter(subgraph_tensor_types(dynamic).values()))
    for key, ops in {**subgraph_tensor_types(path), "dynamic": dynamic_ops}.items():
        matmuls = {(types[1], types[2]) for types in ops if types[0] == "FULLY_CONNECTED"}
        if key == "dynamic":  # the check can tell: dynamic range keeps float activations around int8 weights
            assert matmuls == {("FLOAT32", "FLOAT32")}
        else:  # every projection reads and writes int8 activations
            assert matmuls == {("INT8", "INT8")}, (key, ops)
            assert sum(n for types, n in ops.items() if types[0] == "QUANTIZE") > 0
    exported = ExportedModel(path)  # a float32 interface: int32 ids in, float logits and cache
    runner = exported._functions[DECODE_ENDPOINT]
    assert {d["dtype"] for name, d in runner.get_input_details().items() if "cache" in name} == {np.float32}
    assert runner.get_output_details()["logits"]["dtype"] == np.float32


def test_full_int8_file_classifies_and_generates(setup, full_int8_file):
    path, _ = full_int8_file
    exported = ExportedModel(path)
    num_nodes = setup["tree_shape"][1]
    float_model = ExportedModel(setup["saved_model"])
    agree = total = 0
    for task, trie in setup["tries"].items():
        prompts = [p for (t, _, _), p in zip(rows(), setup["prompts"]) if t == task][:6]
        predictions = exported.classify(prompts, trie, num_nodes)
        reference = float_model.classify(prompts, trie, num_nodes)
        for prediction, expected in zip(predictions, reference):
            assert prediction.label in trie.labels
            assert sum(p for _, p in prediction.ranking) == pytest.approx(1.0)
            assert np.isfinite(list(prediction.log_probabilities.values())).all()
            agree += prediction.label == expected.label
            total += 1
    assert agree / total >= 0.5, f"int8 labels agree with float on only {agree}/{total} prompts"
    tokens = exported.generate_ids(setup["prompts"][0], 5)
    assert len(tokens) >= 1 and all(0 <= t < setup["tokenizer"].vocabulary_size for t in tokens)


def test_wrong_calibration_data_is_refused_before_converting(setup, samples, monkeypatch):
    import tensorflow as tf

    def no_conversion(*args, **kwargs):
        raise AssertionError("conversion started")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions", no_conversion)
    saved_model = setup["saved_model"]
    short = [(key, {**inputs, "token_ids": inputs["token_ids"][:, :-1]}) if key == ENDPOINT else (key, inputs)
             for key, inputs in samples]
    with pytest.raises(ValueError, match="calibration data of the wrong shape.*serve.*token_ids"):
        convert_to_tflite(saved_model, FULL_INT8, ALL_ENDPOINTS, short)
    floats = [(key, {**inputs, "index": inputs["index"].astype(np.float32)}) if key == DECODE_ENDPOINT
              else (key, inputs) for key, inputs in samples]
    with pytest.raises(ValueError, match="wrong shape.*decode.*index float32"):
        convert_to_tflite(saved_model, FULL_INT8, ALL_ENDPOINTS, floats)
    with pytest.raises(ValueError, match=r"no sample for \['decode'\]"):
        convert_to_tflite(saved_model, FULL_INT8, ALL_ENDPOINTS, [s for s in samples if s[0] != DECODE_ENDPOINT])
    with pytest.raises(ValueError, match="has inputs"):
        convert_to_tflite(saved_model, FULL_INT8, ALL_ENDPOINTS,
                          [(key, {"ids": v}) for key, inputs in samples for v in inputs.values()][:1] + samples)
    with pytest.raises(ValueError, match="is for signature 'score_labels'; converting \\['serve'\\]"):
        convert_to_tflite(saved_model, FULL_INT8, (ENDPOINT,), samples)
    with pytest.raises(ValueError, match="needs a representative data set"):
        convert_to_tflite(saved_model, FULL_INT8, ALL_ENDPOINTS)
    with pytest.raises(ValueError, match="not a \\(signature key"):
        check_representative_samples([[np.zeros((1, 96), np.int32)]], {ENDPOINT: {}})
    specs = input_specs(tf.saved_model.load(str(saved_model)), ALL_ENDPOINTS)
    assert len(check_representative_samples(samples, specs)) == len(samples)


def test_the_conversion_child_builds_its_own_calibration_data(setup, tmp_path):
    with pytest.raises(RuntimeError, match="full_int8 needs --datasets and --tokenizer"):
        convert_in_child_process(setup["saved_model"], FULL_INT8, ALL_ENDPOINTS, tmp_path / "no.tflite")
    output = tmp_path / "full_int8.tflite"
    convert_in_child_process(setup["saved_model"], FULL_INT8, (ENDPOINT, SCORE_ENDPOINT), output,
                             calibration=(setup["datasets"], setup["root"] / "model"), calibration_examples=2)
    ops = subgraph_tensor_types(output)
    assert set(ops) == {ENDPOINT, SCORE_ENDPOINT} and non_builtin_operators(output) == []
    assert all({(t[1], t[2]) for t in o if t[0] == "FULLY_CONNECTED"} == {("INT8", "INT8")} for o in ops.values())
