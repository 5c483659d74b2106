# orderflow: two commands on a fresh machine, `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the local stack runs: PostgreSQL 15 server, Redis, memcached; Chromium for the
# dashboard's browser test (driven by Playwright through executable_path, never `playwright install`);
# Java 17 and Maven for the JVM services (Kafka); Mosquitto, the MQTT broker of the restaurants' keep-alives; curl,
# which tests/api/test_rest_proxy.py sends the seed's own request with. Node.js 20+ and npm (dynalite, the local
# DynamoDB) come with the machine: Debian 12's own nodejs is 18, too old for dynalite 4.
SYSTEM_PACKAGES := postgresql-15 redis-server memcached chromium maven openjdk-17-jre-headless mosquitto curl
# Beam's Prism runner (streaming runs), built from Beam's Go module at the version of apache-beam in setup.py.
PRISM_VERSION := v2.77.0
PRISM := .local/bin/prism
# kustomize, to render deploy/ in the tests as `kubectl kustomize` would; the newest release that builds
# with Go 1.26 (v5.8.3 asks for Go 1.27).
KUSTOMIZE_VERSION := v5.8.2
KUSTOMIZE := .local/bin/kustomize
# Prometheus's promtool (checks and unit-tests deploy/prometheus/*.yaml), from Prometheus's Go module: v0.316.0 is
# Prometheus 3.16. It compiles ~1,400 packages (the service-discovery SDKs): ~8 CPU-minutes the first time.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := .local/bin/promtool

.PHONY: setup system-packages jars registry java21-check node web venv prism kustomize promtool test unit demo demo-replay stack-up stack-down stack-status redeploy bootstrap lint bench peers-venv clean

setup: system-packages jars registry node web venv prism kustomize promtool

# The JVM services (Apache Kafka) from Maven Central into .local/jars/<service>/; redone only when the pom
# changes, and offline once Maven's cache has them.
JVM_POM := dev/orderflow_dev/local/jvm/pom.xml
jars: .local/jars/.resolved

.local/jars/.resolved: $(JVM_POM)
	@java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || { echo "Java 17+ is needed for Kafka 4 (apt-get install openjdk-17-jre-headless)"; exit 1; }
	rm -rf .local/jars/kafka
	mvn -q -B -f $(JVM_POM) dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/.local/jars/kafka
	touch $@

# The schema registry (Apicurio Registry 3, Confluent-compatible API) from Maven Central, unpacked into
# .local/apicurio (quarkus-run.jar + lib/); redone only when its pom changes. It needs Java 21+, which need not be
# the `java` on PATH (Kafka runs on 17): the first Java 21+ of $$JAVA_HOME, PATH and /usr/lib/jvm is written to
# .local/apicurio/java, which the local stack runs it with.
REGISTRY_POM := dev/orderflow_dev/local/jvm/apicurio/pom.xml
registry: .local/apicurio/.resolved

java21-check:
	@for java in "$$JAVA_HOME/bin/java" "$$(command -v java)" /usr/lib/jvm/*/bin/java; do \
	  [ -x "$$java" ] && "$$java" -version 2>&1 | grep -qE 'version "(2[1-9]|[3-9][0-9])' && { echo "$$java"; exit 0; }; \
	done; \
	echo "Java 21+ is needed for the schema registry (Apicurio Registry 3): apt-get install openjdk-21-jre-headless, or a Temurin 21+ JDK (JAVA_HOME or /usr/lib/jvm)" >&2; exit 1

.local/apicurio/.resolved: $(REGISTRY_POM)
	@java21="$$($(MAKE) -s java21-check)" || exit 1; \
	rm -rf .local/apicurio && mkdir -p .local/apicurio && \
	mvn -q -B -f $(REGISTRY_POM) dependency:unpack -DoutputDirectory=$(CURDIR)/.local/apicurio && \
	echo "$$java21" > .local/apicurio/java
	touch $@

# The Node services (dynalite, the local DynamoDB) from the npm registry into .local/node/node_modules, exactly
# as dev/orderflow_dev/local/node/package-lock.json pins them; redone only when the lock file changes. No install
# scripts run: the one native module (classic-level: loaded, though unused in memory) ships prebuilt binaries.
NODE_LOCK := dev/orderflow_dev/local/node/package-lock.json
node: .local/node/.installed

.local/node/.installed: dev/orderflow_dev/local/node/package.json $(NODE_LOCK)
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || { echo "Node.js 20+ and npm are needed for dynalite (the local DynamoDB)"; exit 1; }
	rm -rf .local/node && mkdir -p .local/node
	cp dev/orderflow_dev/local/node/package.json $(NODE_LOCK) .local/node/
	npm ci --prefix .local/node --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# The browser assets the API serves itself, never from a CDN (so /docs, /redoc and the dashboard's charts work
# offline): Swagger UI, Redoc and uPlot from the npm registry, exactly as orderflow/api/web/package-lock.json pins
# them, installed into .local/web and their built files copied into orderflow/api/static/vendor/ (not in git;
# packaged with the API). Redone only when the lock file changes; no install scripts, no peer dependencies
# (Redoc's standalone bundle carries its own React).
WEB_LOCK := orderflow/api/web/package-lock.json
WEB_VENDOR := orderflow/api/static/vendor
web: $(WEB_VENDOR)/.installed

$(WEB_VENDOR)/.installed: orderflow/api/web/package.json $(WEB_LOCK)
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || { echo "Node.js 20+ and npm are needed for the API's browser assets"; exit 1; }
	rm -rf .local/web $(WEB_VENDOR) && mkdir -p .local/web $(WEB_VENDOR)
	cp orderflow/api/web/package.json $(WEB_LOCK) .local/web/
	npm ci --prefix .local/web --ignore-scripts --omit=peer --no-audit --no-fund --loglevel=error
	cd .local/web/node_modules && cp swagger-ui-dist/swagger-ui-bundle.js swagger-ui-dist/swagger-ui.css \
	  swagger-ui-dist/favicon-32x32.png redoc/bundles/redoc.standalone.js uplot/dist/uPlot.iife.min.js \
	  uplot/dist/uPlot.min.css $(CURDIR)/$(WEB_VENDOR)/
	cp .local/web/node_modules/swagger-ui-dist/LICENSE $(WEB_VENDOR)/LICENSE.swagger-ui
	cp .local/web/node_modules/redoc/LICENSE $(WEB_VENDOR)/LICENSE.redoc
	cp .local/web/node_modules/uplot/LICENSE $(WEB_VENDOR)/LICENSE.uplot
	touch $@

# Installs only what is missing, so a second `make setup` touches nothing.
system-packages:
	@missing=""; \
	[ -x /usr/lib/postgresql/15/bin/postgres ] || missing="$$missing postgresql-15"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v memcached >/dev/null || missing="$$missing memcached"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	[ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@# PostgreSQL refuses to run as root: as root the stack runs it as the 'postgres' system user.
	@if [ "$$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then useradd --system --no-create-home postgres; fi

# Beam's Go module at $(PRISM_VERSION), from Go's module proxy, with dev/prism/*.patch applied (each says why),
# built into $(PRISM). Idempotent: skipped when $(PRISM).stamp names this version and these patches' checksum.
# The build takes ~2 min the first time, seconds when Go's caches have it.
PRISM_PATCHES := $(sort $(wildcard dev/prism/*.patch))
prism:
	@stamp="$(PRISM_VERSION) $$(cat /dev/null $(PRISM_PATCHES) | sha256sum | cut -c1-16)"; \
	if [ -x $(PRISM) ] && [ "$$(cat $(PRISM).stamp 2>/dev/null)" = "$$stamp" ]; then \
	  :; \
	else \
	  command -v go >/dev/null || { echo "Go 1.26+ is needed to build Prism (Beam's sdks/go.mod at $(PRISM_VERSION)): https://go.dev/doc/install"; exit 1; }; \
	  echo "building Prism $(PRISM_VERSION) with $(notdir $(PRISM_PATCHES)) into $(PRISM)"; \
	  module=$$(cd / && go mod download -json github.com/apache/beam/sdks/v2@$(PRISM_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	  [ -d "$$module" ] || { echo "go mod download github.com/apache/beam/sdks/v2@$(PRISM_VERSION) failed"; exit 1; }; \
	  rm -rf .local/prism-src && mkdir -p .local $(dir $(PRISM)) && cp -r "$$module" .local/prism-src && chmod -R u+w .local/prism-src && \
	  for patch in $(PRISM_PATCHES); do patch -d .local/prism-src -p1 --quiet --forward < $$patch || exit 1; done && \
	  (cd .local/prism-src && GOFLAGS=-mod=mod go build -o $(abspath $(PRISM)) ./go/cmd/prism) && \
	  echo "$$stamp" > $(PRISM).stamp && rm -rf .local/prism-src; \
	fi

# Idempotent like prism: skipped when the binary is there and built from kustomize $(KUSTOMIZE_VERSION).
kustomize:
	@if [ -x $(KUSTOMIZE) ] && go version -m $(KUSTOMIZE) 2>/dev/null | grep -Eq '^\s+mod\s+sigs.k8s.io/kustomize/kustomize/v5\s+$(KUSTOMIZE_VERSION)\s'; then \
	  :; \
	else \
	  command -v go >/dev/null || { echo "Go 1.26+ is needed to build kustomize $(KUSTOMIZE_VERSION): https://go.dev/doc/install"; exit 1; }; \
	  echo "building kustomize $(KUSTOMIZE_VERSION) into $(KUSTOMIZE)"; \
	  mkdir -p $(dir $(KUSTOMIZE)) && GOBIN=$(abspath $(dir $(KUSTOMIZE))) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION); \
	fi

# Idempotent like prism: skipped when the binary is there and built from $(PROMTOOL_VERSION).
promtool:
	@if [ -x $(PROMTOOL) ] && go version -m $(PROMTOOL) 2>/dev/null | grep -Eq '^\s+mod\s+github.com/prometheus/prometheus\s+$(PROMTOOL_VERSION)\s'; then \
	  :; \
	else \
	  command -v go >/dev/null || { echo "Go is needed to build promtool: https://go.dev/doc/install"; exit 1; }; \
	  echo "building promtool (Prometheus module $(PROMTOOL_VERSION)) into $(PROMTOOL)"; \
	  mkdir -p $(dir $(PROMTOOL)) && GOBIN=$(abspath $(dir $(PROMTOOL))) go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION); \
	fi

venv: $(VENV)/.installed

# orderflow (the runtime package, with its extras) and, beside it, orderflow_dev (dev/: the local stack, generators,
# demo), both editable; orderflow_dev's dependencies are orderflow's extras, hence --no-deps.
$(VENV)/.installed: setup.py dev/setup.py
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[local,api,dev]'
	$(PY) -m pip install -q --no-deps -e dev
	touch $@

test: setup
	$(PY) -m pytest

# The tests that need nothing but the venv: no stack, no Prism, JVM, Chromium, kustomize or promtool (every test
# using the stack fixtures is marked needs_stack automatically, the others that start services by hand explicitly).
unit: venv
	$(PY) -m pytest -m "not needs_stack"

# The stack's directory and ports, the demo's API port: ORDERFLOW_LOCAL_ROOT, ORDERFLOW_LOCAL_PORT_OFFSET (environment).
# The demo's sizes: ARGS, e.g. make demo ARGS='--restaurants 50 --mqtt-restaurants 20' (python -m orderflow_dev.demo -h).
demo: setup stack-up
	$(PY) -m orderflow_dev.demo live $(ARGS)

demo-replay: setup stack-up
	$(PY) -m orderflow_dev.demo replay $(ARGS)

stack-up: setup
	$(PY) -m orderflow_dev.local up

stack-down:
	@if [ -x $(PY) ]; then $(PY) -m orderflow_dev.local down; fi

stack-status:
	$(PY) -m orderflow_dev.local status

# A running pipeline stopped (drained) and started again with its options plus ARGS, e.g.
# make redeploy PIPELINE=orders ARGS='--alarm_rules=@rules.json'
redeploy:
	$(PY) -m orderflow_dev.local redeploy $(PIPELINE) -- $(ARGS)

bootstrap:
	$(PY) -m orderflow.bootstrap

lint:
	$(VENV)/bin/ruff check orderflow dev tests benchmarks
	$(PY) -m mypy

# The peers of benchmarks/peers.py that cannot share $(VENV) (Quix Streams pins an older confluent-kafka):
# a venv layered over $(VENV) (its own packages first, then $(VENV)'s through a .pth file).
PEERS_VENV := .local/peers-venv
peers-venv: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: benchmarks/peers-requirements.txt
	[ -x $(PEERS_VENV)/bin/python ] || $(PY) -m venv $(PEERS_VENV)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
	  > "$$($(PEERS_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_project_venv.pth"
	$(PEERS_VENV)/bin/python -m pip install -q -r benchmarks/peers-requirements.txt
	touch $@

bench: peers-venv
	@for b in benchmarks/*.py; do [ "$$b" = benchmarks/harness.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

clean: stack-down
	rm -rf .local
