# Two commands do everything on a fresh Debian machine:
#   make lab    bring the seed's stack up on local lab containers and prove it
#   make test   run every test: lint, unit tests, every Molecule scenario
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

# Molecule scenarios in `make test`, in two lanes that run at the same time
# (scripts/molecule-lanes.sh): most of a run waits on `docker exec`, so two
# fit on 2 cores. A lane runs its scenarios in turn; scenario:distro picks
# the distro (default debian12). The heavy load tests of rolling and cluster
# fall in different stretches of the two lanes.
MOLECULE_LANES ?= "rolling default:debian12 methods" "default:debian13 tls cluster"
DEFAULT_DISTROS ?= debian12 debian13

.PHONY: setup lab lab-destroy test lint unit input molecule clean

setup:
	SETUP_DISTROS="$(sort $(DEFAULT_DISTROS) $(LAB_DISTRO))" scripts/setup.sh

LAB_DISTRO ?= debian12
export LAB_DISTRO

lab: setup
	ansible-playbook lab/create.yml
	ansible-playbook site.yml lab/proof.yml

lab-destroy:
	ansible-playbook lab/destroy.yml

lint:
	for script in scripts/*.sh .ci/run; do bash -n "$$script"; done
	yamllint --strict .
	ansible-lint --profile production
	ruff check .
	ruff format --check .

unit:
	pytest -q -p no:cacheprovider tests/unit

# Bad-input table: each case runs the preflight plays against local hosts.
input:
	pytest -q -p no:cacheprovider -n 2 tests/input

molecule:
	scripts/molecule-lanes.sh $(MOLECULE_LANES)

test: setup lint unit input molecule

clean: lab-destroy
	rm -rf .venv .cache
