"""The distilled, pruned, quantisation-aware student on tiny models (issue 7's foundations).

One module fixture runs the whole chain once (distil -> prune -> QAT -> full-int8 TFLite) on a
2-layer, 64-wide student with a 300-token BPE and real ChatML prompts through Transform's loader;
the tests check its pieces. The teacher is a fixed "bigram" logits table: cheap, and learnable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components.common.compression_gate import compression_gate
from models.export.convert import non_builtin_operators
from models.llm.tfrecords import load_dataset, write_tfrecord
from models.scoring.constrained import LabelTrie
from models.student import compression
from models.student.distillation import answer_soft_targets, distill, distillation_loss
from models.student.model import (
    INPUT_NAMES,
    StudentConfig,
    StudentScorer,
    answer_vocabulary,
    build_student,
    causal_inputs,
    tree_student_inputs,
)

SEQUENCE_LENGTH = 192  # the loader's max length; real prompts here are ~110-175 tokens
SPARSITY = 0.5
REPLIES = 6  # free-text answer rows mixed in: not the student's task, left out of its soft targets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 300-token tokenizer, Transform-loader batches of real intent prompts + answers, a teacher."""
    from components.base_model import tokenizer_corpus
    from data.simulated import generate_examples
    from models.llm.prompts import encode_prompt, format_answer, label_answer
    from models.llm.tokenizer import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(tokenizer_corpus(200, 0), 300)
    examples = generate_examples(80, 1)
    examples = examples[examples["task"] == "intent"]
    trie = LabelTrie(sorted(set(examples["target"])), tokenizer)
    output_tokens = answer_vocabulary([trie])
    sequences, starts, prompts = [], [], []
    reply = tokenizer.encode(format_answer("Please freeze my card and send a new one to my home address."))
    assert set(reply) - set(output_tokens)  # a reply has tokens no label has
    for i, (text, label) in enumerate(zip(examples["text"], examples["target"])):
        prompt, _ = encode_prompt(tokenizer, "intent", text, SEQUENCE_LENGTH - 32)
        answer = reply if i < REPLIES else tokenizer.encode(format_answer(label_answer(label)))
        if len(prompt) + len(answer) <= SEQUENCE_LENGTH:
            sequences.append(prompt + answer)
            starts.append(len(prompt))
            prompts.append(prompt)
    path = tmp_path_factory.mktemp("student") / "train.tfrecord"
    write_tfrecord(path, sequences, starts)
    loader = load_dataset(path, 8, SEQUENCE_LENGTH, tokenizer.pad_id)
    table = tf.constant(np.random.default_rng(0).normal(0, 3, (300, 300)).astype(np.float32))

    def teacher(x, answer):  # -> (answer positions, vocab): the next token depends on the current one
        return tf.boolean_mask(tf.gather(table, x["token_ids"]), answer)

    batches = list(answer_soft_targets(teacher, loader, output_tokens))
    config = StudentConfig(vocabulary_size=tokenizer.vocabulary_size, output_tokens=output_tokens, num_layers=2,
                           hidden_dim=64, num_heads=4, mlp_dim=128, max_length=SEQUENCE_LENGTH + trie.num_nodes)
    prompt_length = max(len(p) for p in prompts)
    return {"tokenizer": tokenizer, "loader": loader, "batches": batches, "config": config, "trie": trie,
            "table": table, "prompts": prompts[REPLIES:REPLIES + 6], "all_prompts": prompts[REPLIES:],
            "sequences": sequences, "prompt_length": prompt_length}


def calibration(data, count):
    return compression.calibration_samples(((p, data["trie"]) for p in data["all_prompts"]), count)


@pytest.fixture(scope="module")
def chain(data, tmp_path_factory):
    """distil -> prune to SPARSITY -> pruning-preserving QAT -> full-int8 TFLite, once."""
    student = build_student(data["config"])
    history = distill(student, data["batches"], alpha=0.5, temperature=2.0, steps=60, learning_rate=3e-3)
    pruned, _ = compression.prune(student, data["batches"], SPARSITY, steps=20, begin_step=0, end_step=15,
                                  frequency=5)
    quantized, _ = compression.quantization_aware(pruned, data["batches"], steps=10)
    path = tmp_path_factory.mktemp("tflite") / "student_int8.tflite"
    path.write_bytes(compression.to_full_integer_tflite(quantized, calibration(data, 16)))
    return {"student": student, "history": history, "pruned": pruned, "quantized": quantized, "tflite": path}


def poisoned_batches():
    """Soft batches that fail the test if training ever asks for one."""
    raise AssertionError("training started before the inputs were checked")
    yield


def logits(student, inputs):
    return student([inputs[name] for name in INPUT_NAMES]).numpy()


def test_student_shapes_parameter_count_and_causality(data):
    config = data["config"]
    student = build_student(config)
    assert student.count_params() == config.parameter_count()
    ids = np.array([data["sequences"][0][:40]], np.int32)
    plain = logits(student, causal_inputs(ids, np.ones_like(ids)))
    assert plain.shape == (1, 40, len(config.output_tokens))
    changed = ids.copy()
    changed[0, 30:] = 5  # a causal model's logits before position 30 cannot depend on tokens 30+
    after = logits(student, causal_inputs(changed, np.ones_like(ids)))
    np.testing.assert_allclose(after[0, :30], plain[0, :30], atol=1e-5)
    assert not np.allclose(after[0, 30:], plain[0, 30:], atol=1e-3)


def test_tree_scoring_equals_scoring_each_label_on_its_own(data):
    """One tree pass (left-padded, batched) gives every label the score of its own causal forward pass."""
    student = build_student(data["config"], seed=3)
    trie, column = data["trie"], {t: c for c, t in enumerate(data["config"].output_tokens)}
    prompts = [data["prompts"][0], data["prompts"][1][:-7]]  # different lengths: the shorter is left-padded
    scores = StudentScorer(student, data["config"].output_tokens).edge_log_probs(prompts, trie) @ \
        trie.label_edge_matrix.T
    for row, prompt in enumerate(prompts):
        for label, sequence in enumerate(trie.sequences):
            ids = np.array([list(prompt) + list(sequence)], np.int32)
            out = logits(student, causal_inputs(ids, np.ones_like(ids)))[0, len(prompt) - 1:-1].astype(np.float64)
            log_p = out - np.log(np.exp(out).sum(-1, keepdims=True))
            expected = sum(log_p[i, column[t]] for i, t in enumerate(sequence))
            assert scores[row, label] == pytest.approx(expected, abs=1e-4)
    padded = tree_student_inputs(prompts, trie)  # a shorter prompt is left-padded: positions start at its first token
    longest = max(map(len, prompts))
    assert padded["token_ids"].shape == (2, longest + trie.num_nodes) and len(prompts[0]) != len(prompts[1])
    for row, prompt in enumerate(prompts):
        assert padded["positions"][row, longest - len(prompt)] == 0
        assert padded["positions"][row, longest - 1] == len(prompt) - 1


def test_teacher_embeddings_start_the_student(data):
    teacher = np.random.default_rng(1).normal(size=(data["tokenizer"].vocabulary_size, 96)).astype(np.float32)
    student = build_student(data["config"], teacher_embeddings=teacher)
    table = student.get_layer("token_embedding").get_weights()[0]
    assert table.shape == (300, 64) and table.std() == pytest.approx(0.02, rel=1e-3)
    head = student.get_layer("lm_head").get_weights()[0]  # (hidden, answer vocabulary): the same rows, tied
    np.testing.assert_array_equal(head.T, table[list(data["config"].output_tokens)])
    # the projection keeps the teacher's geometry: similar teacher rows stay similar
    teacher[7] = teacher[8] + 0.01
    table = build_student(data["config"], teacher_embeddings=teacher).get_layer("token_embedding").get_weights()[0]
    assert np.linalg.norm(table[7] - table[8]) < 0.05 * np.linalg.norm(table[7] - table[9])


def test_student_saves_and_loads_with_identical_logits(data, tmp_path):
    import tf_keras

    student = build_student(data["config"])
    student.save(tmp_path / "student.keras")
    loaded = tf_keras.models.load_model(tmp_path / "student.keras")
    ids = np.array([data["sequences"][1][:50]], np.int32)
    inputs = causal_inputs(ids, np.ones_like(ids))
    np.testing.assert_array_equal(logits(loaded, inputs), logits(student, inputs))
    assert loaded.get_layer("block0_attention").get_config()["num_heads"] == data["config"].num_heads


def test_student_config_that_does_not_fit_the_tokenizer_is_refused(data):
    vocabulary, answers = data["tokenizer"].vocabulary_size, data["config"].output_tokens
    with pytest.raises(ValueError, match="smaller than the tokenizer's 300 tokens"):
        StudentConfig(vocabulary_size=256, output_tokens=answers, hidden_dim=64, num_heads=4).check_fits(vocabulary)
    with pytest.raises(ValueError, match="do not fit the student's max_length 64"):
        StudentConfig(vocabulary_size=vocabulary, output_tokens=answers, max_length=64).check_fits(
            vocabulary, SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="outside the tokenizer's 0..299"):
        StudentConfig(vocabulary_size=vocabulary, output_tokens=(3, 310)).check_fits(vocabulary)
    with pytest.raises(ValueError, match="heads"):
        StudentConfig(vocabulary_size=vocabulary, output_tokens=answers, hidden_dim=60, num_heads=8)
    # Before any training step: a student whose vocabulary misses the teacher's token ids.
    small = build_student(StudentConfig(vocabulary_size=200, output_tokens=answers[:2], num_layers=1, hidden_dim=32,
                                        num_heads=2, mlp_dim=32, max_length=SEQUENCE_LENGTH))
    before = [w.copy() for w in small.get_weights()]
    with pytest.raises(ValueError, match="outside the student's vocabulary of 200"):
        distill(small, data["batches"], steps=5)
    assert all(np.array_equal(a, b) for a, b in zip(before, small.get_weights()))


def test_soft_targets_cover_label_answers_only_over_the_answer_vocabulary(data):
    answers = len(data["config"].output_tokens)
    assert sum(b["skipped_rows"] for b in data["batches"]) == REPLIES
    assert sum(len(b["token_ids"]) for b in data["batches"]) == len(data["sequences"]) - REPLIES
    batch = data["batches"][0]
    answer = batch["weights"] > 0
    assert batch["teacher_logits"].shape == (int(answer.sum()), answers)
    assert answer.sum() < answer.size and np.all(batch["targets"][~answer] == -1)  # prompts carry no targets
    tokens = np.asarray(data["config"].output_tokens)[batch["targets"][answer]]
    row, position = np.argwhere(answer)[0]  # the teacher's logits, gathered at the answer vocabulary
    expected = data["table"].numpy()[batch["token_ids"][row, position]][list(data["config"].output_tokens)]
    np.testing.assert_allclose(batch["teacher_logits"][0], expected)
    assert set(tokens) <= set(data["config"].output_tokens)
    assert np.all((batch["answer_mass"] > 0) & (batch["answer_mass"] <= 1 + 1e-6))


def test_distillation_loss_formula():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 5)).astype(np.int32)
    weights = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
    answer = student[weights > 0]
    total, kd, ce = distillation_loss(student, targets, weights, answer, alpha=0.3, temperature=2.0)
    assert abs(float(kd)) < 1e-5  # a student equal to its teacher has nothing to learn
    log_p = answer - np.log(np.exp(answer).sum(-1, keepdims=True))
    expected_ce = -log_p[np.arange(len(answer)), targets[weights > 0]].mean()
    assert float(ce) == pytest.approx(expected_ce, rel=1e-5)
    assert float(total) == pytest.approx(0.3 * float(kd) + 0.7 * expected_ce, rel=1e-5)
    teacher = rng.normal(size=answer.shape).astype(np.float32)
    t, s = (np.exp(x / 2.0) / np.exp(x / 2.0).sum(-1, keepdims=True) for x in (teacher, answer))
    _, kd, _ = distillation_loss(student, targets, weights, teacher, alpha=0.3, temperature=2.0)
    assert float(kd) == pytest.approx(4.0 * np.mean(np.sum(t * np.log(t / s), axis=-1)), rel=1e-4)


def test_distillation_loss_decreases(chain):
    losses = [step["loss"] for step in chain["history"]]
    kd = [step["kd"] for step in chain["history"]]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert np.mean(kd[-5:]) < np.mean(kd[:5])


def test_pruned_student_has_the_configured_zero_fraction(chain):
    report = compression.zero_fractions(chain["pruned"])
    assert len(report["layers"]) == 2 * 6 + 2  # per block q/k/v/o/mlp in/out, + embedding and head
    for layer, fraction in report["layers"].items():
        assert fraction == pytest.approx(SPARSITY, abs=0.01), layer
    assert compression.zero_fractions(chain["student"])["overall"] < 0.01  # the float student is untouched


def test_sparsity_survives_qat_and_conversion(chain):
    assert compression.zero_fractions(chain["quantized"])["overall"] == pytest.approx(SPARSITY, abs=0.01)
    in_file = compression.tflite_weight_zero_fraction(chain["tflite"], compression.prunable_shapes(chain["pruned"]))
    assert in_file["overall"] >= SPARSITY - 0.01
    assert in_file["weights"] == compression.zero_fractions(chain["pruned"])["weights"]  # every pruned weight found


def test_unreachable_sparsity_is_refused_before_training(data):
    student = build_student(data["config"])
    with pytest.raises(ValueError, match="unreachable"):  # the schedule ends after training does
        compression.prune(student, poisoned_batches(), 0.5, steps=20, end_step=30, frequency=5)
    with pytest.raises(ValueError, match="unreachable"):  # no mask update lands on end_step
        compression.prune(student, poisoned_batches(), 0.5, steps=20, end_step=12, frequency=5)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        compression.prune(student, poisoned_batches(), 1.0, steps=20)
    with pytest.raises(ValueError, match="unreachable"):  # too few steps for one mask update
        compression.prune(student, poisoned_batches(), 0.5, steps=4, frequency=5)


def test_representative_dataset_feeds_the_converter(data, chain, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    samples = calibration(data, 12)
    calls = []

    def representative_dataset():
        for sample in samples:
            calls.append(1)
            yield sample

    path = tmp_path / "float_student_int8.tflite"
    path.write_bytes(compression.to_full_integer_tflite(chain["student"], representative_dataset))
    assert len(calls) == 12
    interpreter = Interpreter(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    assert {d["dtype"] for d in interpreter.get_input_details()} == {np.int32}
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    calibrated = [t for t in tensors if t["dtype"] == np.int8 and t["quantization"][0] > 0]
    assert len(calibrated) > len(tensors) / 2  # activations got int8 ranges, not just weights
    # The pruned file is no smaller on disk, but it compresses: half its weights are zeros.
    assert compression.gzipped_size(chain["tflite"]) < 0.85 * compression.gzipped_size(path)


def test_qat_student_converts_to_builtin_int8_only_and_tracks_float(data, chain):
    from ai_edge_litert.interpreter import Interpreter

    assert non_builtin_operators(chain["tflite"]) == []
    interpreter = Interpreter(model_path=str(chain["tflite"]))  # no Flex delegate is linked here
    interpreter.allocate_tensors()
    trie, tokens = data["trie"], data["config"].output_tokens
    tflite = StudentScorer(compression.tflite_student_fn(chain["tflite"]), tokens, data["config"].max_length)
    int8 = [p.label for p in tflite.classify(data["all_prompts"], trie)]
    qat = [p.label for p in StudentScorer(chain["quantized"], tokens).classify(data["all_prompts"], trie)]
    pruned = [p.label for p in StudentScorer(chain["pruned"], tokens).classify(data["all_prompts"], trie)]
    versus_qat, versus_float = np.mean(np.equal(int8, qat)), np.mean(np.equal(int8, pruned))
    print(f"int8 TFLite label agreement: with QAT Keras {versus_qat:.2f}, with float pruned {versus_float:.2f}")
    assert versus_qat >= 0.85 and versus_float >= 0.75


def test_wrong_calibration_data_is_refused_before_converting(data, chain, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("the converter ran")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions", no_conversion)
    good = calibration(data, 1)[0]
    length = good["token_ids"].shape[1]
    too_long = data["config"].max_length + 1
    longest = {"token_ids": np.zeros((1, too_long), np.int32), "positions": np.zeros((1, too_long), np.int32),
               "attention_mask": np.ones((1, too_long, too_long), np.int32)}
    for change, message in [({"positions": np.zeros((1, length + 3), np.int32)}, rf"int32 \(1, {length + 3}\)"),
                            ({"positions": np.zeros((length,), np.int32)}, rf"positions is int32 \({length},\)"),
                            ({"attention_mask": good["attention_mask"].astype(np.float32)}, "float32"),
                            ({"token_ids": np.full((1, length), 300, np.int32)}, "outside 0..299"),
                            (longest, "beyond the student's max_length")]:
        with pytest.raises(ValueError, match=message):
            compression.to_full_integer_tflite(chain["student"], [good, {**good, **change}])
    with pytest.raises(ValueError, match="the student's inputs are"):
        compression.to_full_integer_tflite(chain["student"], [good["token_ids"]])
    with pytest.raises(ValueError, match="empty"):
        compression.to_full_integer_tflite(chain["student"], [])


def test_gate_excludes_a_variant_below_budget():
    variants = [{"name": "tflite_dynamic_int8", "kind": "ptq", "macro_f1": 0.785},
                {"name": "tflite_float16", "kind": "ptq", "macro_f1": 0.81},
                {"name": "student_int8", "kind": "student", "macro_f1": 0.74},
                {"name": "student_pruned_int8", "kind": "student", "macro_f1": 0.76},
                {"name": "student_broken", "kind": "student", "macro_f1": float("nan")}]
    verdicts = {v["name"]: v for v in compression_gate(variants, 0.80, {"ptq": 2.0, "student": 5.0})}
    assert verdicts["tflite_dynamic_int8"]["eligible"] and verdicts["tflite_dynamic_int8"]["drop_points"] == 1.5
    assert verdicts["tflite_float16"]["eligible"]  # better than the baseline
    assert not verdicts["student_int8"]["eligible"]
    assert "6.0 points, over the student budget of 5" in verdicts["student_int8"]["reason"]
    assert verdicts["student_pruned_int8"]["eligible"]  # exactly 4 points: within
    assert not verdicts["student_broken"]["eligible"]
    with pytest.raises(ValueError, match="no macro-F1 budget for variant kinds"):
        compression_gate([{"name": "x", "kind": "qat", "macro_f1": 0.8}], 0.8, {"ptq": 2.0})


def test_importing_tfmot_leaves_keras_3_in_place():
    """In a fresh process (in this one `tf.keras` may already be resolved, so the check could not fail)."""
    code = ("import os, tensorflow as tf\n"
            "from models.student.compression import import_tfmot\n"
            "tfmot = import_tfmot()\n"
            "from tensorflow_model_optimization.python.core.keras.compat import keras as tfmot_keras\n"
            "import keras\n"
            "assert keras.layers.Dense(2)(tf.ones((1, 3))).shape == (1, 2)  # Keras 3 still works beside it\n"
            "print(tf.keras.version(), tfmot_keras.__name__, os.environ.get('TF_USE_LEGACY_KERAS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    version, tfmot_keras, variable = result.stdout.split()[-3:]
    assert version.startswith("3.") and tfmot_keras == "tf_keras" and variable == "None"
