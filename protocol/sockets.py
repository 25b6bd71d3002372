"""ZeroMQ socket helpers: every socket gets ZMQ_MAXMSGSIZE and LINGER, and either CurveZMQ or
an explicitly local plain mode.

- `server_socket(ctx, zmq.ROUTER, "tcp://0.0.0.0:5555", curve=ServerCurve(...))` binds;
  `client_socket(ctx, zmq.DEALER, "tcp://trainer:5555", curve=ClientCurve.from_files(...))`
  connects.
- Without `curve` the socket is plain (no encryption, no authentication). Plain sockets refuse
  non-loopback TCP endpoints (`TransportSecurityError`) unless `allow_plain_remote=True`.
- `ServerCurve` holds the server's key pair and the allow-list of client public keys and runs
  the context's ZAP authenticator (`zmq.auth.thread.ThreadAuthenticator`): a client whose key is
  not listed never completes the handshake and gets no service. One `ServerCurve` per context;
  it may secure several sockets. Close it after the sockets.

Every socket logs at WARNING which mode it is in. A peer sending a frame bigger than
`max_message_bytes` is disconnected by libzmq (its DEALER reconnects by itself; the frame is lost).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from reachsafe.protocol.constants import DEFAULT_LINGER_MS, DEFAULT_MAX_MESSAGE_BYTES
from reachsafe.protocol.errors import KeyFileError, TransportSecurityError
from reachsafe.protocol.keys import load_curve_keypair, load_curve_public_keys

log = logging.getLogger(__name__)

ZAP_DOMAIN = "reachsafe"
_MAX_DENIED_LOGGED = 1024  # distinct unknown keys warned about (bounds memory under a key-spraying peer)

KeyPaths = str | os.PathLike | Iterable[str | os.PathLike]


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on 127.0.0.0/8, ::1 or localhost."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ClientCurve:
    """A client's CURVE key pair and the server's public key (z85 bytes)."""

    public_key: bytes
    secret_key: bytes
    server_public_key: bytes

    @classmethod
    def from_files(
        cls, secret_key_file: str | os.PathLike, server_public_key_file: str | os.PathLike
    ) -> ClientCurve:
        """E.g. `ClientCurve.from_files("keys/robot.key_secret", "keys/trainer.key")`."""
        public, secret = load_curve_keypair(secret_key_file)
        server = load_curve_public_keys(server_public_key_file)
        if len(server) != 1:
            raise KeyFileError(
                f"expected one server public key in {server_public_key_file}, found {len(server)}"
            )
        return cls(public, secret, server[0])

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self.secret_key
        sock.curve_serverkey = self.server_public_key


class ServerCurve:
    """Server CURVE keys + client allow-list, enforced by a ZAP authenticator thread on `ctx`."""

    def __init__(
        self, ctx: zmq.Context, secret_key_file: str | os.PathLike, allowed_client_keys: KeyPaths
    ) -> None:
        self.public_key, self.secret_key = load_curve_keypair(secret_key_file)
        self.allowed = frozenset(load_curve_public_keys(allowed_client_keys))
        if not self.allowed:
            raise KeyFileError(
                f"no client public keys (*.key) in {allowed_client_keys}; copy each robot's robot.key "
                "there (renamed per robot), or no robot can connect"
            )
        self._denied: set[bytes] = set()
        self._ctx = ctx
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    @classmethod
    def from_key_dir(cls, ctx: zmq.Context, keys: Path) -> ServerCurve:
        """The layout `reachsafe keys generate` writes: the server's KEYS/trainer.key_secret, and the
        robots it admits in KEYS/robots/*.key (one file per robot), else KEYS/robot.key."""
        allowed = keys / "robots" if (keys / "robots").is_dir() else keys / "robot.key"
        return cls(ctx, keys / "trainer.key_secret", allowed)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP credentials provider: allow listed keys; warn once per unknown key."""
        if client_key in self.allowed:
            return True
        if client_key not in self._denied and len(self._denied) < _MAX_DENIED_LOGGED:
            self._denied.add(client_key)
            log.warning(
                "CURVE: denied a client with unknown public key %s (not in the allow-list)",
                client_key.decode(),
            )
        return False

    def apply(self, sock: zmq.Socket) -> None:
        # ZAP runs per context: on a socket of another context the allow-list would not be enforced
        if sock.context is not self._ctx:
            raise ValueError(
                "ServerCurve applied to a socket of another zmq.Context: its allow-list would not apply"
            )
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_server = True
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self.secret_key

    def close(self) -> None:
        self._auth.stop()

    def __enter__(self) -> ServerCurve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make(
    ctx: zmq.Context,
    socket_type: int,
    endpoint: str,
    curve: ServerCurve | ClientCurve | None,
    allow_plain_remote: bool,
    max_message_bytes: int,
    linger_ms: int,
    role: str,
) -> zmq.Socket:
    kind = zmq.SocketType(socket_type).name
    if curve is None:
        if not is_loopback_endpoint(endpoint):
            if not allow_plain_remote:
                raise TransportSecurityError(
                    f"refusing plain (unencrypted, unauthenticated) {kind} on non-loopback {endpoint}; "
                    "configure CURVE keys (`reachsafe keys generate`) or use 127.0.0.1"
                )
            log.warning(
                "%s %s %s: PLAIN mode on a NON-LOOPBACK endpoint, forced: INSECURE", kind, role, endpoint
            )
        else:
            log.warning(
                "%s %s %s: PLAIN loopback mode (no encryption, no authentication; development only)",
                kind,
                role,
                endpoint,
            )
    sock = ctx.socket(socket_type)
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.setsockopt(zmq.LINGER, linger_ms)
        if curve is not None:
            curve.apply(sock)
            log.warning("%s %s %s: CURVE mode (encrypted, authenticated)", kind, role, endpoint)
        if role == "bind":
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def server_socket(
    ctx: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    curve: ServerCurve | None = None,
    allow_plain_remote: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> zmq.Socket:
    """Create and bind a socket. `tcp://127.0.0.1:*` binds a free port (see `sock.last_endpoint`)."""
    return _make(ctx, socket_type, endpoint, curve, allow_plain_remote, max_message_bytes, linger_ms, "bind")


def client_socket(
    ctx: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    curve: ClientCurve | None = None,
    allow_plain_remote: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> zmq.Socket:
    """Create and connect a socket."""
    return _make(
        ctx, socket_type, endpoint, curve, allow_plain_remote, max_message_bytes, linger_ms, "connect"
    )


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (for tests and local demos; another process
    may take it before it is bound, so bind promptly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
