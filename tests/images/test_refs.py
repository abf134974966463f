"""Image references without building anything: the checks, the content digest, the preflight.

The filters (plugins/filter/image_refs.py) are the rules both the container_images role and the
render-invariant tests apply; the module container_image_context is what the tags are made of;
the role's refs phase and preflight run for real through ansible-playbook (no builder needed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support.chart_data import chart_file
from tests.support.collection import COLLECTION, plugin
from tests.support.images import REPO_ROOT, run_images_role
from tests.support.k8s_layer import helm_merge, load_yaml

ROLE = COLLECTION / "roles/container_images"


refs = plugin("filter", "image_refs")
context = plugin("modules", "container_image_context")


# --- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "registry", "host", "path", "tag"),
    [
        ("localhost/mlops-lab/serving:0.1.0-abc", "localhost", "localhost", "mlops-lab/serving", "0.1.0-abc"),
        (
            "registry.lab:5000/mlops-lab/airflow:3.2.2-0123",
            "registry.lab:5000",
            "registry.lab:5000",
            "mlops-lab/airflow",
            "3.2.2-0123",
        ),
        ("apache/airflow:3.2.2", "", "", "apache/airflow", "3.2.2"),
        ("busybox", "", "", "busybox", ""),
        ("127.0.0.1:5000/x/y@sha256:" + "a" * 64, "127.0.0.1:5000", "127.0.0.1:5000", "x/y", ""),
    ],
)
def test_references_parse_like_containerd(ref: str, registry: str, host: str, path: str, tag: str) -> None:
    parsed = refs.image_ref_parse(ref)
    assert parsed["valid"]
    assert (parsed["registry"], parsed["path"], parsed["tag"]) == (host, path, tag)
    assert parsed["repository"] == (f"{registry}/{path}" if registry else path)


@pytest.mark.parametrize("ref", ["", "Upper/Case:1", "a//b:1", "host:port/x:1", None])
def test_malformed_references_are_refused_by_name(ref: object) -> None:
    problems = refs.image_ref_problems(ref, "serving_release_image", "load")
    assert problems, ref
    assert all("serving_release_image" in p for p in problems)


def test_registry_delivery_refuses_what_nodes_cannot_pull() -> None:
    registry = "registry.lab:5000/mlops-lab"
    ok = "registry.lab:5000/mlops-lab/serving:0.1.0-3f2a9c1b0d12"
    assert refs.image_ref_problems(ok, "v", "registry", registry) == []
    cases = {
        "localhost/mlops-lab/serving:0.1.0-3f2a9c1b0d12": "treats it as a registry on the node itself",
        "mlops-lab/serving:0.1.0-3f2a9c1b0d12": "docker.io/mlops-lab/serving",
        "other.lab/mlops-lab/serving:0.1.0-3f2a9c1b0d12": "not in the registry the nodes pull from",
        "registry.lab:5000/mlops-lab/serving:latest": "no fixed tag",
        "registry.lab:5000/mlops-lab/serving": "no fixed tag",
    }
    for ref, reason in cases.items():
        problems = refs.image_ref_problems(ref, "serving_release_image", "registry", registry)
        assert len(problems) == 1, (ref, problems)
        assert reason in problems[0]
        assert problems[0].startswith("serving_release_image: ")


def test_load_delivery_wants_fully_qualified_loaded_references() -> None:
    loaded = ["localhost/mlops-lab/serving:0.1.0-3f2a9c1b0d12"]
    assert refs.image_ref_problems(loaded[0], "v", "load", loaded=loaded) == []
    assert "not fully qualified" in refs.image_ref_problems("mlops-lab/serving:1", "v", "load")[0]
    missing = refs.image_ref_problems("localhost/mlops-lab/serving:0.1.0-000000000000", "v", "load", loaded=loaded)
    assert "not among the images loaded" in missing[0]
    # git-sync loaded under its upstream name is as good as any other loaded image.
    assert refs.image_ref_problems("registry.k8s.io/git-sync/git-sync:v4.4.2", "v", "load") == []


def _airflow_chart_defaults() -> dict:
    return load_yaml(chart_file("airflow", "values.yaml"))


def test_stock_airflow_image_is_refused_everywhere_the_pipeline_runs() -> None:
    defaults = _airflow_chart_defaults()
    # The chart as it ships, and with only images.airflow set (task pod template still stock).
    stock = refs.airflow_image_problems(defaults, "airflow_release_image")
    assert len(stock) == 4
    assert all("ModuleNotFoundError" in p and p.startswith("airflow_release_image: ") for p in stock)
    ours = {"repository": "localhost/mlops-lab/airflow", "tag": "3.2.2-0123456789ab"}
    partial = helm_merge(defaults, {"images": {"airflow": ours}})
    images = refs.airflow_chart_images(partial)
    assert images["airflow"] == images["tasks"] == "localhost/mlops-lab/airflow:3.2.2-0123456789ab"
    assert images["pod_template"] == "apache/airflow:3.2.2"
    assert [p for p in refs.airflow_image_problems(partial, "v") if "pod template" in p]
    # defaultAirflowRepository/Tag cover every part of the chart at once.
    full = helm_merge(defaults, {"defaultAirflowRepository": ours["repository"], "defaultAirflowTag": ours["tag"]})
    assert refs.airflow_image_problems(full, "v") == []
    assert set(refs.airflow_chart_images(full).values()) == {"localhost/mlops-lab/airflow:3.2.2-0123456789ab"}
    assert refs.airflow_image_problems(defaults, "v", pipeline_dags=False) == []


def test_manifest_images_lists_every_container() -> None:
    docs = [
        {
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "template": {
                    "spec": {
                        "initContainers": [{"name": "wait", "image": "busybox:1.38.0"}],
                        "containers": [{"name": "app", "image": "localhost/mlops-lab/serving:0.1.0-a"}],
                    }
                }
            },
        },
        {
            "kind": "CronJob",
            "metadata": {"name": "c"},
            "spec": {
                "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "job", "image": "x.io/y:1"}]}}}}
            },
        },
        {"kind": "ConfigMap", "metadata": {"name": "cm"}},
    ]
    assert [(i["kind"], i["container"], i["image"]) for i in refs.manifest_images(docs)] == [
        ("Deployment", "wait", "busybox:1.38.0"),
        ("Deployment", "app", "localhost/mlops-lab/serving:0.1.0-a"),
        ("CronJob", "job", "x.io/y:1"),
    ]


# --- the content digest --------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "img" / "pkg").mkdir(parents=True)
    (root / "img" / "Dockerfile").write_text("FROM x\n")
    (root / "img" / "pkg" / "mod.py").write_text("print(1)\n")
    (root / "req.txt").write_text("a==1\n")
    (root / "unrelated.txt").write_text("not an input\n")


def test_digest_covers_exactly_the_inputs(tmp_path: Path) -> None:
    _tree(tmp_path)
    paths = ["img", "req.txt"]
    base = context.digest_of(context.collect(str(tmp_path), paths, ["__pycache__", "*.pyc"]), {"v": "1"})
    (tmp_path / "img" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "img" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "unrelated.txt").write_text("changed\n")
    same = context.digest_of(context.collect(str(tmp_path), paths, ["__pycache__", "*.pyc"]), {"v": "1"})
    assert same == base
    assert context.digest_of(context.collect(str(tmp_path), paths, ["__pycache__"]), {"v": "2"}) != base
    (tmp_path / "req.txt").write_text("a==2\n")
    assert context.digest_of(context.collect(str(tmp_path), paths, ["__pycache__"]), {"v": "1"}) != base
    (tmp_path / "req.txt").write_text("a==1\n")
    (tmp_path / "img" / "pkg" / "mod.py").chmod(0o700)
    assert context.digest_of(context.collect(str(tmp_path), paths, ["__pycache__", "*.pyc"]), {"v": "1"}) != base
    with pytest.raises(ValueError, match="outside"):
        context.collect(str(tmp_path / "img"), ["../req.txt"], [])
    with pytest.raises(ValueError, match="does not exist"):
        context.collect(str(tmp_path), ["nope"], [])


def test_staging_makes_an_exact_copy(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    _tree(src)
    files = context.collect(str(src), ["img", "req.txt"], ["__pycache__"])
    assert context.stage(files, str(dest), check_mode=True)
    assert not dest.exists()
    assert context.stage(files, str(dest), check_mode=False)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(files)
    assert not context.stage(files, str(dest), check_mode=False)
    (dest / "img" / "stale").mkdir()
    (dest / "img" / "stale" / "old.py").write_text("x")
    (dest / "req.txt").write_text("tampered\n")
    assert context.stage(files, str(dest), check_mode=False)
    assert not (dest / "img" / "stale").exists()
    assert (dest / "req.txt").read_text() == "a==1\n"


# --- the role without a builder ----------------------------------------------------------------


def _copy_inputs(dest: Path) -> None:
    """Every build input the role's definitions name, and nothing else of the checkout."""
    definitions = load_yaml(ROLE / "defaults/main.yml")["container_images_definitions"]
    for rel in sorted({path for d in definitions for path in [d["dockerfile"], *d["inputs"]]}):
        src = REPO_ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_refs_change_with_their_inputs_only(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    _copy_inputs(checkout)
    common = {"container_images_build": False, "container_images_delivery": "none"}
    first = run_images_role(tmp_path / "a", {**common, "container_images_source_dir": str(checkout)})
    assert first.rc == 0, first.failures or first.output[-3000:]
    assert first.changed_tasks() == []
    published = first.published
    assert sorted(published) == ["airflow", "diagnose", "mlflow", "serving"]
    for name, version in {"mlflow": "3.15.1", "serving": "0.1.0", "airflow": "3.2.2", "diagnose": "0.1.0"}.items():
        assert re.fullmatch(rf"{re.escape(version)}-[0-9a-f]{{12}}", published[name]["tag"]), published[name]
        assert published[name]["ref"] == f"localhost/mlops-lab/{name}:{published[name]['tag']}"
    assert first.facts["container_images_refs"] == {name: image["ref"] for name, image in published.items()}

    # A DAG requirement is an input of the Airflow image only.
    requirements = checkout / "dags" / "requirements.txt"
    requirements.write_text(requirements.read_text() + "# a comment is a change too\n")
    second = run_images_role(tmp_path / "b", {**common, "container_images_source_dir": str(checkout)})
    assert second.rc == 0, second.failures
    changed = {name for name in published if second.published[name]["tag"] != published[name]["tag"]}
    assert changed == {"airflow"}

    # The base image is a build input of all of them.
    third = run_images_role(
        tmp_path / "c",
        {**common, "container_images_source_dir": str(checkout), "container_images_base_image": "localhost/other:1"},
    )
    assert all(third.published[name]["tag"] != second.published[name]["tag"] for name in published)


@pytest.mark.parametrize(
    ("overrides", "variable", "reason"),
    [
        ({"container_images_delivery": "registry"}, "container_images_registry", "registry on the node itself"),
        (
            {"container_images_delivery": "registry", "container_images_registry": "mlops-lab"},
            "container_images_registry",
            "names no registry",
        ),
        ({"container_images_delivery": "load"}, "container_images_nodes", "container_images_nodes must list"),
        (
            {
                "container_images_delivery": "load",
                "container_images_nodes": ["node1"],
                "container_images_extra_refs": ["git-sync:v4"],
            },
            "container_images_extra_refs",
            "not fully qualified",
        ),
        (
            {
                "container_images_delivery": "registry",
                "container_images_registry": "registry.lab:5000/mlops-lab",
                "container_images_registry_username": "robot",
            },
            "container_images_registry_password",
            "go together",
        ),
    ],
)
def test_preflight_refuses_references_the_nodes_cannot_get(
    tmp_path: Path, overrides: dict, variable: str, reason: str
) -> None:
    run = run_images_role(
        tmp_path, {"container_images_build": False, **overrides}, nodes=["node1"] if "load" in str(overrides) else ()
    )
    assert run.rc != 0
    failure = " ".join(run.failures)
    assert variable in failure, failure
    assert reason in failure, failure
