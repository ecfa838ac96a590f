"""The request and response bodies of every route as pydantic models of ComfyUI's shapes, and the
OpenAPI document built from them (`install_openapi`).

The routes read their bodies themselves (ComfyUI's error shapes, strict JSON: `bodies`), so
FastAPI sees no body parameters and would describe every body as `{}`. This module fills in the
document only — request bodies, query parameters and response schemas per operation — so a
schema-driven client or fuzzer sends what the routes really take. Nothing here validates traffic.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

REF = "#/components/schemas/{model}"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- prompts and the queue -------------------------------------------------------------------------

class Node(_Open):
    """One node of an API-format prompt; a list-valued input is a link [node_id, output_index]."""
    class_type: str = Field(examples=["KSampler"])
    inputs: dict[str, Any] = Field(default_factory=dict, examples=[{"seed": 1, "model": ["4", 0]}])
    meta: Optional[dict[str, Any]] = None


class PromptRequest(_Open):
    prompt: dict[str, Node]
    client_id: Optional[str] = None
    prompt_id: Optional[str] = Field(default=None, description="canonical UUID; omitted = the server picks one",
                                     json_schema_extra={"format": "uuid"})
    extra_data: Optional[dict[str, Any]] = None
    partial_execution_targets: Optional[list[str]] = None
    number: Optional[float] = None
    front: Optional[bool] = None


class ErrorBody(_Open):
    type: str
    message: str
    details: Any = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(_Open):
    error: ErrorBody


class PromptErrorResponse(_Open):
    error: ErrorBody
    node_errors: dict[str, Any]


class PromptAccepted(_Open):
    prompt_id: str
    number: float
    node_errors: dict[str, Any]


class ExecInfo(_Open):
    queue_remaining: int


class PromptInfo(_Open):
    exec_info: ExecInfo


class QueueView(_Open):
    """Items are ComfyUI's 5-element tuples [number, prompt_id, prompt, extra_data, outputs]."""
    queue_running: list[list[Any]]
    queue_pending: list[list[Any]]


class ClearOrDelete(_Open):
    clear: Optional[bool] = None
    delete: Optional[list[str]] = None


class InterruptRequest(_Open):
    prompt_id: Optional[str] = None


class FreeRequest(_Open):
    unload_models: Optional[bool] = None
    free_memory: Optional[bool] = None


class HistoryStatus(_Open):
    status_str: str
    completed: bool
    messages: list[list[Any]]


class HistoryEntry(_Open):
    prompt: list[Any]
    outputs: dict[str, Any]
    status: HistoryStatus
    meta: dict[str, Any]


class JobsCancel(_Open):
    job_ids: list[str]


# -- files ---------------------------------------------------------------------------------------

class UploadForm(BaseModel):
    image: bytes = Field(json_schema_extra={"format": "binary"})
    type: Optional[Literal["input", "temp", "output"]] = None
    subfolder: Optional[str] = None
    overwrite: Optional[Literal["true", "false", "1", "0"]] = None


class MaskForm(UploadForm):
    original_ref: str = Field(description='JSON {"filename", "subfolder", "type"}',
                              examples=['{"filename": "a.png", "subfolder": "", "type": "input"}'])


class Uploaded(_Open):
    name: str
    subfolder: str
    type: str


class FileInfo(_Open):
    path: str
    size: int
    modified: float
    created: Optional[float] = None


class Users(_Open):
    storage: str
    migrated: Optional[bool] = None


class SystemStats(_Open):
    system: dict[str, Any]
    devices: list[dict[str, Any]]


MODELS = [Node, PromptRequest, ErrorBody, ErrorResponse, PromptErrorResponse, PromptAccepted, PromptInfo,
          QueueView, ClearOrDelete, InterruptRequest, FreeRequest, HistoryEntry, JobsCancel, UploadForm, MaskForm,
          Uploaded, FileInfo, Users, SystemStats]


# -- the operations ------------------------------------------------------------------------------

def _q(name: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


STR, INT, BOOL_TEXT = {"type": "string"}, {"type": "integer"}, {"type": "string", "enum": ["true", "false"]}
ANY: dict = {}
DICT = {"type": "object"}
LIST = {"type": "array"}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


# (method, path) -> body, query parameters, {status: schema}. Paths without the /api prefix; the
# same description is applied to the /api twin.
OPERATIONS: dict[tuple[str, str], dict] = {
    ("get", "/prompt"): {"responses": {200: _ref(PromptInfo)}},
    ("post", "/prompt"): {"json": _ref(PromptRequest),
                          "responses": {200: _ref(PromptAccepted), 400: _ref(PromptErrorResponse)}},
    ("get", "/queue"): {"responses": {200: _ref(QueueView)}},
    ("post", "/queue"): {"json": _ref(ClearOrDelete), "optional_body": True, "responses": {200: None}},
    ("post", "/interrupt"): {"json": _ref(InterruptRequest), "optional_body": True, "responses": {200: None}},
    ("post", "/free"): {"json": _ref(FreeRequest), "optional_body": True, "responses": {200: None}},
    ("get", "/history"): {"query": [_q("max_items", {"type": "integer", "minimum": 0}), _q("offset", INT)],
                          "responses": {200: {"type": "object", "additionalProperties": _ref(HistoryEntry)}}},
    ("post", "/history"): {"json": _ref(ClearOrDelete), "optional_body": True, "responses": {200: None}},
    ("get", "/history/{prompt_id}"): {"responses": {200: {"type": "object",
                                                          "additionalProperties": _ref(HistoryEntry)}}},
    ("get", "/object_info"): {"responses": {200: DICT}},
    ("get", "/object_info/{node_class}"): {"responses": {200: DICT}},
    ("get", "/embeddings"): {"responses": {200: {"type": "array", "items": STR}}},
    ("get", "/extensions"): {"responses": {200: {"type": "array", "items": STR}}},
    ("get", "/models"): {"responses": {200: {"type": "array", "items": STR}}},
    ("get", "/models/{folder}"): {"responses": {200: {"type": "array", "items": STR}, 404: _ref(ErrorResponse)}},
    ("get", "/experiment/models"): {"responses": {200: LIST}},
    ("get", "/experiment/models/{folder}"): {"responses": {200: LIST, 404: _ref(ErrorResponse)}},
    ("get", "/view"): {"query": [_q("filename", STR, True),
                                 _q("type", {"type": "string", "enum": ["output", "input", "temp"]}),
                                 _q("subfolder", STR), _q("preview", STR),
                                 _q("channel", {"type": "string", "enum": ["rgba", "rgb", "a"]})],
                       "responses": {200: None, 400: _ref(ErrorResponse), 404: _ref(ErrorResponse)}},
    ("post", "/upload/image"): {"form": _ref(UploadForm), "responses": {200: _ref(Uploaded), 400: _ref(ErrorResponse)}},
    ("post", "/upload/mask"): {"form": _ref(MaskForm), "responses": {200: _ref(Uploaded), 400: _ref(ErrorResponse)}},
    ("get", "/system_stats"): {"responses": {200: _ref(SystemStats)}},
    ("get", "/features"): {"responses": {200: DICT}},
    ("get", "/i18n"): {"responses": {200: DICT}},
    ("get", "/workflow_templates"): {"responses": {200: DICT}},
    ("get", "/global_subgraphs"): {"responses": {200: DICT}},
    ("get", "/users"): {"responses": {200: _ref(Users)}},
    ("post", "/users"): {"json": {"type": "object", "properties": {"username": STR}},
                         "responses": {400: _ref(ErrorResponse)}},
    ("get", "/settings"): {"responses": {200: DICT}},
    ("post", "/settings"): {"json": DICT, "responses": {200: None}},
    ("get", "/settings/{setting_id}"): {"responses": {200: ANY}},
    ("post", "/settings/{setting_id}"): {"json": ANY, "responses": {200: None}},
    ("get", "/userdata"): {"query": [_q("dir", STR, True), _q("recurse", BOOL_TEXT), _q("full_info", BOOL_TEXT),
                                     _q("split", BOOL_TEXT)],
                           "responses": {200: LIST, 404: _ref(ErrorResponse)}},
    ("get", "/v2/userdata"): {"query": [_q("path", STR)], "responses": {200: LIST}},
    ("get", "/userdata/{file}"): {"responses": {200: None, 404: _ref(ErrorResponse)}},
    ("post", "/userdata/{file}"): {"raw": True, "query": [_q("overwrite", BOOL_TEXT), _q("full_info", BOOL_TEXT)],
                                   "responses": {200: {"anyOf": [STR, _ref(FileInfo)]}, 409: _ref(ErrorResponse)}},
    ("delete", "/userdata/{file}"): {"responses": {204: None, 404: _ref(ErrorResponse)}},
    ("post", "/userdata/{file}/move/{dest}"): {"query": [_q("overwrite", BOOL_TEXT), _q("full_info", BOOL_TEXT)],
                                               "responses": {200: {"anyOf": [STR, _ref(FileInfo)]}}},
    ("get", "/internal/logs"): {"responses": {200: STR}},
    ("get", "/internal/logs/raw"): {"responses": {200: DICT}},
    ("patch", "/internal/logs/subscribe"): {"json": {"type": "object", "properties": {
        "clientId": STR, "enabled": {"type": "boolean"}}}, "optional_body": True, "responses": {200: None}},
    ("get", "/internal/folder_paths"): {"responses": {200: DICT}},
    ("get", "/internal/files/{kind}"): {"responses": {200: {"type": "array", "items": STR}}},
    ("get", "/jobs"): {"query": [_q("status", STR), _q("workflow_id", STR),
                                 _q("sort_by", {"type": "string", "enum": ["created_at", "execution_duration"]}),
                                 _q("sort_order", {"type": "string", "enum": ["asc", "desc"]}),
                                 _q("limit", {"type": "integer", "minimum": 1}),
                                 _q("offset", {"type": "integer", "minimum": 0})], "responses": {200: DICT}},
    ("post", "/jobs/cancel"): {"json": _ref(JobsCancel), "responses": {200: ANY}},
    ("get", "/jobs/{job_id}"): {"responses": {200: DICT}},
    ("post", "/jobs/{job_id}/cancel"): {"responses": {200: ANY}},
}


def _describe(operation: dict, spec: dict) -> None:
    body = None
    if "json" in spec:
        body = {"content": {"application/json": {"schema": spec["json"]}}, "required": not spec.get("optional_body")}
    elif "form" in spec:
        body = {"content": {"multipart/form-data": {"schema": spec["form"]}}, "required": True}
    elif spec.get("raw"):
        body = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                "required": False}
    if body is not None:
        operation["requestBody"] = body
    if spec.get("query"):
        kept = [p for p in operation.get("parameters", []) if p.get("in") != "query"]
        operation["parameters"] = kept + spec["query"]
    responses = {}
    for status, schema in spec["responses"].items():
        answer: dict = {"description": "OK" if status < 300 else "refused"}
        if schema is not None:
            answer["content"] = {"application/json": {"schema": schema}}
        responses[str(status)] = answer
    operation["responses"] = responses


def build_openapi(app) -> dict:
    """The app's OpenAPI document with every known operation described (see OPERATIONS)."""
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                           description="ComfyUI-compatible API of diffmesh")
    _, definitions = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(definitions.get("$defs", {}))
    for path, item in document.get("paths", {}).items():
        bare = path[4:] if path.startswith("/api/") else path
        for method, operation in item.items():
            spec = OPERATIONS.get((method, bare)) or OPERATIONS.get((method, path))
            if spec is not None:
                _describe(operation, spec)
    return document


def install_openapi(app) -> None:
    """Serves `build_openapi(app)` at /openapi.json (built once, on first request)."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi
