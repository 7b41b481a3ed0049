"""The API's routes and their OpenAPI 3.1 document, generated from the models in ``onex.http.models``.

``OPERATIONS`` is the API: one ``Operation`` per route says its method and path, the gateway method that answers
it, and what the document says of it (summary, tag, request and response models, error statuses, whether it needs
the API key). The gateway builds its routes from this table and the document is generated from it, so a route and
its documentation are one entry: to add a route, write its handler on ``onex.http.app.Gateway`` and add its entry.

Schemas come from pydantic (``TypeAdapter.json_schemas``, with ``$defs`` written as ``components/schemas``): request
bodies in validation mode, answers in serialization mode. ``openapi_30`` says the same in OpenAPI 3.0 for the
bundled Swagger UI 4, which renders no 3.1 document.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema
from starlette.convertors import PathConvertor, register_url_convertor

from onex.http.metastore import (
    CONFIGS_PREFIX,
    FLAGS_PREFIX,
    METADATA_PREFIX,
    BulkEvaluation,
    ConfigChange,
    EffectiveQuery,
    EntityKey,
    Evaluate,
    EvaluateBulk,
    Evaluation,
    FlagChange,
    FlagNameKey,
    FlagPage,
    FlagQuery,
    MetadataChange,
    MetadataKeyQuery,
    MetadataPage,
    MetadataQuery,
    MetastoreHealth,
    RolloutChange,
    ServiceConfigurations,
    ServiceQuery,
    TenantHeaders,
    VersionKey,
    VersionPage,
    VersionsQuery,
    WriteHeaders,
)
from onex.http.models import (
    API_VERSION,
    DEFAULT_BATCH_LIMIT,
    DEFAULT_MAX_BODY,
    BatchRequest,
    BatchResult,
    Envelope,
    ErrorEnvelope,
    FilesUpload,
    HashRequest,
    HashResult,
    Health,
    NamespacePage,
    NamespacePageQuery,
    NamespaceWindows,
    NamespaceWindowsQuery,
    Probe,
    ProtocolRequest,
    ProtocolResult,
    StampKey,
    StampRecords,
    StampRequest,
    StampResult,
    StampUpload,
    ValidateRequest,
    ValidateResult,
)
from onex.metastore.models import (
    ConfigCreate,
    Configuration,
    EffectiveConfig,
    FeatureFlag,
    FlagCreate,
    MetadataCreate,
    MetadataEntry,
)

PREFIX: Final = "/api/v1/metadata-stamping"
DOCS: Final = "/docs"

_ERRORS: Final = {
    401: "missing or wrong API key",
    404: "not found",
    408: "the request body stopped arriving (a pause longer than the server's read timeout); the connection is closed",
    413: "body larger than the configured limit",
    409: "the expected version is not the current one (data: current_version), or the entity's state forbids it",
    415: "unsupported Content-Type",
    422: "malformed or invalid input, or a workflow that failed",
    502: "the orchestrator rejected the workflow",
    503: "the bus or store is unavailable (health: degraded)",
    504: "the workflow did not complete in time; it keeps running",
}
_BODY_ERRORS: Final = (408, 413, 415, 422)
_RETRY_AFTER: Final = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer", "minimum": 0}}
}


class _WindowsOwner(PathConvertor):
    """``{namespace:windows_owner}``: the namespace of ``/namespace/{namespace}/windows``, slashes and all, as the
    ``path`` converter takes it, and any other character too (a namespace with a newline is the handler's 422 to
    answer, not a 404)."""

    regex = r"(?s:.*)"


class _NamespacePage(PathConvertor):
    """``{namespace:namespace_page}``: as ``windows_owner``, except a path that ends in ``/windows``: that one is
    the windows of the namespace before it. So every path has exactly one route (a namespace whose own name ends in
    ``/windows`` has no page of its own)."""

    regex = r"(?!(?s:.*)/windows$)(?s:.*)"


register_url_convertor("windows_owner", _WindowsOwner())
register_url_convertor("namespace_page", _NamespacePage())


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """One route and its documentation.

    ``path`` is under ``PREFIX``, as Starlette matches it (``{namespace:path}``; the document drops the converter).
    ``data`` is the envelope's ``data`` on success (``None``: the answer is ``media_type`` text, not an envelope).
    ``errors`` are the statuses the route may answer with an error envelope (401 is added where the key is needed);
    ``error_data`` those whose envelope carries ``data`` (health's 503). ``body`` is the JSON request body,
    ``upload`` its multipart/form-data alternative, ``params`` the path and query parameters (a field whose name
    is in the path is a path parameter, the others are query parameters). ``public`` routes need no API key.
    ``summary`` may say ``{batch_limit}``. ``prefix`` is what ``path`` is under (the metastore's routes have their own,
    the root ``/health`` none), ``headers`` the request headers the route reads (by their aliases), ``ok`` the status
    of a success (201 for a create). ``handler`` names a method of the gateway, or ``metastore.NAME`` one of its
    ``onex.http.metastore.MetastoreApi``. ``retry_after``: its 503 says when to try again (``Retry-After``).
    """

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    _: dataclasses.KW_ONLY
    handler: str
    operation_id: str
    summary: str
    tag: str
    data: object  # a TypedDict of onex.http.models (mypy has no type for "a TypedDict class")
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    upload: object = None  # a TypedDict, as data
    params: type[BaseModel] | None = None
    public: bool = False
    media_type: str = "application/json"
    descriptions: Mapping[int, str] = dataclasses.field(default_factory=dict)
    error_data: frozenset[int] = frozenset()
    prefix: str = PREFIX
    headers: type[BaseModel] | None = None
    ok: int = 200
    retry_after: bool = False

    @property
    def route(self) -> str:
        """The path as the server matches it."""
        return f"{self.prefix}{self.path}"

    @property
    def template(self) -> str:
        """The path as the document (and the metrics' ``route`` label) names it."""
        return template(self.route)


# The metastore (onex.http.metastore): its own prefixes, a tenant from the key (or X-Tenant-Id), changes that name the
# version they expect (If-Match or the body's expected_version; 409 otherwise).
_M_READ: Final = (404, 422, 503)
_M_WRITE: Final = (404, 409, *_BODY_ERRORS, 503)
_M_STATE: Final = (404, 409, 422, 503)  # a change without a body
_M_CREATE: Final = (409, *_BODY_ERRORS, 503)


def _meta(
    method: Literal["GET", "POST", "PUT", "DELETE"], prefix: str, path: str, handler: str, operation_id: str, **doc: Any
) -> Operation:
    """A metastore route: a change of an entity reads If-Match as well as the tenant's headers."""
    changes = method in ("PUT", "DELETE") or (method == "POST" and not handler.startswith(("create_", "evaluate")))
    return Operation(
        method, path, prefix=prefix, handler=f"metastore.{handler}", operation_id=operation_id, tag="metastore",
        headers=WriteHeaders if changes else TenantHeaders, **doc,
    )  # fmt: skip


METASTORE_OPERATIONS: Final = (
    _meta("POST", METADATA_PREFIX, "", "create_metadata", "createMetadata", ok=201,
          summary="Create a metadata entry (unique by namespace and key among those not deleted)",
          body=MetadataCreate, data=MetadataEntry, errors=_M_CREATE, descriptions={201: "created"}),
    _meta("GET", METADATA_PREFIX, "", "list_metadata", "listMetadata",
          summary="A page of the tenant's metadata entries, by namespace and tag",
          params=MetadataQuery, data=MetadataPage, errors=(422, 503)),
    _meta("GET", METADATA_PREFIX, "/key/{key:path}", "metadata_by_key", "getMetadataByKey",
          summary="A metadata entry by its key (and namespace); ETag: its version",
          params=MetadataKeyQuery, data=MetadataEntry, errors=_M_READ),
    _meta("GET", METADATA_PREFIX, "/{id}", "get_metadata", "getMetadata",
          summary="A metadata entry; ETag: its version", params=EntityKey, data=MetadataEntry, errors=_M_READ),
    _meta("PUT", METADATA_PREFIX, "/{id}", "update_metadata", "updateMetadata",
          summary="Change a metadata entry's fields (a new version); If-Match or expected_version guards it",
          params=EntityKey, body=MetadataChange, data=MetadataEntry, errors=_M_WRITE),
    _meta("DELETE", METADATA_PREFIX, "/{id}", "delete_metadata", "deleteMetadata",
          summary="Delete a metadata entry (soft: a new version; its history stays)",
          params=EntityKey, data=MetadataEntry, errors=_M_STATE),
    _meta("GET", METADATA_PREFIX, "/{id}/versions", "metadata_versions", "listMetadataVersions",
          summary="A metadata entry's versions, newest first", params=VersionsQuery, data=VersionPage, errors=_M_READ),
    _meta("POST", METADATA_PREFIX, "/{id}/rollback/{version}", "rollback_metadata", "rollbackMetadata",
          summary="Make a metadata entry's version current again, as a new version",
          params=VersionKey, data=MetadataEntry, errors=_M_STATE),
    _meta("POST", FLAGS_PREFIX, "", "create_flag", "createFlag", ok=201,
          summary="Create a feature flag (state draft; unique by name)",
          body=FlagCreate, data=FeatureFlag, errors=_M_CREATE, descriptions={201: "created"}),
    _meta("GET", FLAGS_PREFIX, "", "list_flags", "listFlags",
          summary="A page of the tenant's feature flags, by tag", params=FlagQuery, data=FlagPage, errors=(422, 503)),
    _meta("POST", FLAGS_PREFIX, "/evaluate", "evaluate", "evaluateFlag",
          summary="Evaluate a flag for a context: value, variant, reason, error code (as OpenFeature)",
          body=Evaluate, data=Evaluation, errors=(*_BODY_ERRORS, 503)),
    _meta("POST", FLAGS_PREFIX, "/evaluate/bulk", "evaluate_bulk", "evaluateFlags",
          summary="Evaluate several flags (or every flag) for one context",
          body=EvaluateBulk, data=BulkEvaluation, errors=(*_BODY_ERRORS, 503)),
    _meta("GET", FLAGS_PREFIX, "/name/{name}", "flag_by_name", "getFlagByName",
          summary="A feature flag by its name; ETag: its version", params=FlagNameKey, data=FeatureFlag,
          errors=_M_READ),
    _meta("GET", FLAGS_PREFIX, "/{id}", "get_flag", "getFlag",
          summary="A feature flag; ETag: its version", params=EntityKey, data=FeatureFlag, errors=_M_READ),
    _meta("PUT", FLAGS_PREFIX, "/{id}", "update_flag", "updateFlag",
          summary="Change a feature flag's fields (a new version); If-Match or expected_version guards it",
          params=EntityKey, body=FlagChange, data=FeatureFlag, errors=_M_WRITE),
    _meta("DELETE", FLAGS_PREFIX, "/{id}", "delete_flag", "deleteFlag",
          summary="Delete a feature flag (soft: a new version; its history stays)",
          params=EntityKey, data=FeatureFlag, errors=_M_STATE),
    _meta("POST", FLAGS_PREFIX, "/{id}/enable", "enable_flag", "enableFlag",
          summary="Enable a feature flag (draft or active -> active)", params=EntityKey, data=FeatureFlag,
          errors=_M_STATE),
    _meta("POST", FLAGS_PREFIX, "/{id}/disable", "disable_flag", "disableFlag",
          summary="Disable a feature flag", params=EntityKey, data=FeatureFlag, errors=_M_STATE),
    _meta("POST", FLAGS_PREFIX, "/{id}/rollout", "set_rollout", "setFlagRollout",
          summary="Set a feature flag's rollout percentage (sticky: raising it turns nobody off)",
          params=EntityKey, body=RolloutChange, data=FeatureFlag, errors=_M_WRITE),
    _meta("GET", FLAGS_PREFIX, "/{id}/versions", "flag_versions", "listFlagVersions",
          summary="A feature flag's versions, newest first", params=VersionsQuery, data=VersionPage, errors=_M_READ),
    _meta("POST", FLAGS_PREFIX, "/{id}/rollback/{version}", "rollback_flag", "rollbackFlag",
          summary="Make a feature flag's version current again, as a new version",
          params=VersionKey, data=FeatureFlag, errors=_M_STATE),
    _meta("POST", CONFIGS_PREFIX, "", "create_config", "createConfiguration", ok=201,
          summary="Create a configuration (values checked against its JSON Schema; secrets as references)",
          body=ConfigCreate, data=Configuration, errors=_M_CREATE, descriptions={201: "created"}),
    _meta("GET", CONFIGS_PREFIX, "/service/{service_id:path}", "configs_for_service", "listServiceConfigurations",
          summary="A service's configurations, of every environment or one",
          params=ServiceQuery, data=ServiceConfigurations, errors=(422, 503)),
    _meta("GET", CONFIGS_PREFIX, "/effective/{service_id:path}", "effective_config", "getEffectiveConfiguration",
          summary="A service's effective configuration in an environment (secret references unresolved)",
          params=EffectiveQuery, data=EffectiveConfig, errors=(422, 503)),
    _meta("GET", CONFIGS_PREFIX, "/{id}", "get_config", "getConfiguration",
          summary="A configuration; ETag: its version", params=EntityKey, data=Configuration, errors=_M_READ),
    _meta("PUT", CONFIGS_PREFIX, "/{id}", "update_config", "updateConfiguration",
          summary="Change a configuration's fields (a new version); If-Match or expected_version guards it",
          params=EntityKey, body=ConfigChange, data=Configuration, errors=_M_WRITE),
    _meta("DELETE", CONFIGS_PREFIX, "/{id}", "delete_config", "deleteConfiguration",
          summary="Delete a configuration (soft: a new version; its history stays)",
          params=EntityKey, data=Configuration, errors=_M_STATE),
    _meta("POST", CONFIGS_PREFIX, "/{id}/activate", "activate_config", "activateConfiguration",
          summary="Activate a configuration (inactive -> active)", params=EntityKey, data=Configuration,
          errors=_M_STATE),
    _meta("POST", CONFIGS_PREFIX, "/{id}/deactivate", "deactivate_config", "deactivateConfiguration",
          summary="Deactivate a configuration (active -> inactive)", params=EntityKey, data=Configuration,
          errors=_M_STATE),
    _meta("GET", CONFIGS_PREFIX, "/{id}/versions", "config_versions", "listConfigurationVersions",
          summary="A configuration's versions, newest first", params=VersionsQuery, data=VersionPage, errors=_M_READ),
    _meta("POST", CONFIGS_PREFIX, "/{id}/rollback/{version}", "rollback_config", "rollbackConfiguration",
          summary="Make a configuration's version current again, as a new version",
          params=VersionKey, data=Configuration, errors=_M_STATE),
    Operation(
        "GET", "/health", prefix="", handler="metastore.health", operation_id="serviceHealth", tag="metastore",
        public=True, summary="The metastore's bus, store and change events", data=MetastoreHealth, errors=(503,),
        error_data=frozenset({503}), descriptions={200: "healthy", 503: "degraded"},
    ),
    Operation(
        "GET", "/health/live", prefix="", handler="metastore.live", operation_id="serviceLive", tag="metastore",
        public=True, summary="Liveness: 200 while the server's event loop answers", data=Probe,
        descriptions={200: "live"},
    ),
    Operation(
        "GET", "/health/ready", prefix="", handler="metastore.ready", operation_id="serviceReady", tag="metastore",
        public=True, summary="Readiness: the bus runs, the store answers, the metastore hears every change",
        data=Probe, errors=(503,), descriptions={200: "ready", 503: "not ready"},
    ),
)  # fmt: skip


OPERATIONS: Final = (
    Operation(
        "POST", "/stamp", handler="stamp", operation_id="stamp", tag="stamping",
        summary="Stamp content through a workflow on the bus",
        body=StampRequest, upload=StampUpload, data=StampResult, errors=(*_BODY_ERRORS, 502, 503, 504),
        retry_after=True,
    ),
    Operation(
        "POST", "/validate", handler="validate", operation_id="validate", tag="content",
        summary="Find the stamps in content: valid, modified or unstamped",
        body=ValidateRequest, upload=FilesUpload, data=ValidateResult, errors=_BODY_ERRORS,
    ),
    Operation(
        "POST", "/hash", handler="hash", operation_id="hash", tag="content",
        summary="BLAKE3 of content with its stamp removed (multipart: streamed)",
        body=HashRequest, upload=FilesUpload, data=HashResult, errors=_BODY_ERRORS,
    ),
    Operation(
        "GET", "/stamp/{file_hash}", handler="get_stamp", operation_id="getStamp", tag="stamps",
        summary="The stored stamp records of a content hash",
        params=StampKey, data=StampRecords, errors=(404, 422, 503), retry_after=True,
    ),
    Operation(
        "POST", "/batch", handler="batch", operation_id="batch", tag="stamping",
        summary="Stamp up to {batch_limit} items; status partial when only some succeed",
        body=BatchRequest, data=BatchResult, errors=(*_BODY_ERRORS, 502, 503, 504), retry_after=True,
        descriptions={200: "every item stamped (success) or some (partial)"},
    ),
    Operation(
        "GET", "/namespace/{namespace:namespace_page}", handler="namespace", operation_id="getNamespace", tag="stamps",
        summary="A page of a namespace's stamps and its aggregates",
        params=NamespacePageQuery, data=NamespacePage, errors=(422, 503), retry_after=True,
    ),
    Operation(
        "GET", "/namespace/{namespace:windows_owner}/windows", handler="namespace_windows", tag="stamps",
        operation_id="getNamespaceWindows", summary="A namespace's aggregation windows, newest first",
        params=NamespaceWindowsQuery, data=NamespaceWindows, errors=(422, 503), retry_after=True,
    ),
    Operation(
        "POST", "/validate-protocol", handler="validate_protocol", operation_id="validateProtocol", tag="content",
        summary="Check a metadata block against the metadata protocol",
        body=ProtocolRequest, data=ProtocolResult, errors=_BODY_ERRORS,
    ),
    Operation(
        "GET", "/health", handler="health", operation_id="health", tag="operations", public=True,
        summary="Bus, store, registry and hosted nodes",
        data=Health, errors=(503,), error_data=frozenset({503}), descriptions={200: "healthy", 503: "degraded"},
    ),
    Operation(
        "GET", "/health/live", handler="live", operation_id="live", tag="operations", public=True,
        summary="Liveness: 200 while the server's event loop answers",
        data=Probe, descriptions={200: "live"},
    ),
    Operation(
        "GET", "/health/ready", handler="ready", operation_id="ready", tag="operations", public=True,
        summary="Readiness: the bus runs, the store answers and every hosted node runs",
        data=Probe, errors=(503,), descriptions={
            200: "ready", 503: "not ready: starting, draining, the bus or the store down, a node not running",
        },
    ),
    Operation(
        "GET", "/metrics", handler="prometheus", operation_id="metrics", tag="operations",
        summary="Prometheus metrics (text exposition format 0.0.4)",
        data=None, media_type="text/plain", descriptions={200: "metrics"},
    ),
    *METASTORE_OPERATIONS,
)  # fmt: skip

DOCUMENTATION_ROUTES: Final = (
    f"{PREFIX}/openapi.json",
    "/openapi.json",
    DOCS,
    f"{DOCS}/init.js",
    f"{DOCS}/openapi.json",
)
"""Routes that serve the document and the ``/docs`` page (with the files under ``DOCS/static``): public, and not in
the document themselves."""

_CONVERTER_RE: Final = re.compile(r"\{(\w+):\w+\}")
_REF: Final = "#/components/schemas/{model}"


def template(path: str) -> str:
    """A Starlette path without its converters: ``/namespace/{namespace:path}`` -> ``/namespace/{namespace}``."""
    return _CONVERTER_RE.sub(r"{\1}", path)


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema without a title per property (the property's name says it)."""

    def field_title_should_be_set(self, schema: core_schema.CoreSchema | Any) -> bool:
        return False


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _enveloped(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"allOf": [_ref("Envelope"), {"type": "object", "properties": {"data": data}}]}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    parameters = []
    for model, place in ((op.params, None), (op.headers, "header")):
        if model is not None:
            parameters += _parameters_of(op, model, place)
    return parameters


def _parameters_of(op: Operation, model: type[BaseModel], place: str | None) -> list[dict[str, Any]]:
    schema = TypeAdapter(model).json_schema(schema_generator=_Generator)
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        where = place or ("path" if f"{{{name}" in op.path else "query")
        parameter: dict[str, Any] = {"name": name, "in": where}
        if where == "path" or name in required:
            parameter["required"] = True
        parameter["schema"] = prop
        parameters.append(parameter)
    return parameters


def _operation(
    op: Operation, refs: Mapping[object, Mapping[str, Any]], *, api_key: bool, batch_limit: int
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary.format(batch_limit=batch_limit),
        "tags": [op.tag],
    }
    if api_key:
        doc["security"] = [] if op.public else [{"bearerAuth": []}]
    if parameters := _parameters(op):
        doc["parameters"] = parameters
    if op.body is not None:
        content = {"application/json": {"schema": refs[op.body]}}
        if op.upload is not None:
            content["multipart/form-data"] = {"schema": refs[op.upload]}
        doc["requestBody"] = {"required": True, "content": content}
    ok = _enveloped(refs[op.data]) if op.data is not None else {"type": "string"}
    responses: dict[str, Any] = {
        str(op.ok): {"description": op.descriptions.get(op.ok, "success"), "content": {op.media_type: {"schema": ok}}}
    }
    for code in (*op.errors, *((401,) if api_key and not op.public else ())):
        schema = _enveloped(refs[op.data]) if code in op.error_data else _ref("ErrorEnvelope")
        responses[str(code)] = {
            "description": op.descriptions.get(code, _ERRORS[code]),
            "content": {"application/json": {"schema": schema}},
        }
        if code == 503 and op.retry_after:
            responses[str(code)]["headers"] = _RETRY_AFTER
    doc["responses"] = responses
    return doc


def openapi_document(
    *, batch_limit: int = DEFAULT_BATCH_LIMIT, max_body: int = DEFAULT_MAX_BODY, api_key: bool = False
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API as configured (batch limit, body limit, whether a key is required)."""
    inputs: dict[Any, JsonSchemaMode] = {Envelope: "serialization", ErrorEnvelope: "serialization"}
    for op in OPERATIONS:
        inputs.update({model: "validation" for model in (op.body, op.upload) if model is not None})
        if op.data is not None:
            inputs[op.data] = "serialization"
    refs, definitions = TypeAdapter.json_schemas(
        [(model, mode, TypeAdapter(model)) for model, mode in inputs.items()],
        ref_template=_REF,
        schema_generator=_Generator,
    )
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    # A batch's items are validated one by one (so one bad item fails alone), but each is a StampRequest; and the
    # limit on their number is the gateway's setting.
    schemas["BatchRequest"]["properties"]["items"].update(items=_ref("StampRequest"), maxItems=batch_limit)
    by_model = {model: refs[(model, mode)] for model, mode in inputs.items()}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation = _operation(op, by_model, api_key=api_key, batch_limit=batch_limit)
        paths.setdefault(op.template, {})[op.method.lower()] = operation
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    if api_key:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "onex metadata stamping API",
            "version": API_VERSION,
            "description": f"Stamps content with BLAKE3 metadata stamps through onex workflows. Bodies are limited to "
            f"{max_body} bytes; every JSON response is one envelope.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": paths,
        "components": components,
    }


def openapi_30(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` (3.1) as OpenAPI 3.0.3, for the bundled Swagger UI 4, which renders no 3.1 document.

    Only what the generated document uses is translated: a list ``type`` with ``"null"`` and an ``anyOf`` branch
    ``{"type": "null"}`` become ``nullable`` (a single branch left is merged in), ``const`` becomes a one-value
    ``enum``, and a ``$ref`` with sibling keywords (which 3.0 ignores) goes into an ``allOf``.
    """

    def schema(node: Any) -> Any:
        if isinstance(node, list):
            return [schema(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, Mapping):  # property names are not keywords
                out[key] = {name: schema(sub) for name, sub in value.items()}
            elif key == "const":
                out["enum"] = [value]
            elif key == "type" and isinstance(value, list):
                kinds = [kind for kind in value if kind != "null"]
                if len(kinds) < len(value):
                    out["nullable"] = True
                if len(kinds) == 1:
                    out["type"] = kinds[0]
                else:
                    out["anyOf"] = [{"type": kind} for kind in kinds]
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                branches = [branch for branch in value if branch != {"type": "null"}]
                if len(branches) < len(value):
                    out["nullable"] = True
                if len(branches) == 1 and "$ref" not in branches[0]:
                    for name, sub in schema(branches[0]).items():
                        out.setdefault(name, sub)
                elif len(branches) == 1:
                    out["allOf"] = [branches[0]]
                else:
                    out[key] = schema(branches)
            else:
                out[key] = schema(value)
        if "$ref" in out and len(out) > 1:
            out["allOf"] = [{"$ref": out.pop("$ref")}, *out.get("allOf", [])]
        return out

    converted: dict[str, Any] = schema(document)
    converted["openapi"] = "3.0.3"
    return converted
