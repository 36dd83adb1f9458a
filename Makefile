# The two set-up commands of the README:
#   make demo   install, then run the tiny CPU demo (python -m hpcadapt)
#   make test   install with test extras, start the local Slurm cluster (as root), run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# One thread per process and no network: on 2 shared cores torch's own threading makes
# timings swing tenfold, and nothing may reach a model hub or W&B.
OFFLINE_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false \
	TORCH_EXTENSIONS_DIR=$(CURDIR)/.cache/torch_extensions
# Tests pin one thread for steady timings; the demo fixes its own (conf/experiment/tiny_demo.yaml).
RUN_ENV := OMP_NUM_THREADS=1 $(OFFLINE_ENV)

.PHONY: install install-test deepspeed-ops demo test slurm-up slurm-down

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24,<26" "setuptools>=69" wheel

# The real tokenizers of the paper's families (for scale=rehearsal) ship in these two packages;
# only their data files are read, so they go in without their dependencies (see pyproject.toml).
TOKENIZER_PACKAGES := mistral-common==1.13.1 llama-models==0.3.0

install: $(PY)
	$(PIP) install -q -c requirements/cpu-constraints.txt torch==2.13.0
	$(PIP) install -q -c requirements/cpu-constraints.txt -e ".[rehearsal]"
	$(PIP) install -q --no-deps -c requirements/cpu-constraints.txt $(TOKENIZER_PACKAGES)

install-test: $(PY)
	$(PIP) install -q -c requirements/cpu-constraints.txt torch==2.13.0
	$(PIP) install -q -c requirements/cpu-constraints.txt -e ".[test]"
	$(PIP) install -q --no-deps -c requirements/cpu-constraints.txt $(TOKENIZER_PACKAGES)

demo: install
	$(OFFLINE_ENV) $(PY) -m hpcadapt

slurm-up:
	@if [ "$$(id -u)" = 0 ]; then bash slurm/local-cluster.sh up; \
	else echo "not root: the local Slurm cluster is not started and its tests will be skipped"; fi

slurm-down:
	bash slurm/local-cluster.sh down

# DeepSpeed JIT-compiles its CPU shared-memory op on first use (~1 min); build it once
# here so ZeRO-3 tests and Slurm jobs find it cached instead of compiling concurrently.
deepspeed-ops: install-test
	$(RUN_ENV) DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"

test: install-test deepspeed-ops slurm-up
	$(RUN_ENV) $(PY) -m pytest -q tests
