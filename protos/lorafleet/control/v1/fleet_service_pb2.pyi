import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lorafleet.worker.v1 import worker_service_pb2 as _worker_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Worker(_message.Message):
    __slots__ = ("worker_id", "address", "base_model", "capacities", "load", "adapters", "is_draining", "last_heartbeat_time", "admin_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITIES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    IS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    base_model: _worker_service_pb2.BaseModel
    capacities: _worker_service_pb2.Capacities
    load: _worker_service_pb2.WorkerLoad
    adapters: _containers.RepeatedCompositeFieldContainer[_worker_service_pb2.AdapterResidency]
    is_draining: bool
    last_heartbeat_time: _timestamp_pb2.Timestamp
    admin_address: str
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., base_model: _Optional[_Union[_worker_service_pb2.BaseModel, _Mapping]] = ..., capacities: _Optional[_Union[_worker_service_pb2.Capacities, _Mapping]] = ..., load: _Optional[_Union[_worker_service_pb2.WorkerLoad, _Mapping]] = ..., adapters: _Optional[_Iterable[_Union[_worker_service_pb2.AdapterResidency, _Mapping]]] = ..., is_draining: _Optional[bool] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., admin_address: _Optional[str] = ...) -> None: ...

class SendHeartbeatRequest(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: Worker
    def __init__(self, worker: _Optional[_Union[Worker, _Mapping]] = ...) -> None: ...

class SendHeartbeatResponse(_message.Message):
    __slots__ = ("heartbeat_interval_seconds", "is_draining")
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_seconds: int
    is_draining: bool
    def __init__(self, heartbeat_interval_seconds: _Optional[int] = ..., is_draining: _Optional[bool] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("base_model",)
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    def __init__(self, base_model: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[Worker]
    def __init__(self, workers: _Optional[_Iterable[_Union[Worker, _Mapping]]] = ...) -> None: ...

class GetPlacementRequest(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    def __init__(self, adapter: _Optional[str] = ...) -> None: ...

class GetPlacementResponse(_message.Message):
    __slots__ = ("placements",)
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    placements: _containers.RepeatedCompositeFieldContainer[VersionPlacement]
    def __init__(self, placements: _Optional[_Iterable[_Union[VersionPlacement, _Mapping]]] = ...) -> None: ...

class VersionPlacement(_message.Message):
    __slots__ = ("adapter", "version", "digest", "desired_worker_ids", "resident_worker_ids", "failures", "placed_on_demand")
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PlacedOnDemandEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _timestamp_pb2.Timestamp
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESIRED_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    PLACED_ON_DEMAND_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    digest: str
    desired_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    resident_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    failures: _containers.ScalarMap[str, str]
    placed_on_demand: _containers.MessageMap[str, _timestamp_pb2.Timestamp]
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., desired_worker_ids: _Optional[_Iterable[str]] = ..., resident_worker_ids: _Optional[_Iterable[str]] = ..., failures: _Optional[_Mapping[str, str]] = ..., placed_on_demand: _Optional[_Mapping[str, _timestamp_pb2.Timestamp]] = ...) -> None: ...

class WatchRoutingTableRequest(_message.Message):
    __slots__ = ("base_model",)
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    def __init__(self, base_model: _Optional[str] = ...) -> None: ...

class WatchRoutingTableResponse(_message.Message):
    __slots__ = ("revision", "is_snapshot", "routes", "removed_adapters", "workers", "removed_worker_ids")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    IS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    is_snapshot: bool
    routes: _containers.RepeatedCompositeFieldContainer[AdapterRoute]
    removed_adapters: _containers.RepeatedScalarFieldContainer[str]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerRoute]
    removed_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., is_snapshot: _Optional[bool] = ..., routes: _Optional[_Iterable[_Union[AdapterRoute, _Mapping]]] = ..., removed_adapters: _Optional[_Iterable[str]] = ..., workers: _Optional[_Iterable[_Union[WorkerRoute, _Mapping]]] = ..., removed_worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AdapterRoute(_message.Message):
    __slots__ = ("adapter", "base_model", "versions")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    base_model: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionRoute]
    def __init__(self, adapter: _Optional[str] = ..., base_model: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionRoute, _Mapping]]] = ...) -> None: ...

class VersionRoute(_message.Message):
    __slots__ = ("version", "digest", "weight", "workers", "source_uri", "placed_worker_ids")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    PLACED_WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    digest: str
    weight: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerEndpoint]
    source_uri: str
    placed_worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., digest: _Optional[str] = ..., weight: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerEndpoint, _Mapping]]] = ..., source_uri: _Optional[str] = ..., placed_worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkerEndpoint(_message.Message):
    __slots__ = ("worker_id", "address", "tier")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    tier: _worker_service_pb2.Tier
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., tier: _Optional[_Union[_worker_service_pb2.Tier, str]] = ...) -> None: ...

class WorkerRoute(_message.Message):
    __slots__ = ("worker_id", "address", "base_model", "is_draining", "admin_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    IS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    base_model: str
    is_draining: bool
    admin_address: str
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., base_model: _Optional[str] = ..., is_draining: _Optional[bool] = ..., admin_address: _Optional[str] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: Worker
    def __init__(self, worker: _Optional[_Union[Worker, _Mapping]] = ...) -> None: ...

class PlaceAdapterVersionRequest(_message.Message):
    __slots__ = ("adapter", "version", "worker_id")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    worker_id: str
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class PlaceAdapterVersionResponse(_message.Message):
    __slots__ = ("placement",)
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    placement: VersionPlacement
    def __init__(self, placement: _Optional[_Union[VersionPlacement, _Mapping]] = ...) -> None: ...
