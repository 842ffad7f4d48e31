#!/usr/bin/env bash
# Runs Tideline's whole test suite: starts a real Apache Kafka broker for the Kafka tests
# (scripts/kafka-broker.sh: KRaft single node on 127.0.0.1, jars from Maven Central, cached),
# runs `cargo test --workspace`, and stops the broker again.
#
#   scripts/test.sh [extra cargo test arguments]
#
# Set TIDELINE_KAFKA_BROKERS yourself to use another broker (the script then starts none).
# Set TIDELINE_SKIP_KAFKA=1 to run without a broker: the Kafka tests then say they skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

started_broker=0
cleanup() {
  if [ "$started_broker" = 1 ]; then
    scripts/kafka-broker.sh stop || true
  fi
}
trap cleanup EXIT

if [ -z "${TIDELINE_KAFKA_BROKERS:-}" ] && [ "${TIDELINE_SKIP_KAFKA:-0}" != 1 ]; then
  if ! scripts/kafka-broker.sh status >/dev/null 2>&1; then
    scripts/kafka-broker.sh start
    started_broker=1
  fi
  eval "$(scripts/kafka-broker.sh env)"
  export TIDELINE_KAFKA_BROKERS
  echo "test.sh: Kafka broker at $TIDELINE_KAFKA_BROKERS" >&2
fi

cargo test --workspace "$@"
