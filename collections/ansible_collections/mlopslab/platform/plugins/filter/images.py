"""Filters that split an image reference (``[registry[:port]/]path:tag``) for chart values.

Each release role takes its image as one reference, what a build or push step produces and
what image handling passes on; charts want the repository and the tag apart. A port in the
registry part (``registry:5000/app:1.0``) is not a tag: only a colon after the last slash is.
"""

from __future__ import annotations

import re
from typing import Any

_REFERENCE = re.compile(r"^(?P<repository>[^@\s]+?):(?P<tag>[^:/@\s]+)$")


def _split(reference: str) -> tuple[str, str]:
    match = _REFERENCE.match(str(reference).strip())
    if not match or "/" in match.group("tag"):
        raise ValueError(f"image reference {reference!r} is not repository:tag")
    return match.group("repository"), match.group("tag")


def image_repository(reference: str) -> str:
    """``registry:5000/mlops-lab/mlflow:3.15.1`` -> ``registry:5000/mlops-lab/mlflow``."""
    return _split(reference)[0]


def image_tag(reference: str) -> str:
    """``registry:5000/mlops-lab/mlflow:3.15.1`` -> ``3.15.1``."""
    return _split(reference)[1]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"image_repository": image_repository, "image_tag": image_tag}
