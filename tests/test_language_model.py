"""The tiny causal LM: save/load, LoRA merge, constrained decoding and TFLite export all agree."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from models.export.convert import (
    ALL_ENDPOINTS,
    compare_logits,
    convert_to_tflite,
    export_saved_model,
    keras_logits_fn,
    non_builtin_operators,
    tflite_operators,
)
from models.export.endpoints import optional_endpoints, prompt_buckets
from models.export.exported import ExportedModel
from models.llm.chat import generate_ids
from models.llm.language_model import (
    TINY_ARCHITECTURE,
    ModelLoadError,
    build_causal_lm,
    enable_lora,
    load_model,
    merge_lora,
    save_model,
)
from models.llm.prompts import format_prompt
from models.llm.tokenizer import ChatTokenizer, train_byte_level_bpe
from models.scoring.constrained import LabelTrie, classify, classify_with_logits_fn

LABELS = ["card_arrival", "card_lost", "charged_twice", "exchange_rate", "top_up_failed", "refund"]
TEXTS = ["where is my new card", "I lost my card yesterday", "I was charged twice for coffee",
         "what rate do you use for EUR", "my top up failed again", "refund not showing in my account"]


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    corpus = [format_prompt("intent", t) + label for t, label in zip(TEXTS * 20, LABELS * 20)]
    return train_byte_level_bpe(corpus, 400)


@pytest.fixture(scope="module")
def lora_model(tokenizer):
    """A tiny model with LoRA adapters whose B matrices are non-zero (as after training)."""
    model = build_causal_lm(TINY_ARCHITECTURE, tokenizer.vocabulary_size, seed=1)
    enable_lora(model, rank=4, alpha=8.0)
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(0, 0.05, variable.shape).astype("float32"))
    return model


def logits_of(model, ids):
    ids = np.array([ids], dtype="int32")
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def prompts(tokenizer):
    return [tokenizer.encode(format_prompt("intent", text)) for text in TEXTS]


def test_tokenizer_round_trips_text_and_keeps_special_tokens(tokenizer, tmp_path):
    text = format_prompt("intent", "My card 4111 was charged £12.50 twice!")
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert ids.count(tokenizer.im_start_id) == 3 and ids.count(tokenizer.im_end_id) == 2
    tokenizer.save(tmp_path)
    assert ChatTokenizer.load(tmp_path).encode(text) == ids


def test_lora_merge_gives_the_same_logits(tokenizer, lora_model):
    merged = merge_lora(lora_model)
    assert not any("lora" in v.path for v in merged.weights)
    ids = prompts(tokenizer)[0]
    base = build_causal_lm(TINY_ARCHITECTURE, tokenizer.vocabulary_size, seed=1)
    assert np.abs(logits_of(lora_model, ids) - logits_of(base, ids)).max() > 1e-3, "adapters had no effect"
    np.testing.assert_allclose(logits_of(merged, ids), logits_of(lora_model, ids), atol=1e-5)


def test_save_then_load_gives_identical_logits(tokenizer, lora_model, tmp_path):
    save_model(lora_model, tokenizer, tmp_path / "model")
    loaded, loaded_tokenizer, config = load_model(tmp_path / "model")
    assert config["architecture"]["tie_word_embeddings"] is True
    ids = prompts(tokenizer)[1]
    np.testing.assert_array_equal(logits_of(loaded, ids), logits_of(merge_lora(lora_model), ids))
    assert loaded_tokenizer.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])


def test_loading_a_model_with_the_wrong_tokenizer_fails_clearly(tokenizer, lora_model, tmp_path):
    save_model(lora_model, tokenizer, tmp_path / "model")
    bigger = train_byte_level_bpe(TEXTS * 50 + ["".join(chr(c) for c in range(0x4e00, 0x4f00))], 1500)
    bigger.save(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="tokenizer has"):
        load_model(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="not a saved fintune model"):
        load_model(tmp_path / "nowhere")


def exhaustive_label_log_probs(model, prompt, trie):
    """Reference: one full, uncached forward pass per label, summing its tokens' log-softmax."""
    scores = []
    for sequence in trie.sequences:
        logits = logits_of(model, list(prompt) + list(sequence))[0].astype(np.float64)
        steps = logits[len(prompt) - 1:len(prompt) - 1 + len(sequence)]
        log_softmax = steps - steps.max(-1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
        scores.append(log_softmax[np.arange(len(sequence)), sequence].sum())
    return np.array(scores)


def test_constrained_scores_return_labels_and_match_an_exhaustive_scorer(tokenizer, lora_model):
    model = merge_lora(lora_model)
    trie = LabelTrie(LABELS + ["card", "card_lost_abroad"], tokenizer)  # shared prefixes, a label inside another
    batch = prompts(tokenizer)[:5] + [prompts(tokenizer)[5][:7]]  # different lengths: left padding in a batch
    predictions = classify(model, batch, trie, batch_size=4)
    for prompt, prediction in zip(batch, predictions):
        reference = exhaustive_label_log_probs(model, prompt, trie)
        expected = np.exp(reference - reference.max())
        expected /= expected.sum()
        got = dict(prediction.ranking)
        assert prediction.label in trie.labels and prediction.label == trie.labels[int(np.argmax(reference))]
        np.testing.assert_allclose([got[label] for label in trie.labels], expected, rtol=1e-4, atol=1e-7)
        assert prediction.label_mass == pytest.approx(np.exp(reference).sum(), rel=1e-4)
        assert [label for label, _ in prediction.ranking][:1] == [prediction.label]


def test_label_trie_rejects_an_empty_or_ambiguous_label_set(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        LabelTrie([], tokenizer)
    with pytest.raises(ValueError, match="same answer"):
        LabelTrie(["refund", "refund"], tokenizer)
    with pytest.raises(ValueError, match="'card_arrival' and 'card arrival' are the same answer"):
        LabelTrie(["card_arrival", "card arrival"], tokenizer)


def test_label_answers_read_underscores_as_spaces_and_free_text_stays_as_written(tokenizer):
    from models.llm.prompts import answer_text, format_answer, label_answer

    assert label_answer("card_payment_not_recognised") == "card payment not recognised"
    assert answer_text("intent", "card_arrival") == "card arrival"
    assert answer_text("ticket_reply", "Use the app_settings page.") == "Use the app_settings page."
    trie = LabelTrie(["card_arrival", "card_not_working"], tokenizer)
    assert trie.labels == ["card_arrival", "card_not_working"]  # labels keep their names; only the answer changes
    assert trie.sequences[0] == tuple(tokenizer.encode(format_answer("card arrival")))


def test_tflite_float32_equals_keras_and_int8_is_smaller(tokenizer, lora_model, tmp_path):
    model = merge_lora(lora_model)
    trie = LabelTrie(LABELS, tokenizer)
    batch = prompts(tokenizer)
    tree_shape = (max(map(len, batch)) + 3, trie.num_nodes + 2, len(trie.edge_tokens) + 5)  # with padding
    cache_shape = (max(map(len, batch)) + 2, max(map(len, batch)) + 10)
    export_saved_model(model, tmp_path / "saved_model", sequence_length=96, tree_shape=tree_shape,
                       cache_shape=cache_shape)
    files = {}
    for variant in ("float32", "dynamic_int8"):
        files[variant] = tmp_path / f"{variant}.tflite"
        files[variant].write_bytes(convert_to_tflite(tmp_path / "saved_model", variant, ALL_ENDPOINTS))
    float_check = compare_logits(keras_logits_fn(model), ExportedModel(files["float32"]), batch[:3],
                                 96, tokenizer.pad_id)
    assert float_check["max_abs_diff"] < 1e-3 and float_check["top1_agreement"] == 1.0
    assert files["dynamic_int8"].stat().st_size < 0.8 * files["float32"].stat().st_size
    for path in files.values():  # builtin operators only, and it runs with no Flex delegate
        assert "FULLY_CONNECTED" in tflite_operators(path) and non_builtin_operators(path) == []
        interpreter = Interpreter(model_path=str(path), experimental_delegates=[])
        interpreter.allocate_tensors()
        assert set(interpreter.get_signature_list()) == set(ALL_ENDPOINTS)
    # Label scores through the TFLite file's one-pass signature equal Keras's, padding and all.
    keras_predictions = classify(model, batch, trie)
    tflite_predictions = ExportedModel(files["float32"]).classify(batch, trie, tree_shape[1])
    for keras_p, tflite_p in zip(keras_predictions, tflite_predictions):
        assert tflite_p.label == keras_p.label
        np.testing.assert_allclose([x for _, x in tflite_p.ranking], [x for _, x in keras_p.ranking], atol=1e-4)
    # Greedy generation with the KV-cache signatures gives Keras's tokens, up to the cache's end. The cache
    # lives in the interpreter across generations (an earlier, longer one's rows stay past the prompt), and
    # calls of the other signatures in between leave it alone.
    generator = ExportedModel(files["float32"])
    for prompt in batch:
        expected = generate_ids(model, prompt, 8)
        assert generator.generate_ids(prompt, 8) == expected
        room = cache_shape[1] - len(prompt) + 1  # positions left in the cache, plus the token read from the last
        assert generator.generate_ids(prompt, 50) == generate_ids(model, prompt, room)
        generator.classify(batch[:1], trie, tree_shape[1])
    assert generator.generate_ids(batch[0][:3], 8) == generate_ids(model, batch[0][:3], 8)
    # The decode step hands back the new token's keys and values only, never the cache.
    decode = Interpreter(model_path=str(files["dynamic_int8"])).get_signature_runner("decode")
    layers, kv_heads = TINY_ARCHITECTURE["num_layers"], TINY_ARCHITECTURE["num_key_value_heads"]
    head_dim = TINY_ARCHITECTURE["hidden_dim"] // TINY_ARCHITECTURE["num_query_heads"]
    outputs = {name: list(d["shape"]) for name, d in decode.get_output_details().items()}
    assert outputs == {"logits": [1, tokenizer.vocabulary_size], "new_keys": [layers, kv_heads, 1, head_dim],
                       "new_values": [layers, kv_heads, 1, head_dim]}
    assert sorted(decode.get_input_details()) == ["index", "key_cache_0", "key_cache_1", "token_id", "value_cache_0",
                                                  "value_cache_1"]
    int8_generator = ExportedModel(files["dynamic_int8"])
    assert [int8_generator.generate_ids(p, 6) for p in batch[:2]] == [int8_generator.generate_ids(p, 6)
                                                                      for p in batch[:2]]
    with pytest.raises(ValueError, match="this export takes 1 to"):
        generator.generate_ids(batch[0] * 3, 4)
    # The SavedModel answers through the same signatures.
    saved_model = ExportedModel(tmp_path / "saved_model")
    assert [p.label for p in saved_model.classify(batch, trie, tree_shape[1])] == [p.label for p in keras_predictions]
    assert saved_model.generate_ids(batch[0], 8) == generate_ids(model, batch[0], 8)
    # The slow reference path (one pass of the full-sequence signature per label) agrees too.
    reference = classify_with_logits_fn(ExportedModel(files["float32"]), batch, trie, 96, tokenizer.pad_id)
    assert [p.label for p in reference] == [p.label for p in keras_predictions]


def test_operator_listing_flags_flex_ops(tmp_path):
    """A model that needs a TensorFlow op TFLite lacks converts only with Flex: the listing must say so."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def needs_flex(x):
        return tf.strings.to_number(tf.strings.as_string(x))  # string formatting: no TFLite builtin

    converter = tf.lite.TFLiteConverter.from_concrete_functions([needs_flex.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path = tmp_path / "flex.tflite"
    path.write_bytes(converter.convert())
    assert any(op.startswith("custom:Flex") for op in non_builtin_operators(path))


def test_int4_blockwise_variant_has_int4_weights_builtin_ops_and_still_generates(tokenizer, lora_model, tmp_path):
    """ai-edge-quantizer's blockwise int4 of the float32 file: builtin operators, int4 weight tensors, and the
    KV-cache signatures still run (its quality is measured, not assumed: README, "On-device speed")."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = merge_lora(lora_model)
    batch = prompts(tokenizer)
    export_saved_model(model, tmp_path / "saved_model", sequence_length=96, cache_shape=(64, 80))
    path = tmp_path / "int4.tflite"
    path.write_bytes(convert_to_tflite(tmp_path / "saved_model", "int4_blockwise", ("serve", "prefill", "decode")))
    assert non_builtin_operators(path) == [] and "FULLY_CONNECTED" in tflite_operators(path)
    flatbuffer = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = flatbuffer.Subgraphs(0)
    types = {graph.Tensors(i).Type() for i in range(graph.TensorsLength())}
    assert schema.TensorType.INT4 in types
    exported = ExportedModel(path)
    tokens = exported.generate_ids(batch[0], 5)
    assert len(tokens) == 5 and all(0 <= t < tokenizer.vocabulary_size for t in tokens)
    check = compare_logits(keras_logits_fn(model), exported, batch[:2], 96, tokenizer.pad_id)
    assert np.isfinite(check["max_abs_diff"]) and check["top1_agreement"] > 0.5


def test_batched_decode_gives_each_prompt_its_own_greedy_tokens(tokenizer, lora_model, tmp_path):
    """`decode_batch` advances several generations at once, each at its own position: the tokens equal one
    prompt at a time (and Keras's), with prompts of different lengths, fewer prompts than rows, more prompts
    than rows, per-prompt limits, stop tokens and a full cache. Prompts are prefilled by the shortest
    `prefill_N` bucket that holds them."""
    model = merge_lora(lora_model)
    batch = prompts(tokenizer)
    longest = max(map(len, batch))
    cache_shape = (longest + 2, longest + 10)
    buckets = prompt_buckets(cache_shape[0], 4)
    assert buckets and buckets[0] == 16 and buckets[-1] < cache_shape[0]
    trie = LabelTrie(LABELS, tokenizer)
    tree_shape = (cache_shape[0], trie.num_nodes, len(trie.edge_tokens))
    export_saved_model(model, tmp_path / "saved_model", sequence_length=96, tree_shape=tree_shape,
                       cache_shape=cache_shape, decode_batch=4, prompt_buckets=buckets)
    path = tmp_path / "float32.tflite"
    path.write_bytes(convert_to_tflite(tmp_path / "saved_model", "float32",
                                       ALL_ENDPOINTS + optional_endpoints(buckets, 4)))
    assert non_builtin_operators(path) == []
    runner = Interpreter(model_path=str(path)).get_signature_runner("decode_batch")
    layers, kv_heads = TINY_ARCHITECTURE["num_layers"], TINY_ARCHITECTURE["num_key_value_heads"]
    head_dim = TINY_ARCHITECTURE["hidden_dim"] // TINY_ARCHITECTURE["num_query_heads"]
    assert {n: list(d["shape"]) for n, d in runner.get_output_details().items()} == {
        "logits": [4, tokenizer.vocabulary_size], "new_keys": [layers, 4, kv_heads, 1, head_dim],
        "new_values": [layers, 4, kv_heads, 1, head_dim]}
    assert list(runner.get_input_details()["key_cache_0"]["shape"]) == [4, kv_heads, cache_shape[1], head_dim]
    # Prompts of different lengths (a cut one too); 6 prompts = a full group of 4 and a group of 2.
    varied = [batch[0], batch[1][:5], batch[2], batch[3][:9], batch[4], batch[5]]
    limits = [8, 3, 50, 8, 0, 8]  # 50 runs into the end of the cache
    assert {"prefill_16", "prefill"} <= {ExportedModel(path).prefill_for(len(p))[1] for p in varied}
    # Label scores through the score_labels buckets equal Keras's (short prompts take score_labels_16).
    keras_predictions = classify(model, varied, trie)
    for exported in (ExportedModel(path), ExportedModel(tmp_path / "saved_model")):
        for keras_p, exported_p in zip(keras_predictions, exported.classify(varied, trie, trie.num_nodes)):
            assert exported_p.label == keras_p.label
            np.testing.assert_allclose([x for _, x in exported_p.ranking], [x for _, x in keras_p.ranking], atol=1e-4)
    assert ExportedModel(path)._shortest("score_labels", 5, lambda s: s["positions"][0] - trie.num_nodes) == \
        "score_labels_16"
    for exported in (ExportedModel(path), ExportedModel(tmp_path / "saved_model")):
        assert exported.decode_rows == 4
        one_by_one = [exported.generate_ids(p, n) for p, n in zip(varied, limits)]
        assert exported.generate_batch(varied, limits) == one_by_one
        assert one_by_one[4] == []
        for prompt, tokens, limit in zip(varied, one_by_one, limits):
            assert not 0 < limit <= 8 or tokens == generate_ids(model, prompt, limit)
        assert len(one_by_one[2]) == cache_shape[1] - len(varied[2]) + 1
        stop = (one_by_one[0][2], one_by_one[3][1])  # rows stop at different steps
        assert exported.generate_batch(varied[:4], 8, stop) == [exported.generate_ids(p, 8, stop)
                                                                for p in varied[:4]]
        # 5 prompts = a group of 4 and a group of 1 (run by `decode`); a numpy limit is a limit for all.
        assert exported.generate_batch(varied[:5], np.int32(8)) == [exported.generate_ids(p, 8) for p in varied[:5]]
    with pytest.raises(ValueError, match="token limits"):
        exported.generate_batch(varied, [4, 4])
    with pytest.raises(ValueError, match="this export takes"):  # refused before any prompt is generated
        exported.generate_batch(varied + [batch[0] * 20], 4)
