"""Tell the serving API that the champion moved, and wait until it serves the new version.

Serving's contract: ``POST /reload`` (``Authorization: Bearer <token>``) asks a replica to load
the current champion now; ``GET /model`` returns JSON with at least ``version``. In Kubernetes
every replica also watches the registry itself, so the reload call through an ingress (which
reaches one replica) is a nudge; the wait on ``GET /model`` is the check.
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


def reported_version(client: httpx.Client, base_url: str) -> str | None:
    """The model version serving reports, or None when it has none or does not answer."""
    try:
        response = client.get(f"{base_url}/model")
    except httpx.HTTPError as error:
        log.info("GET %s/model: %s", base_url, error)
        return None
    if response.status_code != 200:
        log.info("GET %s/model: HTTP %s", base_url, response.status_code)
        return None
    try:
        version = response.json().get("version")
    except (ValueError, AttributeError):
        log.info("GET %s/model: not a JSON object", base_url)
        return None
    return None if version is None else str(version)


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
    """POST /reload, then poll GET /model until it reports `expected_version` or time is up."""
    own_client = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        request_reload(http, base_url, token)
        deadline = clock() + timeout
        seen: str | None = None
        while True:
            seen = reported_version(http, base_url)
            if seen == str(expected_version):
                log.info("serving at %s reports version %s", base_url, seen)
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
