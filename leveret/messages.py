"""Message types: a pydantic model per type and version.

A message type is defined once, as a subclass of :class:`Message` that names its
type and integer version::

    class ExportRequested(Message, type="reports.export", version=1,
                          exchange="reports", routing_key="export"):
        user_id: int
        format: Literal["csv", "xlsx"] = "csv"

The model is the Python face of the type; ``leveret schemas export`` writes the
language-neutral face, a JSON Schema file in ``schemas/``. The body on the wire
is the model's JSON and nothing else: the type and version travel in AMQP
properties and headers (see ``docs/contract.md``), so any client can read it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from leveret.errors import ConfigurationError, DecodeError, SchemaViolation

_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
_MAX_ERRORS_SHOWN = 5


class Model(BaseModel):
    """Base class for models nested inside a message: strict and frozen like it.

    A plain ``BaseModel`` inside a message would accept ``"1"`` for an integer
    while the JSON Schema file refuses it, so :class:`Message` refuses those.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


class Message(BaseModel):
    """Base class of every message type.

    Class keyword arguments:
        type: the type name, dotted lower case (``reports.export``).
        version: the schema version, an integer from 1.
        exchange: the exchange it is published to unless the caller says otherwise.
        routing_key: the routing key it is published with unless the caller says otherwise.

    Instances are validated when built and frozen afterwards, so a message that
    exists is a valid one; building one from bad data raises
    :class:`~leveret.errors.SchemaViolation`.
    """

    # Strict so that Python accepts exactly what the JSON Schema accepts: "1" is
    # not an integer for ajv or gojsonschema, so it is not one here either.
    # Unknown fields are ignored (a tolerant reader); versions say what changed.
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    message_type: ClassVar[str]
    message_version: ClassVar[int]
    default_exchange: ClassVar[str | None] = None
    default_routing_key: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        version: int | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if type is None and version is None:
            return  # an intermediate base class
        if type is None or not _TYPE_NAME.match(type):
            raise ConfigurationError(
                f"{cls.__name__}: type must be a dotted lower-case name, got {type!r}"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(
                f"{cls.__name__}: version must be an integer >= 1, got {version!r}"
            )
        cls.message_type = type
        cls.message_version = version
        cls.default_exchange = exchange
        cls.default_routing_key = routing_key

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            for nested in _models_in(info.annotation):
                if not nested.model_config.get("strict"):
                    raise ConfigurationError(
                        f"{cls.__name__}.{name}: nested model {nested.__name__} must derive "
                        "from leveret.Model (strict, like the JSON Schema)"
                    )

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SchemaViolation(describe(type(self), exc)) from exc

    # The __init__ above only renames the error, so validation need not go
    # through it: without this mark pydantic would turn a JSON body into
    # keywords for it, validated as Python, where strict mode refuses the JSON
    # form (a string) of a datetime or a UUID.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def key(cls) -> tuple[str, int]:
        """Return the ``(type, version)`` pair that identifies this model."""
        return (cls.message_type, cls.message_version)

    @classmethod
    def from_json(cls, body: bytes) -> Message:
        """Parse and validate a message body in one pass.

        Raises:
            DecodeError: the body is not UTF-8 JSON.
            SchemaViolation: the JSON does not match the schema.
        """
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                raise DecodeError(f"body is not valid UTF-8 JSON: {_first_message(exc)}") from exc
            raise SchemaViolation(describe(cls, exc)) from exc

    def to_json(self) -> bytes:
        """Return the body: the model as compact JSON bytes."""
        return self.__pydantic_serializer__.to_json(self)


def describe(model: type[Message], exc: ValidationError) -> str:
    """Summarise a validation error in one line, naming the type and version."""
    parts = []
    for err in exc.errors()[:_MAX_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - _MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"and {more} more")
    name = getattr(model, "message_type", model.__name__)
    version = getattr(model, "message_version", "?")
    return f"{name} v{version}: " + "; ".join(parts)


def _models_in(annotation: Any, seen: frozenset[Any] = frozenset()) -> list[type[BaseModel]]:
    """The pydantic models an annotation refers to (through unions, lists, dicts...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return []
        found: list[type[BaseModel]] = [annotation]
        for info in annotation.model_fields.values():
            found += _models_in(info.annotation, seen | {annotation})
        return found
    return [m for arg in get_args(annotation) for m in _models_in(arg, seen)]


def _first_message(exc: ValidationError) -> str:
    errors = exc.errors()
    return str(errors[0]["msg"]) if errors else str(exc)
