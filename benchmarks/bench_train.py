"""Training throughput of the Trainer's configuration: tokens/s, useful (non-padding) tokens/s, peak RSS.

    python benchmarks/bench_train.py [--profile default] [--steps 24] [--variants float32,bf16] [--set k=v ...]
        [--peer-python PEER_VENV/bin/python [--peer-variants float32,bf16] [--peer-warmup 3]]

Each variant trains in its own process (so peak RSS is its own) for `--steps` steps in two rounds;
the figures are from the second round, after tracing/compilation. Upstream artifacts (data, base
model, tokenised datasets) come from the pipeline's cache under runs/bench.

With `--peer-python` (the python of a virtualenv made from `benchmarks/peer-requirements.txt`;
`make bench-train PEER=1` makes one), the same run adds PyTorch + PEFT rows
(`benchmarks/peer_train_torch.py`, its own process): the same GGUF loaded by `transformers`, the
same padded batches (exported here from the Trainer's tf.data loader with the Trainer's seed; the
peer times exactly the batches of Keras' timed round, after `--peer-warmup` untimed steps on the
first batches), the same LoRA rank/alpha on all seven projections, the same answer-only loss with
the head on answer positions only, the same thread count. Keras mixed_bfloat16 is paired with
torch bf16 autocast over float32 weights, float32 with float32. Before training, the peer's float32
logits on one prompt are compared with the Keras model's (`logits_parity` in the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = {"float32": {"precision": "float32", "jit_compile": False},
            "float32_jit": {"precision": "float32", "jit_compile": True},
            "bf16": {"precision": "mixed_bfloat16", "jit_compile": False},
            "bf16_jit": {"precision": "mixed_bfloat16", "jit_compile": True}}
PEER_VARIANTS = ("float32", "bf16")  # bf16 = torch.autocast(bfloat16) over float32 weights
PEER_SCRIPT = REPO / "benchmarks" / "peer_train_torch.py"
PARITY_MAX_ABS = 0.05  # float32 logits, torch vs Keras, same GGUF (the logits span about +-30)
COLUMNS = ("framework", "variant", "steps_timed", "useful_tokens_per_s", "tokens_per_s", "step_s_median",
           "padding_fraction", "peak_rss_mb")


def upstream(profile: str, set_flags: list[str], runs_root: Path):
    import pipeline
    from components.runner import LocalRunner

    params, _ = pipeline.build_params(pipeline.params_classes(), profile, None, set_flags)
    nodes = [n for n in pipeline.build_pipeline() if n.name in ("example_gen", "base_model", "transform")]
    result = LocalRunner(nodes, runs_root, log=lambda *_: None).run(runs_root / f"upstream-{profile}", params, profile)
    if result.status != "succeeded":
        raise SystemExit(f"upstream failed: {result.error}")
    return params["trainer"], result.artifacts["transform"]["datasets"].uri, result.artifacts["base_model"]["model"].uri


def set_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)


def run_variant(args) -> dict:
    import components.trainer.loop as loop
    from components.base import ExecutionContext
    from components.trainer.component import Trainer

    set_threads(args.threads)
    stamps: list[list[float]] = []  # per round: its start, then each batch's end (after the loss is read back)

    class TimedProgressBar(loop.ProgressBar):  # the loop's own bar, plus one time stamp per step
        def on_epoch_begin(self, epoch, logs=None):
            stamps.append([time.monotonic()])

        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)  # reads the loss: the step has finished
            stamps[-1].append(time.monotonic())

    loop.ProgressBar = TimedProgressBar
    trainer_params, datasets, base = upstream(args.profile, args.set, Path(args.runs_root))
    half = max(1, args.steps // 2)
    p = dataclasses.replace(trainer_params, steps=2 * half, validate_every=half, early_stopping_patience=0,
                            max_validation_batches=1, validation_label_examples=4, **VARIANTS[args.variant])
    work = Path(args.runs_root) / f"work-{args.variant}-{time.time_ns()}"
    ctx = ExecutionContext(Trainer(), p, {}, work, {}, log=lambda *_: None, fingerprint="bench")
    started = time.monotonic()
    result = loop.train_trial(ctx, p, datasets, base, work / "tb", ctx.work_dir)
    steady = result.history[-1]
    seconds = half / steady["steps_per_s"]
    step_s = [b - a for a, b in zip(stamps[-1], stamps[-1][1:])]
    return {"framework": "keras-hub fit", "variant": args.variant, "batch_size": p.batch_size,
            "lora_rank": p.lora_rank, "steps_timed": half,
            "tokens_timed": round(steady["tokens_per_s"] * seconds),
            "useful_tokens_timed": round(steady["useful_tokens_per_s"] * seconds),
            "tokens_per_s": round(steady["tokens_per_s"], 1),
            "useful_tokens_per_s": round(steady["useful_tokens_per_s"], 1),
            "step_s_median": round(statistics.median(step_s), 3), "step_s": [round(t, 3) for t in step_s],
            "padding_fraction": round(1 - steady["useful_tokens_per_s"] / steady["tokens_per_s"], 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "wall_s": round(time.monotonic() - started, 1), "threads": args.threads}


def export_peer_inputs(args, out: Path) -> dict:
    """The batches Keras fit trains on (same loader, same seed) and the Keras float32 logits on one prompt."""
    import keras
    import numpy as np

    from models.files import file_sha256
    from models.llm.gguf_import import find_smollm2_gguf
    from models.llm.language_model import load_model
    from models.llm.tfrecords import load_dataset
    from schemas.artifacts import DatasetsFiles

    trainer_params, datasets_dir, base = upstream(args.profile, args.set, Path(args.runs_root))
    p = trainer_params
    datasets = DatasetsFiles(datasets_dir)
    causal_lm, tokenizer, config = load_model(base)  # float32
    if config.get("gguf_sha256") is None:
        raise SystemExit(f"the peer needs a GGUF base model; {base} was not imported from one")
    gguf = Path(config["source"]) if Path(config.get("source", "")).is_file() else find_smollm2_gguf()
    if file_sha256(gguf) != config["gguf_sha256"]:
        raise SystemExit(f"{gguf} is not the GGUF the Keras base model {base} was converted from")
    keras.utils.set_random_seed(p.seed)  # as build_lora_model does before train_trial builds the loader
    train = load_dataset(datasets.tfrecord("train"), p.batch_size, datasets.transform()["max_length"],
                         tokenizer.pad_id, shuffle=True, seed=p.seed, repeat=True)
    half = max(1, args.steps // 2)
    arrays = {}
    for i, (x, y, w) in enumerate(train.take(2 * half)):
        arrays.update({f"token_ids_{i}": x["token_ids"].numpy(), f"padding_mask_{i}": x["padding_mask"].numpy(),
                       f"targets_{i}": y.numpy(), f"weight_{i}": w.numpy()})
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "batches.npz", **arrays)
    first = arrays["token_ids_0"][0][arrays["padding_mask_0"][0] > 0][None, :]  # a real training prompt + answer
    logits = causal_lm({"token_ids": first, "padding_mask": np.ones_like(first)}, training=False)
    np.savez(out / "parity.npz", token_ids=first, logits=keras.ops.convert_to_numpy(logits).astype("float32"))
    return {"gguf": str(gguf), "batches_npz": str(out / "batches.npz"), "parity_npz": str(out / "parity.npz"),
            "lora_rank": p.lora_rank, "lora_alpha": p.lora_alpha, "learning_rate": p.learning_rate,
            "weight_decay": p.weight_decay, "clip_norm": p.clip_norm, "seed": p.seed, "threads": args.threads,
            "warmup": list(range(min(args.peer_warmup, half))), "timed": list(range(half, 2 * half))}


def child(command: list[str], name: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"variant {name} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores {platform.machine()}, {memory_gb:.0f} GiB, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--variants", default="float32,bf16")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--runs-root", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every row (TF and torch)")
    parser.add_argument("--peer-python", help="python of the PyTorch + PEFT peer's virtualenv; no peer rows without it")
    parser.add_argument("--peer-variants", default="float32,bf16")
    parser.add_argument("--peer-warmup", type=int, default=3, help="untimed peer steps before its timed ones")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return
    runs_root = Path(args.runs_root)
    upstream(args.profile, args.set, runs_root)  # once, before the children share it
    spec = None
    if args.peer_python:
        unknown = set(args.peer_variants.split(",")) - set(PEER_VARIANTS)
        if unknown:
            raise SystemExit(f"unknown peer variants {sorted(unknown)} (known: {', '.join(PEER_VARIANTS)})")
        spec = export_peer_inputs(args, runs_root / f"peer-{args.profile}")
    rows = []
    for variant in [v for v in args.variants.split(",") if v]:
        command = [sys.executable, __file__, "--profile", args.profile, "--steps", str(args.steps), "--variant",
                   variant, "--runs-root", args.runs_root, "--threads", str(args.threads)] + \
            [f"--set={s}" for s in args.set]
        rows.append(child(command, variant))
    parity = None
    if spec is not None:
        for index, variant in enumerate(args.peer_variants.split(",")):
            spec_file = runs_root / f"peer-{args.profile}" / f"spec-{variant}.json"
            # the parity check once, in the first peer process (float32 logits before LoRA)
            spec_file.write_text(json.dumps({**spec, "precision": variant,
                                             "parity_npz": spec["parity_npz"] if index == 0 else None}))
            row = child([args.peer_python, str(PEER_SCRIPT), str(spec_file)], f"torch {variant}")
            parity = parity or row.pop("logits_parity")
            row.pop("logits_parity", None)
            rows.append(row)
        timed = {name: {(r["tokens_timed"], r["useful_tokens_timed"]) for r in rows if r["framework"].startswith(name)}
                 for name in ("keras", "torch")}
        keras_timed, peer_timed = timed["keras"], timed["torch"]
        parity["passed"] = parity["max_abs_diff"] <= PARITY_MAX_ABS and parity["greedy_next_token_equal"]
        parity["tolerance_max_abs"] = PARITY_MAX_ABS
        same = keras_timed == peer_timed and len(keras_timed) == 1
        print(f"logits parity (float32, {parity['prompt_tokens']}-token prompt, torch vs Keras): max |diff| "
              f"{parity['max_abs_diff']:.2e} (logits up to {parity['max_abs_logit']:.1f}), argmax agreement "
              f"{parity['argmax_agreement']:.3f}, greedy next token equal: {parity['greedy_next_token_equal']}"
              f" -> {'passed' if parity['passed'] else 'FAILED'}")
        print(f"same timed batches (tokens, useful tokens): keras {sorted(keras_timed)}, torch {sorted(peer_timed)}"
              f" -> {'yes' if same else 'NO'}")
        parity["same_timed_batches"] = same
    print(f"machine: {machine()}; threads {args.threads}; batch {rows[0]['batch_size']}, LoRA r{rows[0]['lora_rank']}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in COLUMNS) + " |")
    out = runs_root / f"bench_train_{args.profile}.json"
    report = {"machine": machine(), "profile": args.profile, "steps": args.steps, "threads": args.threads,
              "rows": rows}
    if spec is not None:
        report["peer"] = {"logits_parity": parity, "warmup_batches": spec["warmup"], "timed_batches": spec["timed"],
                          "gguf": spec["gguf"]}
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
