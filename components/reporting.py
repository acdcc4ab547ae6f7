"""What the CLI prints: component specs, the list of runs, one run, and the end-of-run summary."""

from __future__ import annotations

import json
from pathlib import Path

import click

from components.base import UsageError
from components.runner import RUN_FILE, Node, load_run_record
from schemas.artifacts import BenchmarkFiles, DatasetsFiles, EvaluationFiles, ModelFiles

HEADLINE = ("accuracy", "macro_f1", "perplexity", "base_accuracy", "base_macro_f1", "base_perplexity")


def describe_components(nodes: list[Node]) -> str:
    blocks = []
    for node in nodes:
        component = node.component
        lines = [f"{component.name} (v{component.version}): {component.description}"]
        for input_name, artifact_type in component.inputs.items():
            upstream, output = node.wiring[input_name]
            lines.append(f"  input  {input_name}: {artifact_type}  <- {upstream}.{output}")
        for output_name, artifact_type in component.outputs.items():
            lines.append(f"  output {output_name}: {artifact_type}")
        if component.params_section is not None:
            section = component.params_section
            lines.append(f"  params: the {section} section's (--set {section}.KEY=...)")
        else:
            for name, type_name, default, doc in component.parameter_docs():
                lines.append(f"  param  {component.name}.{name}: {type_name} = {default!r}  {doc}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def headline_metrics(record: dict) -> dict:
    evaluator = record.get("components", {}).get("evaluator", {})
    metrics = evaluator.get("metrics", {}).get("evaluation", {})
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def _format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()) or "-"


def list_runs(runs_root: Path) -> str:
    records = []
    for run_file in Path(runs_root).glob(f"*/{RUN_FILE}"):
        record = load_run_record(run_file.parent)
        if record:
            records.append(record)
    if not records:
        return f"no runs under {runs_root}"
    records.sort(key=lambda r: r.get("started_at", ""), reverse=True)
    lines = [f"{'run':32} {'status':10} {'profile':8} {'started':26} headline"]
    for r in records:
        lines.append(f"{r['run_id']:32} {r['status']:10} {r.get('profile', ''):8} {r.get('started_at', ''):26} "
                     f"{_format_metrics(headline_metrics(r))}")
    return "\n".join(lines)


def resolve_run(runs_root: Path, run_id: str) -> Path:
    for candidate in (Path(run_id), Path(runs_root) / run_id):
        if (candidate / RUN_FILE).exists():
            return candidate
    raise UsageError(f"no run '{run_id}' under {runs_root} (see `pipeline.py runs`)")


def model_dir_of_run(runs_root: Path, run_id: str) -> Path:
    """The fine-tuned model folder of a run (its Trainer artifact, wherever the cache put it)."""
    record = load_run_record(resolve_run(runs_root, run_id))
    uri = record["components"].get("trainer", {}).get("artifacts", {}).get("model")
    if not uri or not ModelFiles(uri).config_file.exists():
        raise UsageError(f"run '{run_id}' has no trained model (its trainer did not finish)")
    return Path(uri)


def show_run(runs_root: Path, run_id: str) -> str:
    run_dir = resolve_run(runs_root, run_id)
    record = load_run_record(run_dir)
    lines = [f"run {record['run_id']}: {record['status']} (profile {record.get('profile')}, "
             f"started {record.get('started_at')}, finished {record.get('finished_at')})"]
    for name, component in record["components"].items():
        lines.append(f"  {name:12} {component['status']:8} {component['duration_s']:8.1f}s")
        for output, uri in component.get("artifacts", {}).items():
            lines.append(f"      {output}: {uri}")
            metrics = component.get("metrics", {}).get(output, {})
            if metrics:
                lines.append(f"        metrics: {json.dumps(metrics, default=str)[:300]}")
        if component.get("error"):
            lines.append(f"      error: {component['error']}")
    return "\n".join(lines)


def print_summary(result, runs_root: Path) -> None:
    """The one-screen end of a run: what ran, headline metrics, where to look next."""
    record = load_run_record(result.run_dir)
    click.echo("")
    click.echo(f"run {result.run_dir.name} {result.status}: executed {len(result.executed)}, "
               f"cached {len(result.cached)}")
    metrics = headline_metrics(record)
    if metrics:
        click.echo("  fine-tuned: " + _format_metrics({k: v for k, v in metrics.items() if not k.startswith("base_")}))
        click.echo("  base model: " + _format_metrics({k[5:]: v for k, v in metrics.items() if k.startswith("base_")}))
    readable = {"evaluator": lambda folder: EvaluationFiles(folder).report_file,
                "transform": lambda folder: DatasetsFiles(folder).statistics_report_file,
                "benchmark": lambda folder: BenchmarkFiles(folder).markdown_file}
    for name, report_of in readable.items():
        artifacts = record["components"].get(name, {}).get("artifacts", {})
        if artifacts:
            click.echo(f"  {name:10} {report_of(Path(next(iter(artifacts.values()))))}")
    exporter = record["components"].get("exporter", {}).get("metrics", {}).get("bundles", {})
    if exporter:
        click.echo(f"  pushed to  {exporter.get('pushed_to') or 'nowhere (not blessed or push disabled)'}")
    click.echo(f"  TensorBoard: tensorboard --logdir {result.run_dir / 'tensorboard'}")
