"""The acquirer's link to the card network: a small pool of TCP connections.

Each connection has one reader thread that matches answers to waiting calls by (response MTI,
STAN). An answer nobody waits for — a duplicate, or one that arrives after its call timed out —
is counted and dropped: the caller has already acted on the first answer or on the timeout.

``call`` raises :class:`CardNetworkUnavailable` only when the request was certainly not sent,
and :class:`CardResponseTimeout` when it was (or may have been) sent and no answer came: the
service then reverses. Every socket operation has a timeout (``paykeep.limits``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from paykeep import limits
from paykeep.gateway.cards import iso8583 as wire
from paykeep.gateway.cards.errors import (
    CardInputInvalid,
    CardNetworkUnavailable,
    CardProtocolError,
    CardResponseTimeout,
)

log = logging.getLogger("paykeep.gateway.cards.client")


@dataclass
class ClientStats:
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    #: Answers that matched no waiting call: duplicates and late answers.
    ignored: int = 0
    #: Frames that could not be decoded.
    malformed: int = 0
    reconnects: int = 0


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    response: wire.Message | None = None
    lost: bool = False


class _Connection:
    def __init__(self, host: str, port: int, connect_timeout_s: float, stats: ClientStats) -> None:
        self.stats = stats
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        except OSError as exc:
            raise CardNetworkUnavailable(f"cannot reach the card network: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The reader blocks without a timeout (close() unblocks it); sends time out at the OS
        # level (SO_SNDTIMEO), which leaves the reader's blocking recv alone.
        self.sock.settimeout(None)
        seconds = int(limits.CARD_CALL_TIMEOUT_S)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.waiters: dict[tuple[str, str], _Waiter] = {}
        self.alive = True
        self.reader = threading.Thread(target=self._read_loop, name="card-net-reader", daemon=True)
        self.reader.start()

    @property
    def inflight(self) -> int:
        return len(self.waiters)

    def close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def _recv_exactly(self, size: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < size:
            try:
                chunk = self.sock.recv(size - len(chunks))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.extend(chunk)
        return bytes(chunks)

    def _read_loop(self) -> None:
        try:
            while self.alive:
                header = self._recv_exactly(2)
                if header is None:
                    break
                size = int.from_bytes(header, "big")
                if size == 0 or size > limits.CARD_FRAME_BYTES_MAX:
                    self.stats.malformed += 1
                    break  # the stream cannot be trusted any more
                body = self._recv_exactly(size)
                if body is None:
                    break
                try:
                    message = wire.decode(body)
                except CardProtocolError:
                    self.stats.malformed += 1
                    continue
                key = (message.get("t", ""), message.get("11", ""))
                with self.lock:
                    waiter = self.waiters.pop(key, None)
                if waiter is None:
                    self.stats.ignored += 1
                    continue
                waiter.response = message
                waiter.event.set()
        finally:
            self.alive = False
            with self.lock:
                orphans = list(self.waiters.values())
                self.waiters.clear()
            for waiter in orphans:
                waiter.lost = True
                waiter.event.set()

    def call(self, message: Mapping[str, str], timeout_s: float) -> wire.Message:
        frame = wire.encode(message)
        key = (wire.RESPONSE_MTI[message["t"]], message["11"])
        waiter = _Waiter()
        with self.lock:
            if not self.alive:
                raise CardNetworkUnavailable("the connection to the card network is closed")
            if len(self.waiters) >= limits.CARD_INFLIGHT_PER_CONNECTION_MAX:
                raise CardNetworkUnavailable("too many requests in flight on this connection")
            if key in self.waiters:
                raise CardInputInvalid("a request with this STAN is already in flight")
            self.waiters[key] = waiter
        try:
            with self.send_lock:
                self.sock.sendall(frame)
        except OSError:
            # Some bytes may have left: the request may have reached the issuer.
            with self.lock:
                self.waiters.pop(key, None)
            self.close()
            raise CardResponseTimeout("the connection failed while sending") from None
        self.stats.sent += 1
        if not waiter.event.wait(timeout_s):
            with self.lock:
                self.waiters.pop(key, None)
            self.stats.timeouts += 1
            raise CardResponseTimeout(f"no answer within {timeout_s} s")
        if waiter.lost or waiter.response is None:
            raise CardResponseTimeout("the connection closed before the answer")
        self.stats.answered += 1
        return waiter.response


class CardNetworkClient:
    """A pool of connections to one card network endpoint. Safe to share between threads."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pool_size: int = 4,
        timeout_s: float = limits.CARD_CALL_TIMEOUT_S,
        connect_timeout_s: float = limits.CARD_CONNECT_TIMEOUT_S,
    ) -> None:
        if not 0 < pool_size <= limits.CARD_POOL_SIZE_MAX:
            raise CardInputInvalid(f"pool_size must be 1 to {limits.CARD_POOL_SIZE_MAX}")
        if not 0 < timeout_s <= 120 or not 0 < connect_timeout_s <= 120:
            raise CardInputInvalid("timeouts must be positive and at most 120 s")
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.stats = ClientStats()
        self._slots: list[_Connection | None] = [None] * pool_size
        self._lock = threading.Lock()
        self._round = itertools.count()
        self._stan_lock = threading.Lock()
        # Start somewhere random so two processes sharing a terminal id rarely reuse STANs.
        self._stan = secrets.randbelow(999_999)

    def next_stan(self) -> str:
        """A 6-digit System Trace Audit Number, cycling through 000001..999999."""
        with self._stan_lock:
            self._stan = self._stan % 999_999 + 1
            return f"{self._stan:06d}"

    def _connection(self) -> _Connection:
        index = next(self._round) % len(self._slots)
        with self._lock:
            conn = self._slots[index]
            if conn is not None and conn.alive:
                return conn
            if conn is not None:
                self.stats.reconnects += 1
            conn = _Connection(self.host, self.port, self.connect_timeout_s, self.stats)
            self._slots[index] = conn
            return conn

    def call(self, message: Mapping[str, str], timeout_s: float | None = None) -> wire.Message:
        """Send one request and wait for its answer (matched by response MTI and STAN)."""
        if message.get("t") not in wire.RESPONSE_MTI or "11" not in message:
            raise CardInputInvalid("a request needs a request MTI and a STAN (field 11)")
        return self._connection().call(message, timeout_s or self.timeout_s)

    def echo(self, timeout_s: float | None = None) -> wire.Message:
        """A network management echo (0800/0810): the link's round trip, nothing else."""
        return self.call({"t": "0800", "11": self.next_stan(), "70": wire.NETWORK_ECHO}, timeout_s)

    def close(self) -> None:
        with self._lock:
            for index, conn in enumerate(self._slots):
                if conn is not None:
                    conn.close()
                self._slots[index] = None

    def __enter__(self) -> CardNetworkClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
