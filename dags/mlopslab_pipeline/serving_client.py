"""Tell the serving API that the champion moved, and wait until every replica serves the new version.

Serving's contract: ``POST /reload`` (``Authorization: Bearer <token>``) asks the replica that
answers to load the current champion now and to tell its other workers and its peer replicas;
``GET /replicas`` shows every worker of every replica and whether they ``agreed`` on one
``version``. The wait is on that view, not on the one replica the Service happened to route
``GET /model`` to. A server without ``/replicas`` (404: an older image) is asked ``GET /model``
instead, which is all it can say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)


class ServingError(RuntimeError):
    pass


class ServingRefused(ServingError):
    """Serving refused the token: retrying with the same token cannot help."""


def _get_json(client: httpx.Client, url: str) -> tuple[int | None, object]:
    try:
        response = client.get(url)
    except httpx.HTTPError as error:
        log.info("GET %s: %s", url, error)
        return None, None
    try:
        return response.status_code, response.json() if response.status_code == 200 else None
    except ValueError:
        log.info("GET %s: not JSON", url)
        return response.status_code, None


def reported_version(client: httpx.Client, base_url: str) -> str | None:
    """The version one replica reports on GET /model, or None when it has none or does not answer."""
    status, body = _get_json(client, f"{base_url}/model")
    if status != 200 or not isinstance(body, dict):
        log.info("GET %s/model: HTTP %s", base_url, status)
        return None
    version = body.get("version")
    return None if version is None else str(version)


def replicas_version(client: httpx.Client, base_url: str) -> str | None:
    """The version every worker of every replica serves, or a description of what they serve
    when they do not agree (None: serving does not answer)."""
    status, body = _get_json(client, f"{base_url}/replicas")
    if status == 404:
        return reported_version(client, base_url)
    if status != 200 or not isinstance(body, dict):
        log.info("GET %s/replicas: HTTP %s", base_url, status)
        return None
    if "agreed" not in body:  # not the replicas view: read it as GET /model
        version = body.get("version")
        return None if version is None else str(version)
    if body["agreed"]:
        return str(body["version"])
    versions = body.get("versions") or {}
    unreachable = [peer.get("url") for peer in body.get("peers") or [] if not peer.get("reachable")]
    parts = [f"{version} on {count} worker(s)" for version, count in sorted(versions.items())]
    if unreachable:
        parts.append(f"unreachable peers {unreachable}")
    return "mixed: " + ", ".join(parts)


def request_reload(client: httpx.Client, base_url: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = client.post(f"{base_url}/reload", headers=headers)
    except httpx.HTTPError as error:
        # Not fatal: replicas also watch the registry; the wait below decides.
        log.warning("POST %s/reload failed (%s); waiting for serving to pick the version up itself", base_url, error)
        return
    if response.status_code in (401, 403):
        raise ServingRefused(
            f"POST {base_url}/reload was refused (HTTP {response.status_code}): check the reload token"
        )
    if response.status_code >= 400:
        log.warning("POST %s/reload: HTTP %s %s", base_url, response.status_code, response.text[:200])
    else:
        log.info("POST %s/reload: HTTP %s", base_url, response.status_code)


def reload_and_wait(
    base_url: str,
    token: str | None,
    expected_version: str,
    *,
    timeout: float,
    interval: float = 2.0,
    client: httpx.Client | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """POST /reload, then poll GET /replicas until every replica and worker serves
    `expected_version`, or time is up."""
    own_client = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        request_reload(http, base_url, token)
        deadline = clock() + timeout
        seen: str | None = None
        while True:
            seen = replicas_version(http, base_url)
            if seen == str(expected_version):
                log.info("every serving replica at %s reports version %s", base_url, seen)
                return seen
            if clock() >= deadline:
                raise ServingError(
                    f"serving at {base_url} still reports version {seen} after {timeout:.0f}s "
                    f"(expected {expected_version})"
                )
            time.sleep(interval)
    finally:
        if own_client:
            http.close()
