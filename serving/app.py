"""The REST app: TF Serving's routes and bodies, the raw-text convenience routes, health, metrics, a page.

Starlette (not FastAPI): TF Serving's bodies are free-form tensors checked against each model's own
signatures, and its errors have their own shape (`{"error": ...}`), so FastAPI's pydantic models and
422 bodies would be written around rather than used. See the README for the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from components.common.pii import mask_pii
from serving.backends import CLASSIFY, GENERATE, TOP_K
from serving.batching import MicroBatcher
from serving.bodies import (
    check_max_new_tokens,
    check_task,
    convenience_args,
    predict_columns,
    read_json,
    string_signature_args,
)
from serving.config import ServerConfig
from serving.errors import DeadlineExceeded, InvalidArgument, ServingError
from serving.versions import ModelRegistry, ServedVersion

log = logging.getLogger("fintune.serving")
PAGE = Path(__file__).with_name("static") / "index.html"


class Metrics:
    """Prometheus series, in the app's own registry (several apps may live in one process, as in tests)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("fintune_serving_requests", "Requests answered, by route and HTTP status",
                                ["route", "code"], registry=self.registry)
        self.latency = Histogram("fintune_serving_request_latency_seconds", "Request latency, by route", ["route"],
                                 registry=self.registry, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("fintune_serving_batch_size", "Texts per model call", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _rows(outputs: dict[str, list]) -> list[dict]:
    names = list(outputs)
    return [dict(zip(names, values)) for values in zip(*(outputs[n] for n in names))]


def _columns(rows: list[dict]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def build_app(config: ServerConfig) -> Starlette:
    metrics = Metrics()

    def attach_batcher(served: ServedVersion) -> None:
        def run_batch(key, texts):
            signature, value = key
            inputs = {"text": texts, ("task" if signature == CLASSIFY else "max_new_tokens"): value}
            return _rows(served.backend.run(signature, inputs))

        label = f"{served.name}/{served.version}"
        served.batcher = MicroBatcher(run_batch, config.batching, served.executor,
                                      on_batch=lambda size: metrics.batch_size.labels(label).observe(size))

    registry = ModelRegistry(config.model_base_path, config.num_threads, on_loaded=attach_batcher)

    async def run_string_signature(served: ServedVersion, signature: str, texts: list[str], value) -> list[dict]:
        if signature not in served.backend.signatures:
            raise InvalidArgument(f"model {served.name} ({served.backend.kind}) has no {signature} signature")
        try:
            return await asyncio.wait_for(asyncio.shield(served.batcher.submit((signature, value), texts)),
                                          config.limits.request_timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {config.limits.request_timeout_s:g} s") from None

    def endpoint(route: str, handler):
        """The handler with TF Serving's error bodies, metrics and a log line (request text PII-masked)."""
        async def wrapped(request):
            started = time.perf_counter()
            request.state.texts = []
            try:
                response = await handler(request)
            except ServingError as error:
                response = error_response(error.status, str(error))
            except Exception:  # a bug, not bad input: the body never carries the traceback
                log.exception("%s %s failed", request.method, request.url.path)
                response = error_response(500, "internal error (see the server log)")
            elapsed = time.perf_counter() - started
            name = getattr(request.state, "route", route)  # model calls are counted per verb
            metrics.requests.labels(name, str(response.status_code)).inc()
            metrics.latency.labels(name).observe(elapsed)
            if request.state.texts:
                preview = mask_pii(request.state.texts[0])[0][:80]  # masked before it is logged, never raw
                log.info("%s %s %d %.1f ms texts=%d first=%r", request.method, request.url.path,
                         response.status_code, elapsed * 1000, len(request.state.texts), preview)
            return response
        return wrapped

    def model_ref(request) -> tuple[ServedVersion, int | None]:
        version = request.path_params.get("version")
        if version is not None:
            if not version.isdigit():
                raise InvalidArgument(f"the version must be a whole number, got {version!r}")
            version = int(version)
        return registry.get(request.path_params["name"], version), version

    async def status(request):
        version = request.path_params.get("version")
        if version is not None and not version.isdigit():
            raise InvalidArgument(f"the version must be a whole number, got {version!r}")
        rows = registry.version_status(request.path_params["name"], None if version is None else int(version))
        return JSONResponse({"model_version_status": rows})

    async def metadata(request):
        served, _ = model_ref(request)
        signatures = {key: {
            "inputs": {n: {"dtype": t.dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape],
                                                                 "unknown_rank": False}, "name": f"{key}_{n}:0"}
                       for n, t in sig["inputs"].items()},
            "outputs": {n: {"dtype": t.dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t.shape],
                                                                  "unknown_rank": False}, "name": f"{key}_{n}:0"}
                        for n, t in sig["outputs"].items()},
            "method_name": "tensorflow/serving/predict"} for key, sig in served.backend.signatures.items()}
        return JSONResponse({"model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
                             "metadata": {"signature_def": {"signature_def": signatures},
                                          "fintune": {"backend": served.backend.kind, "tasks": served.backend.labels}}})

    async def predict(served: ServedVersion, body: dict, request) -> JSONResponse:
        backend = served.backend
        signature = body.get("signature_name", "serving_default")
        if not isinstance(signature, str) or signature not in backend.signatures:
            raise InvalidArgument(f"Serving signature key {signature!r} not found; this model has: "
                                  + ", ".join(sorted(backend.signatures)))
        names = list(backend.signatures[signature]["inputs"])
        columns, row_format = predict_columns(body, signature, names)
        if signature in backend.batched_signatures:
            texts, value = string_signature_args(signature, columns, row_format, backend.labels, config.limits)
            request.state.texts = texts
            rows = await run_string_signature(served, signature, texts, value)
            return JSONResponse({"predictions": rows} if row_format else {"outputs": _columns(rows)})
        missing = [n for n in names if n not in columns]
        if missing:
            raise InvalidArgument(f"{signature} needs the input {missing[0]!r}")
        # The SavedModel's numeric signatures: fixed shapes, batch 1, so unbatched, on the model's thread.
        outputs = await asyncio.get_running_loop().run_in_executor(served.executor, backend.run, signature, columns)
        return JSONResponse({"predictions": _rows(outputs)} if row_format else {"outputs": outputs})

    async def classify(served: ServedVersion, body: dict, request) -> JSONResponse:
        if "examples" in body:
            raise InvalidArgument("this model has no Classification SignatureDef over tf.Example; its string classify "
                                  'signature is served by :predict with "signature_name": "classify", and this '
                                  'route takes raw text as {"text": ...} or {"texts": [...]}')
        texts, single = convenience_args(body, {"task", "top_k"}, config.limits)
        request.state.texts = texts
        task = check_task(body.get("task"), served.backend.labels)
        k = min(TOP_K, len(served.backend.labels[task]))
        top_k = body.get("top_k", k)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= k:
            raise InvalidArgument(f'"top_k" must be an integer from 1 to {k} for task {task}')
        rows = await run_string_signature(served, CLASSIFY, texts, task)
        results = [{"label": r["label"], "probability": r["probability"], "truncated": r["truncated"],
                    "top_k": [{"label": label, "probability": p}
                              for label, p in zip(r["top_k_labels"][:top_k], r["top_k_probabilities"][:top_k])]}
                   for r in rows]
        return JSONResponse({"model_spec": {"name": served.name, "version": str(served.version)}, "task": task,
                             **(results[0] if single else {"results": results})})

    async def generate(served: ServedVersion, body: dict, request) -> JSONResponse:
        texts, single = convenience_args(body, {"max_new_tokens"}, config.limits)
        request.state.texts = texts
        rows = await run_string_signature(served, GENERATE, texts,
                                          check_max_new_tokens(body.get("max_new_tokens"), config.limits))
        return JSONResponse({"model_spec": {"name": served.name, "version": str(served.version)},
                             **(rows[0] if single else {"results": rows})})

    verbs = {"predict": predict, "classify": classify, "generate": generate}

    async def model_call(request):
        verb = request.path_params["verb"]
        if verb not in verbs:
            raise InvalidArgument(f"Malformed request: POST {request.url.path} (verbs: {', '.join(verbs)})")
        request.state.route = verb
        served, _ = model_ref(request)
        return await verbs[verb](served, await read_json(request, config.limits.max_body_bytes), request)

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def readyz(request):
        models = {name: s.version for name, s in registry.served.items()}
        ready = registry.polled and bool(models)
        body = {"ready": ready, "models": models}
        if not ready:
            body["error"] = ("the first scan of the model base path is running" if not registry.polled else
                             f"no complete model version under {config.model_base_path}")
        return JSONResponse(body, status_code=200 if ready else 503)

    async def prometheus(request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request):
        models = {name: {"version": s.version, "backend": s.backend.kind, "tasks": list(s.backend.labels)}
                  for name, s in sorted(registry.served.items())}
        # JSON inside <script>: "<" escaped so no text can close the element.
        data = json.dumps(models).replace("<", "\\u003c")
        return HTMLResponse(PAGE.read_text().replace("{{MODELS_JSON}}", data))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(registry.poll)  # the first scan loads every model before the server answers
        poller = asyncio.create_task(_poll_forever()) if config.file_system_poll_wait_seconds > 0 else None
        yield
        if poller:
            poller.cancel()

    async def _poll_forever():
        while True:
            await asyncio.sleep(config.file_system_poll_wait_seconds)
            try:
                await asyncio.to_thread(registry.poll)
            except Exception:  # a vanished or unreadable base path must not stop polling
                log.exception("polling %s failed", config.model_base_path)

    async def http_error(request, error: HTTPException):
        return error_response(error.status_code, f"{error.detail}: {request.method} {request.url.path}")

    routes = [
        Route("/", endpoint("page", page), methods=["GET"]),
        Route("/healthz", endpoint("healthz", healthz), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint("metrics", prometheus), methods=["GET"]),
        Route("/v1/models/{name}:{verb}", endpoint("model_call", model_call), methods=["POST"]),
        Route("/v1/models/{name}/versions/{version}:{verb}", endpoint("model_call", model_call), methods=["POST"]),
        Route("/v1/models/{name}/metadata", endpoint("metadata", metadata), methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}/metadata", endpoint("metadata", metadata), methods=["GET"]),
        Route("/v1/models/{name}", endpoint("status", status), methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", endpoint("status", status), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.registry, app.state.metrics = registry, metrics
    return app
