"""The sidecar's OpenAPI 3.1 document, served at `GET /openapi.json`.

Written by hand from what the routes accept (docs/rest.md is the prose):
a client generator, an API explorer or a schema-driven fuzzer
(schemathesis) can use it. tests/rest/test_rest_openapi.py checks that it
lists exactly the served routes and the fields `forms.py` reads.
"""

from __future__ import annotations

from typing import Any

from server.operation_names import (
    EDIT_NUMBER_FIELDS,
    EDIT_OPERATIONS,
    EDIT_PIXEL_FIELDS,
    EDIT_TEXT_FIELDS,
)
from server.rest.forms import MAX_JSON_DEPTH, OUTPUT_INTEGER_FIELDS, OUTPUT_TEXT_FIELDS

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_IMAGE_ITEM = {
    "type": "object",
    "properties": {
        "url": {"type": "string"},
        "b64_json": {"type": "string"},
        "revised_prompt": {"type": "string"},
    },
}
_GENERATION_BODY = {
    "type": "object",
    "required": ["created", "data", "x_chuizi"],
    "properties": {
        "created": {"type": "integer"},
        "data": {"type": "array", "items": {"$ref": "#/components/schemas/ImageItem"}},
        "x_chuizi": {"type": "object"},
    },
}
_COMMON_FIELDS: dict[str, Any] = {
    "model": {"type": "string", "description": "A model of GET /v1/models."},
    "prompt": {"type": "string", "maxLength": 4000},
    "size": {"type": "string", "description": "WIDTHxHEIGHT, or auto."},
    "n": {"type": "integer", "minimum": 1, "maximum": 2147483647},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "stream": {"type": "boolean"},
    "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
    # OpenAI's output parameters: honoured, reported or refused by the service.
    **{name: {"type": "string"} for name in OUTPUT_TEXT_FIELDS},
    **{name: {"type": "integer"} for name in OUTPUT_INTEGER_FIELDS},
}
_ERRORS = {
    status: {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for status, description in {
        "400": "Invalid request (param names the field).",
        "401": "Authentication failed.",
        "404": "Not found.",
        "413": "Request too large.",
        "415": "Unsupported media type.",
        "431": "Authorization header too large.",
        "429": "Rate limited (Retry-After).",
        "5XX": "Server error; 503 while shutting down (Retry-After).",
    }.items()
}


def _generation_response(stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {"schema": {"$ref": "#/components/schemas/Generation"}}
    }
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"description": "The generation.", "content": content}


def openapi_document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chuizi image service, OpenAI-compatible REST",
            "version": version,
            "description": f"See docs/rest.md. JSON bodies nest at most {MAX_JSON_DEPTH} deep.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "ImageItem": _IMAGE_ITEM,
                "Generation": _GENERATION_BODY,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/images/generations": {
                "post": {
                    "operationId": "createImage",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model", "prompt"],
                                    "properties": _COMMON_FIELDS,
                                }
                            }
                        },
                    },
                    "responses": {"200": _generation_response(stream=True), **_ERRORS},
                }
            },
            "/v1/images/edits": {
                "post": {
                    "operationId": "createImageEdit",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image", "model"],
                                    "properties": {
                                        "image": {"type": "string", "format": "binary"},
                                        "mask": {"type": "string", "format": "binary"},
                                        "operation": {
                                            "type": "string",
                                            "enum": list(EDIT_OPERATIONS),
                                        },
                                        **_COMMON_FIELDS,
                                        # The operations' own parameters.
                                        **{f: {"type": "string"} for f in EDIT_TEXT_FIELDS},
                                        **{f: {"type": "number"} for f in EDIT_NUMBER_FIELDS},
                                        **{f: {"type": "integer"} for f in EDIT_PIXEL_FIELDS},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": _generation_response(stream=True), **_ERRORS},
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "responses": {"200": {"description": "OpenAI's list shape."}, **_ERRORS},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "One model."}, **_ERRORS},
                }
            },
            "/v1/generations/{generation_id}": {
                "get": {
                    "operationId": "retrieveGeneration",
                    "parameters": [
                        {
                            "name": "generation_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _generation_response(stream=False), **_ERRORS},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "liveness",
                    "security": [],
                    "responses": {"200": {"description": "The process answers."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "security": [],
                    "responses": {
                        "200": {"description": "Serving."},
                        "503": {"description": "Not serving, or draining."},
                    },
                }
            },
        },
    }
