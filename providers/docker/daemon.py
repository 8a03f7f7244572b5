"""A small blocking client of the Docker Engine API (stdlib only), for plan time and builds.

Plan-time checks (`check_config`, `check_spec`) are synchronous and may run where an event
loop is already running, so they cannot borrow the async client; a handful of plain HTTP
requests over the daemon's socket answers them: is the daemon there, does it have a
bridge network, a GPU runtime, the image? `hud-ray image build` streams a build through
the same client (no BuildKit: the daemon's classic builder, a tar context in the body).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ProviderConfigError

TIMEOUT_S = 10.0


class DaemonUnreachable(ProviderConfigError):
    """No Docker daemon answers at the configured address."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def unreachable_hint(docker_host: str) -> str:
    return (f"no Docker daemon answers at {docker_host} (set DOCKER_HOST or --provider-opt "
            "docker_host=..., or start dockerd; on these machines: "
            "shared/tools/setup-docker.sh)")


class Daemon:
    """Blocking requests to one daemon address (unix:// or tcp://)."""

    def __init__(self, docker_host: str) -> None:
        self.docker_host = docker_host

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.docker_host)
        if url.scheme == "unix":
            return _UnixConnection(url.path, timeout)
        if url.scheme in ("tcp", "http"):
            return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 2375,
                                              timeout=timeout)
        raise ProviderConfigError(
            f"provider 'docker': docker_host {self.docker_host!r}: only unix:// and tcp:// "
            "addresses are supported (DOCKER_HOST)")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float | None = TIMEOUT_S) -> tuple[int, bytes]:
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as exc:
            raise DaemonUnreachable(f"provider 'docker': {unreachable_hint(self.docker_host)}: "
                                    f"{exc}") from None
        finally:
            conn.close()

    def stream(self, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """JSON messages of a streaming endpoint (build, pull), one per line."""
        conn = self._connection(None)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            if response.status >= 400:
                yield {"error": _message(response.read()), "status": response.status}
                return
            for raw in response:
                line = raw.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except ValueError:
                        yield {"stream": line.decode(errors="replace")}
        except OSError as exc:
            raise DaemonUnreachable(f"provider 'docker': {unreachable_hint(self.docker_host)}: "
                                    f"{exc}") from None
        finally:
            conn.close()

    def json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status >= 400:
            raise ProviderConfigError(f"provider 'docker': GET {path}: [{status}] {_message(body)}")
        return json.loads(body)

    # --- facts -----------------------------------------------------------------------
    def ping(self) -> None:
        status, body = self.request("GET", "/_ping")
        if status != 200:
            raise DaemonUnreachable(f"provider 'docker': {unreachable_hint(self.docker_host)}: "
                                    f"/_ping answered [{status}] {_message(body)}")

    def has_bridge(self) -> bool:
        networks = self.json("/networks?filters=" + _filters({"driver": ["bridge"]}))
        return any(n.get("Name") == "bridge" for n in networks)

    def runtimes(self) -> set[str]:
        return set((self.json("/info").get("Runtimes") or {}).keys())

    def has_image(self, ref: str) -> bool:
        status, body = self.request("GET", f"/images/{urllib.parse.quote(ref, safe='')}/json")
        if status == 404:
            return False
        if status >= 400:
            raise ProviderConfigError(f"provider 'docker': inspecting image {ref!r}: "
                                      f"[{status}] {_message(body)}")
        return True

    def pull(self, ref: str) -> str | None:
        """Pull `ref`; None on success, else the daemon's error."""
        name, tag = split_tag(ref)
        query = urllib.parse.urlencode({"fromImage": name, "tag": tag})
        for message in self.stream("POST", f"/images/create?{query}"):
            if "error" in message:
                return str(message["error"]).strip()
        return None

    def build(self, context_tar: bytes, tag: str, dockerfile: str,
              build_args: dict[str, str], on_line: Callable[[str], None]) -> None:
        """Build with the classic builder; raises ProviderConfigError naming the failure."""
        query = urllib.parse.urlencode({
            "t": tag, "dockerfile": dockerfile, "rm": "1", "forcerm": "1",
            "buildargs": json.dumps(build_args)})
        last: list[str] = []
        for message in self.stream("POST", f"/build?{query}", body=context_tar,
                                   headers={"Content-Type": "application/x-tar"}):
            if "error" in message:
                tail = "\n".join(last[-10:])
                raise ProviderConfigError(
                    f"docker build of {tag!r} failed: {str(message['error']).strip()}"
                    + (f"\nlast build output:\n{tail}" if tail else ""))
            text = str(message.get("stream") or message.get("status") or "").rstrip()
            if text:
                last.append(text)
                on_line(text)


def split_tag(ref: str) -> tuple[str, str]:
    """('name', 'tag') of an image reference; digests stay in the name."""
    if "@" in ref:
        return ref, ""
    name, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return ref, "latest"


def _filters(filters: dict[str, list[str]]) -> str:
    return urllib.parse.quote(json.dumps(filters))


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
