# phaselib: the two commands.
#   make study   set up, then run the full study (params/paper.yaml) -> results/paper
#   make test    set up, then run the test suite and the nbval notebook checks
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PARAMS ?= params/paper.yaml
OUT    ?= results/paper
# batches train in this many worker processes, one torch thread each: records are bit-identical
# to a one-process run (README, "Running a sweep on several processes"), the wall time is not
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup study sweep test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,dask]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (phaselib)" >/dev/null
	touch $@

setup: $(VENV)/.installed

study: setup
	$(VENV)/bin/phaselib study --params $(PARAMS) --out $(OUT) --executor processes --workers $(WORKERS)

sweep: setup
	$(VENV)/bin/phaselib sweep --params $(PARAMS) --out $(OUT) --executor processes --workers $(WORKERS)

# the notebooks write their runs to a fresh directory (PHASELIB_NOTEBOOK_OUT), so nbval checks
# freshly trained outputs, never runs cached in notebooks/results by an earlier session
test: setup
	@out=$$(mktemp -d) && PHASELIB_NOTEBOOK_OUT=$$out $(PY) -m pytest tests --nbval-lax notebooks -p no:cacheprovider; \
	status=$$?; rm -rf "$$out"; exit $$status

bench: setup
	$(PY) benchmarks/train_throughput.py --json results/bench/train_throughput.json
	$(PY) benchmarks/engine_floor.py --json results/bench/engine_floor.json
	$(PY) benchmarks/batch_workers.py --json results/bench/batch_workers.json
	$(PY) benchmarks/sparse_hidden.py --json results/bench/sparse_hidden.json
	$(PY) benchmarks/hessian.py --json results/bench/hessian.json
	$(PY) benchmarks/online_false_alarms.py
	$(PY) benchmarks/lag_rounding.py --json results/bench/lag_rounding.json

clean:
	rm -rf $(VENV) results
