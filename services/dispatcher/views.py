"""Triton views of a ModelSpec: ModelMetadata, ModelConfig and the repository index.

Triton's config semantics: with max_batch_size > 0 the dims leave out the batch dimension;
metadata shapes keep it (as -1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deinfer import tensors
from deinfer.protos.inference import grpc_service_pb2 as pb
from deinfer.protos.inference import model_config_pb2 as mc
from deinfer.protos.v1 import common_pb2
from services.dispatcher.catalog import Snapshot

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
MODEL_FILENAME = "model.onnx"
READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


def model_metadata(snapshot: Snapshot, spec: common_pb2.ModelSpec) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(
        name=spec.name, versions=snapshot.versions(spec.name), platform=spec.platform or PLATFORM
    )
    for t in spec.inputs:
        response.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    for t in spec.outputs:
        response.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
    return response


def config_dims(shape: Sequence[int], max_batch_size: int) -> list[int]:
    return list(shape[1:]) if max_batch_size > 0 else list(shape)


def _data_type(datatype: str) -> int:
    found = tensors.BY_NAME.get(datatype)
    return found.config if found is not None else mc.TYPE_INVALID


def model_config(snapshot: Snapshot, spec: common_pb2.ModelSpec) -> pb.ModelConfigResponse:
    config = mc.ModelConfig(
        name=spec.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=spec.max_batch_size,
        default_model_filename=MODEL_FILENAME,
    )
    config.version_policy.specific.versions.append(
        int(spec.version) if spec.version.isdigit() else 0
    )
    for t in spec.inputs:
        config.input.add(
            name=t.name,
            data_type=_data_type(t.datatype),
            dims=config_dims(t.shape, spec.max_batch_size),
        )
    for t in spec.outputs:
        config.output.add(
            name=t.name,
            data_type=_data_type(t.datatype),
            dims=config_dims(t.shape, spec.max_batch_size),
        )
    instances = snapshot.instances_of(spec.name, spec.version)
    if spec.max_batch_size > 0:
        batching = config.dynamic_batching
        sizes = sorted({i.max_batch_size for i in instances if i.max_batch_size > 0})
        batching.preferred_batch_size.extend(sizes)
        delay_ms = max((i.max_delay_ms for i in instances), default=0.0)
        batching.max_queue_delay_microseconds = round(delay_ms * 1000)
    if instances:
        config.instance_group.add(
            name=f"{spec.name}_{spec.version}",
            count=len(instances),
            kind=mc.ModelInstanceGroup.KIND_AUTO,
        )
    params = config.parameters
    params["slo_ms"].string_value = f"{spec.slo_ms:g}"
    params["version"].string_value = spec.version
    params["loaded"].string_value = "true" if spec.loaded else "false"
    params["plan_version"].string_value = str(snapshot.plan_version)
    if spec.sha256:
        params["sha256"].string_value = spec.sha256
    if spec.artifact_path:
        params["artifact_path"].string_value = spec.artifact_path
    return pb.ModelConfigResponse(config=config)


def repository_index(
    snapshot: Snapshot, specs: Iterable[common_pb2.ModelSpec], ready_only: bool
) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for spec in specs:
        ready = snapshot.is_ready(spec)
        if ready_only and not ready:
            continue
        response.models.add(
            name=spec.name,
            version=spec.version,
            state=READY if ready else UNAVAILABLE,
            reason="" if ready else snapshot.not_ready_reason(spec),
        )
    return response
