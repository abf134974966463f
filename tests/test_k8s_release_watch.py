"""The release watch's judgement, on the pod and workload shapes the API server returns.

mlopslab.platform.k8s_release_watch decides when a release is up, when to stop waiting because a
pod cannot come up (pull errors, crash loops, a missing Secret, Unschedulable), and what to print
then. Its polling against a real API server is in tests/test_k8s_apiserver.py; here the decisions
are checked on the exact status documents kubelet and the controllers write, with a clock that
the test drives (no sleeping).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.collection import plugin

watch_module = plugin("modules", "k8s_release_watch")


def _pod(name: str, phase: str = "Running", ready: bool = True, **status: Any) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "metadata": {"name": name, "ownerReferences": status.pop("owners", [{"kind": "ReplicaSet"}])},
        "status": {"phase": phase, "conditions": status.pop("conditions", conditions), **status},
    }


def _container(name: str, ready: bool = True, started: bool = True, **state: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.lab/x:1",
        "ready": ready,
        "started": started,
        "restartCount": state.pop("restarts", 0),
        "state": state.pop("state", {"running": {}}),
        **state,
    }


PULL_BACKOFF = _pod(
    "mlflow-5d9-abc",
    phase="Pending",
    ready=False,
    containerStatuses=[
        _container(
            "mlflow",
            ready=False,
            started=False,
            state={"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "localhost/x:1"'}},
        )
    ],
)
CRASH_LOOP = _pod(
    "airflow-scheduler-0",
    ready=False,
    containerStatuses=[
        _container(
            "scheduler",
            ready=False,
            restarts=4,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
            lastState={"terminated": {"reason": "Error", "exitCode": 1, "message": "ModuleNotFoundError: mlflow\n"}},
        )
    ],
)
UNSCHEDULABLE = _pod(
    "serving-7f-xyz",
    phase="Pending",
    ready=False,
    conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: Insufficient cpu"}
    ],
)
MIGRATIONS_PENDING = _pod(
    "airflow-api-server-1",
    phase="Pending",
    ready=False,
    initContainerStatuses=[
        _container("wait-for-airflow-migrations", ready=False, started=True),
    ],
    containerStatuses=[
        _container("api-server", ready=False, started=False, state={"waiting": {"reason": "PodInitializing"}})
    ],
)


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (PULL_BACKOFF, "ImagePullBackOff"),
        (CRASH_LOOP, "CrashLoopBackOff"),
        (UNSCHEDULABLE, "Unschedulable"),
    ],
)
def test_states_waiting_cannot_fix_are_fatal(pod: dict[str, Any], reason: str) -> None:
    text, fatal = watch_module.pod_problem(pod, "ready")
    assert fatal
    assert reason in text


def test_a_pod_waiting_for_its_init_containers_is_only_not_ready_yet() -> None:
    text, fatal = watch_module.pod_problem(MIGRATIONS_PENDING, "ready")
    assert not fatal
    assert "not Ready" in text


def test_started_mode_accepts_a_running_pod_that_is_not_ready() -> None:
    serving = _pod("serving-1", ready=False, containerStatuses=[_container("serving", ready=False, started=True)])
    assert watch_module.pod_problem(serving, "started") is None
    assert watch_module.pod_problem(serving, "ready") is not None


def test_job_pods_need_not_be_ready_but_their_crashes_count() -> None:
    running_job = _pod(
        "migrate-1", ready=False, owners=[{"kind": "Job"}], containerStatuses=[_container("m", ready=False)]
    )
    assert watch_module.pod_problem(running_job, "ready") is None
    crashing_job = {**CRASH_LOOP, "metadata": {"name": "migrate-2", "ownerReferences": [{"kind": "Job"}]}}
    assert watch_module.pod_problem(crashing_job, "ready")[1] is True


def test_workload_rollout_rules() -> None:
    deployment = {
        "metadata": {"name": "mlflow", "generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2, "replicas": 2},
    }
    assert watch_module.workload_problem("Deployment", deployment, "ready") is None
    stale = {**deployment, "status": {**deployment["status"], "observedGeneration": 1}}
    assert "not seen the new spec" in watch_module.workload_problem("Deployment", stale, "ready")
    surging = {**deployment, "status": {**deployment["status"], "replicas": 3}}
    assert "old replicas" in watch_module.workload_problem("Deployment", surging, "ready")
    unready = {**deployment, "status": {**deployment["status"], "availableReplicas": 0}}
    assert "0/2 replicas ready" in watch_module.workload_problem("Deployment", unready, "ready")
    assert watch_module.workload_problem("Deployment", unready, "started") is None
    daemonset = {
        "metadata": {"name": "ingress-nginx-controller", "generation": 1},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberReady": 2},
    }
    assert "2/3 ready" in watch_module.workload_problem("DaemonSet", daemonset, "ready")


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("600s", 600), ("10m", 600), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert watch_module.parse_duration(text) == seconds


def test_a_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        watch_module.parse_duration("ten minutes")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Snapshot:
    """The API server's answers, as a list the test advances over time."""

    def __init__(self, clock: FakeClock, timeline: list[tuple[float, list[dict[str, Any]]]]) -> None:
        self.clock, self.timeline = clock, timeline

    def _pods_now(self) -> list[dict[str, Any]]:
        return [pods for at, pods in self.timeline if at <= self.clock.now][-1]

    def workloads(self, namespace: str, selector: str) -> list[tuple[str, dict[str, Any]]]:
        ready = all(watch_module.pod_problem(p, "ready") is None for p in self._pods_now())
        replicas = 1 if ready else 0
        return [
            (
                "Deployment",
                {
                    "metadata": {"name": "mlflow", "generation": 1},
                    "spec": {"replicas": 1},
                    "status": {
                        "observedGeneration": 1,
                        "updatedReplicas": 1,
                        "availableReplicas": replicas,
                        "replicas": 1,
                    },
                },
            )
        ]

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self._pods_now()

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return [
            {
                "type": "Warning",
                "reason": "Failed",
                "message": 'Failed to pull image "localhost/x:1": connection refused',
                "lastTimestamp": "2026-01-01T00:00:05Z",
                "count": 3,
                "involvedObject": {"kind": "Pod", "name": "mlflow-5d9-abc"},
            }
        ]


PARAMS = {
    "release": "mlflow",
    "namespace": "mlops-training",
    "selector": "app.kubernetes.io/instance=mlflow",
    "wait_for": "ready",
    "timeout": "20m",
    "interval": 5,
    "fail_fast_after": 20,
    "events": 20,
}


def test_an_image_that_cannot_be_pulled_fails_in_seconds_with_the_diagnosis() -> None:
    clock = FakeClock()
    cluster = Snapshot(clock, [(0, [PULL_BACKOFF])])
    result = watch_module.watch(cluster, PARAMS, sleep=clock.sleep, clock=clock)
    assert not result["ready"]
    assert 20 <= result["waited"] <= 30, "fails after fail_fast_after, not after the 20m timeout"
    head, *report = result["msg"].splitlines()
    assert "release mlflow" in head
    assert "pod mlflow-5d9-abc" in head
    assert "ImagePullBackOff" in head
    assert any('waiting ImagePullBackOff: Back-off pulling image "localhost/x:1"' in line for line in report)
    assert any("Failed to pull image" in line and "(x3)" in line for line in report)


def test_a_passing_pull_error_that_heals_does_not_fail_the_release() -> None:
    clock = FakeClock()
    healthy = _pod("mlflow-5d9-abc", containerStatuses=[_container("mlflow")])
    cluster = Snapshot(clock, [(0, [PULL_BACKOFF]), (10, [healthy])])
    result = watch_module.watch(cluster, PARAMS, sleep=clock.sleep, clock=clock)
    assert result["ready"], result["msg"]
    assert result["waited"] == 10


def test_a_pod_that_never_gets_ready_fails_at_the_timeout_naming_it() -> None:
    clock = FakeClock()
    cluster = Snapshot(clock, [(0, [MIGRATIONS_PENDING])])
    result = watch_module.watch(cluster, {**PARAMS, "timeout": "2m"}, sleep=clock.sleep, clock=clock)
    assert not result["ready"]
    assert result["waited"] == 120
    assert "is not up after 120" in result["msg"]
    assert "airflow-api-server-1" in result["msg"]
    assert "init wait-for-airflow-migrations" in result["msg"]
