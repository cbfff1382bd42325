# `make run` sets up .venv and runs the demo; `make test` sets up .venv and runs the tests.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# The shared datasets (MNIST) live beside the project; override with COHORT_DATA_DIR=...
export COHORT_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run test browser bench clean proto docs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,torch,deploy,privacy,opacus,keras,hf,tracking,mlflow,wandb,ray,view,docs]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cohort run

test: $(STAMP) browser
	$(VENV)/bin/pytest -q -n 2 --dist loadfile  # two workers, each test file on one: most of the suite waits on processes

# The live view's browser test drives headless Chromium from Debian's packages (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Chromium (Debian package) for the live view's browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }

bench: $(STAMP)
	$(VENV)/bin/python bench/mnist_fedavg.py
	$(VENV)/bin/python bench/algorithms_noniid.py
	$(VENV)/bin/python bench/fedbuff_vs_sync.py
	$(VENV)/bin/python bench/broadcast.py
	$(VENV)/bin/python bench/deploy_clients.py
	$(VENV)/bin/python bench/deploy_throughput.py
	$(VENV)/bin/python bench/robust_dp.py
	$(VENV)/bin/python bench/secagg_overhead.py
	$(VENV)/bin/python bench/compression.py
	$(VENV)/bin/python bench/personalization.py
	$(VENV)/bin/python bench/shakespeare.py
	$(VENV)/bin/python bench/aggregation_throughput.py
	$(VENV)/bin/python bench/vectorized.py
	$(VENV)/bin/python bench/million.py
	$(VENV)/bin/python bench/overhead.py
	$(VENV)/bin/python bench/mcmahan.py
	$(VENV)/bin/python bench/vs_flower.py
	$(VENV)/bin/python bench/view_overhead.py

# The documentation site (mkdocs.yml, docs/): regenerates the reference pages from the code (docs/gen_reference.py),
# then builds the site into site/ in strict mode (a broken link, a missing page or reference is an error).
docs: $(STAMP)
	PYTHONPATH=src $(VENV)/bin/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Regenerates the gRPC code from the committed .proto (grpcio-tools is in the dev extra).
proto: $(STAMP)
	$(VENV)/bin/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src src/cohort/channel/grpc/federation.proto

clean:
	rm -rf $(VENV) runs site .pytest_cache .hypothesis
