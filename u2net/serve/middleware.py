"""The ASGI middleware in front of the endpoints: pool admission (503 before a body is read, or as it
outgrows the free slots; 408 for a body too slow) and body limits (413)."""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse

from .errors import ApiError, mb
from .outputs import error_response
from .service import Service
from .settings import ServeSettings

FORM_SLACK = 64 * 1024  # multipart boundaries, headers and the small form fields around the files
SMALL_BODY = 64 * 1024  # JSON requests and anything else
# The endpoints that take a pool slot, admitted (or refused 503) before their body is read.
WORK_PATHS = ("/remove-background", "/batch-remove-background", "/remove-background/path")


def content_length(scope) -> int | None:
    """The request's ``Content-Length``, when it gives a plain number."""
    length = dict(scope["headers"]).get(b"content-length")
    return int(length) if length is not None and length.isdigit() else None


def upload_slots(received: int, settings: ServeSettings) -> int:
    """Pool slots a work request holds once ``received`` bytes of its body arrived: one per upload's
    worth beyond the form slack, at least one; so the bodies held never pass capacity × upload limit
    (plus one form slack a request), however they are split into batches."""
    return max(1, -(-(received - FORM_SLACK) // settings.max_upload_bytes))


DISCONNECT = {"type": "http.disconnect"}  # what the app reads once its request was refused: it stops reading


class _Refusable:
    """One request that a middleware may refuse while its body streams in: :meth:`refuse` sends the refusal
    (unless the app's answer had started) and from then on the app's own answer is dropped, and so is the
    exception it raises on the disconnect it reads."""

    def __init__(self, scope, receive, send) -> None:
        self.scope, self.receive, self._send = scope, receive, send
        self.refused = False
        self.started = False

    async def refuse(self, response: JSONResponse) -> dict:
        self.refused = True
        if not self.started:
            await response(self.scope, self.receive, self._send)
        return DISCONNECT

    async def send(self, message) -> None:
        if self.refused:  # the refusal went out already
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def run(self, app, receive) -> None:
        """``app`` with ``receive`` (the middleware's wrapper) and :meth:`send`."""
        try:
            await app(self.scope, receive, self.send)
        except Exception:
            if not self.refused:
                raise


class AdmissionMiddleware:
    """503 for a work request while the pool lacks free slots, before its body is read (an upload is
    not even received). An admitted request holds slots (``request.state.admission``) for its body:
    one per upload's worth of bytes (:func:`upload_slots`), reserved from ``Content-Length`` up front,
    else as it streams in (503 mid-stream when they are not free); and its body must arrive within
    ``upload_timeout_s`` of admission (408 beyond). Either refusal frees the slots and stops the
    reading; the app's own later answer is dropped. The slots pass to the request's jobs or are freed
    when it ends."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(WORK_PATHS):
            await self.app(scope, receive, send)
            return
        settings = self.service.settings
        try:
            admission = self.service.admit(upload_slots(content_length(scope) or 0, settings))
        except ApiError as exc:
            await error_response(exc.status, exc.message, exc.detail, exc.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["admission"] = admission
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.upload_timeout_s
        received = 0
        complete = False
        request = _Refusable(scope, receive, send)

        async def refuse(exc: ApiError) -> dict:
            admission.close()  # now, not when the app has unwound
            # The rest of the body is never read: the connection cannot carry another request.
            headers = {**(exc.headers or {}), "Connection": "close"}
            return await request.refuse(error_response(exc.status, exc.message, exc.detail, headers))

        async def admitted_receive() -> dict:
            nonlocal received, complete
            if request.refused:
                return DISCONNECT
            if complete:  # only the body is under the deadline, not a later wait for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                timeout = settings.upload_timeout_s
                message = f"the upload took too long: a request body must arrive within {timeout:g} s"
                return await refuse(ApiError(408, message, {"upload_timeout_s": timeout}))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                try:
                    admission.need(upload_slots(received, settings))
                except ApiError as exc:  # 503: the body outgrew the free slots
                    return await refuse(exc)
            return message

        try:
            await request.run(self.app, admitted_receive)
        finally:
            admission.close()


class BodyLimitMiddleware:
    """413 for a request body larger than its endpoint accepts, from ``Content-Length`` when given,
    else while the body streams in (the rest is not read): one upload for ``/remove-background``,
    ``max_batch`` of them for the batch (at most the pool's capacity), 64 KiB for anything else."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, path: str) -> int:
        if path.endswith("/batch-remove-background"):  # no more than the pool could ever admit
            return self.settings.max_upload_bytes * min(self.settings.max_batch, self.settings.capacity) + FORM_SLACK
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
        length = content_length(scope)
        if length is not None and length > limit:
            await self.reject(limit)(scope, receive, send)
            return
        received = 0
        request = _Refusable(scope, receive, send)

        async def limited_receive():
            nonlocal received
            if request.refused:
                return DISCONNECT
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return await request.refuse(self.reject(limit))
            return message

        await request.run(self.app, limited_receive)


__all__ = ["AdmissionMiddleware", "BodyLimitMiddleware", "content_length", "upload_slots"]
