"""The HTTP gateway: the metadata-stamping API, served next to the nodes (``onex run --http HOST:PORT``).

Every stamp request becomes a STAMP_REQUESTED workflow on the bus, submitted through one long-lived
``StampClient(keep_stamps=True)``; the handler waits for the workflow's outcome and its STAMP_CREATED event and
answers with the stamped content. Hashing and validation need no workflow and are answered here. Reads come from the
store. Routes (under ``PREFIX``):

=======  ==========================  ===================================================================
POST     /stamp                      JSON ``{content | content_base64, namespace?, file_path?, options: {stamp_type}}``
                                     or a multipart ``file`` (+ ``namespace``, ``file_path``, ``stamp_type``
                                     fields); binary content gets a sidecar stamp
POST     /validate                   valid / modified / unstamped for a JSON ``content`` or each multipart file
POST     /hash                       BLAKE3 (stamp removed) of JSON ``content`` or a multipart file, streamed
GET      /stamp/{file_hash}          the stored stamp records of a hash; 404 if none
POST     /batch                      ``{items: [...]}``, up to ``batch_limit`` stamp requests; per-item results
GET      /namespace/{namespace}      a page of a namespace's stamps (``limit``, ``offset``) and its aggregates
GET      /namespace/{ns}/windows     the namespace's aggregation windows (``aggregation``, ``closed``, ``limit``)
POST     /validate-protocol          a rich (or sidecar) block checked against the metadata protocol
GET      /health                     bus, store, registry and hosted nodes; 503 when degraded
GET      /health/live                200 while the event loop answers (a liveness probe)
GET      /health/ready               200 when ready (``onex.metrics.readiness``, and the bus runs); else 503
GET      /metrics                    Prometheus text format
GET      /openapi.json               the OpenAPI 3.1 document (also at ``/openapi.json``)
=======  ==========================  ===================================================================

The metastore's routes (``onex.http.metastore``, issue 17) are under ``/api/v1/metadata``, ``/api/v1/feature-flags``
and ``/api/v1/configurations``, with its own ``/health``, ``/health/live`` and ``/health/ready``; they are in the
same route table, envelope and OpenAPI document.

Outside the prefix: ``GET /docs``, interactive documentation (Swagger UI, served from the ``swagger-ui-bundle``
package's files under ``/docs/static/``: nothing is fetched from elsewhere), reading ``/docs/openapi.json``, the same
document in OpenAPI 3.0 (the bundled Swagger UI 4 renders no 3.1 document).

**Envelope.** Every JSON response but the OpenAPI document is ``{status, data, error, message, metadata}``:
``status`` is ``success``, ``error`` or ``partial`` (a batch in which some items failed); ``error`` is ``null`` or
``{code, field, details}``; ``metadata`` holds ``request_id`` (also the ``X-Request-ID`` header), ``api_version``,
``timestamp`` and ``duration_ms``. A request's ``X-Request-ID`` (1-128 of ``[A-Za-z0-9._:-]``) is kept as its id;
otherwise one is made.

**Access log.** One ``access`` line per request at INFO on the ``onex.http`` logger (``onex.logs``' format): method,
path (without the query string, which may carry secrets), status, duration_ms and request_id.

**Input.** Bodies over ``max_body`` bytes get 413 without being read whole: a larger ``Content-Length`` is refused
before a byte is read, and a body without one (chunked) is counted while it streams. ``/hash`` streams a multipart
file through BLAKE3 chunk by chunk, so it is bounded by ``max_stream`` instead, not by memory. Malformed JSON, a
body that does not match the request schema, a namespace with characters outside ``[A-Za-z0-9._:/-]`` and content
that is not UTF-8 text get 422 naming the field. Content travels inside the workflow's events, so it must be text:
a binary upload is refused (422) rather than mangled. On Kafka the broker's message size limit bounds it too.

**Workflows.** A workflow that does not complete within ``timeout_s`` gets 504 with its ``workflow_id``; it keeps
running (the client drops its outcome when it arrives) and its stamp lands in the store. A workflow that failed
(content that cannot be stamped, say) gets 422 with the workflow's error. Stamps are persisted by the database
adapter after the workflow's outcome is published, so ``GET /stamp/{hash}`` may trail a ``POST /stamp`` briefly.

**Auth.** With an API key (``ONEX_API_KEY``; ``Settings.api_key``), every route but the health routes, the OpenAPI
document and ``/docs`` requires ``Authorization: Bearer <key>`` (401 otherwise). The document stays public so that
clients can discover the API; it says which routes need the key.

``create_app`` builds the Starlette application (tests host it on any server); ``serve`` runs it on uvicorn in the
runtime's event loop until SIGINT/SIGTERM and is what the CLI calls.

Layout. ``openapi`` (the route table, ``OPERATIONS``, and the document generated from it), ``models`` (limits,
request bodies, the envelope and every answer's shape), ``app`` (the handlers and ``create_app``), ``bodies``
(reading bodies within limits, multipart), ``content`` (hashing, verifying, the metadata protocol), ``observe``
(request ids, the API key check, metrics, the access log) and ``server`` (``bind``, ``serve``, uvicorn).
"""

from onex.http.app import create_app
from onex.http.content import check_protocol
from onex.http.models import (
    API_VERSION,
    DEFAULT_BATCH_LIMIT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_STREAM,
    DEFAULT_TIMEOUT_S,
    ApiError,
)
from onex.http.openapi import DOCS, OPERATIONS, PREFIX, Operation, openapi_30, openapi_document
from onex.http.server import base_url, bind, parse_address, quiet_server, serve, serve_metrics

__all__ = [
    "API_VERSION",
    "DEFAULT_BATCH_LIMIT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_STREAM",
    "DEFAULT_TIMEOUT_S",
    "DOCS",
    "OPERATIONS",
    "PREFIX",
    "ApiError",
    "Operation",
    "base_url",
    "bind",
    "check_protocol",
    "create_app",
    "openapi_30",
    "openapi_document",
    "parse_address",
    "quiet_server",
    "serve",
    "serve_metrics",
]
