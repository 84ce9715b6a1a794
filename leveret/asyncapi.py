"""The contract as an AsyncAPI 3.0 document: the topology and the message types.

``leveret asyncapi`` writes it; code generators for languages leveret does not
ship read it. Payloads refer to the JSON Schema files in ``schemas/`` rather than
copying them, so there is one source of truth for each type and version.
"""

from __future__ import annotations

import re
from typing import Any

from leveret import wire
from leveret.consumers import App
from leveret.messages import Message
from leveret.schemas import file_name
from leveret.topology import dead_letter_queue

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
SCHEMA_FORMAT = "application/schema+json;version=draft-07"


def _key(name: str) -> str:
    """A component key (letters, digits, ``.``, ``-``, ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def document(
    app: App, *, title: str, version: str, schemas_path: str = "schemas"
) -> dict[str, Any]:
    """The AsyncAPI document of an app.

    Args:
        app: the app: its topology, and the message models it knows.
        title: the document's title.
        version: the version of the API described.
        schemas_path: where the schema files are, relative to the document.
    """
    top = app.topology
    models = app.models()
    messages = {_message_key(m): _message(m, schemas_path) for m in models}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    kinds = {e.name: e.type for e in top.exchanges}
    for model in models:
        if model.default_exchange is None or model.default_routing_key is None:
            continue
        channel = _key(f"{model.default_exchange}.{model.default_routing_key}")
        entry = channels.setdefault(
            channel,
            {
                "address": model.default_routing_key,
                "messages": {},
                "bindings": {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": {
                            "name": model.default_exchange,
                            "type": kinds.get(model.default_exchange, "direct"),
                            "durable": True,
                            "autoDelete": False,
                            "vhost": "/",
                        },
                        "bindingVersion": AMQP_BINDING,
                    }
                },
            },
        )
        entry["messages"][_message_key(model)] = {
            "$ref": f"#/components/messages/{_message_key(model)}"
        }
        operations[_key(f"publish.{model.message_type}.v{model.message_version}")] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{_message_key(model)}"}],
        }
    for queue in top.queues:
        for name, purpose in ((queue.name, "work"), (dead_letter_queue(queue.name), "dead-letter")):
            channels[_key(name)] = _queue_channel(name, purpose)
        operations[_key(f"consume.{queue.name}")] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{_key(queue.name)}"},
            "description": "Ack after processing; on failure follow docs/contract.md.",
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Messages, exchanges and queues of a leveret pipeline. "
            "The consuming and retry rules are in docs/contract.md.",
        },
        "defaultContentType": wire.CONTENT_TYPE,
        "servers": {
            "local": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0.9.1"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _message_key(model: type[Message]) -> str:
    return _key(f"{model.message_type}.v{model.message_version}")


def _message(model: type[Message], schemas_path: str) -> dict[str, Any]:
    return {
        "name": model.message_type,
        "title": f"{model.message_type} v{model.message_version}",
        "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "",
        "contentType": wire.CONTENT_TYPE,
        "headers": {
            "type": "object",
            "required": [wire.VERSION],
            "properties": {
                wire.VERSION: {"type": "integer", "const": model.message_version},
                wire.RETRY_COUNT: {"type": "integer", "minimum": 0},
            },
        },
        "payload": {
            "schemaFormat": SCHEMA_FORMAT,
            "schema": {"$ref": f"{schemas_path}/{file_name(model)}"},
        },
        "bindings": {"amqp": {"messageType": model.message_type, "bindingVersion": AMQP_BINDING}},
    }


def _queue_channel(name: str, purpose: str) -> dict[str, Any]:
    return {
        "address": name,
        "description": f"The {purpose} queue {name}.",
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": name,
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING,
            }
        },
    }
