"""Recipe study on BANKING77: held-out accuracy and macro-F1 against training CPU-minutes, per training recipe.

    python benchmarks/bench_recipe.py [--recipes baseline,epoch1] [--data CSV] [--out DIR] [--set k=v ...]
                                      [--eval-examples N] [--quick]

Each recipe is a list of `--set` overrides on top of the `default` profile, run the way a user would with
flags only (`example_gen.source=<csv>`, `text_column=text`, `label_column=category`, `task=intent`), the
Transform's own stratified split (80/10/10) giving the hold-out. The pipeline runs in this process
(`LocalRunner` over `pipeline.build_pipeline()`'s first six nodes: example_gen, base_model, transform,
base_evaluator, trainer, evaluator; no Optimizer, Student, Exporter or Benchmark), with one runs root, so ExampleGen,
BaseModel and Transform are cache hits after the first recipe, and a rerun of the study skips every
finished recipe (their timings are kept in `<out>/timings/`).

Per recipe: accuracy and macro-F1 on the whole test split (the Evaluator's artifact, `evaluator.max_examples=0`;
`--eval-examples N` caps it), the base model's on the same rows, steps run and the best (restored) step,
training wall minutes and training CPU-minutes = the process CPU time (all threads) spent inside
Trainer.execute, which includes model loading, tracing and the per-round validation; the median useful
(non-padding) tokens/s of the Trainer's rounds. On a machine shared with other work the CPU-minutes are the
steadier figure; wall minutes grow with the contention. Outputs: `<out>/recipes.json`, `<out>/recipes.md`
(also printed) and `<out>/learning_curve.png`: macro-F1 against training CPU-minutes, the Trainer's
per-round validation macro-F1 (`training_history.json`, on its `validation_label_examples` validation rows;
round k is placed at step_k / steps run x the trainer's CPU-minutes) and the final held-out point.

`epoch` recipes set `trainer.epochs`: the Trainer sizes its steps from the data, epochs x ceil(train rows /
batch size) (with --quick an epoch is QUICK_EPOCH_STEPS steps). The study sets
`evaluator.unconstrained_examples=0` (the invalid-output rate of free decoding is no recipe figure).

Candidates of issue 13 that need code before they can be measured here (no parameter exists):
- sequence packing or finer length buckets (the tf.data loader's buckets are fixed);
- a shorter system prompt (models/llm/prompts.py's TASK_SYSTEM is fixed; `transform.max_prompt_tokens`,
  measured by `epoch1_prompt64`, only cuts the end of the text);
- class-balanced sampling (the Trainer shuffles the train split as it is);
- a learning-rate schedule other than warm-up + cosine (only `learning_rate` and `warmup_fraction` exist);
The base model is scored once per data set (the `base_evaluator` component), not once per recipe.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from components.base import PipelineError, UsageError  # noqa: E402
from components.config import build_params  # noqa: E402
from components.runner import LocalRunner  # noqa: E402
from pipeline import build_pipeline, params_classes  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"
# base_evaluator depends on the data only: scored once, a cache hit for every later recipe.
STUDY_COMPONENTS = ("example_gen", "base_model", "transform", "base_evaluator", "trainer", "evaluator")
TIMED = ("trainer", "evaluator")
QUICK_EPOCH_STEPS = 30


@dataclass
class Recipe:
    description: str
    overrides: list[str] = field(default_factory=list)
    epochs: float | None = None  # None: trainer.steps as the profile (or the overrides) set it


RECIPES = {
    "baseline": Recipe("the default profile as it is (150 steps of 16)"),
    "epoch1": Recipe("one epoch of the train split", epochs=1),
    "epoch2": Recipe("two epochs", epochs=2),
    "epoch1_lr2e-3": Recipe("one epoch, peak learning rate 2e-3", ["trainer.learning_rate=2e-3"], epochs=1),
    "epoch1_lr5e-4": Recipe("one epoch, peak learning rate 5e-4, 5% warm-up",
                            ["trainer.learning_rate=5e-4", "trainer.warmup_fraction=0.05"], epochs=1),
    "epoch1_r8_qv": Recipe("one epoch, LoRA r8 on query and value only",
                           ["trainer.lora_rank=8", "trainer.lora_alpha=16", "trainer.lora_targets=query,value"],
                           epochs=1),
    "epoch1_r32": Recipe("one epoch, LoRA r32 on all projections", ["trainer.lora_rank=32", "trainer.lora_alpha=64"],
                         epochs=1),
    "epoch1_prompt64": Recipe("one epoch, prompts cut to 64 tokens", ["transform.max_prompt_tokens=64"], epochs=1),
    "epoch1_xla": Recipe("one epoch, train step compiled with XLA", ["trainer.jit_compile=true"], epochs=1),
}

# A tiny random model, a few steps, a capped test sample: the script end to end in a minute or two.
QUICK_OVERRIDES = ["base_model.source=tiny-random", "trainer.steps=20", "trainer.batch_size=8",
                   "trainer.learning_rate=3e-3", "trainer.lora_rank=4", "trainer.lora_alpha=8",
                   "trainer.validate_every=10", "trainer.validation_label_examples=16",
                   "trainer.max_validation_batches=2", "evaluator.perplexity_batches=2"]
QUICK_EVAL_EXAMPLES = 40


def data_flags(csv: Path) -> list[str]:
    return [f"example_gen.source={csv}", "example_gen.text_column=text", "example_gen.label_column=category",
            "example_gen.task=intent"]


def recipe_flags(args, recipe: Recipe) -> list[str]:
    """Profile `default` < data flags < study flags < --quick < the recipe < its epochs < --set. Epochs are the
    Trainer's own `trainer.epochs` (steps sized from the train split); with --quick an epoch is QUICK_EPOCH_STEPS."""
    eval_examples = args.eval_examples if args.eval_examples is not None else (
        QUICK_EVAL_EXAMPLES if args.quick else 0)
    flags = [*data_flags(args.data), f"evaluator.max_examples={eval_examples}", "evaluator.unconstrained_examples=0"]
    flags += QUICK_OVERRIDES if args.quick else []
    flags += recipe.overrides
    if recipe.epochs is not None:
        flags += [f"trainer.steps={max(1, round(recipe.epochs * QUICK_EPOCH_STEPS))}" if args.quick
                  else f"trainer.epochs={recipe.epochs:g}"]
    return flags + list(args.set_flags)


def timed_nodes(names: tuple[str, ...], timings: dict) -> list:
    """The study's nodes of the pipeline; TIMED components record wall and process CPU seconds of execute()."""
    nodes = [node for node in build_pipeline() if node.name in names]
    for node in nodes:
        if node.name in TIMED:
            node.component.execute = _timed(node.component.execute, node.name, timings)
    return nodes


def _timed(execute, name: str, timings: dict):
    def run(ctx):
        wall, cpu = time.monotonic(), time.process_time()
        result = execute(ctx)
        timings[name] = {"fingerprint": ctx.fingerprint, "wall_s": time.monotonic() - wall,
                         "cpu_s": time.process_time() - cpu}
        return result
    return run


def run_nodes(args, names, run_dir: Path, flags: list[str], timings: dict, log):
    params, config = build_params(params_classes(), "default", None, flags)
    result = LocalRunner(timed_nodes(names, timings), args.runs_root, log=log).run(run_dir, params, "default", config)
    if result.status == "failed":
        error = result.error
        if isinstance(error, UsageError):
            raise error
        raise PipelineError(f"{result.failed} failed: {error} (traceback in {run_dir / 'error.log'})")
    return result, params


def stored_timing(out: Path, name: str, fingerprint: str, fresh: dict) -> dict | None:
    """This execution's timing (saved), or the one saved when the cached artifact was made."""
    path = out / "timings" / f"{name}-{fingerprint[:16]}.json"
    if name in fresh and fresh[name]["fingerprint"] == fingerprint:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fresh[name], indent=2))
        return fresh[name]
    return json.loads(path.read_text()) if path.exists() else None


def run_recipe(args, name: str, recipe: Recipe) -> dict:
    log = lambda line: print(f"[{name}] {line}", flush=True)  # noqa: E731
    run_dir, timings = args.out / "runs" / name, {}
    flags = recipe_flags(args, recipe)
    result, _ = run_nodes(args, STUDY_COMPONENTS, run_dir, flags, timings, log)
    model, evaluation = result.artifacts["trainer"]["model"], result.artifacts["evaluator"]["evaluation"]
    train_time = stored_timing(args.out, "trainer", model.fingerprint, timings)
    eval_time = stored_timing(args.out, "evaluator", evaluation.fingerprint, timings)
    history = json.loads(model.path("training_history.json").read_text())
    trained = json.loads(model.path("summary.json").read_text())  # the parameters it ran with, steps sized
    metrics = evaluation.metrics
    with evaluation.path("predictions.jsonl").open() as rows:
        scored = sum(1 for line in rows if line.strip())
    rates = [r["useful_tokens_per_s"] for r in history[1:] or history]  # round 1 includes tracing
    return {
        "recipe": name, "description": recipe.description, "overrides": recipe.overrides, "epochs": recipe.epochs,
        "flags": flags, "run_dir": str(run_dir),
        "steps_configured": trained["params"]["steps"], "steps_run": history[-1]["step"] if history else 0,
        "best_step": model.metrics.get("best_step"), "test_rows_scored": scored,
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "base_accuracy": metrics["base_accuracy"], "base_macro_f1": metrics["base_macro_f1"],
        "train_wall_min": _minutes(train_time, "wall_s"), "train_cpu_min": _minutes(train_time, "cpu_s"),
        "eval_wall_min": _minutes(eval_time, "wall_s"), "eval_cpu_min": _minutes(eval_time, "cpu_s"),
        "useful_tokens_per_s": statistics.median(rates) if rates else None,
        "history": [{k: r.get(k) for k in ("step", "val_loss", "val_accuracy", "val_macro_f1", "useful_tokens_per_s")}
                    for r in history],
    }


def _minutes(timing: dict | None, key: str) -> float | None:
    return None if timing is None else timing[key] / 60


def _fmt(value, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| recipe | overrides | steps run (best) | test rows | accuracy | macro-F1 | base macro-F1 "
             "| train wall min | train CPU-min | useful tok/s | eval wall min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {' '.join(r['overrides']) or '—'} | failed: {r['error'][:120]} "
                         "|  |  |  |  |  |  |  |  |")
            continue
        overrides = " ".join(r["overrides"] + ([f"epochs={r['epochs']:g}"] if r["epochs"] is not None else [])) or "—"
        lines.append(
            f"| {r['recipe']} | {overrides} | {r['steps_run']} ({r['best_step']}) | {r['test_rows_scored']} "
            f"| {_fmt(r['accuracy'], 3)} | {_fmt(r['macro_f1'], 3)} | {_fmt(r['base_macro_f1'], 3)} "
            f"| {_fmt(r['train_wall_min'], 1)} | {_fmt(r['train_cpu_min'], 1)} | {_fmt(r['useful_tokens_per_s'], 0)} "
            f"| {_fmt(r['eval_wall_min'], 1)} |")
    return "\n".join(lines)


def plot_learning_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for index, r in enumerate(row for row in rows if "error" not in row and row["train_cpu_min"] is not None):
        color = f"C{index % 10}"
        steps_run = max(1, r["steps_run"])
        curve = [(r["train_cpu_min"] * h["step"] / steps_run, h["val_macro_f1"]) for h in r["history"]
                 if h["val_macro_f1"] is not None and math.isfinite(h["val_macro_f1"])]
        if curve:
            axes.plot(*zip(*curve), "--", color=color, alpha=0.6, marker=".")
        axes.plot([r["train_cpu_min"]], [r["macro_f1"]], "o", color=color, markersize=8, label=r["recipe"])
    axes.set_xlabel("training CPU-minutes (process CPU time of the Trainer)")
    axes.set_ylabel("macro-F1")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.text(0.01, 0.01, "dashed: per-round validation sample; dot: whole held-out test split",
              transform=axes.transAxes, fontsize=8, alpha=0.7)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated, from: {', '.join(RECIPES)} (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BANKING77 train.csv (text,category)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default runs/bench_recipe, with --quick runs/bench_recipe_quick)")
    parser.add_argument("--runs-root", type=Path, default=REPO / "runs",
                        help="the pipeline's runs root, which holds the artifact cache")
    parser.add_argument("--set", dest="set_flags", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an extra override for every recipe (applied last)")
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="test rows scored per recipe (default: the whole split; --quick: 40)")
    parser.add_argument("--quick", action="store_true", help="tiny random model and a few steps: checks the script")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        parser.exit(2, f"error: unknown recipe {', '.join(unknown) or '(none given)'}; "
                       f"choose from: {', '.join(RECIPES)}\n")
    if not args.data.is_file():
        parser.exit(2, f"error: the BANKING77 file {args.data} does not exist (give its train.csv with --data)\n")
    if args.eval_examples is not None and args.eval_examples < 0:
        parser.exit(2, "error: --eval-examples must be 0 (the whole split) or more\n")
    args.recipes, args.data = names, args.data.resolve()
    args.out = (args.out or REPO / "runs" / ("bench_recipe_quick" if args.quick else "bench_recipe")).resolve()
    args.runs_root = args.runs_root.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # every recipe's settings are checked before anything runs
        for name in args.recipes:
            build_params(params_classes(), "default", None, recipe_flags(args, RECIPES[name]))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started, rows = time.monotonic(), []
    for name in args.recipes:
        try:
            rows.append(run_recipe(args, name, RECIPES[name]))
        except UsageError as error:
            print(f"error: {name}: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # noqa: BLE001 - one failed recipe is reported, the others still run
            message = f"{type(error).__name__}: {error}"
            print(f"[{name}] failed: {message}", file=sys.stderr, flush=True)
            rows.append({"recipe": name, "overrides": RECIPES[name].overrides, "error": message})
        import keras

        keras.backend.clear_session()
        gc.collect()
    cores = len(os.sched_getaffinity(0))
    title = (f"BANKING77 recipes{' (--quick: tiny random model)' if args.quick else ''}, "
             f"{cores} cores, {time.strftime('%Y-%m-%d')}")
    report = {"data": str(args.data), "quick": args.quick, "cores": cores, "machine": platform.machine(),
              "processor": cpu_model(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "study_wall_min": (time.monotonic() - started) / 60,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "recipes": rows}
    (args.out / "recipes.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows)
    (args.out / "recipes.md").write_text(f"{title}\n\n{table}\n")
    plot_learning_curve(rows, args.out / "learning_curve.png", title)
    print(f"\n{title}\n\n{table}\n\nwritten: {args.out / 'recipes.json'}, recipes.md, learning_curve.png "
          f"({report['study_wall_min']:.1f} min)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
