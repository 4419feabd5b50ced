"""Arrival rates reported by the dispatchers, summed per model.

Each dispatcher reports the rate it sees; a model's rate is the sum over the dispatchers
that reported recently (a dispatcher that stopped reporting stops counting).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from deinfer.protos.v1 import controller_pb2
from services.common.store import Store
from services.controller.errors import invalid_argument
from services.controller.registry import validate_name

log = logging.getLogger(__name__)


def validate_rates(dispatcher_id: str, rates: Iterable[controller_pb2.ModelRate]) -> None:
    if not dispatcher_id:
        raise invalid_argument("dispatcher_id is empty: name the reporting dispatcher")
    for rate in rates:
        validate_name(rate.model)
        if not math.isfinite(rate.rate) or rate.rate < 0:
            raise invalid_argument(
                f"rate of model {rate.model!r} must be a finite number >= 0, got {rate.rate}"
            )
        if not math.isfinite(rate.window_s) or rate.window_s < 0:
            raise invalid_argument(
                f"window_s of model {rate.model!r} must be a finite number >= 0, "
                f"got {rate.window_s}"
            )


@dataclass
class RateBook:
    stale_after_s: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic)
    # (dispatcher id, model) -> (report, when it arrived)
    _reports: dict[tuple[str, str], tuple[controller_pb2.ModelRate, float]] = field(
        default_factory=dict
    )

    def record(
        self, dispatcher_id: str, rates: Iterable[controller_pb2.ModelRate]
    ) -> list[controller_pb2.ModelRate]:
        """Store one report; returns the new totals of the models it named."""
        now = self.clock()
        # Forget stale reports, so the book stays as small as the live reporters.
        self._reports = {
            key: (report, at)
            for key, (report, at) in self._reports.items()
            if now - at <= self.stale_after_s
        }
        models = set()
        for rate in rates:
            self._reports[(dispatcher_id, rate.model)] = (rate, now)
            models.add(rate.model)
        return [self.total(model) for model in sorted(models)]

    def total(self, model: str) -> controller_pb2.ModelRate:
        now = self.clock()
        fresh = [
            report
            for (_, name), (report, at) in self._reports.items()
            if name == model and now - at <= self.stale_after_s
        ]
        return controller_pb2.ModelRate(
            model=model,
            rate=sum(r.rate for r in fresh),
            window_s=max((r.window_s for r in fresh), default=0.0),
            change_detected=any(r.change_detected for r in fresh),
        )

    def totals(self) -> list[controller_pb2.ModelRate]:
        return [self.total(model) for model in sorted({m for _, m in self._reports})]


class RateReports:
    """ReportRates: keep the totals in memory and in Redis (`deinfer:rates`)."""

    def __init__(self, store: Store, book: RateBook | None = None) -> None:
        self.store = store
        self.book = book or RateBook()

    async def report(
        self, dispatcher_id: str, rates: list[controller_pb2.ModelRate]
    ) -> list[controller_pb2.ModelRate]:
        validate_rates(dispatcher_id, rates)
        totals = self.book.record(dispatcher_id, rates)
        await self.store.put_rates(totals)
        log.info(
            "rates reported",
            extra={
                "dispatcher_id": dispatcher_id,
                "rates": {r.model: round(r.rate, 3) for r in totals},
                "changes": [r.model for r in rates if r.change_detected],
            },
        )
        return totals
