"""Health probes of a running platform's endpoints (written by the platform stage)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from runner.paths import local_home


@dataclass(frozen=True)
class Probe:
    name: str
    url: str
    healthy: bool
    detail: str


def endpoints_file() -> Path:
    return local_home() / "endpoints.json"


def read_endpoints(path: Path) -> dict[str, str]:
    endpoints: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    return endpoints


def _probe(name: str, url: str, timeout: float) -> Probe:
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=timeout):
                return Probe(name, url, True, "accepting connections")
        except OSError as exc:
            return Probe(name, url, False, str(exc))
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return Probe(name, url, False, str(exc) or type(exc).__name__)
    if response.status_code < 400 and name == "serving":
        return _serving_agreement(name, url, timeout)
    return Probe(name, url, response.status_code < 400, f"HTTP {response.status_code}")


def _serving_agreement(name: str, url: str, timeout: float) -> Probe:
    """Serving is healthy when every worker of every replica serves one version (GET /replicas)."""
    parts = urlsplit(url)
    try:
        view = httpx.get(f"{parts.scheme}://{parts.netloc}/replicas", timeout=timeout).json()
        workers, versions = len(view["workers"]), dict(view["versions"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return Probe(name, url, False, f"up, but GET /replicas failed: {exc}")
    if view.get("agreed"):
        return Probe(name, url, True, f"version {view['version']} on all {workers} worker(s)")
    unreachable = [peer.get("url") for peer in view.get("peers", []) if not peer.get("reachable")]
    detail = f"workers disagree: {versions}" + (f", unreachable peers {unreachable}" if unreachable else "")
    return Probe(name, url, False, detail)


def probe_endpoints(path: Path, timeout: float = 3.0) -> list[Probe]:
    """Probe every endpoint listed in the file: {"name": "http://.../health" or "tcp://host:port"}."""
    return [_probe(name, url, timeout) for name, url in read_endpoints(path).items()]
