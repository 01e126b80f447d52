"""The base of every contract model, and the one way to validate a document against one."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from veracity.core.fields import Name, Timestamp
from veracity.errors import InputError

#: The signing domain of a site's (or any non-root actor's) ledger statements
#: ``{actor, kind, payload}``; v2 binds the log id (``veracity.ledger.statement``).
STATEMENT_DOMAIN = "veracity.statement.v2"

__all__ = [
    "STATEMENT_DOMAIN",
    "Contract",
    "Payload",
    "SitePayload",
    "SiteStatement",
    "describe_validation_error",
]


def describe_validation_error(err: ValidationError) -> str:
    """``field 'a.0.b' <what is wrong>`` for the first problem pydantic found."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "document"
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "is not a field of this kind"
    return f"field '{where}' {message[0].lower() + message[1:] if message else 'is invalid'}"


class Contract(BaseModel):
    """A document with a fixed shape: strict (no coercion), closed (no extra field), frozen.

    What is validated is exactly what is hashed and signed: :meth:`to_json` gives the JSON
    object back with the fields that were set (an optional field that was never given stays
    absent rather than becoming ``null``).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @classmethod
    def parse(cls, document: object, *, what: str | None = None) -> Self:
        """Validate a JSON-like ``document`` (a dict) against this contract.

        Raises
        ------
        InputError
            Naming the first missing, extra, mistyped or out-of-range field.
        """
        name = what or cls.__name__
        if not isinstance(document, dict):
            raise InputError(f"{name} must be a JSON object")
        try:
            return cls.model_validate(document)
        except ValidationError as err:
            raise InputError(f"invalid {name}: {describe_validation_error(err)}") from err

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this document (field names as on the wire)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Payload(Contract):
    """A statement of one kind (``KIND``): a ledger event's payload, or a site's refusal."""

    KIND: ClassVar[str]


class SitePayload(Payload):
    """A payload a site signs about itself: ``site`` is the signer (and the ledger actor)."""

    site: Name


class SiteStatement(SitePayload):
    """A site's dated statement: ``signed_at`` makes two genuine statements never identical."""

    signed_at: Timestamp
