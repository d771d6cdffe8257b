"""Reads `count` records of `topic` from the beginning with confluent-kafka's own consumer and
its registry-aware AvroDeserializer (schema id from each message's header, writer schema from
the registry), read_committed, and prints each as a JSON line: {"key": ..., "value": {...}}.

Exits 1 with the client's error when a record cannot be deserialized, 2 when fewer than
`count` arrive within the timeout.

    python read_confluent_avro.py <bootstrap> <registry_url> <topic> <count> [timeout_ms]
"""

import datetime
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    """JSON for what fastavro hands out (timestamp-millis as datetime, bytes)."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot print {type(value)}")


def main():
    bootstrap, registry_url, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    timeout = (int(sys.argv[5]) if len(sys.argv) > 5 else 30000) / 1000
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"abm-python-test-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < count:
            if time.monotonic() > deadline:
                print(f"only {len(seen)} of {count} records within the timeout", file=sys.stderr)
                return 2
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                print(f"consumer error: {message.error()}", file=sys.stderr)
                continue
            try:
                value = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
            except Exception as error:  # the deserializer's own refusal is the answer
                print(f"AvroDeserializer: {type(error).__name__}: {error}", file=sys.stderr)
                return 1
            seen.append({"key": (message.key() or b"").decode(), "value": value})
    finally:
        consumer.close()
    for record in seen:
        print(json.dumps(record, default=plain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
