"""A non-chief worker of a multi_worker Trainer: `pipeline.py worker` with the chief's settings and --run-dir.

The worker computes the same fingerprints as the chief's `pipeline.py run`, waits until the Trainer's
inputs are in the artifact cache (the chief may still be producing them), then trains with the chief
under MultiWorkerMirroredStrategy. It writes nothing: artifacts, TensorBoard and checkpoints are the
chief's; it reads the chief's checkpoint from the shared run folder to resume.
"""

from __future__ import annotations

import time
from pathlib import Path

from components.base import PipelineError
from components.runner import ArtifactCache, fingerprint_of, params_for, topological_order

TRAINER = "trainer"


def trainer_inputs(nodes, params: dict, runs_root: Path) -> tuple[dict | None, str]:
    """({input name: cached artifact} or None while one is missing, the Trainer's fingerprint)."""
    cache, found = ArtifactCache(Path(runs_root)), {}
    for node in topological_order(nodes):
        input_fps = {}
        for input_name, (upstream, output) in node.wiring.items():
            artifact = found.get(upstream, {}).get(output)
            if artifact is None:
                return None, ""
            input_fps[input_name] = artifact.fingerprint
        fingerprint = fingerprint_of(node.component, params_for(node, params), input_fps)
        if node.name == TRAINER:
            return {name: found[upstream][output] for name, (upstream, output) in node.wiring.items()}, fingerprint
        hit = cache.lookup(fingerprint, node.component.outputs)
        if hit is not None:
            found[node.name] = hit
    raise ValueError("the pipeline has no trainer")


def run_worker(nodes, params: dict, runs_root: Path, run_dir: Path, wait_seconds: float, log=print) -> None:
    from components.trainer.component import sized_from_data, train_rows
    from components.trainer.distributed import start_strategy, train_trial_distributed

    p = params[TRAINER]
    start_strategy(p.distribution)  # first: it waits for the whole cluster, chief included
    deadline = time.monotonic() + wait_seconds
    inputs, fingerprint = trainer_inputs(nodes, params, runs_root)
    if inputs is None:
        log("waiting for the chief to produce the Trainer's inputs")
    while inputs is None:
        if time.monotonic() > deadline:
            raise PipelineError(f"the Trainer's inputs did not appear under {runs_root} within {wait_seconds:g} s; "
                                "is the chief running with the same settings and runs root?")
        time.sleep(2.0)
        inputs, fingerprint = trainer_inputs(nodes, params, runs_root)
    if ArtifactCache(Path(runs_root)).lookup(fingerprint, {"model": "Model"}) is not None:
        log("worker: the chief's Trainer output is already in the cache; nothing to train")
        return
    work_dir = Path(run_dir) / TRAINER / f".work-{fingerprint[:16]}" / "train"  # the chief's trial folder
    log(f"worker: training with the chief (trainer {fingerprint[:12]})")
    p = sized_from_data(p, train_rows(inputs["datasets"]))  # the chief sizes its steps the same way
    train_trial_distributed(log, p, inputs["datasets"].uri, inputs["base_model"].uri, None, work_dir, chief=False)
    log("worker: done")
