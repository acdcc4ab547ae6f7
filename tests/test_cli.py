"""The command line: usage errors exit 2 with one line, listings come from the declared specs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import pipeline
from components.graph import mermaid
from components.runner import LocalRunner, Node
from tests.helpers import run_cli
from tests.test_runner import CountParams, Doubler, Source

REPO = Path(__file__).resolve().parents[1]


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    code = run_cli(monkeypatch, *args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["run", "--only", "nope"], "unknown component 'nope'"),
    (["run", "--from", "nope"], "unknown component 'nope'"),
    (["run", "--set", "trainer.no_such_key=1"], "unknown parameter 'trainer.no_such_key'"),
    (["run", "--set", "nosection.steps=1"], "unknown section 'nosection'"),
    (["run", "--set", "trainer.steps=ten"], "trainer.steps: expected int, got 'ten'"),
    (["run", "--set", "trainer.jit_compile=maybe"], "expected bool"),
    (["run", "--set", "trainer.steps"], "expected section.key=value"),
    (["run", "--set", "student.no_such_key=1"], "unknown parameter 'student.no_such_key'"),
    (["run", "--set", "student.target_sparsity=1.5"], "target_sparsity must be in [0, 1)"),
    (["run", "--set", "optimizer.student.steps=3"], "unknown parameter 'optimizer.student'"),
    (["run", "--set", "trainer.steps.x=1"], "unknown parameter 'trainer.steps.x'"),
    (["run", "--set", "trainer.steps=0"], "steps must be at least 1"),
    (["run", "--config", "/no/such/file.yaml"], "config file /no/such/file.yaml does not exist"),
    (["run", "--profile", "huge"], "Invalid value for '--profile'"),
    (["frobnicate"], "No such command"),
    (["show", "no-such-run"], "no run 'no-such-run'"),
    (["run", "--set", "base_model.source=gguf:/no/such.gguf"], "GGUF file /no/such.gguf does not exist"),
    (["run", "--set", "base_model.source=bert"], "source must be smollm2 | gguf:PATH | hf:DIR | tiny-random"),
    (["generate", "hello"], "choose exactly one of --base or --run RUN"),
])
def test_usage_errors_exit_2_with_one_line(monkeypatch, capsys, tmp_path, args, message):
    code, out, err = cli(monkeypatch, capsys, "--runs-root", str(tmp_path / "runs"), *args)
    assert code == 2, (out, err)
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists(), "a usage error must not start a run"


def test_malformed_config_file_exits_2(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [steps: 3\n")
    code, _, err = cli(monkeypatch, capsys, "run", "--config", str(bad))
    assert code == 2 and "is not valid YAML" in err
    wrong_shape = tmp_path / "list.yaml"
    wrong_shape.write_text("- 1\n- 2\n")
    code, _, err = cli(monkeypatch, capsys, "run", "--config", str(wrong_shape))
    assert code == 2 and "must map component names" in err


def test_set_values_are_typed_by_the_dataclass_field():
    params, config = pipeline.build_params(pipeline.params_classes(), "smoke", None, [
        "trainer.steps=7", "trainer.learning_rate=0.01", "trainer.jit_compile=true",
        "trainer.lora_targets=query,value", "transform.split_ratios=0.7,0.15,0.15", "example_gen.source=none"])
    trainer = params["trainer"]
    assert (trainer.steps, trainer.learning_rate, trainer.jit_compile) == (7, 0.01, True)
    assert trainer.lora_targets == ["query", "value"]
    assert params["transform"].split_ratios == [0.7, 0.15, 0.15]
    assert params["example_gen"].source is None
    assert config["trainer"]["steps"] == 7


def test_student_settings_come_from_yaml_then_set_flags_and_the_student_runs_by_default(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("student:\n  steps: 40\n  alphas: [0.3]\n")
    params, config = pipeline.build_params(pipeline.params_classes(), "default", str(config_file), [
        "student.enabled=false", "student.temperatures=1,4"])
    student = params["student"]
    assert (student.enabled, student.steps, student.alphas, student.temperatures) == (False, 40, [0.3], [1.0, 4.0])
    assert student.num_layers == 6  # untouched fields keep their defaults
    assert config["student"]["steps"] == 40 and config["student"]["enabled"] is False
    default, _ = pipeline.build_params(pipeline.params_classes(), "default", None, [])
    assert default["student"].enabled is True and default["student"].steps == 1000  # part of `make run`


def test_config_file_then_set_flags_override_the_profile(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("trainer:\n  steps: 11\n  batch_size: 3\n")
    params, _ = pipeline.build_params(pipeline.params_classes(), "smoke", str(config_file), ["trainer.steps=12"])
    assert params["trainer"].steps == 12 and params["trainer"].batch_size == 3


def test_components_listing_is_derived_from_the_specs(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "components")
    assert code == 0
    for node in pipeline.build_pipeline():
        assert f"{node.name} (v{node.component.version})" in out
        for input_name, (upstream, output) in node.wiring.items():
            assert f"input  {input_name}: {node.component.inputs[input_name]}  <- {upstream}.{output}" in out
        if node.component.params_section is not None:  # shares another section: listed there, once
            assert f"params: the {node.component.params_section} section's" in out
            continue
        for field in dataclasses.fields(node.component.Params):
            assert re.search(rf"param  {node.name}\.{re.escape(field.name)}: .+ = ", out), field.name
    # A component added to the DAG shows up with no hand-kept list to update.
    extra = pipeline.build_pipeline() + [Node(Source(), {})]
    monkeypatch.setattr(pipeline, "build_pipeline", lambda: extra)
    _, out, _ = cli(monkeypatch, capsys, "components")
    assert "param  source.value: int = 1  a number that flows downstream" in out


def test_readme_diagram_matches_the_declared_specs():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- pipeline-graph:start -->\n```mermaid\n(.*?)\n```\n<!-- pipeline-graph:end -->",
                      readme, re.S)
    assert block, "README.md lacks the pipeline-graph block"
    assert block.group(1) == mermaid(pipeline.build_pipeline()), \
        "README diagram is stale: paste the output of `python pipeline.py graph`"


def test_graph_command_prints_mermaid_and_writes_a_png(monkeypatch, capsys, tmp_path):
    image = tmp_path / "graph.png"
    code, out, _ = cli(monkeypatch, capsys, "graph", "--output", str(image))
    assert code == 0 and out.startswith("flowchart LR")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_and_show_list_real_runs(monkeypatch, capsys, tmp_path):
    runs_root = tmp_path / "runs"
    runner = LocalRunner([Node(Source(), {}), Node(Doubler(), {"numbers": ("source", "numbers")})], runs_root,
                         log=lambda *_: None)
    runner.run(runs_root / "older", {"source": CountParams(1)}, profile="smoke")
    runner.run(runs_root / "newer", {"source": CountParams(2)}, profile="smoke")
    code, out, _ = cli(monkeypatch, capsys, "--runs-root", str(runs_root), "runs")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[1].startswith("newer") and lines[2].startswith("older")
    assert "succeeded" in lines[1]
    code, out, _ = cli(monkeypatch, capsys, "--runs-root", str(runs_root), "show", "newer")
    assert code == 0
    assert re.search(r"source\s+done", out) and re.search(r"doubler\s+done", out)
    assert "metrics: {\"count\": 3}" in out


def test_a_corrupt_gguf_stops_the_run_with_exit_2_and_one_sentence(monkeypatch, capsys, tmp_path):
    corrupt = tmp_path / "model.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    code, out, err = cli(monkeypatch, capsys, "--runs-root", str(tmp_path / "runs"), "run", "--profile", "smoke",
                         "--set", f"base_model.source=gguf:{corrupt}", "--set", "example_gen.num_records=20",
                         "--only", "base_model")
    assert code == 2, (out, err)
    assert "base_model failed" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").rglob("model_config.json")), "no half-written model may remain"
