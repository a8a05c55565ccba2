"""Confluent's own Python client against embedstream's broker and registry.

Called by the Rust test suite (schemas/tests/it/interop.rs) so that records cross between a
client nobody here wrote and ours. Each subcommand prints one JSON document on stdout.

  produce-items  register item_event.avsc with SchemaRegistryClient and produce N item events
                 with AvroSerializer
  consume        read N records with AvroDeserializer and print them
  evolve         register a schema, try an incompatible change (expect Confluent's 409), set the
                 subject's compatibility to NONE, and register it again
"""

import argparse
import datetime
import json
import pathlib
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMAS = pathlib.Path(__file__).resolve().parents[2]


def produce_items(args):
    registry = SchemaRegistryClient({"url": args.registry})
    schema = (SCHEMAS / "item_event.avsc").read_text()
    serializer = AvroSerializer(registry, schema)
    producer = Producer({"bootstrap.servers": args.bootstrap})
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(str(err))

    for i in range(args.count):
        event = {
            "item_id": f"py-{i}",
            "op": "DELETE" if i % 4 == 3 else "UPSERT",
            "text": None if i % 4 == 3 else f"python item {i} – naïve café",
            "title": f"title {i}" if i % 2 == 0 else None,
            "attributes": {"client": "confluent-kafka-python"},
            "event_time": 1_700_000_000_000 + i,
            "producer": {"source": "python", "request_id": str(i)},
        }
        value = serializer(event, SerializationContext(args.topic, MessageField.VALUE))
        producer.produce(args.topic, key=event["item_id"].encode(), value=value, on_delivery=on_delivery)
    producer.flush(30)
    if errors:
        sys.exit(f"delivery failed: {errors}")
    print(json.dumps({"produced": args.count}))


def consume(args):
    registry = SchemaRegistryClient({"url": args.registry})
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    records = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    while len(records) < args.count and datetime.datetime.now() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consume error: {msg.error()}")
        value = deserializer(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
        records.append({"key": msg.key().decode(), "value": value})
    consumer.close()
    print(json.dumps({"records": records}, default=str))


def evolve(args):
    registry = SchemaRegistryClient({"url": args.registry})
    v1 = {"type": "record", "name": "Evolving", "namespace": "py", "fields": [{"name": "a", "type": "string"}]}
    v2 = dict(v1, fields=v1["fields"] + [{"name": "b", "type": "int"}])
    out = {}
    out["v1_id"] = registry.register_schema(args.subject, Schema(json.dumps(v1), "AVRO"))
    try:
        registry.register_schema(args.subject, Schema(json.dumps(v2), "AVRO"))
        out["incompatible"] = None
    except SchemaRegistryError as e:
        out["incompatible"] = {"http_status": e.http_status_code, "error_code": e.error_code, "message": e.error_message}
    out["set_compatibility"] = registry.set_compatibility(args.subject, "NONE")
    out["v2_id"] = registry.register_schema(args.subject, Schema(json.dumps(v2), "AVRO"))
    out["versions"] = registry.get_versions(args.subject)
    latest = registry.get_latest_version(args.subject)
    out["latest"] = {"version": latest.version, "schema_id": latest.schema_id}
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["produce-items", "consume", "evolve"])
    parser.add_argument("--bootstrap")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic")
    parser.add_argument("--group", default="interop")
    parser.add_argument("--subject")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    {"produce-items": produce_items, "consume": consume, "evolve": evolve}[args.command](args)


if __name__ == "__main__":
    main()
