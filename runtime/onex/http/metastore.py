"""The metastore's REST API (issue 17): metadata entries, feature flags and configurations over ``onex.metastore``,
served by the gateway next to the stamping API, in the same envelope and the same OpenAPI document.

The routes are entries of ``onex.http.openapi.OPERATIONS`` (tag ``metastore``) whose handlers are the methods of
``MetastoreApi``; the gateway holds one over its ``Metastore`` (``onex.http.app.Gateway.metastore``). This module
also declares what those routes take and answer beyond ``onex.metastore``'s own models (the expected version in an
update's body, evaluation requests, path, query and header parameters): ``onex.http.openapi`` imports them from
here, and this module imports nothing of the gateway's, so neither imports the other back.

- **Tenant.** With API keys configured (``ONEX_API_KEYS`` ``KEY=TENANT,...``; ``ONEX_API_KEY`` is tenant
  ``default``) the key a request carries decides its tenant and ``X-Tenant-Id`` is ignored: a key sees its tenant's
  entities only, and another tenant's id is 404, exactly as an id that does not exist (never its data). Without
  keys the tenant is ``X-Tenant-Id`` (``default`` when absent).
- **Actor.** ``X-Actor`` (1-128 printable characters), else ``api:<tenant>``: recorded in every version.
- **Expected version.** An update, delete, state change or rollback writes only if the entity is still at the
  version the request names: ``If-Match: "N"`` (an ETag as single-entity GETs send it, ``W/"N"`` or a bare ``N``
  too) or, for a request with a JSON body, ``expected_version``. ``If-Match: *`` or neither: unconditional, still
  atomic (no lost update). Both given and different: 422. A stale version: 409, ``data.current_version`` (and the
  current ``ETag``); nothing was written.
- **Evaluation** answers as an OpenFeature provider does: ``{flag, value, variant, reason, error_code,
  error_message}``, with status 200 even when the flag does not exist (reason ``ERROR``, ``FLAG_NOT_FOUND``) or
  the context lacks the stickiness attribute: a provider resolves to the default, it does not fail the caller.
- **Secrets.** ``/configurations/effective/{service_id}`` answers secret references (``{"$secret": "env:NAME"}``)
  as they are: the HTTP API never resolves a secret.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from onex._model_reads import PlainReads
from onex.exceptions import (
    BusError,
    EntityExists,
    EntityNotFound,
    MetastoreInvalid,
    StoreError,
    TransitionError,
    VersionConflict,
)
from onex.http.bodies import is_json, media_type, read_body
from onex.http.models import MAX_PAGE, ApiError, Probe, bus_unavailable, envelope, parse, store_unavailable
from onex.metastore.flags import FLAG_NAME_PATTERN, Resolution
from onex.metastore.models import (
    ConfigCreate,
    ConfigUpdate,
    Configuration,
    EntityVersion,
    FeatureFlag,
    FlagCreate,
    FlagUpdate,
    Kind,
    MetadataCreate,
    MetadataEntry,
    MetadataUpdate,
    Page,
)
from onex.metastore.service import CONTRACT, MAX_VERSION, Metastore
from onex.metrics import readiness
from onex.runtime import Runtime
from onex.settings import DEFAULT_TENANT, TENANT_PATTERN
from onex.store import MAX_OFFSET, StoreHealth

M = TypeVar("M", bound=BaseModel)

METADATA_PREFIX: Final = "/api/v1/metadata"
FLAGS_PREFIX: Final = "/api/v1/feature-flags"
CONFIGS_PREFIX: Final = "/api/v1/configurations"
DEFAULT_LIMIT: Final = 50
MAX_BULK: Final = 1000  # flags named in one bulk evaluation
ACTOR_PATTERN: Final = r"^[^\x00-\x1f\x7f]{1,128}$"
KEY_PATTERN: Final = r"^[^\x00-\x1f]{1,512}$"  # a key, namespace, service id or name, as onex.metastore.models has it
IF_MATCH_PATTERN: Final = r'^\s*(\*|(W/)?"[0-9]{1,10}"|[0-9]{1,10})\s*$'

_TENANT_RE: Final = re.compile(TENANT_PATTERN)
_ACTOR_RE: Final = re.compile(ACTOR_PATTERN)
_IF_MATCH_RE: Final = re.compile(IF_MATCH_PATTERN)

Environment = Literal["development", "staging", "production"]
ExpectedVersion = Annotated[
    int | None,
    Field(ge=1, le=MAX_VERSION, description="Write only if the entity is at this version (409 otherwise)."),
]


# --- request bodies beyond onex.metastore's own -------------------------------------------------------------------


class MetadataChange(MetadataUpdate):
    """A metadata entry's fields to change; the others keep their value."""

    expected_version: ExpectedVersion = None


class FlagChange(FlagUpdate):
    """A flag's fields to change; the others keep their value."""

    expected_version: ExpectedVersion = None


class ConfigChange(ConfigUpdate):
    """A configuration's fields to change; the others keep their value."""

    expected_version: ExpectedVersion = None


class _Body(PlainReads):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RolloutChange(_Body):
    percentage: Annotated[float, Field(ge=0, le=100, description="Percent of contexts that get the flag.")]
    expected_version: ExpectedVersion = None


FlagName = Annotated[str, Field(pattern=FLAG_NAME_PATTERN)]
Context = Annotated[
    dict[str, Any],
    Field(description="The evaluation context: attributes the targeting rules test, the stickiness attribute."),
]


# Any name a flag's environment_overrides may use (configurations know only Environment's three).
EvaluationEnvironment = Annotated[
    str | None,
    Field(pattern=TENANT_PATTERN, description="Apply the flag's override for this environment, if it has one."),
]


class Evaluate(_Body):
    flag: FlagName
    context: Context = {}
    environment: EvaluationEnvironment = None


class EvaluateBulk(_Body):
    flags: Annotated[
        list[FlagName] | None,
        Field(max_length=MAX_BULK, description="The flags to evaluate; absent: every flag of the tenant."),
    ] = None
    context: Context = {}
    environment: EvaluationEnvironment = None


# --- path, query and header parameters (checked by the handlers; described for the document) -----------------------

EntityId = Annotated[uuid.UUID, Field(description="The entity's id.")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]
Tag = Annotated[str | None, Field(min_length=1, max_length=128, description="Only entities with this tag.")]


class EntityKey(BaseModel):
    id: EntityId


class VersionKey(BaseModel):
    id: EntityId
    version: Annotated[int, Field(ge=1, le=MAX_VERSION, description="The version to restore, as a new version.")]


class VersionsQuery(BaseModel):
    id: EntityId
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


Key = Annotated[str, Field(pattern=KEY_PATTERN)]


class MetadataQuery(BaseModel):
    namespace: Annotated[str | None, Field(pattern=KEY_PATTERN, description="Only this namespace.")] = None
    tag: Tag = None
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class MetadataKeyQuery(BaseModel):
    key: Key
    namespace: Key = "default"


class FlagQuery(BaseModel):
    tag: Tag = None
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class FlagNameKey(BaseModel):
    name: FlagName


class ServiceQuery(BaseModel):
    service_id: Key
    environment: Environment | None = None


class EffectiveQuery(BaseModel):
    service_id: Key
    environment: Environment


class TenantHeaders(BaseModel):
    x_tenant_id: Annotated[
        str | None,
        Field(
            alias="X-Tenant-Id",
            pattern=TENANT_PATTERN,
            description="The tenant, when no API keys are configured (with keys, the key's tenant).",
        ),
    ] = None
    x_actor: Annotated[
        str | None, Field(alias="X-Actor", pattern=ACTOR_PATTERN, description="Who makes the change.")
    ] = None


class WriteHeaders(TenantHeaders):
    if_match: Annotated[
        str | None,
        Field(alias="If-Match", pattern=IF_MATCH_PATTERN, description='The expected version: "N" (an ETag), or *.'),
    ] = None


# --- what the routes answer with, beyond onex.metastore's models ----------------------------------------------------


class Evaluation(TypedDict):
    """A flag's resolution, as OpenFeature providers answer."""

    flag: str
    value: Any
    variant: str | None
    reason: Literal["STATIC", "TARGETING_MATCH", "SPLIT", "DEFAULT", "DISABLED", "EXPIRED", "ERROR"]
    error_code: (
        Literal["FLAG_NOT_FOUND", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "TYPE_MISMATCH", "PARSE_ERROR", "GENERAL"]
        | None
    )
    error_message: str | None


class BulkEvaluation(TypedDict):
    flags: dict[str, Evaluation]


class ServiceConfigurations(TypedDict):
    """A service's configurations, every environment's or one's."""

    service_id: str
    environment: str | None
    items: list[Configuration]


class BusState(TypedDict):
    status: Literal["ok", "down"]
    state: str


class Status(TypedDict):
    status: Literal["ok", "down"]


class MetastoreStatus(TypedDict):
    status: Annotated[
        Literal["ok", "down", "absent"],
        Field(description="ok once it hears every process's change events; absent: the project has no metastore."),
    ]


class MetastoreHealth(TypedDict):
    """The metastore's dependencies: the bus (its change events), the store (its tables), and whether it listens."""

    status: Literal["ok", "degraded"]
    bus: BusState
    store: Status
    metastore: MetastoreStatus


MetadataPage = Page[MetadataEntry]
FlagPage = Page[FeatureFlag]
VersionPage = Page[EntityVersion]


def evaluation(resolution: Resolution) -> Evaluation:
    """A resolution as the API answers it."""
    return resolution.as_dict()  # type: ignore[return-value]  # the same keys; reason and error_code the enums' values


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """The metastore's errors as the API's: 404, 409, 422, 503."""
    try:
        yield
    except EntityNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except VersionConflict as exc:
        raise ApiError(
            409,
            "version_conflict",
            str(exc),
            field="expected_version",
            data={"current_version": exc.current},
            headers=_etag(exc.current),
        ) from None
    except EntityExists as exc:  # a MetastoreInvalid, but the body is fine: another entity holds the key
        raise ApiError(409, "conflict", str(exc)) from None
    except MetastoreInvalid as exc:
        raise ApiError(422, "validation_error", str(exc), field=exc.path or None) from None
    except TransitionError as exc:  # enabling an archived flag, say
        raise ApiError(409, "invalid_state", str(exc)) from None
    except StoreError as exc:
        raise store_unavailable(exc) from None
    except BusError as exc:
        raise bus_unavailable(f"the event bus refused the change event: {exc}") from None


def _dumped(entity: BaseModel) -> dict[str, Any]:
    return entity.model_dump(mode="json", by_alias=True)


class MetastoreApi:
    """The handlers of the metastore's routes, over one ``Metastore``: the hosted metastore effect's, or, when
    ``owned``, one the gateway starts and closes.

    ``keys`` maps each API key to its tenant (empty: no keys; the tenant is ``X-Tenant-Id``). The gateway's
    middleware has already refused a request without a valid key when there are keys; ``max_body`` bounds a body.
    """

    def __init__(
        self,
        metastore: Metastore | None,
        runtime: Runtime,
        *,
        keys: Mapping[str, str],
        max_body: int,
        owned: bool = True,
    ) -> None:
        self._metastore = metastore
        self._owned = owned  # False: a hosted node's, which the node starts and stops
        self.runtime = runtime
        self.max_body = max_body
        self._keys = [(key.encode(), tenant) for key, tenant in keys.items()]
        self.started = False

    @property
    def metastore(self) -> Metastore:
        if self._metastore is None:
            message = f"this project has no metastore: {CONTRACT} is not under its root"
            raise ApiError(503, "metastore_unavailable", message)
        return self._metastore

    async def start(self) -> None:
        """Start the metastore: from here on it hears every process's changes (BusError if the bus refuses)."""
        if self._metastore is not None:
            await self._metastore.start()
            self.started = True

    async def aclose(self) -> None:
        self.started = False
        if self._metastore is not None and self._owned:
            await self._metastore.aclose()

    # -- what every request says --
    def key_tenant(self, headers: Mapping[str, str]) -> str | None:
        """The tenant of the API key ``headers`` carry (``Authorization: Bearer KEY``); None: no key of ours."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip().encode("latin-1", "replace")
        found = None
        for key, tenant in self._keys:  # every key compared, so the time says nothing of which one matched
            if hmac.compare_digest(given, key):
                found = tenant
        return found if scheme.lower() == "bearer" else None

    def tenant(self, request: Request) -> str:
        """The key's tenant (keys configured), else ``X-Tenant-Id``, else ``default``."""
        if self._keys:
            found = self.key_tenant(request.headers)
            if found is None:  # the gateway's middleware refused it already; a route it left open is not ours
                raise ApiError(401, "unauthorized", "a valid API key is required", field="authorization")
            return found
        tenant = request.headers.get("x-tenant-id")
        if tenant is None:
            return DEFAULT_TENANT
        if not _TENANT_RE.fullmatch(tenant):
            rule = "1-64 characters of [A-Za-z0-9_.-], a letter or digit first"
            raise ApiError(422, "validation_error", f"x-tenant-id: must be {rule}", field="x-tenant-id")
        return tenant

    @staticmethod
    def actor(request: Request, tenant: str) -> str:
        actor = request.headers.get("x-actor")
        if actor is None:
            return f"api:{tenant}"
        if not _ACTOR_RE.fullmatch(actor):
            raise ApiError(422, "validation_error", "x-actor: must be 1-128 printable characters", field="x-actor")
        return actor

    @staticmethod
    def expected(request: Request, in_body: int | None = None) -> int | None:
        """The version the request expects: ``If-Match`` or the body's ``expected_version`` (None: any)."""
        raw = request.headers.get("if-match")
        header: int | None = None
        if raw is not None:
            match = _IF_MATCH_RE.fullmatch(raw)
            if match is None:
                message = 'if-match: must be a version, as an ETag ("3") or a number (3), or *'
                raise ApiError(422, "validation_error", message, field="if-match")
            text = match.group(1)
            header = None if text == "*" else int(text.removeprefix("W/").strip('"'))
            if header is not None and not 1 <= header <= MAX_VERSION:
                message = f"if-match: a version is from 1 to {MAX_VERSION}"
                raise ApiError(422, "validation_error", message, field="if-match")
        if header is not None and in_body is not None and header != in_body:
            message = f"expected_version: {in_body} in the body, {header} in If-Match; send one, or the same"
            raise ApiError(422, "validation_error", message, field="expected_version")
        return in_body if in_body is not None else header

    @staticmethod
    def _params(request: Request, model: type[M]) -> M:
        """The path and query parameters as ``model``: 422 naming the one at fault."""
        return parse(model, {**request.query_params, **request.path_params})

    async def _body(self, request: Request, model: type[M]) -> M:
        if not is_json(media_type(request)):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media_type(request) or '(none)'} is not accepted here; send application/json",
                field="content-type",
            )
        return parse(model, await read_body(request, self.max_body))

    @staticmethod
    def _entity(request: Request, entity: Any, message: str, *, status: int = 200) -> Response:
        """One entity in the envelope, with its version as the ETag (and, created, where it lives)."""
        headers = _etag(entity.version)
        if status == 201:
            headers["Location"] = f"{request.url.path.rstrip('/')}/{entity.id}"
        return envelope(request, _dumped(entity), message=message, http_status=status, headers=headers)

    # -- any kind --
    async def _get(self, request: Request, kind: Kind) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        with _answers():
            entity = await self.metastore.get(kind, tenant, key.id)
        return self._entity(request, entity, f"{kind.value} {key.id} at version {entity.version}")

    async def _delete(self, request: Request, kind: Kind) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor, expected = self.actor(request, tenant), self.expected(request)
        with _answers():
            entity = await self.metastore.delete(kind, tenant, key.id, expected_version=expected, actor=actor)
        return self._entity(request, entity, f"{kind.value} {key.id} deleted (version {entity.version})")

    async def _versions(self, request: Request, kind: Kind) -> Response:
        query = self._params(request, VersionsQuery)
        tenant = self.tenant(request)
        with _answers():
            page = await self.metastore.versions(kind, tenant, query.id, limit=query.limit, offset=query.offset)
        return envelope(request, _dumped(page), message=f"{len(page.items)} of {page.total} version(s)")

    async def _rollback(self, request: Request, kind: Kind) -> Response:
        key = self._params(request, VersionKey)
        tenant = self.tenant(request)
        actor, expected = self.actor(request, tenant), self.expected(request)
        with _answers():
            entity = await self.metastore.rollback(
                kind, tenant, key.id, key.version, expected_version=expected, actor=actor
            )
        message = f"{kind.value} {key.id} rolled back to version {key.version}, as version {entity.version}"
        return self._entity(request, entity, message)

    # -- metadata --
    async def create_metadata(self, request: Request) -> Response:
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, MetadataCreate)
        with _answers():
            entry = await self.metastore.create_metadata(tenant, body, actor=actor)
        return self._entity(request, entry, f"metadata {entry.namespace}/{entry.key} created", status=201)

    async def list_metadata(self, request: Request) -> Response:
        query = self._params(request, MetadataQuery)
        tenant = self.tenant(request)
        with _answers():
            page = await self.metastore.list_metadata(
                tenant, namespace=query.namespace, tag=query.tag, limit=query.limit, offset=query.offset
            )
        return envelope(request, _dumped(page), message=f"{len(page.items)} of {page.total} entr(ies)")

    async def get_metadata(self, request: Request) -> Response:
        return await self._get(request, Kind.METADATA)

    async def metadata_by_key(self, request: Request) -> Response:
        query = self._params(request, MetadataKeyQuery)
        tenant = self.tenant(request)
        with _answers():
            entry = await self.metastore.metadata_by_key(tenant, query.key, namespace=query.namespace)
        return self._entity(request, entry, f"metadata {entry.namespace}/{entry.key} at version {entry.version}")

    async def update_metadata(self, request: Request) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, MetadataChange)
        expected = self.expected(request, body.expected_version)
        change = _without_version(MetadataUpdate, body)
        with _answers():
            entry = await self.metastore.update_metadata(tenant, key.id, change, expected_version=expected, actor=actor)
        return self._entity(request, entry, f"metadata {key.id} updated to version {entry.version}")

    async def delete_metadata(self, request: Request) -> Response:
        return await self._delete(request, Kind.METADATA)

    async def metadata_versions(self, request: Request) -> Response:
        return await self._versions(request, Kind.METADATA)

    async def rollback_metadata(self, request: Request) -> Response:
        return await self._rollback(request, Kind.METADATA)

    # -- feature flags --
    async def create_flag(self, request: Request) -> Response:
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, FlagCreate)
        with _answers():
            flag = await self.metastore.create_flag(tenant, body, actor=actor)
        return self._entity(request, flag, f"flag {flag.name} created", status=201)

    async def list_flags(self, request: Request) -> Response:
        query = self._params(request, FlagQuery)
        tenant = self.tenant(request)
        with _answers():
            page = await self.metastore.list_flags(tenant, tag=query.tag, limit=query.limit, offset=query.offset)
        return envelope(request, _dumped(page), message=f"{len(page.items)} of {page.total} flag(s)")

    async def get_flag(self, request: Request) -> Response:
        return await self._get(request, Kind.FLAG)

    async def flag_by_name(self, request: Request) -> Response:
        key = self._params(request, FlagNameKey)
        tenant = self.tenant(request)
        with _answers():
            flag = await self.metastore.flag_by_name(tenant, key.name)
        return self._entity(request, flag, f"flag {flag.name} at version {flag.version}")

    async def update_flag(self, request: Request) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, FlagChange)
        expected = self.expected(request, body.expected_version)
        change = _without_version(FlagUpdate, body)
        with _answers():
            flag = await self.metastore.update_flag(tenant, key.id, change, expected_version=expected, actor=actor)
        return self._entity(request, flag, f"flag {flag.name} updated to version {flag.version}")

    async def delete_flag(self, request: Request) -> Response:
        return await self._delete(request, Kind.FLAG)

    async def enable_flag(self, request: Request) -> Response:
        return await self._switch(request, enable=True)

    async def disable_flag(self, request: Request) -> Response:
        return await self._switch(request, enable=False)

    async def _switch(self, request: Request, *, enable: bool) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor, expected = self.actor(request, tenant), self.expected(request)
        switch = self.metastore.enable_flag if enable else self.metastore.disable_flag
        with _answers():
            flag = await switch(tenant, key.id, expected_version=expected, actor=actor)
        return self._entity(request, flag, f"flag {flag.name} {'enabled' if enable else 'disabled'}")

    async def set_rollout(self, request: Request) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, RolloutChange)
        expected = self.expected(request, body.expected_version)
        with _answers():
            flag = await self.metastore.set_rollout(
                tenant, key.id, body.percentage, expected_version=expected, actor=actor
            )
        return self._entity(request, flag, f"flag {flag.name} rolled out to {body.percentage:g} %")

    async def flag_versions(self, request: Request) -> Response:
        return await self._versions(request, Kind.FLAG)

    async def rollback_flag(self, request: Request) -> Response:
        return await self._rollback(request, Kind.FLAG)

    async def evaluate(self, request: Request) -> Response:
        tenant = self.tenant(request)
        body = await self._body(request, Evaluate)
        with _answers():
            resolution = await self.metastore.evaluate(tenant, body.flag, body.context, environment=body.environment)
        answer = evaluation(resolution)
        return envelope(request, answer, message=f"{body.flag}: {answer['reason']}")

    async def evaluate_bulk(self, request: Request) -> Response:
        tenant = self.tenant(request)
        body = await self._body(request, EvaluateBulk)
        with _answers():
            resolutions = await self.metastore.evaluate_bulk(
                tenant, body.flags, body.context, environment=body.environment
            )
        data: BulkEvaluation = {"flags": {name: evaluation(r) for name, r in resolutions.items()}}
        return envelope(request, data, message=f"{len(resolutions)} flag(s) evaluated")

    # -- configurations --
    async def create_config(self, request: Request) -> Response:
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, ConfigCreate)
        with _answers():
            config = await self.metastore.create_config(tenant, body, actor=actor)
        name = f"{config.service_id}/{config.name} ({config.environment})"
        return self._entity(request, config, f"configuration {name} created", status=201)

    async def get_config(self, request: Request) -> Response:
        return await self._get(request, Kind.CONFIG)

    async def update_config(self, request: Request) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor = self.actor(request, tenant)
        body = await self._body(request, ConfigChange)
        expected = self.expected(request, body.expected_version)
        change = _without_version(ConfigUpdate, body)
        with _answers():
            config = await self.metastore.update_config(tenant, key.id, change, expected_version=expected, actor=actor)
        return self._entity(request, config, f"configuration {key.id} updated to version {config.version}")

    async def delete_config(self, request: Request) -> Response:
        return await self._delete(request, Kind.CONFIG)

    async def activate_config(self, request: Request) -> Response:
        return await self._activation(request, activate=True)

    async def deactivate_config(self, request: Request) -> Response:
        return await self._activation(request, activate=False)

    async def _activation(self, request: Request, *, activate: bool) -> Response:
        key = self._params(request, EntityKey)
        tenant = self.tenant(request)
        actor, expected = self.actor(request, tenant), self.expected(request)
        change = self.metastore.activate_config if activate else self.metastore.deactivate_config
        with _answers():
            config = await change(tenant, key.id, expected_version=expected, actor=actor)
        return self._entity(request, config, f"configuration {key.id} {'activated' if activate else 'deactivated'}")

    async def configs_for_service(self, request: Request) -> Response:
        query = self._params(request, ServiceQuery)
        tenant = self.tenant(request)
        with _answers():
            configs = await self.metastore.configs_for_service(tenant, query.service_id, environment=query.environment)
        data = {
            "service_id": query.service_id,
            "environment": query.environment,
            "items": [_dumped(c) for c in configs],
        }
        return envelope(request, data, message=f"{len(configs)} configuration(s)")

    async def effective_config(self, request: Request) -> Response:
        query = self._params(request, EffectiveQuery)
        tenant = self.tenant(request)
        with _answers():
            effective = await self.metastore.effective_config(tenant, query.service_id, query.environment)
        message = f"{len(effective.sources)} configuration(s) merged for {query.service_id} in {query.environment}"
        return envelope(request, _dumped(effective), message=message)

    async def config_versions(self, request: Request) -> Response:
        return await self._versions(request, Kind.CONFIG)

    async def rollback_config(self, request: Request) -> Response:
        return await self._rollback(request, Kind.CONFIG)

    # -- the service's probes (at the root: /health, /health/live, /health/ready) --
    async def health(self, request: Request) -> Response:
        state = self.runtime.bus.state.value
        try:
            store_health = await self.runtime.store.health()
        except (StoreError, OSError) as exc:
            store_health = StoreHealth("down", str(exc))
        data: MetastoreHealth = {
            "status": "ok",
            "bus": {"status": "ok" if state == "running" else "down", "state": state},
            "store": {"status": "ok" if store_health.status == "ok" else "down"},
            "metastore": {"status": "ok" if self.started else "absent" if self._metastore is None else "down"},
        }
        degraded = [name for name, part in (("bus", data["bus"]), ("store", data["store"])) if part["status"] != "ok"]
        if data["metastore"]["status"] == "down":
            degraded.append("metastore")
        if not degraded:
            return envelope(request, data, message="ok")
        data["status"] = "degraded"
        return envelope(
            request,
            data,
            status="error",
            http_status=503,
            message=f"degraded: {', '.join(degraded)}",
            error={"code": "degraded", "field": None, "details": [{"component": c} for c in degraded]},
        )

    async def live(self, request: Request) -> Response:
        probe: Probe = {"status": "live"}
        return envelope(request, probe, message="live")

    async def ready(self, request: Request) -> Response:
        state = self.runtime.bus.state.value
        reason = f"bus {state}" if state != "running" else await readiness(self.runtime)
        if reason is None and self._metastore is not None and not self.started:
            reason = "the metastore is not listening for changes yet"
        if reason is not None:
            raise ApiError(503, "not_ready", f"not ready: {reason}", data={"status": "not_ready", "reason": reason})
        probe: Probe = {"status": "ready"}
        return envelope(request, probe, message="ready")


def _without_version(model: type[M], body: BaseModel) -> M:
    """``body`` (a change with ``expected_version``) as the metastore's own update model, fields unset kept unset."""
    return model.model_validate(body.model_dump(exclude={"expected_version"}, exclude_unset=True, by_alias=True))
