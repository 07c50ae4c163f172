# Prelabel's developer commands. Everything installs itself from package registries, caching heavy
# builds under ~/.cache/prelabel/ (Go build of the control plane, uv's wheel cache, Label Studio).
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/prelabel
export UV_CACHE_DIR := $(CACHE)/uv
export UV_LINK_MODE := hardlink
PY := .venv/bin/python
# Debian packages (redis-server for the GitOps test, the real node's); RUNLEVEL=1: install a service without
# starting it; the lock timeout: `make -j` runs several installs at once (node, argocd, images).
APT := $(shell [ "$$(id -u)" = 0 ] || echo sudo) env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
STAMP := .venv/.installed-$(shell cat VERSION requirements-dev.txt backend_image/pyproject.toml operator/pyproject.toml local/pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
# `make` alone lists the targets; a named target runs as before.
.DEFAULT_GOAL := help
.PHONY: help docs

help:  ## this list: every target and what it does
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_-]+:[^#]*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: env cluster node argocd label-studio images s3 test test-unit demo bench bench-learning bench-prelabel bench-priority bench-lean bench-images bench-ls-db bench-50k bench-fuzz bench-chaos bench-scale lint format clean

env: $(STAMP)  ## the project's virtualenv (.venv) with the three packages and the test tools
$(STAMP): VERSION requirements-dev.txt backend_image/pyproject.toml operator/pyproject.toml local/pyproject.toml
	@# uv from PyPI into ~/.local; Debian's own python3 refuses a --user install (PEP 668) unless told to.
	@export PATH="$$HOME/.local/bin:$$PATH"; command -v uv >/dev/null || python3 -m pip install -q --user uv 2>/dev/null \
	  || python3 -m pip install -q --user --break-system-packages uv
	@export PATH="$$HOME/.local/bin:$$PATH"; [ -x $(PY) ] || uv venv -q -p python3.11 .venv; \
	  uv pip install -q -p $(PY) -r requirements-dev.txt
	@rm -f .venv/.installed-*; touch $@

cluster:  ## build (or reuse) the local Kubernetes control plane binaries
	@local/build/build.sh >/dev/null

# A real node (local/prelabel_local/node.py): containerd, runc, the CNI plugins, iptables, and gcc with
# a static libc for the pause image, from Debian (containerd is installed, not started: the node runs its own).
NODE_PACKAGES := containerd runc containernetworking-plugins iptables gcc libc6-dev
node: cluster  ## the Debian packages a real node runs on (the kubelet and kube-proxy come with `cluster`)
	@dpkg-query -W -f='$${Status}\n' $(NODE_PACKAGES) 2>/dev/null | grep -c '^install ok installed' | grep -qx $(words $(NODE_PACKAGES)) \
	  || $(APT) install -y -qq --no-install-recommends $(NODE_PACKAGES) >/dev/null \
	  || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $(NODE_PACKAGES) >/dev/null; }

argocd:  ## build (or reuse) Argo CD for the GitOps test; install Debian's redis-server, which it runs with
	@command -v redis-server >/dev/null || $(APT) install -y -qq --no-install-recommends redis-server >/dev/null \
	  || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends redis-server >/dev/null; }
	@local/build/build-argocd.sh >/dev/null

s3:  ## build (or reuse) SeaweedFS's weed, the real S3 server the model store's tests start (Apache-2.0; never MinIO's AGPL server)
	@local/build/build-seaweedfs.sh >/dev/null

label-studio: env  ## install (or reuse) Label Studio in its own virtualenv (with gunicorn), Debian's postgresql for it, and each version's migrated database
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || $(APT) install -y -qq --no-install-recommends postgresql >/dev/null \
	  || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends postgresql >/dev/null; }
	@$(PY) -c "from prelabel_local import label_studio_server; label_studio_server.ensure_all()"

images: env  ## build (or reuse) the images (operator, backend, lean backend) from their Dockerfiles with podman (Debian packages), layers cached under ~/.cache/prelabel/containers
	$(PY) -m prelabel_local.images build operator backend backend-lean

test: env cluster node argocd label-studio images s3  ## every test: unit, then integration on real Label Studio, Kubernetes, Argo CD and SeaweedFS (S3)
	$(PY) -m pytest tests -n 3 --dist loadgroup --durations=25 $(PYTEST_ARGS)

test-unit: env cluster  ## unit tests (helm renders the chart: the cluster build provides it)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: env cluster node label-studio  ## the whole product locally: both images, Kubernetes with a real node, Label Studio, the operator and backend as pods; pre-labels a demo project
	.venv/bin/prelabel demo

bench: env  ## the backend's /predict throughput beside raw ultralytics, in one run
	$(PY) bench/predict_bench.py

bench-learning: env  ## the labeling-effort curve: pre-label quality on unannotated tasks after 0, 25, 50, 100 human annotations, and CPU per training run
	$(PY) bench/learning_curve.py --repeats 3

bench-prelabel: env label-studio  ## pre-labeling a project: backend alone, the driver, Label Studio's action, in one run
	$(PY) bench/prelabel_bench.py

bench-priority: env  ## annotators first: a person's 1-task /predict latency while a pre-labeling run loads the backend, priority on and off, in one run
	$(PY) bench/priority_bench.py

bench-lean: env  ## torch-free inference (lean.py) beside ultralytics' predictor on the same export: img/s, cold start, peak RSS, in one run
	$(PY) bench/lean_bench.py

bench-images: env images cluster node  ## both backend images side by side (full, lean): size, cold start, tasks/s at concurrency 1 and 4, RSS, and a pod's start on the real node, in one run
	$(PY) bench/images_bench.py --rounds 3 --pod-rounds 2

bench-ls-db: env label-studio  ## Label Studio's ceiling for the operator's registrations on SQLite, PostgreSQL, and PostgreSQL under gunicorn, side by side
	$(PY) bench/ls_db_bench.py

bench-50k: env label-studio  ## a 50,000-task project pre-labeled: what a resync and a poll cost Label Studio, and how long 10 new tasks wait
	$(PY) bench/ls_50k_bench.py

bench-fuzz: env  ## hostile input to the backend: 10,000 schemathesis requests against its openapi.yaml, bombs, huge bodies, slow-loris; RSS throughout
	$(PY) bench/fuzz_bench.py

bench-chaos: env cluster label-studio  ## 50 MLBackends through create, update, key rotation and delete while the operator is SIGKILLed 20 times
	$(PY) bench/chaos_bench.py

bench-scale: env cluster label-studio  ## the operator with 10, 100, 500 MLBackends: time to Ready, RSS, CPU, quiet-state load on Label Studio and the API server
	$(PY) bench/scale_bench.py

lint: env  ## ruff (lint), mypy --strict on the three packages, the import contracts in .importlinter (config: pyproject.toml)
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

docs: env  ## rewrite the generated pages: docs/mlbackend.md (from crds/mlbackend.yaml) and docs/backend-env.md (from the backend's settings.py)
	$(PY) -m prelabel_local.docs

format: env  ## ruff format the files you name: make format FILES="path/a.py path/b.py" (not enforced; see pyproject.toml)
	@[ -n "$(FILES)" ] || { echo 'name the files: make format FILES="..."'; exit 2; }
	.venv/bin/ruff format $(FILES)

clean:  ## remove the virtualenv and the tools' caches (.venv, .pytest_cache, .mypy_cache, .ruff_cache)
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
