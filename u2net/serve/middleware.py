"""The ASGI middleware in front of the endpoints: pool admission (503 before a body is read) and body limits (413)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from .errors import ApiError, mb
from .outputs import error_response
from .service import Service
from .settings import ServeSettings

FORM_SLACK = 64 * 1024  # multipart boundaries, headers and the small form fields around the files
SMALL_BODY = 64 * 1024  # JSON requests and anything else
# The endpoints that take a pool slot, admitted (or refused 503) before their body is read.
WORK_PATHS = ("/remove-background", "/batch-remove-background", "/remove-background/path")


class AdmissionMiddleware:
    """503 for a work request while every pool slot is taken, before its body is read (an upload
    is not even received); an admitted request holds one slot (``request.state.admission``) until
    its jobs take it over or it ends."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(WORK_PATHS):
            await self.app(scope, receive, send)
            return
        try:
            admission = self.service.admit()
        except ApiError as exc:
            await error_response(exc.status, exc.message, exc.detail, exc.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["admission"] = admission
        try:
            await self.app(scope, receive, send)
        finally:
            admission.close()


class BodyLimitMiddleware:
    """413 for a request body larger than its endpoint accepts, from ``Content-Length`` when given,
    else while the body streams in (the rest is not read): one upload for ``/remove-background``,
    ``max_batch`` of them for the batch, 64 KiB for anything else."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, path: str) -> int:
        if path.endswith("/batch-remove-background"):
            return self.settings.max_upload_bytes * self.settings.max_batch + FORM_SLACK
        if path.endswith("/remove-background"):
            return self.settings.max_upload_bytes + FORM_SLACK
        return SMALL_BODY

    def reject(self, limit: int) -> JSONResponse:
        return error_response(
            413,
            f"the request is too large: at most {mb(limit)} for this endpoint "
            f"({self.settings.max_upload_mb:g} MB per image)",
            {"limit_bytes": limit, "max_upload_mb": self.settings.max_upload_mb},
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self.reject(limit)(scope, receive, send)
            return
        received = 0
        rejected = False
        started = False

        async def limited_receive():
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    rejected = True
                    if not started:
                        await self.reject(limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if rejected:  # the 413 went out already: the app's own answer is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


__all__ = ["AdmissionMiddleware", "BodyLimitMiddleware"]
