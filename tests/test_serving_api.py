"""The REST server on loopback against the smoke run's bundles, called with a stock HTTP client (requests):
every route, answers equal to `ExportedModel`'s / `StudentScorer`'s, each bad request class's 4xx, new
versions picked up without a restart (a half-written one never), PII masked in the log."""

from __future__ import annotations

import json
import logging
import shutil
import time

import numpy as np
import pytest
import requests

from schemas.artifacts import LABELS_FILE, BundleFiles
from serving.server import BackgroundServer, make_config
from tests.helpers import run_cli

TEXTS = ["where is my new card?", "I was charged twice for a coffee", "what exchange rate do you use for EUR"]
TASK = "intent"


@pytest.fixture(scope="module")
def server(serving_model_base):
    with BackgroundServer(make_config(serving_model_base, poll_seconds=0.2, max_batch_size=8)) as running:
        yield running


def post(server, path: str, body) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=60)


def served_names(serving_model_base) -> list[str]:
    return sorted(d.name for d in serving_model_base.iterdir() if (d / "1").is_dir())


def reference_classify(model_dir, texts: list[str], task: str) -> list[dict]:
    """What the exported file itself answers, called directly (no server)."""
    labels = json.loads(next(model_dir.rglob(LABELS_FILE)).read_text())
    if (model_dir / "saved_model.pb").exists():
        from models.export.exported import ExportedModel
        from serving.backends import _plain

        out = ExportedModel(model_dir).call("classify", text=np.array(texts), task=np.array(task))
        return [{"label": _plain(out["label"][i]), "probability": _plain(out["probability"][i]),
                 "top": _plain(out["top_k_labels"][i])} for i in range(len(texts))]
    from models.llm.prompts import encode_prompt
    from models.llm.tokenizer import ChatTokenizer
    from models.scoring.constrained import LabelTrie

    tokenizer = ChatTokenizer.load(model_dir)
    shapes = BundleFiles(model_dir).shapes()
    trie = LabelTrie(labels[task], tokenizer)
    if "student" in shapes:
        from models.student.compression import tflite_student_fn
        from models.student.model import StudentScorer

        student = shapes["student"]
        scorer = StudentScorer(tflite_student_fn(model_dir / "student.tflite", 2), student["output_tokens"],
                               student["max_length"])
        classify, limit = scorer.classify, student["max_prompt_tokens"]
    else:
        from models.export.exported import ExportedModel

        model = ExportedModel(next(model_dir.glob("*.tflite")), num_threads=2)
        classify, limit = (lambda prompts, t: model.classify(prompts, t, shapes["tree"]["nodes"])), \
            shapes["tree"]["prompt_tokens"]
    predictions = classify([encode_prompt(tokenizer, task, t, limit)[0] for t in texts], trie)
    k = min(5, len(labels[task]))
    return [{"label": p.label, "probability": p.probability, "top": p.top(k)} for p in predictions]


def test_status_metadata_health_and_readiness(server, serving_model_base):
    for name in served_names(serving_model_base):
        status = requests.get(f"{server.url}/v1/models/{name}", timeout=10)
        assert status.status_code == 200
        assert status.json() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
        assert requests.get(f"{server.url}/v1/models/{name}/versions/1", timeout=10).json() == status.json()
        metadata = requests.get(f"{server.url}/v1/models/{name}/metadata", timeout=10).json()
        assert metadata["model_spec"] == {"name": name, "signature_name": "", "version": "1"}
        classify = metadata["metadata"]["signature_def"]["signature_def"]["classify"]
        assert classify["inputs"]["text"]["dtype"] == "DT_STRING"
        assert classify["inputs"]["text"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
        assert set(classify["outputs"]) == {"label", "probability", "top_k_labels", "top_k_probabilities", "truncated"}
        assert TASK in metadata["metadata"]["fintune"]["tasks"]
    assert requests.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["models"]["fintune-classifier"] == 1


@pytest.mark.parametrize("name", ["fintune-classifier", "fintune-int8", "fintune-student"])
def test_classify_routes_answer_what_the_exported_model_answers(server, serving_model_base, name):
    if not (serving_model_base / name / "1").is_dir():
        pytest.skip(f"the smoke run's compression gate did not export {name}'s bundle")
    expected = reference_classify(serving_model_base / name / "1", TEXTS, TASK)
    convenience = post(server, f"/v1/models/{name}:classify", {"texts": TEXTS, "task": TASK, "top_k": 3})
    assert convenience.status_code == 200, convenience.text
    results = convenience.json()["results"]
    assert [r["label"] for r in results] == [e["label"] for e in expected]
    assert [r["probability"] for r in results] == pytest.approx([e["probability"] for e in expected], abs=1e-6)
    assert [[t["label"] for t in r["top_k"]] for r in results] == [e["top"][:3] for e in expected]
    one = post(server, f"/v1/models/{name}/versions/1:classify", {"text": TEXTS[0], "task": TASK}).json()
    assert one["label"] == expected[0]["label"] and one["model_spec"] == {"name": name, "version": "1"}

    rows = post(server, f"/v1/models/{name}:predict", {"signature_name": "classify",
                                                       "instances": [{"text": t, "task": TASK} for t in TEXTS]})
    assert rows.status_code == 200, rows.text
    assert [p["label"] for p in rows.json()["predictions"]] == [e["label"] for e in expected]
    assert [p["top_k_labels"] for p in rows.json()["predictions"]] == [e["top"] for e in expected]
    columns = post(server, f"/v1/models/{name}:predict", {"signature_name": "classify",
                                                          "inputs": {"text": TEXTS, "task": TASK}}).json()["outputs"]
    assert columns["label"] == [e["label"] for e in expected]
    assert columns["probability"] == pytest.approx([e["probability"] for e in expected], abs=1e-6)
    assert columns["truncated"] == [False] * len(TEXTS)


def test_generate_routes_answer_what_the_exported_model_answers(server, serving_model_base):
    from models.export.exported import ExportedModel

    pushed = serving_model_base / "fintune-classifier" / "1"
    expected = ExportedModel(pushed).call("generate", text=np.array(TEXTS[:2]), max_new_tokens=np.array(4, np.int32))
    got = post(server, "/v1/models/fintune-classifier:generate", {"texts": TEXTS[:2], "max_new_tokens": 4})
    assert [r["text"] for r in got.json()["results"]] == [t.decode() for t in expected["text"]]
    rows = post(server, "/v1/models/fintune-classifier:predict", {
        "signature_name": "generate", "instances": [{"text": t, "max_new_tokens": 4} for t in TEXTS[:2]]}).json()
    assert [p["text"] for p in rows["predictions"]] == [t.decode() for t in expected["text"]]
    # The int8 TFLite teacher generates with its own KV cache: the same greedy ids as ExportedModel's.
    from models.llm.chat import apply_chat_template
    from models.llm.tokenizer import ChatTokenizer

    bundle = serving_model_base / "fintune-int8" / "1"
    tokenizer = ChatTokenizer.load(bundle)
    ids = tokenizer.encode(apply_chat_template(tokenizer, [{"role": "user", "content": TEXTS[0]}]))
    reference = tokenizer.decode(ExportedModel(next(bundle.glob("*.tflite"))).generate_ids(
        ids, 4, (tokenizer.im_end_id, tokenizer.end_of_text_id)))
    reply = post(server, "/v1/models/fintune-int8:generate", {"text": TEXTS[0], "max_new_tokens": 4}).json()
    assert reply["text"] == reference and reply["truncated"] is False


def test_the_numeric_signatures_of_the_saved_model_are_served_through_predict(server, serving_model_base):
    from models.export.exported import ExportedModel

    model = ExportedModel(serving_model_base / "fintune-classifier" / "1")
    length = model.sequence_length
    token_ids, mask = np.ones((1, length), np.int32), np.ones((1, length), np.int32)
    expected = model.logits(token_ids, mask)
    got = post(server, "/v1/models/fintune-classifier:predict", {
        "signature_name": "serve", "inputs": {"token_ids": token_ids.tolist(), "padding_mask": mask.tolist()}})
    assert got.status_code == 200, got.text
    (output,) = got.json()["outputs"].values()
    np.testing.assert_allclose(np.array(output), expected, atol=1e-5)


BAD_REQUESTS = [  # (path, body: JSON value or raw bytes, status, part of the message)
    ("/v1/models/nope:predict", {"instances": []}, 404, "Servable not found"),
    ("/v1/models/fintune-classifier/versions/9:predict", {"instances": []}, 404, "Specific(fintune-classifier, 9)"),
    ("/v1/models/fintune-classifier/versions/x1:classify", {"text": "a"}, 400, "whole number"),
    ("/v1/models/fintune-classifier:frobnicate", {}, 400, "Malformed request"),
    ("/v1/models/fintune-classifier:predict", b"{not json", 400, "not valid JSON"),
    ("/v1/models/fintune-classifier:predict", b"[1, 2]", 400, "JSON object"),
    ("/v1/models/fintune-classifier:predict", {"signature_name": "nope", "instances": [{"text": "a"}]}, 400,
     "'nope' not found"),
    ("/v1/models/fintune-classifier:predict", {"instances": [{"text": "a", "task": TASK}]}, 400,
     "needs 'padding_mask'"),  # no signature_name: serving_default, the SavedModel's numeric `serve`
    ("/v1/models/fintune-classifier:predict", {"signature_name": "classify", "instances": [{"text": "a"}],
                                               "inputs": {}}, 400, "exactly one of"),
    ("/v1/models/fintune-classifier:predict", {"signature_name": "classify", "inputs": {"text": [1], "task": TASK}},
     400, "must hold strings"),
    ("/v1/models/fintune-classifier:predict", {"signature_name": "classify", "inputs": {"text": ["a"], "task": "x"}},
     400, "unknown task 'x'"),
    ("/v1/models/fintune-classifier:predict", {"signature_name": "classify", "instances": [
        {"text": "a", "task": TASK}, {"text": "b", "task": "ticket_priority"}]}, 400, "same"),
    ("/v1/models/fintune-classifier:predict", {"signature_name": "serve", "inputs": {"token_ids": "x",
                                                                                     "padding_mask": [[1]]}},
     400, "serve:"),
    ("/v1/models/fintune-classifier:classify", {"examples": [{"text": "a"}]}, 400, "signature_name"),
    ("/v1/models/fintune-classifier:classify", {"text": 5, "task": TASK}, 400, "must be a string"),
    ("/v1/models/fintune-classifier:classify", {"text": "a", "texts": ["b"], "task": TASK}, 400, "exactly one of"),
    ("/v1/models/fintune-classifier:classify", {"text": "a", "task": TASK, "colour": 1}, 400, "unknown field"),
    ("/v1/models/fintune-classifier:classify", {"text": "a", "task": TASK, "top_k": 99}, 400, "top_k"),
    ("/v1/models/fintune-classifier:classify", {"text": "a"}, 400, "unknown task missing"),
    ("/v1/models/fintune-classifier:classify", {"text": "x" * 8001, "task": TASK}, 400, "8001 characters"),
    ("/v1/models/fintune-classifier:classify", {"texts": ["a"] * 9, "task": TASK}, 400, "at most 8"),
    ("/v1/models/fintune-classifier:classify", {"texts": [], "task": TASK}, 400, "non-empty"),
    ("/v1/models/fintune-classifier:classify", b'{"text": "' + b"a" * (1 << 20) + b'"}', 413, "limit"),
    ("/v1/models/fintune-classifier:generate", {"text": "a", "max_new_tokens": -1}, 400, "max_new_tokens"),
    ("/v1/models/fintune-classifier:generate", {"text": "a", "max_new_tokens": True}, 400, "max_new_tokens"),
    ("/v1/models/fintune-student:generate", {"text": "a"}, 400, "no generate signature"),
    ("/v1/models/fintune-classifier", None, 405, "Method Not Allowed"),
    ("/v2/anything", None, 404, "Not Found"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS, ids=[f"{i}-{b[2]}" for i, b in
                                                                         enumerate(BAD_REQUESTS)])
def test_each_bad_request_class_gets_its_4xx_with_a_one_line_error(server, path, body, status, message):
    if isinstance(body, bytes):
        response = requests.post(server.url + path, data=body, headers={"Content-Type": "application/json"},
                                 timeout=30)
    else:
        response = requests.post(server.url + path, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in response.text


def test_request_texts_are_pii_masked_before_they_are_logged(server, caplog):
    caplog.set_level(logging.INFO, logger="fintune.serving")
    secret = "card 4111 1111 1111 1111, mail jane.doe@example.com"
    assert post(server, "/v1/models/fintune-int8:classify", {"text": secret, "task": TASK}).status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "[CARD]" in logged and "[EMAIL]" in logged
    assert "4111" not in logged and "jane.doe" not in logged


def test_metrics_count_requests_latency_and_batch_sizes(server):
    post(server, "/v1/models/fintune-int8:classify", {"texts": TEXTS, "task": TASK})
    text = requests.get(server.url + "/metrics", timeout=10).text
    assert 'fintune_serving_requests_total{code="200",route="classify"}' in text
    assert "fintune_serving_request_latency_seconds_bucket" in text
    assert 'fintune_serving_batch_size_sum{model="fintune-int8/1"}' in text


def test_a_new_version_is_served_without_a_restart_and_a_half_written_one_never(server, serving_model_base):
    source = serving_model_base / "fintune-int8" / "1"
    rollout = serving_model_base / "rollout"
    shutil.copytree(source, rollout / "1")
    wait_for_version(server, "rollout", "1")
    half = rollout / "2"
    half.mkdir()
    for path in source.iterdir():  # everything but the model file: the manifest names a file not there yet
        if path.suffix != ".tflite":
            shutil.copy2(path, half / path.name)
    model_file = next(source.glob("*.tflite"))
    (half / model_file.name).write_bytes(model_file.read_bytes()[:1000])  # a copy still in progress
    time.sleep(1.0)  # several polls
    assert requests.get(f"{server.url}/v1/models/rollout", timeout=10).json()["model_version_status"][0][
        "version"] == "1"
    assert post(server, "/v1/models/rollout:classify", {"text": TEXTS[0], "task": TASK}).json()["model_spec"][
        "version"] == "1"
    shutil.copy2(model_file, half / model_file.name)
    wait_for_version(server, "rollout", "2")
    answer = post(server, "/v1/models/rollout:classify", {"text": TEXTS[0], "task": TASK}).json()
    assert answer["model_spec"]["version"] == "2"
    assert requests.get(f"{server.url}/v1/models/rollout/versions/1", timeout=10).status_code == 404


def wait_for_version(server, name: str, version: str, polls: int = 600) -> None:
    for _ in range(polls):
        response = requests.get(f"{server.url}/v1/models/{name}", timeout=10)
        if response.status_code == 200 and response.json()["model_version_status"][0]["version"] == version:
            return
        time.sleep(0.1)
    pytest.fail(f"{name} version {version} was never served")


def test_serve_refuses_a_missing_model_base_path_as_a_usage_error(monkeypatch, capsys, tmp_path):
    code = run_cli(monkeypatch, "serve", "--model-base-path", str(tmp_path / "missing"))
    assert code == 2 and "no model base path" in capsys.readouterr().err
    assert run_cli(monkeypatch, "serve", "--port", "70000") == 2
