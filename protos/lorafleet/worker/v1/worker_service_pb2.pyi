import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_DEVICE: _ClassVar[Tier]
    TIER_HOST: _ClassVar[Tier]
    TIER_SOURCE: _ClassVar[Tier]

class LoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_STATE_UNSPECIFIED: _ClassVar[LoadState]
    LOAD_STATE_LOADING: _ClassVar[LoadState]
    LOAD_STATE_READY: _ClassVar[LoadState]
    LOAD_STATE_FAILED: _ClassVar[LoadState]
TIER_UNSPECIFIED: Tier
TIER_DEVICE: Tier
TIER_HOST: Tier
TIER_SOURCE: Tier
LOAD_STATE_UNSPECIFIED: LoadState
LOAD_STATE_LOADING: LoadState
LOAD_STATE_READY: LoadState
LOAD_STATE_FAILED: LoadState

class LoadAdapterRequest(_message.Message):
    __slots__ = ("adapter", "version", "source_uri", "digest", "tier", "make_default")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MAKE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    source_uri: str
    digest: str
    tier: Tier
    make_default: bool
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., source_uri: _Optional[str] = ..., digest: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., make_default: _Optional[bool] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: AdapterResidency
    def __init__(self, adapter: _Optional[_Union[AdapterResidency, _Mapping]] = ...) -> None: ...

class EvictAdapterRequest(_message.Message):
    __slots__ = ("adapter", "version", "tier")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    tier: Tier
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ...) -> None: ...

class EvictAdapterResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterResidency]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterResidency, _Mapping]]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("tier",)
    TIER_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterResidency]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterResidency, _Mapping]]] = ...) -> None: ...

class AdapterResidency(_message.Message):
    __slots__ = ("adapter", "version", "digest", "tier", "state", "error_message", "rank", "size_bytes", "num_pinned_requests", "last_used", "is_default", "source_uri")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_PINNED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    version: int
    digest: str
    tier: Tier
    state: LoadState
    error_message: str
    rank: int
    size_bytes: int
    num_pinned_requests: int
    last_used: _timestamp_pb2.Timestamp
    is_default: bool
    source_uri: str
    def __init__(self, adapter: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., state: _Optional[_Union[LoadState, str]] = ..., error_message: _Optional[str] = ..., rank: _Optional[int] = ..., size_bytes: _Optional[int] = ..., num_pinned_requests: _Optional[int] = ..., last_used: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., is_default: _Optional[bool] = ..., source_uri: _Optional[str] = ...) -> None: ...

class ValidateAdapterRequest(_message.Message):
    __slots__ = ("source_uri",)
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    source_uri: str
    def __init__(self, source_uri: _Optional[str] = ...) -> None: ...

class ValidateAdapterResponse(_message.Message):
    __slots__ = ("is_valid", "reasons", "digest", "rank", "target_modules", "base_model", "size_bytes")
    IS_VALID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    is_valid: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    base_model: str
    size_bytes: int
    def __init__(self, is_valid: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., base_model: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class GetWorkerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWorkerStatusResponse(_message.Message):
    __slots__ = ("worker_id", "address", "base_model", "capacities", "load", "is_draining", "admin_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITIES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    IS_DRAINING_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    address: str
    base_model: BaseModel
    capacities: Capacities
    load: WorkerLoad
    is_draining: bool
    admin_address: str
    def __init__(self, worker_id: _Optional[str] = ..., address: _Optional[str] = ..., base_model: _Optional[_Union[BaseModel, _Mapping]] = ..., capacities: _Optional[_Union[Capacities, _Mapping]] = ..., load: _Optional[_Union[WorkerLoad, _Mapping]] = ..., is_draining: _Optional[bool] = ..., admin_address: _Optional[str] = ...) -> None: ...

class BaseModel(_message.Message):
    __slots__ = ("name", "digest", "architecture", "hidden_size", "num_layers", "vocab_size", "max_context", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    architecture: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_context: int
    dtype: str
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., architecture: _Optional[str] = ..., hidden_size: _Optional[int] = ..., num_layers: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., dtype: _Optional[str] = ...) -> None: ...

class Capacities(_message.Message):
    __slots__ = ("max_loras", "max_lora_rank", "max_cpu_loras", "num_kv_blocks", "kv_block_size", "max_num_seqs", "max_waiting", "lora_slot_bytes")
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    MAX_CPU_LORAS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAITING_FIELD_NUMBER: _ClassVar[int]
    LORA_SLOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    num_kv_blocks: int
    kv_block_size: int
    max_num_seqs: int
    max_waiting: int
    lora_slot_bytes: int
    def __init__(self, max_loras: _Optional[int] = ..., max_lora_rank: _Optional[int] = ..., max_cpu_loras: _Optional[int] = ..., num_kv_blocks: _Optional[int] = ..., kv_block_size: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., max_waiting: _Optional[int] = ..., lora_slot_bytes: _Optional[int] = ...) -> None: ...

class WorkerLoad(_message.Message):
    __slots__ = ("num_waiting", "num_running", "num_kv_blocks_used", "num_device_adapters", "num_host_adapters", "requests_per_adapter", "num_kv_blocks_cached")
    class RequestsPerAdapterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    NUM_DEVICE_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    NUM_HOST_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    num_waiting: int
    num_running: int
    num_kv_blocks_used: int
    num_device_adapters: int
    num_host_adapters: int
    requests_per_adapter: _containers.ScalarMap[str, int]
    num_kv_blocks_cached: int
    def __init__(self, num_waiting: _Optional[int] = ..., num_running: _Optional[int] = ..., num_kv_blocks_used: _Optional[int] = ..., num_device_adapters: _Optional[int] = ..., num_host_adapters: _Optional[int] = ..., requests_per_adapter: _Optional[_Mapping[str, int]] = ..., num_kv_blocks_cached: _Optional[int] = ...) -> None: ...
