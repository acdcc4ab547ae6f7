"""fintune's command line and its DAG: which component feeds which.

    python pipeline.py run [--profile smoke|default] [--config FILE.yaml] [--set section.key=value ...]
    python pipeline.py worker --run-dir RUN [same settings as the chief's run]   (TF_CONFIG names the task)
    python pipeline.py components | runs | show RUN | graph
    python pipeline.py serve [--model-base-path serving/models] [--port 8501]
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402

from components.base import PipelineError, UsageError  # noqa: E402
from components.base_model import BaseModel  # noqa: E402
from components.benchmark.component import Benchmark  # noqa: E402
from components.config import PROFILES, build_params  # noqa: E402
from components.evaluator.baseline import BaseEvaluator  # noqa: E402
from components.evaluator.component import Evaluator  # noqa: E402
from components.example_gen.component import ExampleGen  # noqa: E402
from components.exporter.component import Exporter  # noqa: E402
from components.optimizer.component import Optimizer  # noqa: E402
from components.runner import Node  # noqa: E402
from components.student.component import Student  # noqa: E402
from components.trainer.component import Trainer  # noqa: E402
from components.transform.component import Transform  # noqa: E402

DEFAULT_RUNS_ROOT = Path(os.environ.get("FINTUNE_RUNS", "runs"))


def build_pipeline() -> list[Node]:
    """The DAG. Inputs are wired by (upstream component, output name)."""
    base = ("base_model", "model")
    datasets = ("transform", "datasets")
    model = ("trainer", "model")
    evaluation, variants, student = ("evaluator", "evaluation"), ("optimizer", "variants"), ("student", "student")
    return [
        Node(ExampleGen(), {}),
        Node(BaseModel(), {}),
        Node(Transform(), {"examples": ("example_gen", "examples"), "base_model": base}),
        Node(BaseEvaluator(), {"datasets": datasets, "base_model": base}),
        Node(Trainer(), {"datasets": datasets, "base_model": base}),
        Node(Evaluator(), {"datasets": datasets, "model": model,
                           "base_evaluation": ("base_evaluator", "base_evaluation")}),
        Node(Optimizer(), {"model": model, "datasets": datasets, "evaluation": evaluation}),
        Node(Student(), {"model": model, "datasets": datasets, "evaluation": evaluation}),
        Node(Exporter(), {"variants": variants, "student": student, "model": model, "evaluation": evaluation}),
        Node(Benchmark(), {"bundles": ("exporter", "bundles"), "model": model, "datasets": datasets,
                           "variants": variants, "student": student}),
    ]


def params_classes() -> dict[str, type | None]:
    return {node.name: node.component.Params for node in build_pipeline() if node.component.params_section is None}


def _new_run_dir(runs_root: Path, profile: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = runs_root / f"{stamp}-{profile}", 1
    while run_dir.exists():
        n += 1
        run_dir = runs_root / f"{stamp}-{profile}-{n}"
    return run_dir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RUNS_ROOT,
              show_default=True, help="Folder holding all runs (and the artifact cache).")
@click.pass_context
def cli(ctx: click.Context, runs_root: Path) -> None:
    """fintune: fine-tune, evaluate, compress and export a causal LM on fintech text."""
    ctx.obj = {"runs_root": runs_root}


def settings_options(command):
    """--profile, --config and --set: how `run` and `worker` are given the pipeline's parameters."""
    command = click.option("--set", "set_flags", multiple=True, metavar="SECTION.KEY=VALUE",
                           help="Override one parameter.")(command)
    command = click.option("--config", "config_file", type=str, default=None,
                           help="YAML file: {component: {param: value}}.")(command)
    return click.option("--profile", type=click.Choice(sorted(PROFILES)), default="default", show_default=True)(command)


@cli.command()
@settings_options
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: a new one under the runs root).")
@click.option("--only", default=None, metavar="COMPONENT", help="Run this component alone (inputs from the cache).")
@click.option("--from", "start_from", default=None, metavar="COMPONENT", help="Re-run from this component on.")
@click.option("--force", is_flag=True, help="Ignore the cache.")
@click.pass_context
def run(ctx, profile, config_file, set_flags, run_dir, only, start_from, force) -> None:
    """Run the whole pipeline (cached components are skipped)."""
    from components.reporting import print_summary
    from components.runner import LocalRunner

    runs_root = ctx.obj["runs_root"]
    params, config = build_params(params_classes(), profile, config_file, set_flags)
    if params["trainer"].distribution == "multi_worker" and only in (None, "trainer"):
        _join_cluster_as_chief()
    run_dir = run_dir or _new_run_dir(runs_root, profile)
    click.echo(f"run {run_dir} (profile {profile})")
    from tqdm.auto import tqdm

    # tqdm.write keeps log lines and live progress bars from running into each other.
    runner = LocalRunner(build_pipeline(), runs_root, log=tqdm.write)
    result = runner.run(run_dir, params, profile, config, only=only, start_from=start_from, force=force)
    if result.status == "failed":
        error = result.error
        message = str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
        click.echo(f"error: {result.failed} failed: {message}", err=True)
        click.echo(f"(traceback in {run_dir / 'error.log'}; run again to resume at {result.failed})", err=True)
        sys.exit(2 if isinstance(error, UsageError) else 1)
    print_summary(result, runs_root)


def _join_cluster_as_chief() -> None:
    """Start MultiWorkerMirroredStrategy before any TensorFlow op runs (TF requires it); waits for the workers."""
    from components.trainer.cluster import cluster_task_from_env

    task = cluster_task_from_env()
    if not task.is_chief:
        raise UsageError(f"TF_CONFIG makes this process {task.task_type} {task.task_index}, not the chief; "
                         "start it with `pipeline.py worker`")
    from components.trainer.distributed import start_strategy

    click.echo(f"joining the TF_CONFIG cluster as the chief ({task.num_workers} workers); waiting for the others")
    start_strategy("multi_worker")


@cli.command()
@settings_options
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The chief's run folder (shared with it): its checkpoint is read from there on resume.")
@click.option("--wait-seconds", type=click.FloatRange(0), default=3600.0, show_default=True,
              help="How long to wait for the chief to produce the Trainer's inputs.")
@click.pass_context
def worker(ctx, profile, config_file, set_flags, run_dir, wait_seconds) -> None:
    """A non-chief worker of a multi_worker Trainer (TF_CONFIG names its task); same settings as the chief's run."""
    from components.trainer.cluster import cluster_task_from_env

    params, _ = build_params(params_classes(), profile, config_file, set_flags)
    if params["trainer"].distribution != "multi_worker":
        raise UsageError("a worker trains with trainer.distribution=multi_worker; pass the chief's settings")
    task = cluster_task_from_env()
    if task.is_chief:
        raise UsageError("TF_CONFIG makes this process the chief; the chief runs `pipeline.py run`")
    from components.trainer.worker import run_worker

    run_worker(build_pipeline(), params, ctx.obj["runs_root"], run_dir, wait_seconds, log=click.echo)


@cli.command()
def components() -> None:
    """Each component with its inputs, outputs and parameters (from the declared specs)."""
    from components.reporting import describe_components

    click.echo(describe_components(build_pipeline()))


@cli.command()
@click.pass_context
def runs(ctx) -> None:
    """The runs under the runs root, newest first, with status and headline metrics."""
    from components.reporting import list_runs

    click.echo(list_runs(ctx.obj["runs_root"]))


@cli.command()
@click.argument("run_id")
@click.pass_context
def show(ctx, run_id) -> None:
    """One run: each component's status, duration, artifacts and metrics."""
    from components.reporting import show_run

    click.echo(show_run(ctx.obj["runs_root"], run_id))


@cli.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("pipeline_graph.png"),
              show_default=True, help="Where the PNG drawing goes.")
def graph(output) -> None:
    """The pipeline's architecture diagram, as Mermaid text and a PNG image."""
    from components.graph import draw_png, mermaid

    click.echo(mermaid(build_pipeline()))
    draw_png(build_pipeline(), output)
    click.echo(f"%% image written to {output}")


@cli.command()
@click.argument("prompt")
@click.option("--base", "use_base", is_flag=True, help="The untuned base model (SmolLM2-135M-Instruct).")
@click.option("--run", "run_id", default=None, help="The fine-tuned model of this run.")
@click.option("--max-new-tokens", type=click.IntRange(1, 2048), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0.0, 10.0), default=0.0, show_default=True,
              help="0 decodes greedily.")
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def generate(ctx, prompt, use_base, run_id, max_new_tokens, temperature, top_p, seed) -> None:
    """Answer PROMPT with the base or a fine-tuned model, in the model's own chat template."""
    from components.reporting import model_dir_of_run
    from models.llm.chat import respond
    from models.llm.gguf_import import ModelImportError, import_gguf
    from models.llm.language_model import load_model

    if use_base == (run_id is not None):
        raise UsageError("choose exactly one of --base or --run RUN")
    try:
        folder = import_gguf() if use_base else model_dir_of_run(ctx.obj["runs_root"], run_id)
    except ModelImportError as error:
        raise UsageError(str(error)) from None
    causal_lm, tokenizer, _ = load_model(folder)
    click.echo(respond(causal_lm, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed))


@cli.command()
@click.option("--model-base-path", type=click.Path(path_type=Path), default=Path("serving/models"), show_default=True,
              help="TF Serving's base path: NAME/VERSION/ folders (the Exporter's push, or a copied bundle).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8501, show_default=True, help="TF Serving's REST port.")
@click.option("--enable-batching/--no-enable-batching", default=True, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--batch-timeout-micros", type=click.IntRange(0, 10_000_000), default=2000, show_default=True)
@click.option("--max-enqueued-batches", type=click.IntRange(1, 100_000), default=16, show_default=True)
@click.option("--file-system-poll-wait-seconds", type=click.FloatRange(0), default=1.0, show_default=True,
              help="How often the base path is scanned for new versions (0: once, at start).")
@click.option("--num-threads", type=click.IntRange(1, 256), default=2, show_default=True,
              help="LiteRT interpreter threads per model.")
def serve(model_base_path, host, port, enable_batching, max_batch_size, batch_timeout_micros, max_enqueued_batches,
          file_system_poll_wait_seconds, num_threads) -> None:
    """Serve the newest version of every model under the base path over TF Serving's REST API."""
    from serving.server import serve_forever

    if not model_base_path.is_dir():
        raise UsageError(f"no model base path {model_base_path} (the Exporter pushes blessed models there)")
    serve_forever(model_base_path, host, port, enabled=enable_batching, max_batch_size=max_batch_size,
                  batch_timeout_micros=batch_timeout_micros, max_enqueued_batches=max_enqueued_batches,
                  poll_seconds=file_system_poll_wait_seconds, num_threads=num_threads)


def main() -> None:
    """Entry point of `python pipeline.py` and the `fintune` console script."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except UsageError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except PipelineError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
