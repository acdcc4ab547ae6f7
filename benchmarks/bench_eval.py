"""Label-constrained evaluation speed: examples/s at batch sizes 1, 8 and 32 on the real 135M model.

    python benchmarks/bench_eval.py [--examples 64] [--batch-sizes 1,8,32] [--precisions float32,bf16]
                                    [--answers words,as_written] [--banking77 ../shared/data/banking77/train.csv]
                                    [--naive 2]

Prompts are the Evaluator's own (task prompt, `max_prompt_tokens` rule) for the simulated intent
task (24 labels) and, when the BANKING77 file is there, its 77 intents. Each setting runs in this
process after one untimed warm-up batch (tracing); the figure is examples / wall seconds of the
timed batches. `--naive N` also times the rejected design -- one full forward pass per candidate
label -- on N examples, for the ratio. `--answers`: labels answered as words (`label_answer`, what
the pipeline trains and scores) and, for the baseline in the same run, as written (underscores kept:
a longer tree). Results go to stdout and runs/bench/bench_eval.json.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def label_sets(banking77: Path | None, count: int) -> dict[str, tuple[list[str], list[str]]]:
    """{name: (labels, texts)}: the simulated intent task, and BANKING77 when its file exists."""
    import pandas as pd

    from data.simulated import generate_examples

    records = generate_examples(count * 8, seed=0)
    intents = records[records["task"] == "intent"].head(count)
    sets = {"simulated_intent": (json.loads((REPO / "data" / "labels.json").read_text())["intent"],
                                 list(intents["text"]))}
    if banking77 and banking77.exists():
        frame = pd.read_csv(banking77).sample(count, random_state=0)
        sets["banking77"] = (sorted(pd.read_csv(banking77)["category"].unique()), list(frame["text"]))
    return sets


def timed(function, items) -> float:
    """Wall seconds of `function(item)` over all items."""
    started = time.perf_counter()
    for item in items:
        function(item)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--answers", default="words,as_written", help="label answer texts: words, as_written")
    parser.add_argument("--banking77", type=Path, default=REPO.parent / "shared" / "data" / "banking77" / "train.csv")
    parser.add_argument("--naive", type=int, default=2, help="examples for the one-pass-per-label loop (0 = skip)")
    parser.add_argument("--max-prompt-tokens", type=int, default=192)
    args = parser.parse_args()

    import keras

    from models.export.convert import keras_logits_fn
    from models.llm.gguf_import import import_gguf
    from models.llm.language_model import load_model
    from models.llm.prompts import encode_prompt, label_answer
    from models.scoring.constrained import LabelTrie, TreeScorer, classify, classify_with_logits_fn

    renderings = {"words": label_answer, "as_written": str}
    answers = args.answers.split(",")
    if not set(answers) <= set(renderings):
        parser.error(f"--answers takes {', '.join(renderings)}; got {args.answers!r}")
    results = []
    for precision in args.precisions.split(","):
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
        causal_lm, tokenizer, _ = load_model(import_gguf())
        scorer = TreeScorer(causal_lm)
        for (name, (labels, texts)), answer in itertools.product(label_sets(args.banking77, args.examples).items(),
                                                                 answers):
            trie = LabelTrie(labels, tokenizer, renderings[answer])
            prompts = [encode_prompt(tokenizer, "intent", text, args.max_prompt_tokens)[0] for text in texts]
            for batch_size in map(int, args.batch_sizes.split(",")):
                batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
                classify(causal_lm, batches[0], trie, batch_size, scorer)  # warm-up: traces this shape
                score_batch = functools.partial(classify, causal_lm, trie=trie, batch_size=batch_size, scorer=scorer)
                seconds = timed(score_batch, batches)
                row = {"precision": precision, "label_set": name, "answers": answer, "labels": len(labels),
                       "tree_nodes": trie.num_nodes,
                       "batch_size": batch_size, "examples": len(prompts),
                       "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
                       "examples_per_s": round(len(prompts) / seconds, 2)}
                results.append(row)
                print(json.dumps(row), flush=True)
            if args.naive and precision == "float32" and answer == answers[0]:
                sequence_length = -(-(max(map(len, prompts[:args.naive])) + trie.max_depth) // 16) * 16
                score_one = functools.partial(classify_with_logits_fn, keras_logits_fn(causal_lm), trie=trie,
                                              sequence_length=sequence_length, pad_id=tokenizer.pad_id)
                seconds = timed(lambda prompt, score=score_one: score([prompt]), prompts[:args.naive])
                row = {"precision": precision, "label_set": name, "labels": len(labels), "batch_size": 1,
                       "method": "one forward pass per label", "examples": args.naive,
                       "examples_per_s": round(args.naive / seconds, 3)}
                results.append(row)
                print(json.dumps(row), flush=True)
    out = REPO / "runs" / "bench" / "bench_eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
