from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    OPERATION_GENERATE: _ClassVar[Operation]
    OPERATION_PROMPT_EDIT: _ClassVar[Operation]
    OPERATION_INPAINT: _ClassVar[Operation]
    OPERATION_REMOVE_BACKGROUND: _ClassVar[Operation]
    OPERATION_UPSCALE: _ClassVar[Operation]
    OPERATION_ERASE_OBJECT: _ClassVar[Operation]
    OPERATION_OUTPAINT: _ClassVar[Operation]
    OPERATION_SEARCH_REPLACE: _ClassVar[Operation]
    OPERATION_SEARCH_RECOLOR: _ClassVar[Operation]
    OPERATION_CONTROL_SKETCH: _ClassVar[Operation]
    OPERATION_CONTROL_STRUCTURE: _ClassVar[Operation]
    OPERATION_STYLE_GUIDE: _ClassVar[Operation]
    OPERATION_STYLE_TRANSFER: _ClassVar[Operation]

class ResponseFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESPONSE_FORMAT_UNSPECIFIED: _ClassVar[ResponseFormat]
    RESPONSE_FORMAT_URL: _ClassVar[ResponseFormat]
    RESPONSE_FORMAT_INLINE: _ClassVar[ResponseFormat]

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_ACTIVE: _ClassVar[ModelStatus]
    MODEL_STATUS_DEPRECATED: _ClassVar[ModelStatus]
    MODEL_STATUS_RETIRED: _ClassVar[ModelStatus]
OPERATION_UNSPECIFIED: Operation
OPERATION_GENERATE: Operation
OPERATION_PROMPT_EDIT: Operation
OPERATION_INPAINT: Operation
OPERATION_REMOVE_BACKGROUND: Operation
OPERATION_UPSCALE: Operation
OPERATION_ERASE_OBJECT: Operation
OPERATION_OUTPAINT: Operation
OPERATION_SEARCH_REPLACE: Operation
OPERATION_SEARCH_RECOLOR: Operation
OPERATION_CONTROL_SKETCH: Operation
OPERATION_CONTROL_STRUCTURE: Operation
OPERATION_STYLE_GUIDE: Operation
OPERATION_STYLE_TRANSFER: Operation
RESPONSE_FORMAT_UNSPECIFIED: ResponseFormat
RESPONSE_FORMAT_URL: ResponseFormat
RESPONSE_FORMAT_INLINE: ResponseFormat
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_ACTIVE: ModelStatus
MODEL_STATUS_DEPRECATED: ModelStatus
MODEL_STATUS_RETIRED: ModelStatus

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "size", "n", "response_format", "request_id", "seed", "output")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    size: str
    n: int
    response_format: ResponseFormat
    request_id: str
    seed: int
    output: OutputOptions
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., size: _Optional[str] = ..., n: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, str]] = ..., request_id: _Optional[str] = ..., seed: _Optional[int] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("model", "prompt", "images", "mask", "operation", "size", "n", "response_format", "request_id", "seed", "search_prompt", "select_prompt", "control_strength", "fidelity", "creativity", "left", "right", "up", "down", "style_image", "style_strength", "composition_fidelity", "change_strength", "output")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SELECT_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    CREATIVITY_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    STYLE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    STYLE_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPOSITION_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    mask: bytes
    operation: Operation
    size: str
    n: int
    response_format: ResponseFormat
    request_id: str
    seed: int
    search_prompt: str
    select_prompt: str
    control_strength: float
    fidelity: float
    creativity: float
    left: int
    right: int
    up: int
    down: int
    style_image: bytes
    style_strength: float
    composition_fidelity: float
    change_strength: float
    output: OutputOptions
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., mask: _Optional[bytes] = ..., operation: _Optional[_Union[Operation, str]] = ..., size: _Optional[str] = ..., n: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, str]] = ..., request_id: _Optional[str] = ..., seed: _Optional[int] = ..., search_prompt: _Optional[str] = ..., select_prompt: _Optional[str] = ..., control_strength: _Optional[float] = ..., fidelity: _Optional[float] = ..., creativity: _Optional[float] = ..., left: _Optional[int] = ..., right: _Optional[int] = ..., up: _Optional[int] = ..., down: _Optional[int] = ..., style_image: _Optional[bytes] = ..., style_strength: _Optional[float] = ..., composition_fidelity: _Optional[float] = ..., change_strength: _Optional[float] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("quality", "output_format", "output_compression", "background", "moderation", "user", "partial_images")
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    MODERATION_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_IMAGES_FIELD_NUMBER: _ClassVar[int]
    quality: str
    output_format: str
    output_compression: int
    background: str
    moderation: str
    user: str
    partial_images: int
    def __init__(self, quality: _Optional[str] = ..., output_format: _Optional[str] = ..., output_compression: _Optional[int] = ..., background: _Optional[str] = ..., moderation: _Optional[str] = ..., user: _Optional[str] = ..., partial_images: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("index", "url", "data", "mime_type", "width", "height", "revised_prompt", "stored", "seed")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    REVISED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    index: int
    url: str
    data: bytes
    mime_type: str
    width: int
    height: int
    revised_prompt: str
    stored: bool
    seed: int
    def __init__(self, index: _Optional[int] = ..., url: _Optional[str] = ..., data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., revised_prompt: _Optional[str] = ..., stored: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ImageFailure(_message.Message):
    __slots__ = ("image_count", "reason", "message")
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    image_count: int
    reason: str
    message: str
    def __init__(self, image_count: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("generation_id", "model", "operation", "prompt", "size", "n", "created", "images", "cost", "latency_ms", "request_id", "filtered_count", "failures", "served_by", "upstream_model", "warnings", "quality", "output_format", "background")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTERED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    model: str
    operation: Operation
    prompt: str
    size: str
    n: int
    created: int
    images: _containers.RepeatedCompositeFieldContainer[Image]
    cost: str
    latency_ms: int
    request_id: str
    filtered_count: int
    failures: _containers.RepeatedCompositeFieldContainer[ImageFailure]
    served_by: str
    upstream_model: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    quality: str
    output_format: str
    background: str
    def __init__(self, generation_id: _Optional[str] = ..., model: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., prompt: _Optional[str] = ..., size: _Optional[str] = ..., n: _Optional[int] = ..., created: _Optional[int] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., cost: _Optional[str] = ..., latency_ms: _Optional[int] = ..., request_id: _Optional[str] = ..., filtered_count: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[ImageFailure, _Mapping]]] = ..., served_by: _Optional[str] = ..., upstream_model: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., quality: _Optional[str] = ..., output_format: _Optional[str] = ..., background: _Optional[str] = ...) -> None: ...

class StreamGenerateResponse(_message.Message):
    __slots__ = ("image", "generation")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    image: Image
    generation: Generation
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., generation: _Optional[_Union[Generation, _Mapping]] = ...) -> None: ...

class StreamEditResponse(_message.Message):
    __slots__ = ("image", "generation")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    image: Image
    generation: Generation
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., generation: _Optional[_Union[Generation, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "provider", "max_size", "sizes", "images_per_call", "max_images_per_request", "operations", "price_per_image", "configured", "description", "status", "retirement_date", "successor", "routes_to")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RETIREMENT_DATE_FIELD_NUMBER: _ClassVar[int]
    SUCCESSOR_FIELD_NUMBER: _ClassVar[int]
    ROUTES_TO_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    max_size: str
    sizes: _containers.RepeatedScalarFieldContainer[str]
    images_per_call: int
    max_images_per_request: int
    operations: _containers.RepeatedScalarFieldContainer[Operation]
    price_per_image: str
    configured: bool
    description: str
    status: ModelStatus
    retirement_date: str
    successor: str
    routes_to: str
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., max_size: _Optional[str] = ..., sizes: _Optional[_Iterable[str]] = ..., images_per_call: _Optional[int] = ..., max_images_per_request: _Optional[int] = ..., operations: _Optional[_Iterable[_Union[Operation, str]]] = ..., price_per_image: _Optional[str] = ..., configured: _Optional[bool] = ..., description: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., retirement_date: _Optional[str] = ..., successor: _Optional[str] = ..., routes_to: _Optional[str] = ...) -> None: ...

class GetGenerationRequest(_message.Message):
    __slots__ = ("generation_id",)
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    def __init__(self, generation_id: _Optional[str] = ...) -> None: ...
