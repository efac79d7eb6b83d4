# Thin wrappers: the logic lives in playbooks, roles and the stackkit package (stackkit/).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
ACTIVATE  := source $(VENV)/bin/activate &&
TOPOLOGY  ?= single
INVENTORY ?= inventories/local
ALL_SCENARIOS := $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
# The longest first (the stack, then the multi-host ones), so that with MOLECULE_JOBS=2 the
# short ones fill in at the end rather than a long one starting last. MOLECULE_JOBS=1 runs them
# one after another.
LONGEST_SCENARIOS := stack multi rabbitmq-cluster
SCENARIOS ?= $(foreach s,$(LONGEST_SCENARIOS),$(filter $(s),$(ALL_SCENARIOS))) \
  $(filter-out $(LONGEST_SCENARIOS),$(ALL_SCENARIOS))
MOLECULE_JOBS ?= 2
# `make molecule` repeats a failed scenario's failure lines at its very end, after every other
# scenario's output, where the tail of a CI log shows them.
MOLECULE_FAILED_LINES ?= 15
MOLECULE_FAILURE_LINES := fatal:|FAILED|failed=[1-9]|^.{0,12}E  |Error|ERROR|CRITICAL|Traceback
HOSTS     := $(PY) -m stackkit.stackhosts
# Whole seconds of a monotonic clock, for the durations make prints: the wall clock (date's
# epoch seconds, and bash's SECONDS, which follows it) can step back or ahead mid-run.
comma := ,
MONOTONIC := python3 -c 'import time; print(int(time.monotonic()))'
# The local hosts' secrets are throwaway; their vault password is committed beside them.
ifeq ($(INVENTORY),inventories/local)
export ANSIBLE_VAULT_PASSWORD_FILE := $(CURDIR)/tests/hosts/local-vault-password
endif
# Controller packages: what running the kit against any hosts needs (Python, SSH), and what the
# local test hosts add (a container engine, debootstrap and Debian's keyring for their images).
APT_PACKAGES := python3-venv openssh-client make
LOCAL_HOSTS_APT_PACKAGES := docker.io debootstrap debian-archive-keyring
# And for `make test` only: systemd-analyze (package systemd) to score the units the roles write,
# Chromium for the browser test (Playwright drives the distribution's build; it downloads no
# browser), and gpg for the unit test of the roles' signing-key checks (test_apt_keys.py).
TEST_APT_PACKAGES := systemd chromium gpg

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: bootstrap
bootstrap: controller-packages $(VENV)/.installed ## install controller packages and the kit's Python tooling (what running it needs)

.PHONY: controller-packages
controller-packages:
	@python3 -c 'import venv, ensurepip' 2>/dev/null && command -v ssh >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }

# The local test hosts' needs (make demo, hosts-up, images, test); a run against your own hosts
# installs no container engine. After the packages above: two apt-get at once would contend for
# dpkg's lock when the demo builds the virtualenv and the image together.
.PHONY: local-hosts-packages
local-hosts-packages: controller-packages
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null \
	  && test -e /usr/share/keyrings/debian-archive-keyring.gpg || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(LOCAL_HOSTS_APT_PACKAGES); }

# What `make test` needs beyond that: the test extra (molecule, the linters, testinfra, the
# browser driver) and its controller packages.
.PHONY: test-tools
test-tools: bootstrap $(VENV)/.test-installed
	@command -v systemd-analyze >/dev/null && command -v chromium >/dev/null \
	  && command -v gpg >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_APT_PACKAGES); }

$(VENV)/.installed: pyproject.toml | controller-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

.PHONY: images
# The image builder needs only the standard library, so it runs while the virtualenv installs.
IMAGE_SUITES ?= trixie bookworm
images: local-hosts-packages ## build the Debian 13 and 12 images of the local hosts (cached by recipe)
	@set -e; for suite in $(IMAGE_SUITES); do python3 -m stackkit.stackhosts image --suite $$suite; done

.PHONY: hosts-up
hosts-up: bootstrap local-hosts-packages ## start local hosts: TOPOLOGY=single|multi
	$(HOSTS) up --topology $(TOPOLOGY)

.PHONY: hosts-down
hosts-down: ## remove local hosts: TOPOLOGY=single|multi
	$(HOSTS) down --topology $(TOPOLOGY)

# Each step of the demo says what it starts and how long the demo has run so far.
demo: DEMO_START := $(shell $(MONOTONIC))
DEMO_STEP = @echo "demo [$$(( $$($(MONOTONIC)) - $(DEMO_START) )) s]: $(1)"
.PHONY: demo
demo: ## bring the whole stack up on local hosts and say where to open it
	$(call DEMO_STEP,the virtualenv$(comma) the hosts' image and the artifacts$(comma) at once)
	@# None of the three needs another; each one's output shows when it is done.
	@$(MAKE) --no-print-directory -j3 --output-sync=target IMAGE_SUITES=trixie \
	  $(VENV)/.installed images artifacts
	$(call DEMO_STEP,starting the $(TOPOLOGY) topology's hosts)
	@$(MAKE) --no-print-directory hosts-up
	$(call DEMO_STEP,site.yml on them (every tier$(comma) the catalogue$(comma) monitoring))
	$(ACTIVATE) ansible-playbook -i $(INVENTORY) playbooks/site.yml
	$(call DEMO_STEP,done)
	@echo "The catalogue is up on local hosts ($(TOPOLOGY)): open https://127.0.0.1:8443/"
	@echo "(its certificate comes from the test CA .cache/tls/ca.pem; http://127.0.0.1:8080 redirects)"
	@echo "Hosts: ansible all -i $(INVENTORY) -m ping; measure it: make bench-app"

.PHONY: secrets
secrets: $(VENV)/.installed ## new encrypted vault.yml for INVENTORY=inventories/NAME (never overwrites)
	$(PY) -m stackkit.make_vault $(INVENTORY)

# The read-only checks only: safe on production. VERIFY_ARGS passes more to pytest, e.g.
# VERIFY_ARGS="-m destructive" on an inventory that sets stackkit_disposable (else refused).
VERIFY_ARGS ?= -m "not destructive"
.PHONY: verify
verify: bootstrap $(VENV)/.verify-installed ## read-only checks of INVENTORY (writes nothing, stops nothing, starts no listener)
	$(ACTIVATE) pytest -p no:cacheprovider --connection=ansible --sudo \
	  --ansible-inventory=$(INVENTORY) $(VERIFY_ARGS) tests/infra

.PHONY: audit
audit: bootstrap $(VENV)/.verify-installed ## Lynis hardening index and unit exposure of every host of INVENTORY
	$(ACTIVATE) ansible-playbook -i $(INVENTORY) playbooks/audit.yml

# Fresh hosts of their own (stackkit-bench-*): the floor, then a cold and a no-op site.yml per
# strategy (linear, free, mitogen_linear). About 5 minutes per strategy on 2 cores.
.PHONY: bench
bench: images artifacts $(VENV)/.bench-installed ## floor vs cold vs no-op site.yml per strategy, on fresh hosts
	$(ACTIVATE) python -m stackkit.bench.converge $(BENCH_ARGS)

# Against the `make demo` catalogue: one Locust phase per endpoint. It adds products.
BENCH_USERS    ?= 32
BENCH_DURATION ?= 20
.PHONY: bench-app
bench-app: $(VENV)/.bench-installed bench-packages ## req/s and p50/p95/p99 per endpoint against Elasticsearch's own rate, ingest to stored/searchable
	$(ACTIVATE) python -m stackkit.bench.app --url $(URL) --users $(BENCH_USERS) \
	  --duration $(BENCH_DURATION) --inventory $(INVENTORY) $(BENCH_ARGS)

# wrk, for bench-app's like-for-like figures of the web and of Elasticsearch (stackkit/bench/wrk.py
# installs it on the search host itself, on a disposable one only).
.PHONY: bench-packages
bench-packages: controller-packages
	@command -v wrk >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

.PHONY: bench-report
bench-report: $(VENV)/.bench-installed ## plots and a Markdown report of the benches' figures in build/bench/
	$(ACTIVATE) python -m stackkit.bench.report

$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[load,bench]'
	touch $@

# Destructive: deploys changed releases (deploy.yml, then fab deploy) under Locust's load.
.PHONY: bench-deploy
bench-deploy: $(VENV)/.load-installed ## requests, non-2xx and p99 through nginx during each deploy
	$(ACTIVATE) python -m stackkit.bench.deploy --url $(URL) --inventory $(INVENTORY) --users $(USERS)

# Destructive: it breaks configuration, grants and the firewall on purpose, on hosts that set
# stackkit_disposable only (stackkit/drift.py; DRIFT_ARGS="--kinds sshd-option,..." for some).
DRIFT_ARGS ?=
.PHONY: drift
drift: bootstrap $(VENV)/.verify-installed ## every kind of drift at once: --check must report each, site.yml repair it, the next run change nothing
	$(ACTIVATE) python -m stackkit.drift --inventory $(INVENTORY) --json build/drift.json $(DRIFT_ARGS)

# Destructive: they kill services and write products. The local hosts only, unless told.
CHAOS_ARGS ?=
.PHONY: chaos
chaos: bootstrap $(VENV)/.verify-installed ## products through nginx while services fail; every accepted one must land
	$(ACTIVATE) python -m stackkit.chaos --inventory $(INVENTORY) $(CHAOS_ARGS)

URL      ?= https://127.0.0.1:8443
DURATION ?= 5m
USERS    ?= 20
.PHONY: load
load: $(VENV)/.load-installed $(VENV)/.verify-installed ## a mixed load (Locust) for DURATION; fails on any non-2xx, or on any alert it raised
	$(ACTIVATE) python -m stackkit.alerts record --if-monitored --inventory $(INVENTORY) \
	  --out build/load/alerts-at-start.json
	$(ACTIVATE) STACKKIT_API_TOKEN="$$($(PY) -m stackkit.site_client token --inventory $(INVENTORY))" \
	  locust -f tests/load/locustfile.py --headless --host $(URL) \
	  --users $(USERS) --spawn-rate $(USERS) --run-time $(DURATION) --only-summary
	$(ACTIVATE) python -m stackkit.alerts quiet --if-monitored --inventory $(INVENTORY) \
	  --since build/load/alerts-at-start.json

$(VENV)/.verify-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[verify]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(VENV)/.load-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[load]'
	touch $@

.PHONY: lint
lint: test-tools ## yamllint, ansible-lint (production), ruff, defaults vs argument_specs, unit sandboxes, doc links, role docs, the collection
	$(ACTIVATE) yamllint --strict .
	$(ACTIVATE) ansible-lint --profile production
	$(ACTIVATE) ruff check .
	$(ACTIVATE) ruff format --check .
	$(PY) -m stackkit.lint.argument_specs roles
	$(PY) -m stackkit.lint.unit_security
	$(PY) -m stackkit.lint.doc_links
	@$(MAKE) --no-print-directory docs-check
	@$(MAKE) --no-print-directory collection

# The role reference pages are written from each role's meta/argument_specs.yml and
# defaults/main.yml (ansible-doc -t role); docs-check fails when a role changed without them.
.PHONY: docs
docs: $(VENV)/.installed ## regenerate the role reference pages docs/roles/*.md
	$(PY) -m stackkit.lint.role_docs --roles roles --out docs/roles

.PHONY: docs-check
docs-check: $(VENV)/.installed ## fail when docs/roles/ differs from what `make docs` writes
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m stackkit.lint.role_docs --roles roles --out "$$tmp" && diff -r docs/roles "$$tmp" \
	  || { echo "docs/roles/ is out of date with the roles' argument specs: run make docs" >&2; exit 1; }

# The roles, playbooks and module as a collection (docs/collection.md): the artifact in
# build/collection/, then the ansible-test sanity tests that run offline, on the artifact
# installed in a temporary directory (under this checkout, git would hide it from ansible-test).
# The others (ansible-doc, validate-modules, import, pep8, pylint, yamllint, runtime-metadata)
# bootstrap pip from the network into virtualenvs of their own.
# tests/sanity/ignore-*.txt: the shebangs of the scripts the roles install on the hosts.
COLLECTION := $(shell sed -n 's/^namespace: //p' galaxy.yml)/$(shell sed -n 's/^name: //p' galaxy.yml)
SANITY_TESTS := action-plugin-docs compile empty-init ignores line-endings no-assert \
  no-get-exception no-illegal-filenames no-smart-quotes replace-urlopen shebang symlinks \
  use-argspec-type-path use-compat-six
.PHONY: collection
collection: $(VENV)/.installed ## build the collection into build/collection and run ansible-test sanity on it
	rm -rf build/collection
	$(ACTIVATE) ansible-galaxy collection build --output-path build/collection .
	$(ACTIVATE) tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	  && ANSIBLE_COLLECTIONS_PATH="$$tmp" ansible-galaxy collection install --no-deps -p "$$tmp" \
	    build/collection/*.tar.gz >/dev/null \
	  && mkdir -p "$$tmp/ansible_collections/$(COLLECTION)/tests/sanity" \
	  && cp tests/sanity/ignore-*.txt "$$tmp/ansible_collections/$(COLLECTION)/tests/sanity/" \
	  && cd "$$tmp/ansible_collections/$(COLLECTION)" \
	  && ansible-test sanity --color no \
	    --python "$$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
	    $(addprefix --test ,$(SANITY_TESTS))

# The built collection, installed into a project of its own (a temporary directory that holds
# nothing else), runs site.yml against INVENTORY: the roles, playbooks and wiring as shipped, not
# the checkout's. Only the app's source and its release directory come from the checkout.
.PHONY: collection-converge
collection-converge: $(VENV)/.installed ## the built collection converges INVENTORY from a directory of its own
	rm -rf build/collection
	$(ACTIVATE) ansible-galaxy collection build --output-path build/collection .
	$(ACTIVATE) tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	  && export ANSIBLE_COLLECTIONS_PATH="$$tmp/collections" \
	  && ansible-galaxy collection install --no-deps -p "$$tmp/collections" \
	    build/collection/*.tar.gz >/dev/null \
	  && cd "$$tmp" && ANSIBLE_FORKS=20 \
	    ANSIBLE_PIPELINING=true ANSIBLE_CALLBACK_RESULT_FORMAT=yaml \
	    ansible-playbook -i "$(abspath $(INVENTORY))" stackkit.kit.site \
	      -e app_source_dir="$(CURDIR)/app" -e app_build_dir="$(CURDIR)/.cache/releases"

.PHONY: unit
unit: test-tools app/.venv/.installed $(VENV)/.bench-installed ## unit tests of the kit's Python code and of the app
	$(ACTIVATE) pytest -q -p no:cacheprovider -n auto --dist loadfile tests/unit
	cd app && .venv/bin/python -m pytest -q -p no:cacheprovider

# The app has its own locked requirements and virtualenv, as on the hosts it runs on.
app/.venv/.installed: app/requirements.txt app/requirements-dev.txt
	python3 -m venv app/.venv
	app/.venv/bin/pip install -q --require-hashes -r app/requirements.txt -r app/requirements-dev.txt
	touch $@

# The built collection, installed where the stack scenario converges from it
# (molecule/stack/converge.yml): CI runs the artifact as shipped against the single topology.
STACK_COLLECTION := build/stack-collection
.PHONY: stack-collection
stack-collection: $(VENV)/.installed
	@rm -rf $(STACK_COLLECTION) build/stack-collection-artifact
	@$(ACTIVATE) ansible-galaxy collection build --output-path build/stack-collection-artifact . >/dev/null \
	  && ANSIBLE_COLLECTIONS_PATH=$(STACK_COLLECTION) ansible-galaxy collection install --no-deps \
	    -p $(STACK_COLLECTION) build/stack-collection-artifact/*.tar.gz >/dev/null
	@test -f $(STACK_COLLECTION)/ansible_collections/$(COLLECTION)/playbooks/site.yml
	@echo "== the collection, built and installed into $(STACK_COLLECTION)"

.PHONY: molecule
# Every scenario runs even after one fails (--keep-going): one run names all that fail.
molecule: test-tools images artifacts stack-collection $(VENV)/.load-installed ## every molecule scenario (or SCENARIOS="common ..."), MOLECULE_JOBS at a time
	@mkdir -p build/molecule
	@echo "== molecule: $(strip $(SCENARIOS)), $(MOLECULE_JOBS) at a time; each one's log in build/molecule/"
	@rm -f build/molecule/*.failed; start=$$($(MONOTONIC)); \
	$(MAKE) --no-print-directory -j$(MOLECULE_JOBS) --keep-going --output-sync=target \
	  $(addprefix molecule-scenario-,$(SCENARIOS)) \
	  && echo "== molecule: every scenario passed in $$(( $$($(MONOTONIC)) - start )) s" \
	  || { for f in build/molecule/*.failed; do \
	         test -e "$$f" || continue; name=$$(basename "$$f" .failed); \
	         echo "== $$name FAILED; its failures in build/molecule/$$name.log:"; \
	         grep -aE '$(MOLECULE_FAILURE_LINES)' "build/molecule/$$name.log" \
	           | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200 | tail -n $(MOLECULE_FAILED_LINES); done; \
	       echo "== failed: $$(cd build/molecule && ls *.failed 2>/dev/null | sed 's/\.failed$$//' | xargs)"; \
	       exit 1; }

# One scenario; its output reaches the console whole when it ends (make's --output-sync), and
# build/molecule/NAME.log as it runs.
molecule-scenario-%:
	@set -o pipefail; start=$$($(MONOTONIC)); echo "== molecule test -s $*"; \
	$(ACTIVATE) molecule test -s $* 2>&1 | tee build/molecule/$*.log \
	  && echo "== $* passed in $$(( $$($(MONOTONIC)) - start )) s" \
	  || { echo "== $* FAILED after $$(( $$($(MONOTONIC)) - start )) s"; touch build/molecule/$*.failed; exit 1; }

.PHONY: artifacts
artifacts: ## fetch the test artifacts no archive carries into .cache/artifacts (once)
	tests/hosts/fetch-artifacts.sh

.PHONY: clean
clean: ## remove local hosts and caches (not the images)
	-$(HOSTS) down --topology single
	-$(HOSTS) down --topology multi
	rm -rf .cache/facts

# The mongodb role's test server (its secantusdb method, pinned in the role's defaults): the
# scenarios install it on the hosts from the wheelhouse `make artifacts` builds; the unit tests
# (tests/unit/test_mongodb_passwords.py) run it on the controller from this virtualenv.
SECANTUSDB_VERSION := $(shell sed -n 's/^mongodb_secantusdb_version: "\(.*\)"$$/\1/p' roles/mongodb/defaults/main.yml)
SECANTUSDB := .cache/secantusdb/bin/secantusd-py
$(SECANTUSDB): roles/mongodb/defaults/main.yml
	python3 -m venv .cache/secantusdb
	.cache/secantusdb/bin/pip install -q "secantusdb==$(SECANTUSDB_VERSION)"
	touch $@

unit: $(SECANTUSDB)

# Lint and the unit tests run beside the scenarios, at the lowest CPU priority (nice 19): they
# take the cycles the scenarios leave while they wait on services, and the scenarios run as fast
# as alone. What both need is installed first, one at a time. Their output is
# build/checks.log, its summary printed after the scenarios' (and its failures, if any).
.PHONY: test
test: test-tools images artifacts app/.venv/.installed $(SECANTUSDB) $(VENV)/.bench-installed
test: $(VENV)/.load-installed ## everything CI runs: the molecule scenarios, lint and unit tests beside them
	@mkdir -p build; rm -f build/checks.rc; start=$$($(MONOTONIC)); \
	echo "== lint and unit tests beside the scenarios, at nice 19; their output in build/checks.log"; \
	( nice -n 19 $(MAKE) --no-print-directory lint unit > build/checks.log 2>&1; \
	  echo $$? > build/checks.rc ) & \
	$(MAKE) --no-print-directory molecule; molecule=$$?; wait; checks=$$(cat build/checks.rc); \
	if [ "$$checks" = 0 ]; then \
	  echo "== lint and unit tests passed:"; grep -aE ' passed|Passed' build/checks.log; \
	else \
	  echo "== lint or unit tests FAILED; the end of build/checks.log:"; tail -n 40 build/checks.log; \
	fi; \
	echo "== make test took $$(( $$($(MONOTONIC)) - start )) s"; \
	[ "$$checks" = 0 ] && [ "$$molecule" = 0 ]
