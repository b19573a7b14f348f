"""An in-process stand-in for the Datastream gRPC API, for tests of provisioning.

It serves ``google.cloud.datastream.v1.Datastream`` (connection profiles and streams: get, create,
update) and ``google.longrunning.Operations/GetOperation`` on a loopback port, speaking the wire
format of google-cloud-datastream's own request, resource and operation messages, so the official
``DatastreamClient`` runs unmodified against it. Every request is recorded for assertions. Mutations
return an unfinished operation that completes on the first poll, so callers must really wait on it.
"""

from __future__ import annotations

import itertools
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud import datastream_v1 as ds
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2

SERVICE = "google.cloud.datastream.v1.Datastream"
OPERATIONS = "google.longrunning.Operations"


@dataclass
class Recorded:
    method: str
    request: Any  # the proto-plus request message as received


@dataclass
class FakeDatastream:
    """State of the fake: resources by full name, recorded requests, queued validation failures."""

    resources: dict[str, Any] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    validation_failures: dict[str, list[ds.Validation]] = field(default_factory=dict)
    operations: dict[str, operations_pb2.Operation] = field(default_factory=dict)
    _ids: Any = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, *methods: str) -> list[Recorded]:
        """Recorded requests, optionally only those of the named methods (``CreateStream``...)."""
        return [r for r in self.requests if not methods or r.method in methods]

    def mutations(self) -> list[Recorded]:
        return [r for r in self.requests if not r.method.startswith("Get")]

    def fail_validation(self, resource_id: str, *validations: ds.Validation) -> None:
        """The next create/update of ``resource_id`` fails with these validation results."""
        self.validation_failures[resource_id] = list(validations)

    # ----------------------------------------------------------------- handlers

    def _record(self, method: str, request: Any) -> None:
        with self._lock:
            self.requests.append(Recorded(method, request))

    def _get(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(method, request)
        found = self.resources.get(request.name)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{request.name}' was not found")
        return found

    def _create(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(method, request)
        if method == "CreateStream":
            rid, resource, collection = request.stream_id, request.stream, "streams"
        else:
            rid, resource = request.connection_profile_id, request.connection_profile
            collection = "connectionProfiles"
        name = f"{request.parent}/{collection}/{rid}"
        if name in self.resources:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{name}' already exists")
        stored = type(resource)(resource)
        stored.name = name
        if method == "CreateStream":
            stored.state = ds.Stream.State.NOT_STARTED
        return self._operation(rid, name, stored, "create")

    def _update(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(method, request)
        incoming = request.stream if method == "UpdateStream" else request.connection_profile
        current = self.resources.get(incoming.name)
        if current is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource '{incoming.name}' was not found")
        merged = type(current).pb(type(current)(current))
        source = type(incoming).pb(incoming)
        for path in request.update_mask.paths:
            _copy_path(source, merged, path.split("."))
        updated = type(current).wrap(merged)
        return self._operation(incoming.name.rsplit("/", 1)[-1], incoming.name, updated, "update")

    def _operation(self, rid: str, name: str, resource: Any, verb: str) -> operations_pb2.Operation:
        op_name = f"{name.rsplit('/', 2)[0]}/operations/operation-{next(self._ids)}"
        metadata = ds.OperationMetadata(target=name, verb=verb, api_version="v1")
        failures = self.validation_failures.pop(rid, None)
        done = operations_pb2.Operation(name=op_name, done=True)
        if failures:
            metadata.validation_result = ds.ValidationResult(validations=failures)
            done.error.CopyFrom(
                status_pb2.Status(
                    code=code_pb2.FAILED_PRECONDITION,
                    message=f"Validation of the {verb}d resource failed",
                )
            )
        else:
            self.resources[name] = resource
            packed = any_pb2.Any()
            packed.Pack(type(resource).pb(resource))
            done.response.CopyFrom(packed)
        packed_meta = any_pb2.Any()
        packed_meta.Pack(ds.OperationMetadata.pb(metadata))
        done.metadata.CopyFrom(packed_meta)
        self.operations[op_name] = done
        return operations_pb2.Operation(name=op_name, done=False, metadata=packed_meta)

    def _get_operation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        self._record("GetOperation", request)
        op = self.operations.get(request.name)
        if op is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"operation {request.name} not found")
        return op

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Any, method: str, req: Any, resp_serializer: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: fn(method, request, context),
                request_deserializer=req.deserialize,
                response_serializer=resp_serializer,
            )

        op_out = operations_pb2.Operation.SerializeToString
        service = {
            "GetStream": unary(self._get, "GetStream", ds.GetStreamRequest, ds.Stream.serialize),
            "GetConnectionProfile": unary(
                self._get,
                "GetConnectionProfile",
                ds.GetConnectionProfileRequest,
                ds.ConnectionProfile.serialize,
            ),
            "CreateStream": unary(self._create, "CreateStream", ds.CreateStreamRequest, op_out),
            "CreateConnectionProfile": unary(
                self._create, "CreateConnectionProfile", ds.CreateConnectionProfileRequest, op_out
            ),
            "UpdateStream": unary(self._update, "UpdateStream", ds.UpdateStreamRequest, op_out),
            "UpdateConnectionProfile": unary(
                self._update, "UpdateConnectionProfile", ds.UpdateConnectionProfileRequest, op_out
            ),
        }
        operations = {
            "GetOperation": grpc.unary_unary_rpc_method_handler(
                self._get_operation,
                request_deserializer=operations_pb2.GetOperationRequest.FromString,
                response_serializer=op_out,
            )
        }
        return [
            grpc.method_handlers_generic_handler(SERVICE, service),
            grpc.method_handlers_generic_handler(OPERATIONS, operations),
        ]


def _copy_path(source: Any, target: Any, parts: list[str]) -> None:
    """Copy one update-mask path from ``source`` to ``target`` (raw protobuf messages)."""
    head, rest = parts[0], parts[1:]
    fd = source.DESCRIPTOR.fields_by_name[head]
    if rest:
        _copy_path(getattr(source, head), getattr(target, head), rest)
        return
    if getattr(fd, "is_repeated", False):
        target.ClearField(head)
        getattr(target, head).extend(getattr(source, head))
    elif fd.type == fd.TYPE_MESSAGE:
        if source.HasField(head):
            getattr(target, head).CopyFrom(getattr(source, head))
        else:
            target.ClearField(head)
    else:
        setattr(target, head, getattr(source, head))


class FakeDatastreamServer:
    """Serve a ``FakeDatastream`` on 127.0.0.1; use as a context manager."""

    def __init__(self, fake: FakeDatastream | None = None):
        self.fake = fake or FakeDatastream()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers(self.fake.handlers())
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeDatastreamServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)
