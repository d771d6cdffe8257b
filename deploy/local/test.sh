#!/usr/bin/env bash
# The test command: makes sure a Kafka broker (and Prometheus's tools) are there, then runs
# every test in the workspace.
#
#   deploy/local/test.sh [cargo test args...]
#
# With KAFKA_BOOTSTRAP_SERVERS set, the tests use that broker (and KAFKA_SASL_BOOTSTRAP_SERVERS,
# KAFKA_SSL_BOOTSTRAP_SERVERS and KAFKA_TLS_DIR for its secured listeners, laid out as
# kafka.sh's: user abm, ca.pem, client.pem, client.key, sasl-password, and oauth.key, the key of
# an OAUTHBEARER issuer the broker trusts with kafka.sh's issuer and audience). Otherwise this starts the local
# Apache Kafka (deploy/local/kafka.sh: fetched from Maven Central on first use, then cached)
# and leaves it running for the next run; `deploy/local/kafka.sh stop` stops it. Likewise the
# schema registry (deploy/local/registry.sh: Apicurio Registry from Maven Central, run with a
# Java 21+ JDK) unless SCHEMA_REGISTRY_URL names one (its Confluent-compatible API; and
# SCHEMA_REGISTRY_TLS_URL the same over https, with a certificate of KAFKA_TLS_DIR's CA).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

# The ops tests validate deploy/ with real tools: promtool and prometheus (Debian's prometheus),
# docker-compose (Debian's docker-compose), kubernetes-validate (PyPI, schemas bundled). The
# broker's jars are fetched with Maven, and the Kafka Streams peer's cross-check test compiles
# Java: a JDK 17 and Maven.
missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v curl >/dev/null || missing+=(curl)
# The client-library tests drive real Node clients (tests/node: kafkajs, Segment's and
# RudderStack's libraries) with Node 20 and npm, and analytics.js in Debian's Chromium (driven by
# playwright-core with its executablePath; never `playwright install`).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
# What the build links: the system OpenSSL and libcurl (rdkafka's `ssl` and `curl` features).
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
pkg-config --exists libcurl 2>/dev/null || missing+=(libcurl4-openssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing Debian's ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "test.sh: the tests need Debian's ${missing[*]}: install them" >&2
    exit 1
  fi
fi
# pip puts the command in the interpreter's scripts directory (pyenv: no shim until a rehash).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v kubernetes-validate >/dev/null; then
  echo "test.sh: installing kubernetes-validate (PyPI) for the ops tests" >&2
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.34.1 >/dev/null
  hash -r
fi

# The Node client libraries, pinned by tests/node/package-lock.json, from the npm registry.
if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules ]; then
  echo "test.sh: installing the Node client libraries (npm ci in tests/node)" >&2
  npm ci --prefix tests/node --no-audit --no-fund --silent
fi

# The Python client libraries (confluent-kafka's registry-aware Avro deserializer), pinned by
# tests/python/requirements.txt, from PyPI into a virtual environment of their own.
venv=tests/python/.venv
if [ ! -f "$venv/.installed" ] || [ tests/python/requirements.txt -nt "$venv/.installed" ]; then
  echo "test.sh: installing the Python client libraries (pip, tests/python/requirements.txt)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  touch "$venv/.installed"
fi

if [ -z "${SCHEMA_REGISTRY_URL:-}" ]; then
  deploy/local/registry.sh start
  SCHEMA_REGISTRY_URL=$(deploy/local/registry.sh url)
  SCHEMA_REGISTRY_TLS_URL=$(deploy/local/registry.sh url-tls)
  export SCHEMA_REGISTRY_URL SCHEMA_REGISTRY_TLS_URL
fi

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/local/kafka.sh start
  KAFKA_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap)
  # The secured listeners of the same broker (SASL_SSL/SCRAM and mTLS) and its CA and client files.
  KAFKA_SASL_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap-sasl)
  KAFKA_SSL_BOOTSTRAP_SERVERS=$(deploy/local/kafka.sh bootstrap-ssl)
  KAFKA_TLS_DIR=$(deploy/local/kafka.sh tls-dir)
  export KAFKA_BOOTSTRAP_SERVERS KAFKA_SASL_BOOTSTRAP_SERVERS KAFKA_SSL_BOOTSTRAP_SERVERS KAFKA_TLS_DIR
fi
echo "test.sh: testing against Kafka at $KAFKA_BOOTSTRAP_SERVERS and the schema registry at $SCHEMA_REGISTRY_URL" >&2
# Every binary first: the cross-service tests run the services and the simulator as processes
# (cargo builds a package's binaries only for its own tests).
cargo build --workspace --bins
exec cargo test --workspace "$@"
