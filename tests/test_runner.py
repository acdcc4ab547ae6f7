"""The component contract and the local runner: ordering, caching, resume, atomic artifacts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from components.base import ARTIFACT_FILE, Artifact, Component, UsageError
from components.config import param
from components.runner import LocalRunner, Node, load_run_record, topological_order

CALLS: list[str] = []


@dataclass
class CountParams:
    """Toy parameters."""

    value: int = param(1, "a number that flows downstream")


class Source(Component):
    name = "source"
    outputs = {"numbers": "Numbers"}
    Params = CountParams

    def execute(self, ctx):
        CALLS.append(self.name)
        (ctx.output_dir("numbers") / "numbers.json").write_text(json.dumps([ctx.params.value] * 3))
        return {"numbers": {"count": 3}}


class Doubler(Component):
    name = "doubler"
    inputs = {"numbers": "Numbers"}
    outputs = {"doubled": "Numbers"}

    def execute(self, ctx):
        CALLS.append(self.name)
        numbers = json.loads(ctx.input("numbers").path("numbers.json").read_text())
        (ctx.output_dir("doubled") / "numbers.json").write_text(json.dumps([2 * n for n in numbers]))


class Summer(Component):
    """Fails while the class attribute `fail` is set, to test resume."""

    name = "summer"
    inputs = {"doubled": "Numbers"}
    outputs = {"total": "Total"}
    fail = False

    def execute(self, ctx):
        CALLS.append(self.name)
        (ctx.output_dir("total") / "partial.txt").write_text("half written")
        if Summer.fail:
            raise RuntimeError("disk on fire")
        total = sum(json.loads(ctx.input("doubled").path("numbers.json").read_text()))
        return {"total": {"total": total}}


def toy_pipeline(shuffled: bool = False) -> list[Node]:
    nodes = [Node(Source(), {}), Node(Doubler(), {"numbers": ("source", "numbers")}),
             Node(Summer(), {"doubled": ("doubler", "doubled")})]
    return list(reversed(nodes)) if shuffled else nodes


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    Summer.fail = False


def run(tmp_path, run_id="r1", value=1, **kwargs):
    runner = LocalRunner(toy_pipeline(shuffled=True), tmp_path / "runs", log=lambda *_: None)
    return runner.run(tmp_path / "runs" / run_id, {"source": CountParams(value)}, **kwargs)


def test_nodes_run_in_dependency_order_whatever_the_declaration_order(tmp_path):
    assert [n.name for n in topological_order(toy_pipeline(shuffled=True))] == ["source", "doubler", "summer"]
    result = run(tmp_path)
    assert result.status == "succeeded"
    assert CALLS == ["source", "doubler", "summer"]
    assert result.artifacts["summer"]["total"].metrics == {"total": 6}


def test_cycles_and_dangling_inputs_are_rejected():
    nodes = toy_pipeline()
    nodes[0] = Node(Source(), {"loop": ("summer", "total")})
    with pytest.raises(ValueError, match="cycle"):
        topological_order(nodes)
    with pytest.raises(ValueError, match="unknown component"):
        topological_order([Node(Doubler(), {"numbers": ("nowhere", "numbers")})])


def test_second_identical_run_executes_no_component(tmp_path):
    run(tmp_path, "r1")
    CALLS.clear()
    second = run(tmp_path, "r2")
    assert CALLS == []
    assert second.executed == [] and second.cached == ["source", "doubler", "summer"]
    record = load_run_record(tmp_path / "runs" / "r2")
    assert {c["status"] for c in record["components"].values()} == {"cached"}
    assert second.artifacts["summer"]["total"].metrics == {"total": 6}


def test_changed_parameter_reruns_that_component_and_everything_downstream(tmp_path):
    run(tmp_path, "r1", value=1)
    CALLS.clear()
    result = run(tmp_path, "r2", value=5)
    assert CALLS == ["source", "doubler", "summer"]
    assert result.artifacts["summer"]["total"].metrics == {"total": 30}


def test_force_and_from_ignore_the_cache(tmp_path):
    run(tmp_path, "r1")
    CALLS.clear()
    run(tmp_path, "r2", start_from="doubler")
    assert CALLS == ["doubler", "summer"]
    CALLS.clear()
    run(tmp_path, "r3", force=True)
    assert CALLS == ["source", "doubler", "summer"]


def test_only_runs_one_component_with_inputs_from_the_cache(tmp_path):
    run(tmp_path, "r1")
    CALLS.clear()
    result = run(tmp_path, "r2", only="doubler", force=True)
    assert CALLS == ["doubler"]
    assert result.status == "succeeded"


def test_only_with_an_uncached_upstream_is_a_usage_error_not_a_silent_success(tmp_path):
    with pytest.raises(UsageError, match="--only summer needs the output of doubler in the cache"):
        run(tmp_path, "r1", only="summer")
    assert load_run_record(tmp_path / "runs" / "r1")["status"] == "failed"


def test_unknown_component_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown component 'nope'"):
        run(tmp_path, only="nope")


def test_failure_keeps_finished_artifacts_and_run_again_resumes_at_the_failed_component(tmp_path):
    Summer.fail = True
    failed = run(tmp_path, "r1")
    assert failed.status == "failed" and failed.failed == "summer"
    assert isinstance(failed.error, RuntimeError)
    record = load_run_record(tmp_path / "runs" / "r1")
    assert record["status"] == "failed"
    assert record["components"]["summer"]["status"] == "failed"
    assert "disk on fire" in record["components"]["summer"]["error"]
    assert Artifact.load(tmp_path / "runs" / "r1" / "doubler" / "doubled") is not None
    # The failed component left no artifact folder, not even a hidden temporary one.
    assert not (tmp_path / "runs" / "r1" / "summer" / "total").exists()
    assert [p.name for p in (tmp_path / "runs" / "r1" / "summer").iterdir() if p.name.startswith(".tmp")] == []

    Summer.fail = False
    CALLS.clear()
    resumed = run(tmp_path, "r1")
    assert CALLS == ["summer"]
    assert resumed.status == "succeeded"


def test_an_artifact_folder_without_a_complete_artifact_json_is_not_accepted(tmp_path):
    run(tmp_path, "r1")
    artifact_dir = tmp_path / "runs" / "r1" / "summer" / "total"
    meta = artifact_dir / ARTIFACT_FILE
    # An interrupted write: artifact.json cut short. Neither the cache nor in-place reuse may accept it.
    meta.write_text(meta.read_text()[:40])
    assert Artifact.load(artifact_dir) is None
    CALLS.clear()
    result = run(tmp_path, "r2")
    assert CALLS == ["summer"]
    assert result.artifacts["summer"]["total"].metrics == {"total": 6}


def test_an_artifact_with_another_fingerprint_is_not_reused(tmp_path):
    run(tmp_path, "r1")
    meta_path = tmp_path / "runs" / "r1" / "summer" / "total" / ARTIFACT_FILE
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    CALLS.clear()
    run(tmp_path, "r1")
    assert CALLS == ["summer"]


def test_artifact_json_records_the_contract(tmp_path):
    result = run(tmp_path)
    meta = json.loads((result.artifacts["doubler"]["doubled"].uri / ARTIFACT_FILE).read_text())
    assert set(meta) >= {"type", "producer", "parameters", "input_fingerprints", "metrics", "created_at",
                         "fingerprint", "component_version"}
    assert meta["type"] == "Numbers" and meta["producer"] == "doubler"
    assert meta["input_fingerprints"] == {"numbers": result.artifacts["source"]["numbers"].fingerprint}


def test_changed_code_or_library_versions_are_not_cache_hits(tmp_path, monkeypatch):
    """A stale artifact (made by older code, e.g. an older PII rule) must never be reused."""
    import components.runner as runner

    run(tmp_path, "r1")
    CALLS.clear()
    run(tmp_path, "r2")
    assert CALLS == []  # same code: every component is a cache hit
    edited = {**runner.code_fingerprint(), "source_sha256": "0" * 64}
    monkeypatch.setattr(runner, "code_fingerprint", lambda: edited)
    run(tmp_path, "r3")
    assert CALLS == ["source", "doubler", "summer"]


def test_source_digest_follows_every_source_file(tmp_path):
    from components.runner import source_digest

    (tmp_path / "models" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "sub" / "a.py").write_text("x = 1\n")
    (tmp_path / "models" / "notes.md").write_text("prose does not count\n")
    before = source_digest(tmp_path, ("models",))
    (tmp_path / "models" / "notes.md").write_text("edited prose\n")
    assert source_digest(tmp_path, ("models",)) == before
    (tmp_path / "models" / "sub" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path, ("models",)) != before


@pytest.mark.parametrize("stop", [SystemExit(3), KeyboardInterrupt()])
def test_an_exit_or_interrupt_inside_a_component_is_recorded_and_not_swallowed(tmp_path, monkeypatch, stop):
    def execute(self, ctx):
        raise stop

    monkeypatch.setattr(Summer, "execute", execute)
    with pytest.raises(type(stop)):
        run(tmp_path, "r1")
    record = load_run_record(tmp_path / "runs" / "r1")
    assert record["status"] == "failed" and record["components"]["summer"]["status"] == "failed"
    assert not list((tmp_path / "runs" / "r1" / "summer").glob(".tmp-*"))  # no half-written artifact


def test_a_component_left_running_by_a_killed_start_is_recorded_as_interrupted(tmp_path):
    """A new start of a run folder never shows the killed start's component as running (the kill drill read it so)."""
    from components.run_store import RunRecord

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"components": {
        "a": {"status": "done"}, "b": {"status": "running", "fingerprint": "f"}}}))
    record = RunRecord(run_dir, "p", {})
    assert record.data["components"] == {"a": {"status": "done"}, "b": {"status": "interrupted", "fingerprint": "f"}}
    assert load_run_record(run_dir)["components"]["b"]["status"] == "running"  # nothing written until it saves
    record.save()
    assert load_run_record(run_dir)["components"]["b"]["status"] == "interrupted"


def test_a_cache_hit_removes_the_half_written_output_a_killed_start_left(tmp_path):
    """The kill drill found a killed start's .tmp folder left beside a component that was then a cache hit."""
    nodes = [Node(Source(), {})]
    runner = LocalRunner(nodes, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "r"
    assert runner.run(run_dir, {"source": CountParams()}).status == "succeeded"
    leftover = run_dir / "source" / ".tmp-numbers-99999"
    leftover.mkdir()
    (leftover / "numbers.json").write_text("[1, 2")  # half-written
    result = LocalRunner(nodes, tmp_path / "runs").run(run_dir, {"source": CountParams()})
    assert result.cached == ["source"] and not leftover.exists()


def test_the_base_evaluation_is_reused_across_training_and_blessing_changes_but_not_row_changes():
    """The BaseEvaluator reads the evaluator section and hashes only what changes the base model's scores."""
    import pipeline
    from components.evaluator.baseline import BaseEvaluator
    from components.evaluator.component import EvaluatorParams
    from components.runner import fingerprint_of

    inputs = {"datasets": "d" * 64, "base_model": "b" * 64}
    base = fingerprint_of(BaseEvaluator(), EvaluatorParams(), inputs)
    assert fingerprint_of(BaseEvaluator(), EvaluatorParams(min_macro_f1=0.9, max_perplexity_ratio=0.5), inputs) == base
    assert fingerprint_of(BaseEvaluator(), EvaluatorParams(max_examples=7), inputs) != base
    assert fingerprint_of(BaseEvaluator(), EvaluatorParams(base_shots=2), inputs) != base
    params, _ = pipeline.build_params(pipeline.params_classes(), "smoke", None, ["evaluator.max_examples=5",
                                                                                 "trainer.steps=3"])
    assert "base_evaluator" not in params  # no section of its own: `--set base_evaluator.x` is unknown
    assert params[BaseEvaluator().section].max_examples == 5
