# The two commands of the README:
#   make run    set up .venv, get MNIST, train softmax_regression, export and evaluate it,
#               serve it and classify test digits through gRPC
#   make test   set up .venv, lint, run the tests
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  ?= softmax_regression
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONPATH := $(CURDIR)
# The one rule for version directories (serving/repository/versions.py), run as a file with -P:
# it imports
# only the standard library, and the `serving` package would import TensorFlow first (3 s).
VERSIONS = $(PY) -P serving/repository/versions.py

.PHONY: run serve web-screenshot test test-precision test-fast lint data train evaluate benchmarks \
	bench-serving report clean \
	perf-analyzer bench-peers native native-if-possible native-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# make native: the native data plane, build/native/predictd (serving/native/native.mk)
include serving/native/native.mk

GRPC_PORT ?= 8500
REST_PORT ?= 8501

# Train, export, evaluate the export, then serve it and classify test digits through gRPC.
# The server runs the native data plane where `native-if-possible` could build it (and says
# which plane answers each version), the Python plane where not.
run: $(VENV)/.installed
	@$(MAKE) --no-print-directory native-if-possible NATIVE_TARGETS=native
	@$(PY) -m training.train $(MODEL)
	@v=$$($(VERSIONS) latest --path exported_models/$(MODEL)) && $(PY) -m training.evaluate $$v
	@$(PY) -m serving.server --model_base_path exported_models --port $(GRPC_PORT) \
	    --rest_api_port $(REST_PORT) --data_plane auto & pid=$$!; \
	trap 'kill $$pid 2>/dev/null' EXIT; \
	for i in $$(seq 120); do \
	  $(PY) -m serving.client --address 127.0.0.1:$(GRPC_PORT) status $(MODEL) >/dev/null 2>&1 && break; \
	  kill -0 $$pid 2>/dev/null || { echo "server did not start"; exit 1; }; sleep 1; \
	done; \
	$(PY) -m serving.client --address 127.0.0.1:$(GRPC_PORT) predict $(MODEL) --mnist-test 100 \
	  && kill -TERM $$pid && wait $$pid && echo "server stopped"

# Serve every model in exported_models/ until Ctrl-C: gRPC on GRPC_PORT, REST and the web page
# for people on REST_PORT, whose address is printed once the server answers.
serve: $(VENV)/.installed
	@$(PY) -m serving.server --model_base_path exported_models --port $(GRPC_PORT) \
	    --rest_api_port $(REST_PORT) & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid' INT TERM; \
	for i in $$(seq 120); do \
	  $(PY) -P -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(REST_PORT)/v1/models')" \
	    >/dev/null 2>&1 && break; \
	  kill -0 $$pid 2>/dev/null || { echo "server did not start"; exit 1; }; sleep 1; \
	done; \
	echo "[serve] the web page: http://127.0.0.1:$(REST_PORT)/   (Ctrl-C stops the server)"; \
	wait $$pid

# The README's screenshot of the web page (docs/web_page.png), from exported_models/ (make run).
web-screenshot: $(VENV)/.installed
	$(PY) -m tests.web_page_screenshot --models exported_models --out docs/web_page.png

# The precision-sensitive tests (training, export, analysis) run a second time with the policy
# forced to mixed_bfloat16 ($$ZOO_PRECISION is what --precision auto resolves to), so that an
# assumption about the arithmetic fails on every machine, not only on one with native bf16.
FORCED_PRECISION ?= mixed_bfloat16
PRECISION_TESTS := tests/test_train.py tests/test_export.py tests/test_precision.py \
	$(wildcard tests/test_analysis_*.py)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	@$(MAKE) --no-print-directory native-if-possible
	$(PY) -m pytest
	$(MAKE) test-precision

test-precision: $(VENV)/.installed
	ZOO_PRECISION=$(FORCED_PRECISION) $(PY) -m pytest -q -m 'not slow' $(PRECISION_TESTS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m 'not slow'

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

data: $(VENV)/.installed
	$(PY) -c "from training import data; data.load_dataset('mnist')"

benchmarks: $(VENV)/.installed
	$(PY) -m benchmarks.reference_accuracy
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.export_agreement
	$(PY) -m benchmarks.multiworker
	$(MAKE) bench-serving
	$(MAKE) bench-peers

# The serving load test (~10 min) needs both models it serves exported: trains the missing ones.
bench-serving: $(VENV)/.installed
	@for m in softmax_regression deep_cnn; do \
	  $(VERSIONS) latest exported_models/$$m >/dev/null 2>&1 || $(PY) -m training.train $$m \
	    || exit 1; \
	done
	$(PY) -m benchmarks.serving_load --seconds 4 --long-run 60

# Triton's perf_analyzer, a private copy in ~/.cache/keras-model-zoo/perf_analyzer (Debian 13's
# glibc beside it; nothing system-wide): benchmarks/perf_analyzer.py. Idempotent.
perf-analyzer: $(VENV)/.installed
	@$(PY) -P benchmarks/perf_analyzer.py install

# Our server against KServe and MLServer under Triton's perf_analyzer (~15 min; the peers' venvs
# are made on first use in ~/.cache/keras-model-zoo/peers). On a shared machine:
# flock -x /tmp/zoo-cpu.lock make bench-peers
bench-peers: $(VENV)/.installed
	@$(VERSIONS) latest exported_models/softmax_regression >/dev/null 2>&1 \
	  || $(PY) -m training.train softmax_regression
	$(PY) -m benchmarks.peers

# Every analysis study in full (<= 30 min on 2 cores), then reports/index.html, checked and
# screenshotted in headless Chromium. QUICK=1: the same pipeline at smoke-test size, written to
# reports/quick/ so that it never replaces the full results.
report: $(VENV)/.installed
	$(PY) -m analysis.report --run $(if $(QUICK),--quick --out reports/quick)

clean:
	rm -rf runs reports .pytest_cache
	find exported_models -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
