"""Prometheus metrics of the controller (served by GrpcService's metrics endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROUNDS = Counter("deinfer_controller_rounds_total", "reconcile rounds, by outcome", ["outcome"])
PLAN_VERSION = Gauge("deinfer_controller_plan_version", "version of the published plan")
PLANNED_INSTANCES = Gauge("deinfer_controller_planned_instances", "instances in the plan")
ROUTED_INSTANCES = Gauge("deinfer_controller_routed_instances", "instances in the routing table")
LOADS = Counter("deinfer_controller_instance_loads_total", "LoadInstance calls", ["outcome"])
UNLOADS = Counter("deinfer_controller_instance_unloads_total", "UnloadInstance calls", ["outcome"])
