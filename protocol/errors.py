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


class ProtocolError(Exception):
    """A message could not be decoded or is not a valid message of this protocol version."""

    code = "protocol"

    def __init__(self, message: str, *, msg_type: str = "") -> None:
        super().__init__(message)
        self.msg_type = msg_type


class DecodeError(ProtocolError):
    """The bytes are not a well-formed msgpack message (truncated, garbage, bad array extension)."""

    code = "decode"


class VersionError(ProtocolError):
    """The message's protocol version `v` is missing or not the one this build speaks."""

    code = "version"


class UnknownTypeError(ProtocolError):
    """The message's `type` is not a known message type."""

    code = "unknown_type"


class FieldError(ProtocolError):
    """A field is missing, unexpected, of the wrong type or out of range."""

    code = "field"


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
