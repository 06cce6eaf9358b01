"""The HTTP API and web page of `vitkit serve`, as a FastAPI app built around one model.

FastAPI is the optional `serve` extra: this module imports it, so nothing imports this module at `import vitkit`.
The routes live here; the model behind them in ``service``, upload and load limits in ``limits``, API keys in
``auth``, Prometheus metrics in ``metrics``, the bounded queue and its drain in ``batching``.

Every bad request gets a 4xx answer of the form {"error": message} and the server goes on serving. Before a load
balancer: /livez answers while the process runs, /readyz only once the model is warm and until shutdown begins; a
full queue answers 503 with Retry-After at once; SIGTERM drains (the server finishes what it accepted, then exits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from vitkit.model import VisionTransformer
from vitkit.serve.auth import ApiKeyMiddleware, read_api_keys
from vitkit.serve.limits import ApiError, ServeSettings, read_uploads
from vitkit.serve.metrics import MetricsMiddleware, ServeMetrics
from vitkit.serve.service import ModelService

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "VITKIT_SERVE"  # create_app's arguments as JSON, for the worker processes of --workers N
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# Swagger UI's files, served from the swagger-ui-bundle package so that /docs works without internet.
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _page_asset(name: str) -> str:
    return resources.files("vitkit.serve").joinpath("static").joinpath(name).read_text(encoding="utf-8")


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)",
                        }
                    },
                }
            }
        },
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": meaning, "content": {"application/json": {"example": {"error": "what was wrong"}}}}
    for status, meaning in (
        (400, "a malformed upload or no file in it"),
        (413, "too many files, or a file over the byte or pixel limit"),
        (415, "not a multipart upload, or a file that is not declared as an image"),
        (422, "a file that cannot be decoded as an image (not an image, truncated), or a bad query parameter"),
        (401, "no API key or a wrong one (with --api-key-file)"),
        (503, "the queue is full (retry after the Retry-After header's seconds)"),
        (504, "the request took longer than --timeout-s"),
    )
}


@contextmanager
def _on_sigterm(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` in the event loop when SIGTERM arrives, then pass the signal on to the handler installed
    before (uvicorn's, which stops accepting connections and waits for the open ones). Signals reach the main thread
    only: elsewhere (a server in a test thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)


def create_app(
    source: str | os.PathLike | VisionTransformer,
    *,
    name: str | None = None,
    settings: ServeSettings | None = None,
    fast: bool = False,
    device: torch.device | str | None = None,
    api_key_file: str | os.PathLike | None = None,
    cors_origins: Sequence[str] = (),
    load_seconds: float | None = None,
) -> FastAPI:
    """A FastAPI app serving ``source``: a model, or a folder saved by ``save_pretrained`` or ``vitkit train``.

    ``name`` is what GET /model reports (default: the folder's name, or the class name of a model object);
    ``fast`` runs predictions through ``vitkit.optimize`` (explanations keep the plain model, which they read);
    ``device`` moves the model there (default: where it is). ``api_key_file``: every endpoint but /livez and
    /readyz asks for one of its keys as ``Authorization: Bearer KEY``. ``cors_origins``: the browser origins
    allowed to call the API from their pages (none by default). ``load_seconds``: how long loading ``source``
    took, for the metrics, when it is a model loaded by the caller (a folder is timed here).
    """
    metrics = ServeMetrics()
    if isinstance(source, VisionTransformer):
        model, default_name = source, type(source).__name__
    else:
        start = time.perf_counter()
        model, default_name = VisionTransformer.from_pretrained(source), Path(source).resolve().name
        load_seconds = time.perf_counter() - start
    if load_seconds is not None:
        metrics.load_seconds.set(load_seconds)
    if device is not None:
        model = model.to(device)
    keys = read_api_keys(api_key_file) if api_key_file is not None else None
    service = ModelService(model, name or default_name, settings or ServeSettings(), metrics, fast)
    page = _page_asset("index.html")
    assets = {asset: _page_asset(asset) for asset in STATIC_FILES}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        warm_up = asyncio.get_running_loop().run_in_executor(None, service.warm_up)
        warm_up.add_done_callback(_log_warm_up_failure)
        with _on_sigterm(service.begin_drain):
            try:
                yield
            finally:
                service.begin_drain()
                warm_up.cancel()
                await service.batcher.stop(drain_s=service.drain_time_left())

    app = FastAPI(
        title="vitkit serve",
        description=f"Classify images with the Vision Transformer {service.name!r}.",
        lifespan=lifespan,
        docs_url=None,  # served below from local files instead of a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.state.metrics = metrics

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message, err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return error(422, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:  # the server logs the traceback
        return error(500, f"internal error ({type(err).__name__}: {err})")

    @app.post("/predict", openapi_extra=UPLOAD_SCHEMA, responses=ERROR_RESPONSES)
    async def predict(
        request: Request,
        top_k: int = Query(5, ge=1, description="classes per image (at most the number of classes)"),
        explain: bool = Query(False, description="add the attention-rollout heat map (PNG, base64) per image"),
    ) -> dict[str, Any]:
        """Classify one or several images: the top-k classes and probabilities per image, in upload order."""

        async def answer() -> list[dict[str, Any]]:
            return await service.predict(await read_uploads(request, service.settings), top_k, explain)

        try:
            predictions = await asyncio.wait_for(answer(), service.settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the limit of {service.settings.timeout_s:g} s") from None
        return {"model": service.name, "predictions": predictions}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, and how many forward passes answered how many images (batching at work)."""
        return {"status": "ok", "forward_passes": service.batcher.batches, "images": service.batcher.items}

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """Liveness probe: 200 while the process answers (no API key needed)."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"description": "warming up, or shutting down"}})
    async def readyz() -> JSONResponse:
        """Readiness probe: 200 once the model is loaded and warm, 503 before that and while draining (no key)."""
        if service.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "draining" if service.draining else "warming up"}, status_code=503)

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text format): latency, requests by status, queue, batch sizes, forward time."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """The served model: name, class names, image size, parameter count, limits."""
        return service.info()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title}: API documentation",
            swagger_js_url=f"{root}/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/swagger-ui/favicon-32x32.png",
        )

    def static_route(text: str, media_type: str) -> Callable[[], Awaitable[Response]]:
        async def asset() -> Response:
            return Response(text, media_type=media_type)

        return asset

    def file_route(path: Path, media_type: str) -> Callable[[], Awaitable[Response]]:
        async def asset() -> Response:
            return FileResponse(path, media_type=media_type)

        return asset

    # Fixed sets of files chosen here: no path comes from the client.
    for asset, media_type in STATIC_FILES.items():
        app.add_api_route(f"/static/{asset}", static_route(assets[asset], media_type), include_in_schema=False)
    swagger_folder = _swagger_ui_folder()
    for asset, media_type in SWAGGER_FILES.items():
        route = file_route(swagger_folder / asset, media_type)
        app.add_api_route(f"/static/swagger-ui/{asset}", route, include_in_schema=False)

    if keys is not None:
        app.add_middleware(ApiKeyMiddleware, keys=keys)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it also counts what the others refuse
    return app


def _swagger_ui_folder() -> Path:
    """Swagger UI's files from the swagger-ui-bundle package (the `serve` extra), checked at start-up."""
    import swagger_ui_bundle

    folder = Path(swagger_ui_bundle.swagger_ui_path)
    missing = [name for name in SWAGGER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"swagger-ui-bundle at {folder} lacks {', '.join(missing)} (expected the files of Swagger UI 5)"
        )
    return folder


def _log_warm_up_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("the warm-up forward pass failed, /readyz stays 503", exc_info=future.exception())


def create_app_from_environment() -> FastAPI:
    """The app of one `--workers N` worker process: create_app with the arguments the CLI put in VITKIT_SERVE."""
    options = json.loads(os.environ[ENVIRONMENT_VARIABLE])
    torch.set_num_threads(options.pop("threads"))
    settings = ServeSettings(**options.pop("settings"))
    return create_app(options.pop("run_dir"), settings=settings, **options)


def environment_for_workers(
    run_dir: str | os.PathLike,
    *,
    name: str,
    settings: ServeSettings,
    fast: bool,
    device: str,
    threads: int,
    api_key_file: str | os.PathLike | None = None,
    cors_origins: Sequence[str] = (),
) -> str:
    """The VITKIT_SERVE value that makes create_app_from_environment rebuild this app in each worker.

    It names the key file, never the keys: each worker reads the file itself.
    """
    key_file = None if api_key_file is None else str(Path(api_key_file).resolve())
    return json.dumps({
        "run_dir": str(run_dir), "name": name, "settings": dataclasses.asdict(settings), "fast": fast,
        "device": device, "threads": threads, "api_key_file": key_file, "cors_origins": list(cors_origins),
    })  # fmt: skip
