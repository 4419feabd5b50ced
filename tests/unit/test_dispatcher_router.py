"""Route choice (least outstanding per weight, round-robin ties, cool-down) and the channel pool."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from deinfer.protos.v1 import common_pb2
from services.dispatcher.router import WORKER_INFER, Balancer, ChannelPool, route_weight

KEY = ("m", "1")


def _route(instance: str, weight: float = 1.0, address: str = "") -> common_pb2.Route:
    return common_pb2.Route(
        instance_id=instance, worker_id="w", address=address or f"{instance}:1", weight=weight
    )


def _picks(balancer: Balancer, routes: list[common_pb2.Route], n: int = 4) -> set[str]:
    chosen = [balancer.pick(KEY, routes) for _ in range(n)]
    return {route.instance_id for route in chosen if route is not None}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_equal_routes_take_turns() -> None:
    balancer = Balancer()
    routes = [_route("a"), _route("b"), _route("c")]
    picks = [balancer.pick(KEY, routes) for _ in range(6)]
    assert [p.instance_id for p in picks if p] == ["a", "b", "c", "a", "b", "c"]


def test_least_outstanding_wins() -> None:
    balancer = Balancer()
    a, b = _route("a"), _route("b")
    balancer.acquire(a)
    balancer.acquire(a)
    balancer.acquire(b)
    assert balancer.pick(KEY, [a, b]) == b
    balancer.release(a)
    balancer.release(a)
    assert balancer.pick(KEY, [a, b]) == a


def test_weight_divides_the_load() -> None:
    balancer = Balancer()
    heavy, light = _route("heavy", 3.0), _route("light", 1.0)
    # Keep every request outstanding: the split follows the weights, 3 to 1.
    counts: Counter[str] = Counter()
    for _ in range(40):
        route = balancer.pick(KEY, [heavy, light])
        assert route is not None
        balancer.acquire(route)
        counts[route.instance_id] += 1
    assert counts == {"heavy": 30, "light": 10}
    # At low load the heavier route is preferred, not alternated.
    idle = Balancer()
    assert _picks(idle, [heavy, light], 5) == {"heavy"}


def test_unset_or_bad_weights_count_as_one() -> None:
    assert route_weight(_route("a", 0.0)) == 1.0
    assert route_weight(_route("a", -2.0)) == 1.0
    assert route_weight(_route("a", float("nan"))) == 1.0
    assert route_weight(_route("a", 2.5)) == 2.5


def test_excluded_routes_are_skipped() -> None:
    balancer = Balancer()
    a, b = _route("a"), _route("b")
    assert balancer.pick(KEY, [a, b], exclude={"a"}) == b
    assert balancer.pick(KEY, [a, b], exclude={"a", "b"}) is None
    assert balancer.pick(KEY, []) is None


def test_release_never_goes_negative() -> None:
    balancer = Balancer()
    a = _route("a")
    balancer.acquire(a)
    balancer.release(a)
    balancer.release(a)
    assert balancer.outstanding("a") == 0


def test_unreachable_route_cools_down() -> None:
    clock = Clock()
    balancer = Balancer(clock=clock, cooldown_s=1.0)
    a, b = _route("a"), _route("b")
    balancer.mark_unreachable(a)
    assert _picks(balancer, [a, b]) == {"b"}
    # When every route is cooling down they are still tried: better than refusing.
    assert balancer.pick(KEY, [a]) == a
    clock.now += 1.5
    assert _picks(balancer, [a, b]) == {"a", "b"}
    balancer.mark_unreachable(b)
    balancer.mark_reachable(b)
    assert _picks(balancer, [a, b]) == {"a", "b"}


def test_cool_down_follows_the_address() -> None:
    balancer = Balancer(clock=Clock())
    balancer.mark_unreachable(_route("a", address="old:1"))
    moved, other = _route("a", address="new:1"), _route("b")
    assert _picks(balancer, [moved, other]) == {"a", "b"}


def test_forget_models_drops_turns_and_expired_cooldowns() -> None:
    clock = Clock()
    balancer = Balancer(clock=clock)
    balancer.pick(KEY, [_route("a"), _route("b")])
    balancer.mark_unreachable(_route("a"))
    clock.now += 5
    balancer.forget_models([])
    assert not balancer.cooling
    assert _picks(balancer, [_route("a"), _route("b")], 1) == {"a"}


class FakeChannel:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed_with: float | None = None
        self.methods: list[str] = []
        self.connecting = False

    def get_state(self, try_to_connect: bool = False) -> None:
        self.connecting = self.connecting or try_to_connect

    def unary_unary(self, method: str) -> Any:
        self.methods.append(method)
        return (self.address, method)

    async def close(self, grace: float | None) -> None:
        self.closed_with = grace


def test_pool_keeps_one_channel_per_address_and_closes_departed_ones() -> None:
    created: list[FakeChannel] = []

    def factory(address: str) -> FakeChannel:
        created.append(FakeChannel(address))
        return created[-1]

    async def scenario() -> None:
        pool = ChannelPool(factory, close_grace_s=7.0)
        assert pool.infer("a:1") == ("a:1", WORKER_INFER)
        assert pool.infer("a:1") == ("a:1", WORKER_INFER)
        pool.infer("b:1")
        assert [c.address for c in created] == ["a:1", "b:1"]
        pool.retain({"b:1"})
        await asyncio.sleep(0)
        assert created[0].closed_with == 7.0  # in-flight calls get the grace period
        assert pool.addresses() == {"b:1"}
        pool.infer("a:1")  # the address came back: a fresh channel
        assert len(created) == 3
        await pool.close()
        assert created[1].closed_with == 0.0 and created[2].closed_with == 0.0
        assert pool.addresses() == set()

    asyncio.run(scenario())


def test_pool_warms_channels_to_new_addresses() -> None:
    created: list[FakeChannel] = []

    def factory(address: str) -> FakeChannel:
        created.append(FakeChannel(address))
        return created[-1]

    pool = ChannelPool(factory)
    pool.infer("a:1")
    pool.warm({"a:1", "b:1"})
    assert [c.address for c in created] == ["a:1", "b:1"]
    assert created[1].connecting and not created[0].connecting
