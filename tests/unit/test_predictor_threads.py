"""Fitting threads are set per calling thread, so the service's predictions stay serial while
a Train runs in another thread."""

from __future__ import annotations

import threading

from joblib import effective_n_jobs  # type: ignore[import-untyped]

from services.predictor.backends.base import fitting_threads


def test_fitting_threads_apply_to_the_calling_thread_only() -> None:
    seen: dict[str, int] = {}

    def elsewhere() -> None:
        seen["other thread"] = effective_n_jobs(None)

    with fitting_threads(2):
        seen["inside"] = effective_n_jobs(None)
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
    seen["after"] = effective_n_jobs(None)
    assert seen == {"inside": 2, "other thread": 1, "after": 1}
