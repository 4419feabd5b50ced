"""The predictor service's logic: train from a data folder, answer batched queries, report."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.predictor import artifacts, datasets
from services.predictor.backends import BACKENDS, DEFAULT_BACKEND, Backend, make_backend
from services.predictor.backends.base import TRAIN_THREADS, fitting_threads
from services.predictor.datasets.base import CPU_PROFILES, DEINFER_RTX3080, IGNITER_V100
from services.predictor.metrics import score
from services.predictor.placements import InvalidQuery, ProfileBook, Query, validate

log = logging.getLogger(__name__)


class NotTrained(RuntimeError):
    pass


@dataclass(frozen=True)
class Answer:
    latency_ms: float
    slowdown: float
    solo_latency_ms: float


@dataclass
class Trained:
    backend: Backend
    book: ProfileBook
    meta: artifacts.Metadata


class PredictorCore:
    def __init__(self, artifact_dir: Path, train_threads: int = TRAIN_THREADS) -> None:
        self.artifact_dir = artifact_dir
        self.train_threads = train_threads
        self._trained: Trained | None = None
        self._lock = threading.Lock()

    @property
    def trained(self) -> Trained | None:
        return self._trained

    def train(self, dataset: str, data_dir: Path, backend: str = "") -> artifacts.Metadata:
        """Fit on every row of data_dir; metrics are in-sample (held-out accuracy: the bench)."""
        name = backend or DEFAULT_BACKEND.get(dataset, "")
        if name not in BACKENDS:
            raise InvalidQuery(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")
        samples, skipped = datasets.load_training(dataset, data_dir)
        model = make_backend(name)
        with fitting_threads(self.train_threads):
            model.fit(samples)
            fit = score(samples.target, model.predict(samples.queries))
        metrics = {f"train_{k}": float(v) for k, v in fit.as_dict().items()}
        if skipped:
            log.warning(
                "training without co-location rows that lack solo profiles",
                extra={"skipped_rows": skipped, "data_dir": str(data_dir)},
            )
            metrics["skipped_rows_without_solo_profile"] = float(skipped)
        metrics.update(model.describe())  # e.g. graph: which graphs it encoded
        meta = artifacts.save(
            self.artifact_dir,
            model,
            dataset=dataset,
            data_dir=data_dir,
            digest_of_data=artifacts.data_hash(data_dir),
            metrics=metrics,
        )
        with self._lock:
            self._trained = Trained(model, ProfileBook(samples), meta)
        return meta

    def restore(self) -> artifacts.Metadata | None:
        """Reload the newest artifact (checksum-verified) and its training data's profiles."""
        meta = artifacts.latest(self.artifact_dir)
        if meta is None:
            return None
        data_dir = Path(meta.data_dir)
        if artifacts.data_hash(data_dir) != meta.data_hash:
            raise artifacts.ArtifactError(f"{data_dir} changed since {meta.version} was trained")
        model = artifacts.load(self.artifact_dir, meta)
        samples = datasets.load(meta.dataset, data_dir)
        with self._lock:
            self._trained = Trained(model, ProfileBook(samples), meta)
        return meta

    def predict(self, queries: Sequence[Query], backend: str = "") -> list[Answer]:
        trained = self._trained
        if trained is None:
            raise NotTrained("the predictor has no trained model yet: call Train")
        if backend and backend != trained.meta.backend:
            raise InvalidQuery(
                f"backend {backend!r} is not trained; the trained one is {trained.meta.backend!r}"
            )
        if not queries:
            return []
        book = trained.book
        for query in queries:
            book.check_device(query.device_type)
        dataset = trained.meta.dataset
        answers: list[Answer | None] = [None] * len(queries)
        modelled = []
        for i, query in enumerate(queries):
            if dataset in (IGNITER_V100, CPU_PROFILES) and not query.corunners:
                validate(query)
                solo = book.solo_latency(query.target)
                answers[i] = Answer(solo, 0.0, solo)
            else:
                modelled.append(i)
        if modelled:
            rows = book.queries([queries[i] for i in modelled])
            predicted = trained.backend.predict(rows)
            for j, i in enumerate(modelled):
                answers[i] = self._answer(dataset, rows, j, float(predicted[j]))
        return [a for a in answers if a is not None]

    @staticmethod
    def _answer(dataset: str, rows: datasets.Queries, j: int, value: float) -> Answer:
        if dataset == DEINFER_RTX3080:
            return Answer(0.0, value / 100.0 - 1.0, 0.0)
        if dataset in (IGNITER_V100, CPU_PROFILES):
            solo = float(rows.columns["latency" if dataset == IGNITER_V100 else "solo_ms"][j])
            return Answer(value, value / solo - 1.0, solo)
        return Answer(value, 0.0, value)
