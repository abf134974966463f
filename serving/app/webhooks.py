"""MLflow registry webhooks (MLflow 3.3+): signature check and what a delivery means here.

MLflow signs each delivery with the secret the webhook was created with: the headers
`X-MLflow-Delivery-Id`, `X-MLflow-Timestamp` (Unix seconds) and `X-MLflow-Signature` =
`v1,` + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")), the body being the
exact bytes sent: `{"entity", "action", "timestamp", "data": {...}}`. A delivery whose signature
does not verify, or whose timestamp is further than the max age from now (a replay), is
refused before its body is even parsed. Only `model_version_alias.created` for the served model
and alias means "the champion moved"; every other event is acknowledged and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = ("model_version_alias", "created")


class WebhookRefused(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    body: bytes,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    max_age_seconds: float,
    now: float | None = None,
) -> None:
    """Raise WebhookRefused (401 missing or malformed headers, 403 wrong signature or stale)."""
    if not delivery_id or not timestamp or not signature:
        raise WebhookRefused(
            401, f"unsigned delivery: {DELIVERY_ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required"
        )
    if not timestamp.isdigit():
        raise WebhookRefused(401, f"{TIMESTAMP_HEADER} is not a Unix timestamp")
    if not signature.startswith(f"{SIGNATURE_VERSION},"):
        raise WebhookRefused(401, f"{SIGNATURE_HEADER} is not a {SIGNATURE_VERSION} signature")
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRefused(403, "the signature does not match this body and SERVING_WEBHOOK_SECRET")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > max_age_seconds:
        raise WebhookRefused(403, f"the delivery is {age:.0f} s old, over the limit of {max_age_seconds:.0f} s")


@dataclass(frozen=True)
class Delivery:
    entity: str
    action: str
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return f"{self.entity}.{self.action}"


def parse(body: bytes) -> Delivery:
    """The delivery's event and data (after `verify`); 400 for a body MLflow would not send."""
    try:
        document = json.loads(body)
        delivery = Delivery(str(document["entity"]), str(document["action"]), dict(document.get("data") or {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WebhookRefused(400, f"not an MLflow webhook delivery: {type(exc).__name__}: {exc}") from None
    return delivery


def champion_moved(delivery: Delivery, model_name: str | None, alias: str | None) -> str | None:
    """None if this delivery means the served alias moved; else why it is ignored."""
    if (delivery.entity, delivery.action) != ALIAS_CREATED:
        return f"event {delivery.event} does not move an alias"
    if model_name is None or alias is None:
        return "this server serves a fixed model, not an alias"
    if delivery.data.get("name") != model_name or delivery.data.get("alias") != alias:
        return (
            f"alias {delivery.data.get('alias')!r} of {delivery.data.get('name')!r} is not {alias!r} of {model_name!r}"
        )
    return None
