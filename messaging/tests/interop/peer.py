"""The other side of the interop suite (messaging/tests/interop.rs): the official CloudEvents
Python SDK and ordinary clients (confluent-kafka, pika, boto3) publish events in every form
the bindings allow, and read what the Rust side published.

    peer.py publish <broker> <topic> <group>    cases (JSON) on stdin; prints how many it sent
    peer.py consume <broker> <topic> <group> <count>
                                                prints one canonical JSON event per line

Events travel in a canonical JSON form both sides produce and compare:
{"id", "source", "type", "subject", "time_ms", "datacontenttype", "dataschema",
 "ext": {name: [type, value]}, "data": [kind, value]}, kind one of none, json, text, binary
(base64), type one of string, integer, boolean.
"""

import base64
import json
import sys
import time
from datetime import datetime, timezone

from cloudevents.core.bindings import amqp, kafka, rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

CORE = {"id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema"}
FMT = JSONFormat()


def to_sdk(case):
    """The SDK event of a canonical case."""
    attrs = {"id": case["id"], "source": case["source"], "type": case["type"], "specversion": "1.0"}
    for name in ("subject", "datacontenttype", "dataschema"):
        if case.get(name) is not None:
            attrs[name] = case[name]
    if case.get("time_ms") is not None:
        attrs["time"] = datetime.fromtimestamp(case["time_ms"] / 1000, tz=timezone.utc)
    for name, (_, value) in case.get("ext", {}).items():
        attrs[name] = value
    kind, value = case["data"]
    data = {"none": None, "json": value, "text": value,
            "binary": base64.b64decode(value) if kind == "binary" else None}[kind]
    return CloudEvent(attributes=attrs, data=data)


def canonical(event):
    """The canonical form of an SDK event."""
    attrs = dict(event.get_attributes())
    out = {k: attrs.get(k) for k in ("id", "source", "type", "subject", "datacontenttype", "dataschema")}
    out["dataschema"] = None if out["dataschema"] is None else str(out["dataschema"])
    t = attrs.get("time")
    out["time_ms"] = None if t is None else round(t.timestamp() * 1000)
    ext = {}
    for name, value in attrs.items():
        if name in CORE:
            continue
        if isinstance(value, bool):
            ext[name] = ["boolean", value]
        elif isinstance(value, int):
            ext[name] = ["integer", value]
        else:
            ext[name] = ["string", str(value)]
    out["ext"] = ext
    data = event.get_data()
    if data is None:
        out["data"] = ["none", None]
    elif isinstance(data, (bytes, bytearray)):
        out["data"] = ["binary", base64.b64encode(bytes(data)).decode()]
    elif isinstance(data, str):
        out["data"] = ["text", data]
    else:
        out["data"] = ["json", data]
    return out


def kafka_publish(topic, cases):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": "127.0.0.1:9092", "acks": "all"})
    sent = 0
    for case in cases:
        event = to_sdk(case)
        form = case["form"]
        if form == "binary":
            m = kafka.to_binary(event, FMT)
            p.produce(topic, value=m.value, key=m.key, headers=list(m.headers.items()))
        elif form == "structured":
            m = kafka.to_structured(event, FMT)
            p.produce(topic, value=m.value, key=m.key, headers=list(m.headers.items()))
        elif form == "plain":  # a structured event and no headers at all
            p.produce(topic, value=FMT.write(event))
        else:
            continue
        sent += 1
    assert p.flush(30) == 0, "kafka publish not acknowledged"
    return sent


def rabbit_channel():
    import pika
    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
    ch = conn.channel()
    ch.confirm_delivery()
    return pika, conn, ch


def rabbit_publish(topic, cases):
    pika, conn, ch = rabbit_channel()
    sent = 0
    for case in cases:
        event = to_sdk(case)
        form = case["form"]
        if form == "amqp-binary":  # cloudEvents_ properties, native AMQP types (time in ms)
            m = amqp.to_binary(event, FMT)
            props = pika.BasicProperties(content_type=m.properties.get("content-type"),
                                         headers=m.application_properties, delivery_mode=2)
            body = m.application_data
        elif form == "amqp-structured":
            m = amqp.to_structured(event, FMT)
            props = pika.BasicProperties(content_type=m.properties["content-type"], delivery_mode=2)
            body = m.application_data
        elif form == "rabbitmq-binary":  # ce- headers, strings (Knative's RabbitMQ binding)
            m = rabbitmq.to_binary(event, FMT)
            props = pika.BasicProperties(content_type=m.content_type, headers=m.headers, delivery_mode=2)
            body = m.body
        elif form == "plain":
            props = pika.BasicProperties(delivery_mode=2)
            body = FMT.write(event)
        else:
            continue
        ch.basic_publish(exchange=topic, routing_key="", body=body, properties=props, mandatory=True)
        sent += 1
    conn.close()
    return sent


def aws(service):
    import boto3
    return boto3.client(service, endpoint_url="http://127.0.0.1:4566", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def sqs_attrs(case, event):
    """Binary mode on SQS/SNS: `ce_` String attributes (the project's SQS binding)."""
    attrs = {}
    for name, value in event.get_attributes().items():
        if isinstance(value, datetime):
            value = value.isoformat().replace("+00:00", "Z")
        elif isinstance(value, bool):
            value = "true" if value else "false"
        attrs["ce_" + name] = {"DataType": "String", "StringValue": str(value)}
    return attrs


def sqs_publish(topic, group, cases):
    sns, sqs = aws("sns"), aws("sqs")
    arn = sns.create_topic(Name=topic)["TopicArn"]
    url = sqs.get_queue_url(QueueName=f"{topic}-{group}")["QueueUrl"]
    sent = 0
    for case in cases:
        event = to_sdk(case)
        form = case["form"]
        if form == "sns-structured":  # marked as the project does
            sns.publish(TopicArn=arn, Message=FMT.write(event).decode(), MessageAttributes={
                "content-type": {"DataType": "String", "StringValue": "application/cloudevents+json"}})
        elif form == "sns-plain":  # hand-written boto3: the JSON event, no attributes
            sns.publish(TopicArn=arn, Message=FMT.write(event).decode())
        elif form == "sqs-plain":  # straight into the group's queue, no attributes
            sqs.send_message(QueueUrl=url, MessageBody=FMT.write(event).decode())
        elif form == "sns-binary":
            body = event.get_data()
            body = json.dumps(body) if isinstance(body, dict) else body
            attrs = sqs_attrs(case, event)
            if body is None:  # SNS refuses empty messages: the binding's placeholder
                body = "-"
                attrs["messaging-body"] = {"DataType": "String", "StringValue": "empty"}
            sns.publish(TopicArn=arn, Message=body, MessageAttributes=attrs)
        else:
            continue
        sent += 1
    return sent


def kafka_consume(topic, group, count):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, deadline = [], time.time() + 60
    while len(got) < count and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        msg = kafka.KafkaMessage(headers={k: v for k, v in (m.headers() or [])},
                                 key=m.key(), value=m.value())
        got.append(kafka.from_kafka(msg, FMT))
    c.close()
    return got


def rabbit_consume(topic, group, count):
    pika, conn, ch = rabbit_channel()
    got, deadline = [], time.time() + 60
    while len(got) < count and time.time() < deadline:
        method, props, body = ch.basic_get(queue=f"{topic}.{group}", auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        msg = amqp.AMQPMessage(properties={"content-type": props.content_type} if props.content_type else {},
                               application_properties=props.headers or {}, application_data=body)
        got.append(amqp.from_amqp(msg, FMT))
    conn.close()
    return got


def sqs_consume(topic, group, count):
    sqs = aws("sqs")
    url = sqs.get_queue_url(QueueName=f"{topic}-{group}")["QueueUrl"]
    got, deadline = [], time.time() + 60
    while len(got) < count and time.time() < deadline:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                  MessageAttributeNames=["All"])
        for m in out.get("Messages", []):
            attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
            if attrs.get("content-type", "").startswith("application/cloudevents"):
                got.append(FMT.read(None, m["Body"].encode()))
            else:  # binary mode: the SDK has no SQS binding; read the ce_ attributes
                a = {k[3:]: v for k, v in attrs.items() if k.startswith("ce_")}
                body = m["Body"].encode()
                if attrs.get("messaging-body") == "base64":
                    body = base64.b64decode(body)
                elif attrs.get("messaging-body") == "empty":
                    body = b""
                if "time" in a:
                    a["time"] = datetime.fromisoformat(a["time"].replace("Z", "+00:00"))
                got.append(CloudEvent(attributes=a, data=FMT.read_data(body, a.get("datacontenttype"))))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


def main():
    cmd, broker, topic, group = sys.argv[1:5]
    if cmd == "publish":
        cases = json.load(sys.stdin)
        sent = {"kafka": lambda: kafka_publish(topic, cases),
                "rabbitmq": lambda: rabbit_publish(topic, cases),
                "sqs": lambda: sqs_publish(topic, group, cases)}[broker]()
        print(sent)
    elif cmd == "consume":
        count = int(sys.argv[5])
        events = {"kafka": kafka_consume, "rabbitmq": rabbit_consume, "sqs": sqs_consume}[broker](topic, group, count)
        for e in events:
            print(json.dumps(canonical(e)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
