"""The tiny causal LM: save/load, LoRA merge, constrained decoding and TFLite export all agree."""

from __future__ import annotations

import numpy as np
import pytest

from models.constrained import LabelTrie, classify_with_cache, classify_with_logits_fn
from models.export import TFLiteLogits, compare_logits, convert_to_tflite, export_saved_model, keras_logits_fn
from models.language_model import (
    TINY_ARCHITECTURE,
    ModelLoadError,
    build_causal_lm,
    enable_lora,
    load_model,
    merge_lora,
    save_model,
)
from models.prompts import format_prompt
from models.tokenizer import ChatTokenizer, train_byte_level_bpe

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


def exhaustive_greedy(model, tokenizer, prompt, labels):
    """Reference: walk the label tree with one full, uncached forward pass per step."""
    trie = LabelTrie(labels, tokenizer)
    prefix, logprob = (), 0.0
    while trie.allowed(prefix):
        allowed = trie.allowed(prefix)
        logits = logits_of(model, list(prompt) + list(prefix))[0, -1].astype(np.float64)
        scores = logits[allowed] - np.log(np.exp(logits[allowed] - logits[allowed].max()).sum()) - logits[allowed].max()
        best = int(np.argmax(scores))
        prefix, logprob = prefix + (allowed[best],), logprob + scores[best]
    return trie.label_of(prefix), float(np.exp(logprob))


def test_constrained_decoding_returns_labels_and_matches_the_uncached_reference(tokenizer, lora_model):
    model = merge_lora(lora_model)
    batch = prompts(tokenizer)
    predictions = classify_with_cache(model, batch, LabelTrie(LABELS, tokenizer), batch_size=4)
    assert all(p.label in LABELS and 0 < p.probability <= 1 for p in predictions)
    for prompt, prediction in zip(batch, predictions):
        label, probability = exhaustive_greedy(model, tokenizer, prompt, LABELS)
        assert prediction.label == label
        assert prediction.probability == pytest.approx(probability, rel=1e-4)


def test_label_trie_rejects_an_empty_or_ambiguous_label_set(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        LabelTrie([], tokenizer)
    with pytest.raises(ValueError, match="same sequence"):
        LabelTrie(["refund", "refund"], tokenizer)


def test_tflite_float32_equals_keras_and_int8_is_smaller(tokenizer, lora_model, tmp_path):
    model = merge_lora(lora_model)
    export_saved_model(model, tmp_path / "saved_model", sequence_length=96)
    files = {}
    for variant in ("float32", "dynamic_int8"):
        files[variant] = tmp_path / f"{variant}.tflite"
        files[variant].write_bytes(convert_to_tflite(tmp_path / "saved_model", variant))
    float_check = compare_logits(keras_logits_fn(model), TFLiteLogits(files["float32"]), prompts(tokenizer)[:3],
                                 96, tokenizer.pad_id)
    assert float_check["max_abs_diff"] < 1e-3 and float_check["top1_agreement"] == 1.0
    assert files["dynamic_int8"].stat().st_size < 0.8 * files["float32"].stat().st_size
    # Classification through the TFLite file gives the Keras model's labels.
    trie = LabelTrie(LABELS, tokenizer)
    keras_labels = [p.label for p in classify_with_cache(model, prompts(tokenizer), trie)]
    tflite_labels = [p.label for p in classify_with_logits_fn(TFLiteLogits(files["float32"]), prompts(tokenizer),
                                                             trie, 96, tokenizer.pad_id)]
    assert tflite_labels == keras_labels
