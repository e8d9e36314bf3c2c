"""One error shape for every 4xx and 5xx the API answers, declared once for OpenAPI and built once here.

    {"error": {"status": 422, "message": "invalid resize parameters", "details": ["width: ..."], "files": null}}

Routes raise `ApiError` (or FastAPI's HTTPException, or fail request validation); the handlers installed by
`install` turn each into that shape, so a client reads `error.message` whatever went wrong.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class FileVerdict(BaseModel):
    filename: str
    accepted: bool
    error: str | None = None


class ErrorDetail(BaseModel):
    status: int
    message: str
    details: list[str] = []
    files: list[FileVerdict] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, details: list[str] | None = None,
                 files: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.files = status, message, details or [], files
        self.headers = headers

    def response(self) -> JSONResponse:
        detail = ErrorDetail(status=self.status, message=self.message, details=self.details,
                             files=[FileVerdict(**f) for f in self.files] if self.files is not None else None)
        return JSONResponse(status_code=self.status, content=ErrorBody(error=detail).model_dump(),
                            headers=self.headers)


# For `responses=` on routes: every error status documents the one shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in {
        400: "Bad request", 401: "No valid API token", 404: "No such job (or not yours)",
        413: "Too large", 415: "No supported image", 422: "Invalid parameters",
        503: "A backend (S3, the Kubernetes API) is unavailable"}.items()}


def _from_http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if isinstance(error.detail, dict):  # a message with its details
        detail = error.detail
        return ApiError(error.status_code, str(detail.get("message", "")), details=list(detail.get("errors", [])),
                        files=detail.get("files"), headers=dict(error.headers or {})).response()
    return ApiError(error.status_code, str(error.detail), headers=dict(error.headers or {})).response()


def _from_validation(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()]
    return ApiError(422, "invalid request", details=details).response()


def _from_api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error.response()


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _from_http)
    app.add_exception_handler(RequestValidationError, _from_validation)
    app.add_exception_handler(ApiError, _from_api_error)
