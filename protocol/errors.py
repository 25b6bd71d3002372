"""Typed errors of the protocol package.

Wire errors (`ProtocolError` and subclasses) come from decoding or validating one message; a
receiver counts them, may answer with an `error` message built by
`reachsafe.protocol.messages.ErrorMessage.from_exception`, and keeps the connection. Each carries a short
machine-readable `code` (used as the `error` message's code and in metric keys such as
`proto/errors/decode`) and, when known, `msg_type`, the type of the offending message.

Bundle errors (`BundleError` and subclasses) come from writing or verifying a bundle; a robot
that gets one never loads the bundle. Key and transport-security errors are configuration
mistakes that stop a process at start-up.
"""

from __future__ import annotations

import reprlib
from typing import Any


class _BriefRepr(reprlib.Repr):
    """reprlib with bytes cut before they are formatted (reprlib would format all of them first)."""

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_BRIEF = _BriefRepr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 40, 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = 4


def brief(value: Any) -> str:
    """A short repr of a value from the wire, for error texts: bounded in length and in nesting.

    Never ``repr(value)`` on received data: its cost grows with the payload, and a deeply nested
    value makes it raise RecursionError.
    """
    return _BRIEF.repr(value)


class ProtocolError(Exception):
    """A message could not be decoded or is not a valid message of this protocol version."""

    code = "protocol"

    def __init__(self, message: str, *, msg_type: str = "") -> None:
        super().__init__(message)
        self.msg_type = msg_type

    @property
    def reason(self) -> str:
        """What a receiver counts this rejection under (the code; finer for a `ContractError`)."""
        return self.code


class DecodeError(ProtocolError):
    """The bytes are not a well-formed msgpack message (truncated, garbage, bad array extension)."""

    code = "decode"


class DepthError(DecodeError):
    """Containers nested deeper than `MAX_DEPTH` (checked before anything is built)."""

    code = "depth"


class IntRangeError(DecodeError):
    """An int outside int64 (a msgpack uint64 >= 2**63); every protocol int is an int64."""

    code = "int_range"


class LengthError(DecodeError):
    """A str, array or map over its bound, or a message of more than `MAX_OBJECTS` msgpack objects."""

    code = "length"


class VersionError(ProtocolError):
    """The message's protocol version `v` is missing or not the one this build speaks."""

    code = "version"


class UnknownTypeError(ProtocolError):
    """The message's `type` is not a known message type."""

    code = "unknown_type"


class FieldError(ProtocolError):
    """A field is missing, unexpected, of the wrong type or out of range."""

    code = "field"


class ContractError(FieldError):
    """A `steps` batch breaks a rule of the step record or of its stream (docs/protocol.md sections 5
    and 6): non-finite numbers, a value out of its range or enum, a jump in `first_step`.

    The whole batch is rejected: never stored, never acknowledged. ``column`` names the offending
    column (or field), ``check`` the rule, e.g. ``cost`` / ``negative``.
    """

    code = "contract"

    def __init__(self, message: str, *, column: str, check: str) -> None:
        super().__init__(message, msg_type="steps")
        self.column, self.check = column, check

    @property
    def reason(self) -> str:
        return f"{self.column}:{self.check}"


class NoHelloError(ProtocolError):
    """`steps` from a robot that has not said `hello` for that stream on this trainer (since it started)."""

    code = "no_hello"


class OversizeError(ProtocolError):
    """The message or one of its arrays is larger than the configured limit."""

    code = "oversize"


class BundleError(Exception):
    """A policy bundle is invalid; it must not be loaded."""


class ManifestError(BundleError):
    """manifest.json is missing, not valid JSON, or lacks / mistypes a required field."""


class SignatureError(BundleError):
    """manifest.sig is missing or not a valid Ed25519 signature by a trusted key."""


class HashMismatchError(BundleError):
    """A file listed in the manifest is missing or its sha256 differs from the manifest."""


class SpecMismatchError(BundleError):
    """The bundle's observation / action spec differs from what the robot expects."""


class KeyFileError(Exception):
    """A key file is missing, malformed or would be overwritten."""


class TransportSecurityError(Exception):
    """A socket would be opened in an insecure configuration that was not explicitly allowed."""
