"""mlopslab.platform.pods_state: when the first_champion role stops waiting for its Job's pods, and
connectivity_diagnosis for its probe pod (the pod documents are the ones kubelet writes; the roles
themselves run on the real cluster in tests/cluster/test_serving_on_cluster.py and
tests/runner/test_diagnose.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.collection import plugin

state = plugin("filter", "diagnosis").pods_state
FINAL = [2, 3]


def pod(phase: str, **container_state: Any) -> dict[str, Any]:
    return {"status": {"phase": phase, "containerStatuses": [{"name": "train", "state": container_state}]}}


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], "running"),  # the Job has not made its pod yet
        ([pod("Pending", waiting={"reason": "ContainerCreating"})], "running"),
        ([pod("Running", running={})], "running"),
        ([pod("Succeeded", terminated={"exitCode": 0})], "succeeded"),
        # a crash is retried; the retry's success counts
        ([pod("Failed", terminated={"exitCode": 1}), pod("Succeeded", terminated={"exitCode": 0})], "succeeded"),
        ([pod("Failed", terminated={"exitCode": 1}), pod("Running", running={})], "running"),
        ([pod("Failed", terminated={"exitCode": 1})] * 3, "failed"),  # every attempt used
        ([pod("Failed", terminated={"exitCode": 3})], "failed"),  # the gate said no: no retry helps
        ([pod("Failed", terminated={"exitCode": 2})], "failed"),  # bad configuration
        ([pod("Pending", waiting={"reason": "ImagePullBackOff"})], "stuck"),
        ([pod("Pending", waiting={"reason": "CreateContainerConfigError"})], "stuck"),
    ],
)
def test_job_pods_state(pods: list[dict[str, Any]], expected: str) -> None:
    assert state(pods, 3, FINAL) == expected


@pytest.mark.parametrize(
    ("pod_", "expected"),
    [
        (pod("Pending", waiting={"reason": "ContainerCreating"}), "running"),
        (pod("Failed", terminated={"exitCode": 1}), "failed"),  # one pod, one attempt
        (pod("Succeeded", terminated={"exitCode": 0}), "succeeded"),
        (pod("Pending", waiting={"reason": "ErrImageNeverPull"}), "stuck"),
        (pod("Pending", waiting={"reason": "InvalidImageName"}), "stuck"),
    ],
)
def test_one_pod_state(pod_: dict[str, Any], expected: str) -> None:
    assert state([pod_]) == expected
