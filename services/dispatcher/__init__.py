"""The dispatcher: the Triton/KServe-v2 compatible front door (`python -m services.dispatcher`).

It validates each request against the model's registered signature (validation.py), picks an
instance from the routing table (router.py) and forwards the client's request bytes to that
instance's worker unchanged (forwarder.py); the worker's response bytes go back unchanged.

Behaviours other services and clients rely on:
- Models and routes come from Redis (catalog.py), re-read on `models`/`plan` events, every
  DEINFER_DISPATCHER_REFRESH_S, and at once (at most every 0.1 s) when a request names a
  model or route the cache does not know; while Redis is down the last good copy is served.
- An empty model_version means the newest version that is ready (loaded and routed).
- Deadline forwarded to the worker = min(client deadline, model SLO, the request's Triton
  `timeout` parameter in microseconds). Metadata `deinfer-instance-id` names the instance;
  the worker's trailing `deinfer-queue-ns`, `deinfer-compute-ns`, `deinfer-batch-size` feed
  ModelStatistics.
- Retries: UNAVAILABLE and RESOURCE_EXHAUSTED from a worker try the next route (each route
  once, while time remains); every other worker status reaches the client unchanged.
- ModelStreamInfer answers requests as they complete; a failed request is answered with
  `error_message = "<STATUS_NAME>: <message>"` and infer_response carrying its id and model.
- Beyond DEINFER_DISPATCHER_MAX_INFLIGHT requests in flight: RESOURCE_EXHAUSTED at once.
- RepositoryModelLoad/Unload call the controller (DEINFER_DISPATCHER_CONTROLLER_ADDRESS);
  a load waits up to DEINFER_DISPATCHER_LOAD_WAIT_S for a ready instance.
- Arrival rates go to Controller.ReportRates every DEINFER_DISPATCHER_RATE_REPORT_S.
"""
