# Every target creates the virtual environment itself: a fresh clone needs only
# python3 (3.11+) and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := loglambda-data/samples

.PHONY: venv demo test test-fast lint fmt bench-import bench-batch bench-ingest bench-speed bench-serving clean

$(STAMP): pyproject.toml setup.py loglambda/core/parsers/_accessscan.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job on the embedded default, the whole Lambda architecture on one machine:
# two days of history imported into the master dataset and recomputed into batch views;
# then "live" traffic (the hours after the history) tailed into the event log and
# covered by the speed layer (Beam); then answers over both, each event once.
demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/loglambda generate $(DEMO)/access.log --lines 200000 --days 2
	$(BIN)/loglambda generate $(DEMO)/app.log --kind logs --lines 50000 --days 2
	$(BIN)/loglambda import $(DEMO)/access.log $(DEMO)/app.log
	$(BIN)/loglambda batch run
	$(BIN)/loglambda generate $(DEMO)/live.log --lines 20000 --days 0.1 --start 2026-11-03T00:00:00Z --seed 7
	$(BIN)/loglambda tail --once $(DEMO)/live.log
	$(BIN)/loglambda speed --once
	$(BIN)/loglambda summary
	$(BIN)/loglambda query "SELECT date_trunc('hour', window_start) AS hour, sum(requests) AS requests, sum(errors_5xx) AS errors_5xx, round(merged_quantile(latency, 0.95), 1) AS p95_ms FROM traffic_minute GROUP BY hour ORDER BY hour DESC LIMIT 5"
	$(BIN)/loglambda status

# Every test, the slow ones (a local Spark JVM) included: what CI runs.
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fast suite for the edit-test loop: everything but `slow`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-import: $(STAMP)
	$(BIN)/python bench/import_bench.py

bench-batch: $(STAMP)
	$(BIN)/python bench/batch_bench.py

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest_bench.py

bench-serving: $(STAMP)
	$(BIN)/python bench/serving_bench.py

bench-speed: $(STAMP)
	$(BIN)/python bench/speed_bench.py

clean:
	rm -rf $(VENV) loglambda-data
