"""Decode speed and quality of exported TFLite files, side by side in one process.

    python benchmarks/bench_decode.py FILE.tflite [FILE.tflite ...] [--model DIR] [--rounds 5] [--tokens 32]
    python benchmarks/bench_decode.py --base-export     # the base model's float32 + int8 files (`make bench-peers`')

Per file: size; decode tokens/s through `ExportedModel.generate_ids` by the Benchmark's protocol
((n + 1 tokens) - (1 token), so prefill is excluded), over 4 chat prompts, the files taking turns round
after round (the 2 cores are shared: only side-by-side figures compare); next-token top-1 agreement with
the Keras model over the teacher-forced positions of 12 prompts (`serve` signature); and how many greedy
tokens equal Keras's. `--model` is the fintune model folder the files were exported from (default: the
SmolLM2 GGUF import, i.e. the base model). `--base-export` measures the base model's own export, built once
(and cached) by `bench_peers.ensure_base_export` under runs/bench_peers/base_export/.

Files with a `decode_batch` signature get a second table, batched generation: generations/s of `--tokens`
new tokens each, prefill included, for 8 prompts (the 4 chats and 4 label prompts, 25-60 tokens) one after
another through `decode` and all at once through `decode_batch`, the same rounds taking turns; and whether
the batched tokens equal the one-at-a-time ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MESSAGES = ["How do I freeze my card?", "I was charged twice for the same coffee, what should I do?",
            "What exchange rate do you use when I pay in euros abroad?",
            "My top-up failed but the money left my bank account. Can you help?"]
LABEL_PROMPTS = [("intent", "I was charged twice for the same coffee at the airport yesterday"),
                 ("intent", "where is my new card, it has been two weeks"),
                 ("transaction_category", "TESCO STORES 2231 LONDON GB card payment"),
                 ("transaction_category", "UBER *TRIP HELP.UBER.COM"),
                 ("intent", "my transfer to my landlord is still pending"),
                 ("ticket_priority", "The mobile app crashes every time I try to log in and I cannot pay my rent"),
                 ("ticket_product", "I want to close my account and move my savings elsewhere"),
                 ("intent", "what rate do you use for EUR payments abroad")]


def decode_rates(models: dict, prompts: list[list[int]], tokens: int, rounds: int) -> dict[str, list[float]]:
    rates = {name: [] for name in models}
    for model in models.values():
        model.generate_ids(prompts[0], 2)  # warm-up: page in the weights, size the buffers
    for _ in range(rounds):
        for name, model in models.items():
            decode_s = 0.0
            for prompt in prompts:
                started = time.perf_counter()
                model.generate_ids(prompt, 1)
                first = time.perf_counter() - started
                started = time.perf_counter()
                model.generate_ids(prompt, tokens + 1)
                decode_s += time.perf_counter() - started - first
            rates[name].append(tokens * len(prompts) / decode_s)
    return rates


def generation_rates(models: dict, prompts: list[list[int]], tokens: int, rounds: int) -> dict[str, dict]:
    """{name: {"one_by_one": [gen/s per round], "batched": [...], "identical": share}} for files with
    `decode_batch`: `len(prompts)` generations of `tokens` tokens each, prefill included."""
    batched = {name: m for name, m in models.items() if m.decode_rows > 1}
    results = {name: {"one_by_one": [], "batched": [], "rows": m.decode_rows} for name, m in batched.items()}
    for name, model in batched.items():
        alone, together = [model.generate_ids(p, tokens) for p in prompts], model.generate_batch(prompts, tokens)
        results[name]["identical"] = sum(a == b for a, b in zip(alone, together)) / len(prompts)
    for _ in range(rounds):
        for name, model in batched.items():
            started = time.perf_counter()
            for prompt in prompts:
                model.generate_ids(prompt, tokens)
            results[name]["one_by_one"].append(len(prompts) / (time.perf_counter() - started))
            started = time.perf_counter()
            model.generate_batch(prompts, tokens)
            results[name]["batched"].append(len(prompts) / (time.perf_counter() - started))
    return results


def base_export_files() -> tuple[list[Path], Path]:
    """(the base model's float32 and dynamic_int8 files, the model folder), exported once by bench_peers."""
    from bench_peers import ensure_base_export

    from components.config import PROFILES
    from components.transform.component import TransformParams
    from models.llm.gguf_import import find_smollm2_gguf

    transform = TransformParams(**PROFILES["default"]["transform"])
    export = ensure_base_export(Path(__file__).resolve().parents[1] / "runs" / "bench_peers", find_smollm2_gguf(),
                                transform.max_prompt_tokens, transform.max_length, print)
    folder = Path(export["folder"])
    return [folder / "float32.tflite", folder / "dynamic_int8.tflite"], Path(export["model_dir"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--model", type=Path, help="fintune model folder (default: the SmolLM2 GGUF import)")
    parser.add_argument("--base-export", action="store_true", help="measure the base model's cached export")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    if bool(args.files) == args.base_export:
        parser.error("give TFLite files or --base-export (one of the two)")
    if args.base_export:
        args.files, args.model = base_export_files()

    from models.export.convert import compare_logits, keras_logits_fn
    from models.export.endpoints import ENDPOINT
    from models.export.exported import ExportedModel
    from models.llm.chat import apply_chat_template, generate_ids
    from models.llm.language_model import load_model
    from models.llm.prompts import format_prompt

    if args.model is None:
        from models.llm.gguf_import import import_gguf

        args.model = import_gguf()
    causal_lm, tokenizer, _ = load_model(args.model)
    chats = [tokenizer.encode(apply_chat_template(tokenizer, [{"role": "user", "content": m}])) for m in MESSAGES]
    teacher_forced = [tokenizer.encode(format_prompt(task, text)) for task, text in LABEL_PROMPTS] + chats
    keras_tokens = [generate_ids(causal_lm, prompt, args.tokens) for prompt in chats]
    keras_logits, memo = keras_logits_fn(causal_lm), {}

    def reference(token_ids, padding_mask):  # every file is compared on the same Keras logits
        key = token_ids.tobytes()
        if key not in memo:
            memo[key] = keras_logits(token_ids, padding_mask)
        return memo[key]

    names = [path.name if [p.name for p in args.files].count(path.name) == 1 else f"{path.parent.name}/{path.name}"
             for path in args.files]
    models = {name: ExportedModel(path, num_threads=2) for name, path in zip(names, args.files)}
    rates = decode_rates(models, chats, args.tokens, args.rounds)
    print(f"| file | MB | decode tokens/s (median of {args.rounds} rounds) | next-token top-1 vs Keras | "
          f"greedy tokens equal to Keras's |\n|---|---|---|---|---|")
    for path, (name, model) in zip(args.files, models.items()):
        # The base export (bench-peers') has no `serve` signature: its agreement is the greedy-token column only.
        check = (compare_logits(reference, model.logits, teacher_forced, model.sequence_length, tokenizer.pad_id)
                 if ENDPOINT in model.shapes else None)
        top1 = f"{check['top1_agreement']:.3f} ({check['positions']} positions)" if check else "— (no serve signature)"
        equal = sum(a == b for prompt, expected in zip(chats, keras_tokens)
                    for a, b in zip(model.generate_ids(prompt, args.tokens), expected))
        print(f"| {name} | {path.stat().st_size / 1e6:.0f} | {statistics.median(rates[name]):.1f} | "
              f"{top1} | "
              f"{equal} of {args.tokens * len(chats)} |", flush=True)
    generation = generation_rates(models, (chats + teacher_forced[:len(LABEL_PROMPTS)])[:8], args.tokens,
                                  args.rounds)
    if generation:
        print("\n| file | rows | generations/s one by one | batched (decode_batch) | batched / one by one | "
              "identical generations |\n|---|---|---|---|---|---|")
    for name, g in generation.items():
        alone, together = statistics.median(g["one_by_one"]), statistics.median(g["batched"])
        print(f"| {name} | {g['rows']} | {alone:.2f} | {together:.2f} | {together / alone:.2f}x | "
              f"{g['identical']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
