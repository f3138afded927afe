"""Who may reach the web UI: the login (from a file or the environment), the Host names the
server answers to, and a brake on guessed passwords.

- **Login.** ``--auth USER:PASS`` shows the password to every user of the machine (``ps -ef``);
  ``--auth-file PATH`` (one ``USER:PASS`` per line, not readable by others) and the
  ``XTTS_WEBUI_AUTH`` environment variable keep it out of the command line.
- **Host names.** A web page the user visits can make the browser send requests to
  ``127.0.0.1`` under the page's own host name (DNS rebinding); only the ``Host`` header tells.
  :class:`AccessGuard` answers only the names the server was started for (loopback names, the
  ``--host`` value, ``--allowed-host`` names; for a wildcard bind also the machine's names and
  any IP address, which no rebinding can produce) and refuses the rest with 403.
- **Failed logins.** :class:`LoginThrottle`: after 3 failed logins a client waits
  0.5 s, 1 s, 2 s ... (at most 30 s) before each next attempt is answered, attempts of one client
  are answered one at a time, and beyond 20 failed logins a minute (all clients together) every
  login is refused with 429 until the minute has passed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import ConfigError

AUTH_ENV = "XTTS_WEBUI_AUTH"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
LOGIN_PATHS = ("/login", "/login/")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- login ------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_user_pass(text: str, where: str) -> tuple[str, str]:
    """``USER:PASS`` as a tuple (the password may hold ``:``).

    Raises:
        ConfigError: not in USER:PASS form.
    """
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"{where} takes USER:PASS (both non-empty), e.g. alice:s3cret")
    return user, password


def read_auth_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The logins in ``path``: one ``USER:PASS`` per line (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: missing, readable by other users, or without a login.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--auth-file {p}: no such file; write USER:PASS into it and chmod 600 it")
    if p.stat().st_mode & stat.S_IROTH:
        raise ConfigError(f"--auth-file {p} is readable by every user of this machine; run: chmod 600 {p}")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    logins = [parse_user_pass(line, f"--auth-file {p}") for line in lines if line and not line.startswith("#")]
    if not logins:
        raise ConfigError(f"--auth-file {p} holds no login; write USER:PASS into it")
    return logins


def resolve_auth(
    auth: str | None, auth_file: str | os.PathLike[str] | None, host: str, environ: MutableMapping[str, str]
) -> list[tuple[str, str]] | None:
    """The logins from ``--auth``, ``--auth-file`` or ``XTTS_WEBUI_AUTH`` (taken out of ``environ``,
    so training processes do not inherit it); a non-loopback host without one is refused.

    Raises:
        ConfigError: both --auth and --auth-file, a malformed login, or none for a non-loopback host.
    """
    from_env = environ.pop(AUTH_ENV, None)
    if auth is not None and auth_file is not None:
        raise ConfigError("give --auth or --auth-file, not both (--auth-file keeps the password out of ps)")
    if auth is not None:
        logins = [parse_user_pass(auth, "--auth")]
    elif auth_file is not None:
        logins = read_auth_file(auth_file)
    elif from_env:
        logins = [parse_user_pass(from_env, AUTH_ENV)]
    else:
        logins = None
    if logins is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} makes the web UI reachable from other machines, and anyone who reaches it can train "
            f"and read the data and runs folders; add --auth-file PATH (or {AUTH_ENV}=USER:PASS, or --auth "
            "USER:PASS), or leave --host at 127.0.0.1"
        )
    return logins


# --- host names ---------------------------------------------------------------------------------


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """The ``Host`` names (lower case, no port, IPv6 without brackets) the server answers to.

    ``*`` in ``extra`` accepts every name (for a reverse proxy that checks names itself).
    """
    names = {*LOOPBACK_NAMES, bind.strip("[]").lower(), *(e.strip().strip("[]").lower() for e in extra)}
    if bind in WILDCARD_BINDS:  # every address of the machine: its names too
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
    names.discard("")
    return names


def host_of(header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:7860`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: set[str], *, any_address: bool) -> bool:
    """True when the ``Host`` header names this server (``any_address``: every IP literal too)."""
    if "*" in allowed:
        return True
    host = host_of(header)
    if host in allowed:
        return True
    if any_address:
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False
    return False


# --- failed logins ------------------------------------------------------------------------------


@dataclass
class LoginThrottle:
    """Exponential delay per client after ``free`` failed logins, and a cap per minute for all."""

    free: int = 3
    base_s: float = 0.5
    max_delay_s: float = 30.0
    per_minute: int = 20
    _failures: dict[str, int] = field(default_factory=dict)  # client -> failures in a row
    _not_before: dict[str, float] = field(default_factory=dict)  # client -> when it may try again
    _recent: list[float] = field(default_factory=list)  # times of failed logins (all clients)

    def wait_s(self, client: str, now: float) -> float | None:
        """Seconds ``client`` must wait before its attempt is checked; None: refused (cap reached)."""
        self._recent = [t for t in self._recent if now - t < 60.0]
        if len(self._recent) >= self.per_minute:
            return None
        return max(0.0, self._not_before.get(client, 0.0) - now)

    def record(self, client: str, ok: bool, now: float) -> None:
        """Count the answer to ``client``'s attempt: a success clears its failures."""
        if ok:
            self._failures.pop(client, None)
            self._not_before.pop(client, None)
            return
        self._recent.append(now)
        n = self._failures.get(client, 0) + 1
        self._failures[client] = n
        if n >= self.free:
            self._not_before[client] = now + min(self.base_s * 2 ** (n - self.free), self.max_delay_s)
        if len(self._failures) > 10_000:  # many clients: forget the oldest ones
            for old in list(self._failures)[:5_000]:
                self._failures.pop(old, None)
                self._not_before.pop(old, None)

    def retry_after_s(self, now: float) -> int:
        """Seconds until the per-minute cap lets logins through again."""
        return max(1, int(60.0 - (now - min(self._recent))) + 1) if self._recent else 1


class AccessGuard:
    """ASGI middleware in front of the Gradio app: Host names, then the login brake."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        allowed: set[str],
        any_address: bool = False,
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.allowed = allowed
        self.any_address = any_address
        self.throttle = throttle or LoginThrottle()
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not host_allowed(host, self.allowed, any_address=self.any_address):
            await _refuse(
                scope,
                send,
                403,
                f"this server does not answer to the host name {host_of(host)!r}; "
                "start it with --allowed-host NAME to allow that name",
            )
            return
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in LOGIN_PATHS:
            await self._login(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One attempt of a client at a time, after its delay; the answer's status counts it."""
        client = (scope.get("client") or ("unknown", 0))[0]
        lock = self._locks.setdefault(client, asyncio.Lock())
        async with lock:
            wait = self.throttle.wait_s(client, self.clock())
            if wait is None:
                after = self.throttle.retry_after_s(self.clock())
                await _refuse(scope, send, 429, f"too many failed logins in the last minute; try again in {after} s")
                return
            if wait > 0:
                await asyncio.sleep(wait)
            status: list[int] = []

            async def send_status(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(int(message["status"]))
                await send(message)

            await self.app(scope, receive, send_status)
            if status and status[0] in (200, 400, 401):  # 400: Gradio's "Incorrect credentials"
                self.throttle.record(client, status[0] == 200, self.clock())


async def _refuse(scope: Scope, send: Send, code: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
