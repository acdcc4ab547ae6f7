"""Check the imported SmolLM2 against an independent reference: llama.cpp's own maths, in numpy.

The reference reads the GGUF with `gguf` and runs the llama forward pass the way llama.cpp does for
`general.architecture = llama`: the q/k weights stay as stored (permuted by llama.cpp's converter)
and rotary embeddings rotate *adjacent* pairs (llama.cpp's "NORM" rope). fintune instead undoes the
permutation and lets keras-hub rotate the two halves of each head. If the inverse permutation or
any layout is wrong, the logits disagree.

    .venv/bin/python benchmarks/check_smollm2_reference.py

Prints max |logit difference| and top-1 agreement over every position of a few prompts.
(A PyTorch/transformers reference is not used: PyTorch's PyPI wheel brings gigabytes of CUDA
libraries, and transformers' GGUF loader applies the same inverse permutation formula as ours.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France?",
    "My card was declined at the supermarket even though I have money in my account. Why?",
    "Classify this card or bank statement line into a spending category: TESCO STORES 3297 -£23.10",
    "Write a short, polite reply to a customer who was charged twice for the same purchase.",
]


def reference_tensors(path) -> tuple[dict, dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml")}
    tensors = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32) for t in reader.tensors}
    return metadata, tensors


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_adjacent_pairs(x, base):
    """llama.cpp NORM rope: rotate (x[2i], x[2i+1]) by position * base^(-2i/d). x: (seq, heads, d)."""
    seq, _, d = x.shape
    theta = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    angles = np.arange(seq, dtype=np.float64)[:, None] * theta[None, :]  # (seq, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_logits(metadata, tensors, ids) -> np.ndarray:
    """(seq, vocab) logits, float64, llama.cpp semantics on the GGUF's own tensors."""
    heads, kv_heads = metadata["llama.attention.head_count"], metadata["llama.attention.head_count_kv"]
    eps, base = metadata["llama.attention.layer_norm_rms_epsilon"], metadata["llama.rope.freq_base"]
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    x = t["token_embd.weight"][ids]  # (seq, hidden)
    seq, hidden = x.shape
    d = hidden // heads
    causal = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(metadata["llama.block_count"]):
        b = f"blk.{i}"
        h = rms_norm(x, t[f"{b}.attn_norm.weight"], eps)
        q = rope_adjacent_pairs((h @ t[f"{b}.attn_q.weight"].T).reshape(seq, heads, d), base)
        k = rope_adjacent_pairs((h @ t[f"{b}.attn_k.weight"].T).reshape(seq, kv_heads, d), base)
        v = (h @ t[f"{b}.attn_v.weight"].T).reshape(seq, kv_heads, d)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + causal  # (heads, seq, seq)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", scores, v).reshape(seq, hidden) @ t[f"{b}.attn_output.weight"].T
        h = rms_norm(x, t[f"{b}.ffn_norm.weight"], eps)
        gate, up = h @ t[f"{b}.ffn_gate.weight"].T, h @ t[f"{b}.ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[f"{b}.ffn_down.weight"].T
    x = rms_norm(x, t["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


def main() -> int:
    from models.llm.chat import apply_chat_template
    from models.llm.gguf_import import find_smollm2_gguf, import_gguf
    from models.llm.language_model import load_model

    path = find_smollm2_gguf()
    start = time.time()
    folder = import_gguf(path)
    print(f"import_gguf: {time.time() - start:.1f} s -> {folder}")
    causal_lm, tokenizer, _ = load_model(folder)
    metadata, tensors = reference_tensors(path)
    worst, agree, total = 0.0, 0, 0
    for prompt in PROMPTS:
        ids = tokenizer.encode(apply_chat_template(tokenizer, [{"role": "user", "content": prompt}]))
        token_ids = np.array([ids], dtype="int32")
        ours = np.asarray(causal_lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))[0]
        reference = reference_logits(metadata, tensors, ids)
        diff = float(np.abs(ours - reference).max())
        top1 = int((ours.argmax(-1) == reference.argmax(-1)).sum())
        worst, agree, total = max(worst, diff), agree + top1, total + len(ids)
        print(f"{len(ids):3d} tokens  max|Δlogit| {diff:.2e}  (logits {reference.min():.1f}..{reference.max():.1f})"
              f"  top-1 agree {top1}/{len(ids)}  next: {tokenizer.decode([int(ours[-1].argmax())])!r}")
    print(f"overall: max|Δlogit| {worst:.2e}, top-1 agreement {agree}/{total} = {agree / total:.1%}")
    return 0 if worst < 1e-2 and agree == total else 1


if __name__ == "__main__":
    sys.exit(main())
