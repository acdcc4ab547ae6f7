"""The measured best batch size flows from the Benchmark to later Evaluator runs on the same machine and model shape."""

from __future__ import annotations

import json

from components.evaluator.component import DEFAULT_BATCH_SIZE, scoring_batch_size
from components.tuning import TUNING_FILE, measured_batch_size, record_best_batch_size

SMALL = {"num_layers": 2, "hidden_dim": 32}
LARGE = {"num_layers": 30, "hidden_dim": 576}


def test_a_measured_batch_size_is_used_only_for_the_same_model_shape(tmp_path):
    lines = []
    assert scoring_batch_size(0, tmp_path, LARGE, lines.append) == DEFAULT_BATCH_SIZE  # nothing measured yet
    record_best_batch_size(tmp_path, SMALL, 32, "the benchmark of run smoke")
    assert measured_batch_size(tmp_path, LARGE) is None  # a tiny model's figure never sizes the real one
    assert scoring_batch_size(0, tmp_path, SMALL, lines.append) == 32
    record_best_batch_size(tmp_path, LARGE, 4, "the benchmark of run default")
    assert measured_batch_size(tmp_path, LARGE) == (4, "the benchmark of run default")
    assert measured_batch_size(tmp_path, SMALL)[0] == 32  # both kept
    assert scoring_batch_size(16, tmp_path, LARGE, lines.append) == 16  # a configured size always wins
    assert "measured on this machine by the benchmark of run smoke" in lines[1]


def test_an_unreadable_tuning_file_falls_back_to_the_default(tmp_path):
    (tmp_path / TUNING_FILE).write_text("{not json")
    assert scoring_batch_size(0, tmp_path, LARGE, lambda line: None) == DEFAULT_BATCH_SIZE
    record_best_batch_size(tmp_path, LARGE, 8, "x")  # rewritten, not crashed on
    assert len(json.loads((tmp_path / TUNING_FILE).read_text())) == 1


def _record_many(args):
    runs_root, worker = args
    for i in range(15):
        record_best_batch_size(runs_root, {"worker": worker, "i": i}, 8, f"worker {worker}")


def test_concurrent_records_lose_nothing(tmp_path):
    """Several processes recording at once: every entry survives (a lock around read-modify-write)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(6) as pool:
        pool.map(_record_many, [(tmp_path, w) for w in range(6)])
    data = json.loads((tmp_path / TUNING_FILE).read_text())
    assert len(data) == 6 * 15
    assert not list(tmp_path.glob("*.tmp-*"))
