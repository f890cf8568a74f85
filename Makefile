# Every target installs what it needs into $(VENV) first; a fresh machine needs only Python 3.10+.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DATA   ?= $(if $(NETTRIM_DATA),$(NETTRIM_DATA),$(wildcard ../shared/data))

.PHONY: install lint test demo bench bench-prune bench-sweep bench-scale multiprocess-check gpu-check experiments experiments-quick dist clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check nettrim_jax tests experiments
	$(VENV)/bin/ruff format --check nettrim_jax
	$(VENV)/bin/mypy
	$(PY) tests/layering.py

test: lint
	NETTRIM_DATA=$(DATA) $(PY) -m pytest -n auto --maxprocesses 4 --dist worksteal

demo: $(STAMP)
	$(VENV)/bin/nettrim demo

bench: $(STAMP)
	# Clarabel on the full-size problem needs more than 24 GiB (OOM-killed at 23.7 GB here):
	# drop --skip-clarabel-full on a bigger machine.
	NETTRIM_DATA=$(DATA) $(PY) experiments/bench_layer.py --skip-clarabel-full

bench-prune: $(STAMP)
	# Whole prunes against Wanda / SparseGPT / ALPS; about an hour on 2 CPU cores (--models to pick).
	NETTRIM_DATA=$(DATA) $(PY) experiments/bench_prune.py

bench-sweep: $(STAMP)
	# K = 1, 4, 8, 16 sweep points batched against sequential; about 20 minutes on 2 CPU cores.
	NETTRIM_DATA=$(DATA) $(PY) experiments/bench_sweep.py

bench-scale: $(STAMP)
	# Full mode: about 15-25 minutes on 2 CPU cores; N = M = 4096 only with --big (a GPU).
	$(PY) experiments/bench_scale.py

multiprocess-check: $(STAMP)
	# Two local processes under jax.distributed (gloo CPU collectives) against one process.
	$(PY) experiments/multiprocess_check.py

gpu-check: $(STAMP)
	bash experiments/gpu_check.sh $(DATA)

EXPERIMENTS := sample_complexity spirals mnist few_samples resnet lm

experiments: $(STAMP)
	for e in $(EXPERIMENTS); do NETTRIM_DATA=$(DATA) $(PY) experiments/$$e.py || exit 1; done
	NETTRIM_DATA=$(DATA) $(PY) experiments/spirals.py --refit

experiments-quick: $(STAMP)
	for e in $(EXPERIMENTS); do NETTRIM_DATA=$(DATA) $(PY) experiments/$$e.py --quick || exit 1; done

# A wheel in dist/ (the package is not on PyPI): pip install it, or upload it to Colab for
# experiments/notebooks/nettrim_colab.ipynb.  Needs only pip (no venv): the build backend is
# fetched into an isolated build environment.
dist:
	rm -rf dist build
	python3 -m pip wheel . --no-deps -w dist
	@ls dist/*.whl

clean:
	rm -rf $(VENV) .pytest_cache
