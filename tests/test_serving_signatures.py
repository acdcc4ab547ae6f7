"""String-in SavedModel signatures: in-graph token ids equal `ChatTokenizer`'s, and a fresh Python
process with only `tensorflow` and `tensorflow_text` gets Keras's labels, probabilities and replies."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models.export.convert import (
    ALL_ENDPOINTS,
    compare_logits,
    convert_to_tflite,
    keras_logits_fn,
    non_builtin_operators,
)
from models.export.exported import ExportedModel
from models.export.graph_tokenizer import GraphTokenizer
from models.export.string_signatures import ServingModule, ServingSignatures
from models.llm.chat import apply_chat_template, generate_ids
from models.llm.prompts import encode_prompt, format_prompt
from models.llm.tokenizer import train_byte_level_bpe
from models.scoring.constrained import LabelTrie, classify
from tests.helpers import export_for_labels, tiny_model_with_spread

# Labels of equal token length (but one), so a random model's choice depends on the text, not on length.
LABELS = {"intent": ["card", "lost", "twice", "refund", "rate", "card_lost"],
          "ticket_priority": ["low", "medium", "high", "urgent"]}
TEXTS = ["where is my new card", "I lost my card yesterday", "I was charged twice for coffee",
         "what rate do you use for EUR", "refund not showing in my account"]
MAX_PROMPT_TOKENS, MAX_CHAT_PROMPT_TOKENS, MAX_NEW_TOKENS = 160, 180, 12
# Digits, amounts, unicode, emoji, whitespace runs, contractions, ChatML markers inside the text.
CORPUS = ["", " ", "   ", "a", "  5", "£1,234.56", "USD 1234.50 on 2024-03-05", "paid 12345 to   Bob\n\n  ok",
          "it's  'sa ''s I'M we'll", "café £3.50 — naïve 🙂", "tab\tsep\n\nnew  line  ", "\n word", " \nword",
          "x\u00a0\u00a0y\u3000z \u2028", "१२३ ²½ ٣ a६b", "<|im_start|>user\nhi<|im_end|>\n", "<|im_end|><|im_end|>x",
          "<|im_start", "\x00\x01 \x1c\x1f", "trailing   ", "emoji 👍🏽👨‍👩‍👧 !!!", "\r\n\r\n", "$$$  $ 5 55",
          format_prompt("intent", "I was charged £12.50 twice on 03/04!")]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Random mixes of the pieces where pre-tokenisers disagree most."""
    rng = random.Random(seed)
    alphabet = list("ab Z1\n\t'sé£😀.,<|>_") + ["<|im_end|>", "  ", "\u00a0", "'ll", "5"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(count)]


def assert_same_ids(tokenizer, texts: list[str]) -> None:
    got = GraphTokenizer(tokenizer).encode(tf.constant(texts)).to_list()
    mismatched = [(text, ids, tokenizer.encode(text)) for text, ids in zip(texts, got) if ids != tokenizer.encode(text)]
    assert not mismatched, mismatched[:3]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [format_prompt("intent", t) + label for t in TEXTS * 10 for label in LABELS["intent"]]
    return train_byte_level_bpe(corpus, 400)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model_with_spread(tokenizer.vocabulary_size, seed=4, spread=0.3, matrices_only=True)


def test_in_graph_ids_equal_the_tokenizer(tokenizer):
    assert_same_ids(tokenizer, CORPUS + random_texts(300))


def test_in_graph_decode_equals_the_tokenizer(tokenizer):
    graph = GraphTokenizer(tokenizer)
    rng = random.Random(1)
    high = [i for i in range(tokenizer.vocabulary_size) if tokenizer.decode([i]) == "\ufffd"]  # broken UTF-8 alone
    sequences = [[rng.randrange(tokenizer.vocabulary_size) for _ in range(rng.randint(0, 12))] for _ in range(200)]
    sequences += [[], high[:1], high[:3], [tokenizer.im_start_id, *high[:2], tokenizer.im_end_id],
                  tokenizer.encode("naïve 🙂 <|im_end|> £5")]
    for ids in sequences:
        assert graph.decode(tf.constant(ids, tf.int32)).numpy().decode() == tokenizer.decode(ids), ids


@pytest.mark.slow
def test_in_graph_ids_equal_the_real_smollm2_tokenizer():
    """SmolLM2's tokenizer splits every digit first; built from the GGUF's metadata, as the pipeline does."""
    from models.llm import gguf_import
    from tests.test_smollm2_real import parity_texts

    try:
        metadata = gguf_import.read_gguf(gguf_import.find_smollm2_gguf(), load_tensors=False).metadata
    except gguf_import.ModelImportError as error:
        pytest.skip(f"SmolLM2 GGUF not available: {error}")
    real = gguf_import.build_tokenizer(metadata)
    assert GraphTokenizer(real).individual_digits
    assert_same_ids(real, CORPUS + random_texts(300, seed=2) + parity_texts())


def test_a_llama3_pre_tokenizer_is_refused_clearly(tokenizer):
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    other = type(tokenizer)(Tokenizer.from_str(tokenizer.tokenizer.to_str()))
    other.tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False)])
    with pytest.raises(NotImplementedError, match="GPT-2 and SmolLM2 byte-level pre-tokenisers"):
        GraphTokenizer(other)


def chat_prompt(tokenizer, text: str) -> tuple[list[int], bool]:
    """Reference for `generate`'s prompt: the chat template around the text, cut by `encode_prompt`'s rule."""
    mark = "\ue000"
    before, after = apply_chat_template(tokenizer, [{"role": "user", "content": mark}]).split(mark)
    ids = tokenizer.encode(before + text + after)
    if len(ids) <= MAX_CHAT_PROMPT_TOKENS:
        return ids, False
    head, tail = tokenizer.encode(before), tokenizer.encode(after)
    return head + tokenizer.encode(text)[:MAX_CHAT_PROMPT_TOKENS - len(head) - len(tail)] + tail, True


def test_over_long_text_is_cut_by_the_documented_rule(tokenizer, model):
    """Template whole, end of the text cut: the same ids as `encode_prompt` (and the chat twin for generate)."""
    module = ServingModule(model, ServingSignatures(tokenizer, LABELS, MAX_PROMPT_TOKENS, MAX_CHAT_PROMPT_TOKENS))
    texts = ["short one", "£1,234.56 charged twice\n\n" * 30, "x" * 3000, ""]
    for index, task in enumerate(module.tasks):
        ids, truncated = module.task_prompts(module.tokenizer, tf.constant(texts), index)
        expected = [encode_prompt(tokenizer, task, text, MAX_PROMPT_TOKENS) for text in texts]
        assert ids.to_list() == [e[0] for e in expected]
        assert truncated.numpy().tolist() == [e[1] for e in expected] == [False, True, True, False]
    ids, truncated = module.chat_prompt(module.tokenizer, tf.constant(texts), 0)
    assert list(zip(ids.to_list(), truncated.numpy().tolist())) == [chat_prompt(tokenizer, t) for t in texts]
    with pytest.raises(ValueError, match="cannot hold the prompt template"):
        ServingModule(model, ServingSignatures(tokenizer, LABELS, 20, MAX_CHAT_PROMPT_TOKENS))


@pytest.fixture(scope="module")
def saved_model(tokenizer, model, tmp_path_factory):
    """The SavedModel as the Optimizer writes it: the fixed-shape numeric signatures plus the string ones."""
    path = tmp_path_factory.mktemp("serving") / "saved_model"
    export_for_labels(model, tokenizer, LABELS, path, MAX_PROMPT_TOKENS, (64, 96),
                      serving=ServingSignatures(tokenizer, LABELS, MAX_PROMPT_TOKENS, MAX_CHAT_PROMPT_TOKENS,
                                                max_new_tokens=MAX_NEW_TOKENS))
    return path


# Runs in a fresh interpreter where fintune and keras-hub cannot even be imported (tensorflow_text
# itself imports Keras, through tf.keras).
CHILD = r"""
import json, sys
for name in ("models", "components", "pipeline", "fintune", "keras_hub"):
    sys.modules[name] = None  # `import name` now raises ImportError
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the regex-split op)

path, texts = sys.argv[1], [t.encode("utf-8", "surrogateescape") for t in json.loads(sys.argv[2])]
model = tf.saved_model.load(path)
out = {key: value.numpy().tolist() for key, value in
       model.signatures["classify"](text=tf.constant(texts), task=tf.constant("intent")).items()}
replies = {n: model.signatures["generate"](text=tf.constant(texts), max_new_tokens=tf.constant(n))
           for n in (0, 5, 1000)}
out["replies"] = {n: [t.decode() for t in r["text"].numpy()] for n, r in replies.items()}
out["generate_truncated"] = replies[5]["truncated"].numpy().tolist()
try:
    model.signatures["classify"](text=tf.constant(texts[:1]), task=tf.constant("no_such_task"))
except tf.errors.InvalidArgumentError as error:
    out["unknown_task_error"] = error.message
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in
                         ("models", "components", "pipeline", "fintune", "keras_hub")
                         and sys.modules[m] is not None)
print("RESULT " + json.dumps(out, default=lambda b: b.decode("utf-8", "surrogateescape")))
"""


def test_a_fresh_tensorflow_process_classifies_and_generates_like_keras(tokenizer, model, saved_model, tmp_path):
    texts = TEXTS[:3] + ["", "£1,234.56 charged twice\n\n" * 30, "\udcff\udcfe card"]  # last: invalid UTF-8 bytes
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-I", "-c", CHILD, str(saved_model), json.dumps(texts)], cwd=tmp_path,
                         env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    child = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert child["imported"] == []

    as_read = [t.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for t in texts]  # U+FFFD
    prompts = [encode_prompt(tokenizer, "intent", text, MAX_PROMPT_TOKENS) for text in as_read]
    assert child["truncated"] == [cut for _, cut in prompts] == [False] * 4 + [True, False]
    expected = classify(model, [ids for ids, _ in prompts], LabelTrie(LABELS["intent"], tokenizer))
    assert len({p.label for p in expected}) > 1, "the tiny model should not give every text one label"
    for i, prediction in enumerate(expected):
        assert child["label"][i] == prediction.label
        assert child["top_k_labels"][i] == prediction.top(5)
        np.testing.assert_allclose(child["top_k_probabilities"][i], [p for _, p in prediction.ranking[:5]], atol=1e-4)
        assert child["probability"][i] == pytest.approx(prediction.probability, abs=1e-4)

    stop_ids = (tokenizer.im_end_id, tokenizer.end_of_text_id)
    for n in (5, 1000):
        keras_replies = [tokenizer.decode(generate_ids(model, chat_prompt(tokenizer, text)[0], min(n, MAX_NEW_TOKENS),
                                                       stop_ids=stop_ids)) for text in as_read]
        assert child["replies"][str(n)] == keras_replies  # 1000 is clipped to the export's max_new_tokens
    assert child["replies"]["0"] == [""] * len(texts)
    assert len(set(child["replies"]["1000"])) > 1 and any(r.strip() for r in child["replies"]["1000"])
    assert child["generate_truncated"] == [chat_prompt(tokenizer, t)[1] for t in as_read]
    message = child["unknown_task_error"]
    assert "unknown task" in message and "no_such_task" in message and "intent, ticket_priority" in message


def test_tflite_conversion_ignores_the_string_signatures(tokenizer, model, saved_model, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    for variant in ("float32", "dynamic_int8"):  # the Optimizer's default variants
        path = tmp_path / f"{variant}.tflite"
        path.write_bytes(convert_to_tflite(saved_model, variant, ALL_ENDPOINTS))
        assert non_builtin_operators(path) == []  # no string, regex or hash-table ops leaked in
        assert set(Interpreter(model_path=str(path)).get_signature_list()) == set(ALL_ENDPOINTS)
    path = tmp_path / "float32.tflite"
    prompts = [encode_prompt(tokenizer, "intent", text, MAX_PROMPT_TOKENS)[0] for text in TEXTS[:2]]
    check = compare_logits(keras_logits_fn(model), ExportedModel(path), prompts, 96, tokenizer.pad_id)
    assert check["max_abs_diff"] < 1e-3  # and the weights came along


def test_the_optimizer_checks_the_classify_signature_against_keras(tokenizer, model, saved_model):
    from components.optimizer.component import string_signature_check

    texts = {"intent": TEXTS, "ticket_priority": TEXTS[:2]}
    reference = {task: classify(model, [encode_prompt(tokenizer, task, t, MAX_PROMPT_TOKENS)[0] for t in rows],
                                LabelTrie(LABELS[task], tokenizer)) for task, rows in texts.items()}
    check = string_signature_check(saved_model, texts, reference)
    assert check["max_abs_probability_diff"] < 1e-4 and check["label_agreement"] == 1 and check["examples"] == 7
    wrong = {"intent": reference["ticket_priority"] + reference["intent"][2:]}  # a mismatch must show
    assert string_signature_check(saved_model, {"intent": TEXTS}, wrong)["label_agreement"] < 1
