"""Resolve, load, check and atomically swap the served model; watch the registry for changes.

Concurrency model: registry calls and model loads run in worker threads; the swap itself is one
attribute assignment made on the event loop, so a request sees either the old or the new
`LoadedModel`, never a mixture. A request takes its reference once, when it starts, and its rows
are predicted by that object even if a swap happens meanwhile (the batcher groups by model).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from . import heap
from .config import Settings
from .metrics import ServingMetrics

log = logging.getLogger("serving.model_store")

FloatRows = npt.NDArray[np.float64]
PredictFn = Callable[[FloatRows], npt.NDArray[Any]]

# Rows of synthetic input the forest path must also agree on before it is used (besides the
# logged example): spread over and beyond the range of every split threshold, and on them.
_FOREST_CHECK_ROWS = 256

_NUMERIC_COLUMN_TYPES = {"double", "float", "long", "integer"}
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_NAME_REF_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<ref>[^/]+)$")


class RegistryError(Exception):
    """The registry could not tell which version to serve (unreachable, missing alias...)."""


class ModelLoadError(Exception):
    """A version could not be loaded or failed its checks."""


@dataclass(frozen=True)
class ModelSource:
    """What to serve: an alias (polled), a stage (polled, deprecated), a fixed version, or a URI."""

    kind: Literal["alias", "stage", "version", "static"]
    uri: str
    name: str | None = None
    ref: str | None = None  # the alias, stage or version


def parse_source(settings: Settings) -> ModelSource:
    """Turn SERVING_MODEL_URI (or SERVING_MODEL_NAME + SERVING_MODEL_ALIAS) into a ModelSource."""
    if settings.model_uri is None:
        name, alias = settings.model_name, settings.model_alias
        return ModelSource("alias", f"models:/{name}@{alias}", name, alias)
    uri = settings.model_uri.strip()
    if match := _ALIAS_URI.match(uri):
        return ModelSource("alias", uri, match["name"], match["alias"])
    if match := _NAME_REF_URI.match(uri):
        ref = match["ref"]
        if ref.isdigit():
            return ModelSource("version", uri, match["name"], ref)
        if ref.lower() == "latest":
            return ModelSource("stage", uri, match["name"], "None")
        warnings.warn(
            f"{uri}: MLflow model stages are deprecated; serve an alias (models:/NAME@champion)",
            DeprecationWarning,
            stacklevel=2,
        )
        log.warning("%s uses a deprecated MLflow stage; prefer an alias such as @champion", uri)
        return ModelSource("stage", uri, match["name"], ref)
    return ModelSource("static", uri)


@dataclass(frozen=True)
class ResolvedVersion:
    """One concrete version the source points at right now."""

    key: str  # what identifies it: the version number, or the URI of a static source
    uri: str  # what to load: models:/NAME/VERSION, so a concurrent alias move cannot mix versions
    version: str | None
    run_id: str | None


Predictor = Literal["forest", "sklearn", "pyfunc"]


@dataclass(frozen=True)
class LoadedModel:
    """An immutable, checked, ready-to-call model. Swapping replaces the whole object.

    `predictor` says what computes predictions: "forest" (the trees of a scikit-learn forest
    called directly, see `_make_forest_predict`), "sklearn" (the raw estimator) or "pyfunc"
    (MLflow's pyfunc wrapper, with its schema enforcement). The first two are used only when they
    gave exactly the pyfunc predictions at load time. `classes` and `class_labels` are set for
    classifiers whose probabilities can be served (`predict_proba_rows`).
    """

    name: str
    source_uri: str
    key: str
    version: str | None
    run_id: str | None
    loaded_uri: str
    loaded_at: datetime
    feature_names: tuple[str, ...] | None
    n_features: int
    predictor: Predictor
    predict_rows: PredictFn = field(repr=False, compare=False)
    predict_proba_rows: PredictFn | None = field(default=None, repr=False, compare=False)
    classes: tuple[Any, ...] | None = None
    class_labels: tuple[str, ...] | None = None
    # MLflow's model metadata (signature, flavors), for the /invocations protocol.
    metadata: Any = field(default=None, repr=False, compare=False)

    @property
    def fast_path(self) -> bool:
        return self.predictor != "pyfunc"

    def describe_features(self) -> str:
        if self.feature_names:
            return f"{self.n_features} features {list(self.feature_names)}"
        return f"{self.n_features} features"


@dataclass(frozen=True)
class LastError:
    kind: Literal["registry", "load"]
    message: str
    at: datetime
    version: str | None = None


@dataclass(frozen=True)
class CheckResult:
    outcome: Literal["swapped", "unchanged", "load_failed", "registry_error"]
    serving_version: str | None
    target_version: str | None = None
    error: str | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def resolve(source: ModelSource) -> ResolvedVersion:
    """Ask the registry which version the source designates (blocking; run in a thread)."""
    if source.kind == "static":
        return ResolvedVersion(key=source.uri, uri=source.uri, version=None, run_id=None)
    from mlflow import MlflowClient

    if source.name is None or source.ref is None:
        raise RegistryError(f"{source.uri} names no registered model")
    client = MlflowClient()
    try:
        if source.kind == "alias":
            mv = client.get_model_version_by_alias(source.name, source.ref)
        elif source.kind == "version":
            mv = client.get_model_version(source.name, source.ref)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                found = client.get_latest_versions(source.name, stages=[source.ref])
            if not found:
                raise RegistryError(f"no version of {source.name} is in stage {source.ref}")
            mv = found[0]
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(f"cannot resolve {source.uri}: {_short(exc)}") from exc
    version = str(mv.version)
    return ResolvedVersion(key=version, uri=f"models:/{source.name}/{version}", version=version, run_id=mv.run_id)


def _short(exc: BaseException, limit: int = 400) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _input_layout(pyfunc_model: Any) -> tuple[tuple[str, ...] | None, int, list[Any] | None]:
    """Feature names (None for a tensor signature), feature count, and column numpy types."""
    from mlflow.types.schema import ColSpec, TensorSpec

    signature = pyfunc_model.metadata.signature
    if signature is None or signature.inputs is None:
        raise ModelLoadError("the model has no input signature; log it with one")
    inputs = signature.inputs.inputs
    if len(inputs) == 1 and isinstance(inputs[0], TensorSpec):
        spec = inputs[0]
        shape = tuple(spec.shape)
        if len(shape) != 2 or shape[1] is None or shape[1] < 1 or spec.type.kind not in "fiu":
            raise ModelLoadError(f"unsupported tensor signature {spec}; expected a numeric (-1, N) tensor")
        return None, int(shape[1]), None
    names: list[str] = []
    types: list[Any] = []
    for spec in inputs:
        if not isinstance(spec, ColSpec) or spec.name is None:
            raise ModelLoadError(f"unsupported input {spec}; expected named numeric columns")
        type_name = getattr(spec.type, "name", str(spec.type))
        if type_name not in _NUMERIC_COLUMN_TYPES:
            raise ModelLoadError(f"column {spec.name!r} has type {type_name}; only numeric columns are served")
        names.append(spec.name)
        types.append(cast(Any, spec.type).to_numpy())
    if not names:
        raise ModelLoadError("the model signature has no input columns")
    return tuple(names), len(names), types


def _example_rows(pyfunc_model: Any, names: tuple[str, ...] | None, n_features: int) -> FloatRows:
    """The logged input example in serving layout, else one signature-shaped row of zeros."""
    import pandas as pd

    example: Any = None
    rows: Any
    with contextlib.suppress(Exception):
        example = pyfunc_model.input_example
    try:
        if isinstance(example, pd.DataFrame):
            frame = example[list(names)] if names else example
            rows = frame.to_numpy(dtype=np.float64)
        elif example is not None:
            rows = np.asarray(example, dtype=np.float64)
            if rows.ndim == 1:
                rows = rows.reshape(1, -1)
        else:
            rows = np.zeros((1, n_features))
    except Exception:  # an odd example is not a reason to refuse the model
        rows = np.zeros((1, n_features))
    if rows.ndim != 2 or rows.shape[1] != n_features or rows.shape[0] == 0:
        rows = np.zeros((1, n_features))
    return np.asarray(rows, dtype=np.float64)


def _make_pyfunc_predict(pyfunc_model: Any, names: tuple[str, ...] | None, types: list[Any] | None) -> PredictFn:
    import pandas as pd

    def predict(rows: FloatRows) -> npt.NDArray[Any]:
        if names is None:
            data: Any = rows
        else:
            data = pd.DataFrame(rows, columns=list(names))
            if types is not None:
                data = data.astype(dict(zip(names, types, strict=True)))
        return _as_array(pyfunc_model.predict(data))

    return predict


def _sklearn_input(raw: Any, names: tuple[str, ...] | None) -> Callable[[FloatRows], Any]:
    import pandas as pd

    wants_frame = names is not None and hasattr(raw, "feature_names_in_")
    column_list = list(names) if names else []

    def to_input(rows: FloatRows) -> Any:
        return pd.DataFrame(rows, columns=column_list) if wants_frame else rows

    return to_input


def _make_sklearn_predict(raw: Any, names: tuple[str, ...] | None) -> tuple[PredictFn, PredictFn | None]:
    to_input = _sklearn_input(raw, names)

    def predict(rows: FloatRows) -> npt.NDArray[Any]:
        return _as_array(raw.predict(to_input(rows)))

    if not (hasattr(raw, "predict_proba") and hasattr(raw, "classes_")):
        return predict, None

    def predict_proba(rows: FloatRows) -> npt.NDArray[Any]:
        return np.asarray(raw.predict_proba(to_input(rows)), dtype=np.float64)

    return predict, predict_proba


def _make_forest_predict(raw: Any, names: tuple[str, ...] | None) -> tuple[PredictFn, PredictFn | None] | None:
    """Predict with a scikit-learn forest by calling each tree's compiled `apply` directly.

    `RandomForestClassifier.predict` of one row costs ~10 ms of CPU on this kind of machine, nearly
    all of it Python dispatch around the 100 trees (per-tree `check_is_fitted` and its tags, input
    validation, joblib's config context and warning filters), holding the GIL the event loop
    needs; the traversal itself is microseconds. This does what sklearn does for
    `n_outputs_ == 1`, in the same order and the same arithmetic: float32 input, each tree's leaf
    values (fractions per class for a classifier) summed tree after tree into zeros, divided by
    the number of trees, argmax taken into `classes_`. Rows that are not finite in float32 go to
    the estimator itself, so its own validation (missing-value support, its error messages)
    applies. Returns None for anything else; `load_and_check` keeps the result only if it equals
    the pyfunc predictions on the logged example and on synthetic rows around every threshold.
    """
    from sklearn.ensemble._forest import ForestClassifier, ForestRegressor

    classifier = isinstance(raw, ForestClassifier)
    if not (classifier or isinstance(raw, ForestRegressor)) or getattr(raw, "n_outputs_", 0) != 1:
        return None
    estimators = list(getattr(raw, "estimators_", []))
    if not estimators or not all(hasattr(e, "tree_") for e in estimators):
        return None
    trees = [e.tree_ for e in estimators]
    to_input = _sklearn_input(raw, names)
    if classifier:
        n_classes = int(raw.n_classes_)
        tables = [np.ascontiguousarray(t.value[:, 0, :n_classes], dtype=np.float64) for t in trees]
    else:
        tables = [np.ascontiguousarray(t.value[:, 0, 0], dtype=np.float64) for t in trees]
    count = len(trees)

    def as_float32(rows: FloatRows) -> npt.NDArray[np.float32] | None:
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = np.ascontiguousarray(rows, dtype=np.float32)
        return x32 if np.isfinite(x32).all() else None

    def accumulate(x32: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        total = np.zeros((len(x32), n_classes) if classifier else len(x32), dtype=np.float64)
        for tree, table in zip(trees, tables, strict=True):
            total += table[tree.apply(x32)]
        total /= count
        return total

    def predict(rows: FloatRows) -> npt.NDArray[Any]:
        x32 = as_float32(rows)
        if x32 is None:
            return _as_array(raw.predict(to_input(rows)))
        total = accumulate(x32)
        return np.asarray(raw.classes_.take(np.argmax(total, axis=1), axis=0)) if classifier else total

    if not classifier:
        return predict, None

    def predict_proba(rows: FloatRows) -> npt.NDArray[Any]:
        x32 = as_float32(rows)
        if x32 is None:
            return np.asarray(raw.predict_proba(to_input(rows)), dtype=np.float64)
        return accumulate(x32)

    return predict, predict_proba


def _forest_check_rows(raw: Any, example: FloatRows) -> FloatRows:
    """The example plus deterministic rows spread around, and on, every split threshold."""
    thresholds: list[list[float]] = [[] for _ in range(example.shape[1])]
    for estimator in raw.estimators_:
        tree = estimator.tree_
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            if feature >= 0:
                thresholds[feature].append(float(threshold))
    rng = np.random.default_rng(0)
    columns = []
    for feature, values in enumerate(thresholds):
        known = np.asarray(values or [float(example[0, feature])])
        low, high = float(known.min()) - 1.0, float(known.max()) + 1.0
        spread = rng.uniform(low, high, _FOREST_CHECK_ROWS)
        spread[: min(len(known), _FOREST_CHECK_ROWS // 4)] = rng.permutation(known)[: _FOREST_CHECK_ROWS // 4]
        columns.append(spread)
    return np.vstack([example, np.column_stack(columns)])


def _as_array(result: Any) -> npt.NDArray[Any]:
    if hasattr(result, "to_numpy"):
        result = result.to_numpy()
    array = np.asarray(result)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    return array


def load_and_check(source: ModelSource, resolved: ResolvedVersion, name: str) -> LoadedModel:
    """Load one version, check its signature, smoke-predict (blocking; run in a thread)."""
    import mlflow.pyfunc

    try:
        pyfunc_model = mlflow.pyfunc.load_model(resolved.uri)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {resolved.uri}: {_short(exc)}") from exc
    names, n_features, types = _input_layout(pyfunc_model)
    example = _example_rows(pyfunc_model, names, n_features)
    reference = _make_pyfunc_predict(pyfunc_model, names, types)
    try:
        expected = reference(example)
    except Exception as exc:
        raise ModelLoadError(f"smoke prediction failed for {resolved.uri}: {_short(exc)}") from exc
    if len(expected) != len(example):
        raise ModelLoadError(
            f"smoke prediction for {resolved.uri} returned {len(expected)} results for {len(example)} rows"
        )
    predict, predict_proba, predictor = reference, None, "pyfunc"
    classes: tuple[Any, ...] | None = None
    # The scikit-learn flavor skips pyfunc's per-call pandas schema enforcement (the request is
    # validated against the signature already); keep it only if it agrees with pyfunc.
    if "sklearn" in pyfunc_model.metadata.flavors:
        with contextlib.suppress(Exception):
            raw = pyfunc_model.get_raw_model()
            candidate, candidate_proba = _make_sklearn_predict(raw, names)
            if np.array_equal(candidate(example), expected):
                predict, predict_proba, predictor = candidate, candidate_proba, "sklearn"
                if candidate_proba is not None:
                    classes = tuple(raw.classes_.tolist())
            forest = _make_forest_predict(raw, names)
            if forest is not None and predictor == "sklearn":
                rows = _forest_check_rows(raw, example)
                forest_predict, forest_proba = forest
                same = np.array_equal(forest_predict(rows), candidate(rows))
                if same and forest_proba is not None and candidate_proba is not None:
                    same = np.array_equal(forest_proba(rows), candidate_proba(rows))
                if same:
                    predict, predict_proba, predictor = forest_predict, forest_proba, "forest"
    return LoadedModel(
        name=source.name or name,
        source_uri=source.uri,
        key=resolved.key,
        version=resolved.version,
        run_id=resolved.run_id or pyfunc_model.metadata.run_id,
        loaded_uri=resolved.uri,
        loaded_at=_utcnow(),
        feature_names=names,
        n_features=n_features,
        predictor=cast(Predictor, predictor),
        predict_rows=predict,
        predict_proba_rows=predict_proba,
        classes=classes,
        class_labels=_class_labels(pyfunc_model, classes),
        metadata=pyfunc_model.metadata,
    )


def _class_labels(pyfunc_model: Any, classes: tuple[Any, ...] | None) -> tuple[str, ...] | None:
    """Names of the classes: the model's `class_names` metadata (log_model(metadata=...)) when it
    has one name per class, else the class values themselves (the training data's labels)."""
    if classes is None:
        return None
    names = (getattr(pyfunc_model.metadata, "metadata", None) or {}).get("class_names")
    if isinstance(names, list) and len(names) == len(classes):
        return tuple(str(name) for name in names)
    return tuple(str(value) for value in classes)


class ModelStore:
    """Holds the current model and keeps it equal to what the registry designates."""

    def __init__(self, settings: Settings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = parse_source(settings)
        self.current: LoadedModel | None = None
        self.swaps = 0
        self.last_swap_at: datetime | None = None
        self.last_check_at: datetime | None = None
        self.last_check_outcome: str | None = None
        # The error of the latest check, if it failed; a check that succeeds (swapped or
        # unchanged) clears it. Earlier failures are counted in the metrics.
        self.last_error: LastError | None = None
        self._check_lock = asyncio.Lock()
        self._first_check_done = asyncio.Event()
        self._on_check: list[Callable[[], None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._triggered: set[asyncio.Task[CheckResult]] = set()

    @property
    def polls(self) -> bool:
        return self.source.kind in ("alias", "stage")

    async def check(self, trigger: str) -> CheckResult:
        """Resolve the source; if it designates another version, load, check and swap it in."""
        async with self._check_lock:
            try:
                return await self._check(trigger)
            finally:
                self.last_check_at = _utcnow()
                self._first_check_done.set()
                for callback in self._on_check:
                    callback()

    def on_check(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) after every check, whatever its outcome."""
        self._on_check.append(callback)

    def trigger_check(self, trigger: str) -> asyncio.Task[CheckResult]:
        """Start a check that runs to its end even if whoever asked for it stops waiting."""
        task = asyncio.create_task(self.check(trigger))
        self._triggered.add(task)
        task.add_done_callback(self._triggered.discard)
        return task

    async def _check(self, trigger: str) -> CheckResult:
        current = self.current
        serving = current.version if current else None
        try:
            resolved = await asyncio.to_thread(resolve, self.source)
        except RegistryError as exc:
            self.metrics.registry_errors.inc()
            self.last_error = LastError("registry", str(exc), _utcnow())
            self.metrics.last_error_at.labels("registry").set(self.last_error.at.timestamp())
            self.last_check_outcome = "registry_error"
            log.warning("registry check (%s) failed, still serving %s: %s", trigger, serving, exc)
            return CheckResult("registry_error", serving, error=str(exc))
        if current is not None and current.key == resolved.key:
            self.last_error = None
            self.last_check_outcome = "unchanged"
            return CheckResult("unchanged", serving, resolved.version)
        started = time.perf_counter()
        try:
            loaded = await asyncio.to_thread(load_and_check, self.source, resolved, self.settings.model_name)
        except Exception as exc:  # whatever a broken version throws, the old model keeps serving
            message = str(exc) if isinstance(exc, ModelLoadError) else _short(exc)
            self.metrics.swap_failures.inc()
            self.last_error = LastError("load", message, _utcnow(), resolved.version)
            self.metrics.last_error_at.labels("load").set(self.last_error.at.timestamp())
            self.last_check_outcome = "load_failed"
            log.error(
                "version %s failed to load (%s), still serving %s: %s",
                resolved.key,
                trigger,
                serving,
                message,
            )
            return CheckResult("load_failed", serving, resolved.version, message)
        self.current = loaded  # the atomic swap
        asyncio.get_running_loop().call_later(heap.SETTLE_DELAY_SECONDS, heap.settle)
        self.last_error = None
        self.swaps += 1
        self.last_swap_at = loaded.loaded_at
        self.last_check_outcome = "swapped"
        self.metrics.record_swap(loaded, previous=current, load_seconds=time.perf_counter() - started)
        log.info(
            "now serving %s version %s (was %s, trigger %s, predictor %s)",
            loaded.name,
            loaded.version or loaded.key,
            serving,
            trigger,
            loaded.predictor,
        )
        return CheckResult("swapped", loaded.version, loaded.version)

    async def _watch(self) -> None:
        await self.check("startup")
        while self.polls:
            await asyncio.sleep(self.settings.poll_interval_seconds)
            try:
                await self.check("poll")
            except Exception:  # the watcher must survive anything a check throws
                log.exception("registry check crashed")

    def start(self) -> None:
        # MLflow's client defaults (120 s timeout, 7 retries with backoff) would keep a check
        # stuck for minutes when the registry is down; an explicit MLFLOW_HTTP_* env wins.
        # Set when the app starts, not when it is created: importing the app changes nothing.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.settings.registry_timeout_seconds))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.settings.registry_max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        self._watcher = asyncio.create_task(self._watch(), name="model-watcher")

    async def wait_first_check(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_check_done.wait(), timeout=timeout)

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
        self._watcher = None
