"""A bounded load test of the REST server on loopback: batching on vs off, same model, same requests.

    python benchmarks/bench_serve.py [--model serving/models/NAME/VERSION] [--clients 16] [--requests 400]

For each mode the server runs in its own process (`pipeline.py serve`, so the clients do not share its
interpreter lock), gets a warm-up, then `--clients` threads, each with its own keep-alive connection,
send `--requests` one-text `:classify` calls in all. Reported: p50/p95 latency, requests/s, errors
(any answer but 200) and the mean texts per model call (from the server's /metrics). A mode with
errors makes the script exit 1. Results: a table on stdout and `--out`/bench_serve.json.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ["where is my new card?", "I was charged twice for the same coffee", "my card payment was declined",
           "how do I change my PIN", "the ATM kept my card", "what exchange rate do you use for EUR",
           "my transfer is still pending after 3 days", "a refund is not showing in my account",
           "I want to close my account", "someone used my card without permission", "top up failed again",
           "how long does a card take to arrive", "why was I charged a fee for a card payment",
           "Apple Pay is not working", "my contactless stopped working", "cash withdrawal not recognised"]


def newest_version(base: Path) -> Path | None:
    versions = [v for model in base.iterdir() if model.is_dir() for v in model.iterdir() if v.name.isdigit()]
    return max(versions, key=lambda v: v.stat().st_mtime, default=None) if base.is_dir() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, port: int, batching: bool, log) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "pipeline.py"), "serve", "--model-base-path", str(base), "--port", str(port),
               "--file-system-poll-wait-seconds", "0", "--enable-batching" if batching else "--no-enable-batching"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1200):  # the first scan loads the model before the port opens
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}; see {log.name}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.terminate()
    raise SystemExit("the server did not become ready in 120 s")


def load(url: str, name: str, task: str, clients: int, total: int) -> dict:
    def client(index: int) -> list[tuple[float, int]]:
        session, results = requests.Session(), []
        for n in range(index, total, clients):
            started = time.perf_counter()
            try:
                status = session.post(f"{url}/v1/models/{name}:classify", timeout=120,
                                      json={"text": QUERIES[n % len(QUERIES)], "task": task}).status_code
            except requests.RequestException:
                status = 0
            results.append((time.perf_counter() - started, status))
        return results

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for chunk in pool.map(client, range(clients)) for r in chunk]
    wall = time.perf_counter() - started
    latencies = np.array([seconds for seconds, _ in results]) * 1000
    return {"requests": len(results), "errors": sum(status != 200 for _, status in results),
            "p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "requests_per_s": len(results) / wall}


def batch_totals(url: str) -> np.ndarray:
    """(texts, model calls) so far, from the server's batch-size histogram."""
    text = requests.get(url + "/metrics", timeout=10).text
    return np.array([sum(float(v) for v in re.findall(rf"^fintune_serving_batch_size_{part}\{{[^}}]*\}} (\S+)$",
                                                       text, re.M)) for part in ("sum", "count")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a version folder (pushed SavedModel or TFLite bundle); default: newest in serving/models")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--task", default="intent")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_serve")
    args = parser.parse_args()
    model = args.model or newest_version(ROOT / "serving" / "models")
    if model is None or not model.is_dir():
        print("error: no model to serve; pass --model runs/<id>/exporter/bundles/tflite_dynamic_int8 or push one "
              "to serving/models", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        (base / "bench").mkdir(parents=True)
        (base / "bench" / "1").symlink_to(model.resolve(), target_is_directory=True)
        for batching in (True, False):
            port = free_port()
            with open(args.out / f"server-batching-{'on' if batching else 'off'}.log", "w") as log:
                server = start_server(base, port, batching, log)
                try:
                    url = f"http://127.0.0.1:{port}"
                    load(url, "bench", args.task, args.clients, 2 * args.clients)  # warm-up, not counted
                    before = batch_totals(url)
                    result = load(url, "bench", args.task, args.clients, args.requests)
                    texts, calls = batch_totals(url) - before
                    rows.append({"batching": "on" if batching else "off", "clients": args.clients, **result,
                                 "mean_batch_size": texts / max(calls, 1)})
                finally:
                    server.terminate()
                    server.wait(timeout=60)
    (args.out / "bench_serve.json").write_text(json.dumps({"model": str(model), "rows": rows}, indent=2))
    print(f"model: {model} (task {args.task}); {args.clients} concurrent clients, {args.requests} requests per mode")
    print("| batching | requests | p50 ms | p95 ms | requests/s | errors | mean texts per model call |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batching']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['requests_per_s']:.1f} | {r['errors']} | {r['mean_batch_size']:.2f} |")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
