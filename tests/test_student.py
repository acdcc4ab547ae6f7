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

from components.optimizer.gate import compression_gate
from components.transform.tensors import load_dataset, write_tfrecord
from models import student_compression as compression
from models.distillation import distill, distillation_loss, top_k_soft_targets
from models.export import compare_logits, non_builtin_operators
from models.student import StudentConfig, build_student, student_logits_fn

SEQUENCE_LENGTH = 192  # the TFLite input length; real prompts here are ~110-175 tokens
SPARSITY = 0.5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 300-token tokenizer, Transform-loader batches of real intent prompts + answers, a teacher."""
    from components.base_model import tokenizer_corpus
    from components.example_gen.simulated import generate_examples
    from models.prompts import encode_prompt, format_answer
    from models.tokenizer import train_byte_level_bpe

    tokenizer = train_byte_level_bpe(tokenizer_corpus(200, 0), 300)
    examples = generate_examples(80, 1)
    examples = examples[examples["task"] == "intent"]
    sequences, starts = [], []
    for text, label in zip(examples["text"], examples["target"]):
        prompt, _ = encode_prompt(tokenizer, "intent", text, SEQUENCE_LENGTH - 32)
        answer = tokenizer.encode(format_answer(label))
        if len(prompt) + len(answer) <= SEQUENCE_LENGTH:
            sequences.append(prompt + answer)
            starts.append(len(prompt))
    path = tmp_path_factory.mktemp("student") / "train.tfrecord"
    write_tfrecord(path, sequences, starts)
    loader = load_dataset(path, 8, SEQUENCE_LENGTH, tokenizer.pad_id)
    table = tf.constant(np.random.default_rng(0).normal(0, 3, (300, 300)).astype(np.float32))

    def teacher(x):  # (batch, seq) -> (batch, seq, vocab): the next token depends on the current one
        return tf.gather(table, x["token_ids"])

    batches = list(top_k_soft_targets(teacher, loader, k=32))
    config = StudentConfig(vocabulary_size=tokenizer.vocabulary_size, num_layers=2, hidden_dim=64, num_heads=4,
                           mlp_dim=128, max_length=SEQUENCE_LENGTH)
    return {"tokenizer": tokenizer, "loader": loader, "batches": batches, "config": config,
            "prompts": [s[:starts[i]] for i, s in enumerate(sequences[:6])], "sequences": sequences}


@pytest.fixture(scope="module")
def chain(data, tmp_path_factory):
    """distil -> prune to SPARSITY -> pruning-preserving QAT -> full-int8 TFLite, once."""
    student = build_student(data["config"])
    history = distill(student, data["batches"], alpha=0.5, temperature=2.0, steps=30, learning_rate=3e-3)
    pruned, _ = compression.prune(student, data["batches"], SPARSITY, steps=20, begin_step=0, end_step=15,
                                  frequency=5)
    quantized, _ = compression.quantization_aware(pruned, data["batches"], steps=10)
    calibration = compression.calibration_samples(data["loader"], SEQUENCE_LENGTH, data["tokenizer"].pad_id, 16)
    path = tmp_path_factory.mktemp("tflite") / "student_int8.tflite"
    path.write_bytes(compression.to_full_integer_tflite(quantized, calibration, SEQUENCE_LENGTH))
    return {"student": student, "history": history, "pruned": pruned, "quantized": quantized, "tflite": path}


def poisoned_batches():
    """Soft batches that fail the test if training ever asks for one."""
    raise AssertionError("training started before the inputs were checked")
    yield


def test_student_shapes_parameter_count_and_causality(data):
    config = data["config"]
    student = build_student(config)
    assert student.count_params() == config.parameter_count()
    ids = np.array([data["sequences"][0][:40]], np.int32)
    logits = student(ids).numpy()
    assert logits.shape == (1, 40, config.vocabulary_size)
    changed = ids.copy()
    changed[0, 30:] = 5  # a causal model's logits before position 30 cannot depend on tokens 30+
    np.testing.assert_allclose(student(changed).numpy()[0, :30], logits[0, :30], atol=1e-5)
    assert not np.allclose(student(changed).numpy()[0, 30:], logits[0, 30:], atol=1e-3)


def test_student_saves_and_loads_with_identical_logits(data, tmp_path):
    import tf_keras

    student = build_student(data["config"])
    student.save(tmp_path / "student.keras")
    loaded = tf_keras.models.load_model(tmp_path / "student.keras")
    ids = np.array([data["sequences"][1][:50]], np.int32)
    np.testing.assert_array_equal(loaded(ids).numpy(), student(ids).numpy())
    assert loaded.get_layer("block0_attention").get_config()["num_heads"] == data["config"].num_heads


def test_student_config_that_does_not_fit_the_tokenizer_is_refused(data):
    vocabulary = data["tokenizer"].vocabulary_size
    with pytest.raises(ValueError, match="smaller than the tokenizer's 300 tokens"):
        StudentConfig(vocabulary_size=256, hidden_dim=64, num_heads=4).check_fits(vocabulary)
    with pytest.raises(ValueError, match="do not fit the student's max_length 64"):
        StudentConfig(vocabulary_size=vocabulary, max_length=64).check_fits(vocabulary, SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="heads"):
        StudentConfig(vocabulary_size=vocabulary, hidden_dim=60, num_heads=8)
    # Before any training step: a student whose vocabulary misses the teacher's token ids.
    small = build_student(StudentConfig(vocabulary_size=200, num_layers=1, hidden_dim=32, num_heads=2,
                                        mlp_dim=32, max_length=SEQUENCE_LENGTH))
    before = [w.copy() for w in small.get_weights()]
    with pytest.raises(ValueError, match="outside the student's vocabulary of 200"):
        distill(small, data["batches"], steps=5)
    assert all(np.array_equal(a, b) for a, b in zip(before, small.get_weights()))


def test_top_k_soft_targets_cover_answer_positions_only(data):
    batch = data["batches"][0]
    answer_positions = int((batch["weights"] > 0).sum())
    assert batch["teacher_logits"].shape == batch["teacher_indices"].shape == (answer_positions, 32)
    assert answer_positions < batch["weights"].size  # prompts carry no targets
    assert np.all(np.diff(batch["teacher_logits"], axis=-1) <= 0)  # best first
    assert np.all((batch["top_k_mass"] > 0) & (batch["top_k_mass"] <= 1 + 1e-6))


def test_distillation_loss_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 5)).astype(np.int32)
    weights = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
    answer = logits[weights > 0]
    indices = np.argsort(-answer, axis=-1).astype(np.int32)  # k = the whole vocabulary
    teacher = np.take_along_axis(answer, indices, axis=-1)
    total, kd, ce = distillation_loss(logits, targets, weights, teacher, indices, alpha=0.3, temperature=2.0)
    assert abs(float(kd)) < 1e-5  # a student equal to its teacher has nothing to learn
    log_p = answer - np.log(np.exp(answer).sum(-1, keepdims=True))
    expected_ce = -log_p[np.arange(len(answer)), targets[weights > 0]].mean()
    assert float(ce) == pytest.approx(expected_ce, rel=1e-5)
    assert float(total) == pytest.approx(0.3 * float(kd) + 0.7 * expected_ce, rel=1e-5)


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
    assert compression.tflite_weight_zero_fraction(chain["tflite"])["overall"] >= SPARSITY - 0.01


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

    samples = compression.calibration_samples(data["loader"], SEQUENCE_LENGTH, data["tokenizer"].pad_id, 12)
    calls = []

    def representative_dataset():
        for sample in samples:
            calls.append(1)
            yield [sample]

    path = tmp_path / "float_student_int8.tflite"
    path.write_bytes(compression.to_full_integer_tflite(chain["student"], representative_dataset, SEQUENCE_LENGTH))
    assert len(calls) == 12
    interpreter = Interpreter(model_path=str(path))
    tensors = interpreter.get_tensor_details()
    assert interpreter.get_input_details()[0]["dtype"] == np.int32
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
    tflite = compression.tflite_logits_fn(chain["tflite"])
    pad_id = data["tokenizer"].pad_id
    versus_qat = compare_logits(student_logits_fn(chain["quantized"]), tflite, data["prompts"], SEQUENCE_LENGTH,
                                pad_id)
    versus_float = compare_logits(student_logits_fn(chain["pruned"]), tflite, data["prompts"], SEQUENCE_LENGTH,
                                  pad_id)
    print(f"int8 TFLite vs QAT Keras {versus_qat}, vs float pruned {versus_float}")  # shown with -s
    assert versus_qat["top1_agreement"] >= 0.85, versus_qat
    assert versus_float["top1_agreement"] >= 0.75, versus_float


def test_wrong_calibration_data_is_refused_before_converting(chain, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("the converter ran")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions", no_conversion)
    good = np.zeros((1, SEQUENCE_LENGTH), np.int32)
    for bad, message in [(np.zeros((1, SEQUENCE_LENGTH + 3), np.int32), r"int32 \(1, 195\)"),
                         (np.zeros((SEQUENCE_LENGTH,), np.int32), r"int32 \(192,\)"),
                         (np.zeros((1, SEQUENCE_LENGTH), np.float32), "float32"),
                         (np.full((1, SEQUENCE_LENGTH), 300, np.int32), "outside 0..299")]:
        with pytest.raises(ValueError, match=message):
            compression.to_full_integer_tflite(chain["student"], [[good], [bad]], SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="empty"):
        compression.to_full_integer_tflite(chain["student"], [], SEQUENCE_LENGTH)


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
            "from models.student_compression import import_tfmot\n"
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
