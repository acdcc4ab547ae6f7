"""The PyTorch + PEFT peer of `bench_train.py`: LoRA training steps on the same GGUF weights and batches.

    <peer venv>/bin/python benchmarks/peer_train_torch.py SPEC.json

Runs in the peer virtualenv (`benchmarks/peer-requirements.txt`: torch, transformers, peft, gguf),
never in fintune's: it imports nothing from this repository. `bench_train.py` writes SPEC.json and
the two .npz files it names, launches this script once per precision, and reads the JSON object it
prints on its last line.

- weights: `transformers` loads the same GGUF (`from_pretrained(dir, gguf_file=...)`, dequantised to
  float32 by `gguf.quants`, like fintune's importer). Before any LoRA is added, its float32 logits on
  one prompt are compared with the Keras model's (`parity_npz`: token ids and Keras logits).
- batches: the exact padded batches Keras `fit` sees (`batches_npz`, exported by bench_train.py from
  the Transform's TFRecords through the Trainer's own tf.data loader, same seed).
- recipe: PEFT LoRA rank/alpha on q,k,v,o,gate,up,down, no dropout; the loss is the mean
  cross-entropy over answer tokens only, with the (tied) vocabulary head applied to answer positions
  only, as fintune's `AnswerHeadTrainer`; AdamW with weight decay and global-norm clipping.
- precision: "float32", or "bf16" = `torch.autocast("cpu", bfloat16)` over float32 weights (the
  analogue of Keras mixed_bfloat16).
- timing: `warmup` batches first (not timed), then each `timed` batch's step (forward, backward,
  clip, optimizer step) wall time.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_batches(path: Path) -> list[dict]:
    data = np.load(path)
    count = len([k for k in data.files if k.startswith("token_ids_")])
    return [{name: data[f"{name}_{i}"] for name in ("token_ids", "padding_mask", "targets", "weight")}
            for i in range(count)]


def logits_parity(model, parity_npz: Path) -> dict:
    """Float32 logits of the torch model vs Keras' on the same token ids (before LoRA)."""
    data = np.load(parity_npz)
    ids = torch.from_numpy(data["token_ids"].astype(np.int64))
    keras_logits = data["logits"].astype(np.float32)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()
    diff = np.abs(logits - keras_logits)
    return {"prompt_tokens": int(ids.shape[1]), "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "max_abs_logit": float(np.abs(keras_logits).max()),
            "argmax_agreement": float((logits.argmax(-1) == keras_logits.argmax(-1)).mean()),
            "greedy_next_token_equal": bool(logits[0, -1].argmax() == keras_logits[0, -1].argmax())}


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean NLL over answer tokens; the head only on answer positions (fintune's AnswerHeadTrainer)."""
    ids = torch.from_numpy(batch["token_ids"].astype(np.int64))
    mask = torch.from_numpy(batch["padding_mask"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    answer = torch.from_numpy(batch["weight"] > 0)
    causal = model.get_base_model()
    hidden = causal.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (batch, seq, hidden)
    logits = causal.lm_head(hidden[answer])  # (answers, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), targets[answer])


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    import peft
    import transformers

    started = time.monotonic()
    gguf = Path(spec["gguf"])
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
    load_s = time.monotonic() - started
    parity = logits_parity(model, Path(spec["parity_npz"])) if spec.get("parity_npz") else None
    config = peft.LoraConfig(r=int(spec["lora_rank"]), lora_alpha=float(spec["lora_alpha"]), lora_dropout=0.0,
                             target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(spec["learning_rate"]),
                                  weight_decay=float(spec["weight_decay"]))
    bf16 = spec["precision"] == "bf16"
    batches = load_batches(Path(spec["batches_npz"]))

    def step(batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, float(spec["clip_norm"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for index in spec["warmup"]:
        step(batches[index])
    times, losses, tokens, useful = [], [], 0, 0
    for index in spec["timed"]:
        batch = batches[index]
        begin = time.perf_counter()
        losses.append(step(batch))
        times.append(time.perf_counter() - begin)
        tokens += batch["targets"].size
        useful += int((batch["padding_mask"] > 0).sum())
    seconds = sum(times)
    print(json.dumps({
        "framework": f"torch {torch.__version__} + peft {peft.__version__}", "variant": spec["precision"],
        "batch_size": int(batches[spec["timed"][0]]["targets"].shape[0]), "lora_rank": int(spec["lora_rank"]),
        "steps_timed": len(times), "tokens_timed": tokens, "useful_tokens_timed": useful,
        "tokens_per_s": round(tokens / seconds, 1), "useful_tokens_per_s": round(useful / seconds, 1),
        "step_s_median": round(statistics.median(times), 3), "step_s": [round(t, 3) for t in times],
        "padding_fraction": round(1 - useful / tokens, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.monotonic() - started, 1), "load_s": round(load_s, 1),
        "trainable_parameters": sum(p.numel() for p in trainable), "threads": torch.get_num_threads(),
        "attention": model.get_base_model().config._attn_implementation,
        "first_timed_loss": round(losses[0], 4), "last_timed_loss": round(losses[-1], 4),
        "transformers": transformers.__version__, "logits_parity": parity}))


if __name__ == "__main__":
    main()
