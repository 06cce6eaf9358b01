"""The HTTP API and web page of `vitkit serve`, as a FastAPI app built around one model.

FastAPI is the optional `serve` extra: this module imports it, so nothing imports this module at `import vitkit`.
The routes live here; upload and load limits in ``limits``, API keys in ``auth``, Prometheus metrics in
``metrics``, the bounded queue and its drain in ``batching``.

Every bad request gets a 4xx answer of the form {"error": message} and the server goes on serving. Before a load
balancer: /livez answers while the process runs, /readyz only once the model is warm and until shutdown begins; a
full queue answers 503 with Retry-After at once; SIGTERM drains (the server finishes what it accepted, then exits).
"""

from __future__ import annotations

import asyncio
import base64
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from torch import Tensor
from torchvision.transforms import v2

from vitkit.data import ImageLoadError, ImageTooLargeError, decode_image, eval_transform
from vitkit.evaluation import class_names_of
from vitkit.model import VisionTransformer
from vitkit.prediction import top_k_classes
from vitkit.serve.auth import ApiKeyMiddleware, read_api_keys
from vitkit.serve.batching import MicroBatcher, QueueFull
from vitkit.serve.limits import ApiError, ServeSettings, read_uploads
from vitkit.serve.metrics import MetricsMiddleware, ServeMetrics

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "VITKIT_SERVE"  # create_app's arguments as JSON, for the worker processes of --workers N
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# Swagger UI's files, served from the swagger-ui-bundle package so that /docs works without internet.
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ModelService:
    """The model behind the API: preprocessing, the batched forward passes, the JSON answers, and its readiness.

    ``warm`` is set once one warm-up forward pass has run; ``draining`` once shutdown has begun.
    """

    def __init__(
        self, model: VisionTransformer, name: str, settings: ServeSettings, metrics: ServeMetrics, fast: bool = False
    ) -> None:
        if model.num_classes < 1:
            raise ValueError("this model has no classification head (num_classes is 0); it cannot be served")
        self.model = model.eval()
        self.name = name
        self.settings = settings
        self.fast = fast
        self.metrics = metrics
        self.device = next(model.parameters()).device
        self.names = class_names_of(model)
        self.transform = eval_transform(model.config)
        # The model's view shown with ?explain=1 undoes the transform's last step, whatever statistics it chose.
        normalize = next(step for step in self.transform.transforms if isinstance(step, v2.Normalize))
        self.mean, self.std = normalize.mean, normalize.std
        self.predictor = model
        if fast:
            from vitkit.optimize import optimize

            self.predictor = optimize(model)
        self.batcher = MicroBatcher(self._forward, settings.max_batch, settings.max_wait_ms, settings.max_queue)
        metrics.track_queue(lambda: self.batcher.queued)
        self.warm = threading.Event()
        self.draining = False
        self.drain_started = 0.0

    @property
    def ready(self) -> bool:
        return self.warm.is_set() and not self.draining

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One forward pass on a blank image, so that the first request does not pay for lazy initialisation."""
        config = self.model.config
        start = time.perf_counter()
        self.predictor(torch.zeros(1, config.in_channels, *config.image_size, device=self.device))
        self.metrics.warmup_seconds.set(time.perf_counter() - start)
        self.warm.set()
        self.metrics.ready.set(int(self.ready))
        logger.info("warm-up forward pass done in %.3f s: ready", time.perf_counter() - start)

    def begin_drain(self) -> None:
        """Report not-ready and run every batch without waiting for it to fill: shutdown has begun."""
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()
            self.metrics.ready.set(0)
            self.batcher.begin_drain()
            logger.info("draining: finishing the requests already accepted")

    def drain_time_left(self) -> float:
        return max(0.0, self.settings.drain_s - (time.monotonic() - self.drain_started))

    def info(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "name": self.name,
            "classes": self.names,
            "image_size": list(config.image_size),
            "in_channels": config.in_channels,
            "patch_size": list(config.patch_size),
            "hidden_dim": config.hidden_dim,
            "depth": config.depth,
            "num_heads": config.num_heads,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "fast": self.fast,
            "limits": {key: getattr(self.settings, key) for key in ("max_files", "max_bytes", "max_pixels")},
        }

    def preprocess(self, uploads: Sequence[tuple[str, bytes]]) -> list[Tensor]:
        """Decode and transform every upload (in a worker thread: this is CPU work), or refuse the whole request."""
        tensors = []
        for name, data in uploads:
            try:
                image = decode_image(data, self.model.in_channels, name, self.settings.max_pixels)
            except ImageTooLargeError as err:
                raise ApiError(413, str(err)) from None
            except ImageLoadError as err:
                raise ApiError(422, str(err)) from None
            tensors.append(self.transform(image))
        return tensors

    @torch.inference_mode()
    def _forward(self, items: list[tuple[Tensor, bool]]) -> list[tuple[Tensor, Tensor | None]]:
        """One batch: logits for every image, attention rollout for those whose request asked for it."""
        start = time.perf_counter()
        batch = torch.stack([image for image, _ in items]).to(self.device)
        logits = self.predictor(batch).float().cpu()
        maps: list[Tensor | None] = [None] * len(items)
        wanted = [i for i, (_, explain) in enumerate(items) if explain]
        if wanted:
            from vitkit.explain import attention_rollout

            for i, heat in zip(wanted, attention_rollout(self.model, batch[wanted]).float().cpu()):
                maps[i] = heat
        self.metrics.observe_forward(len(items), time.perf_counter() - start)
        return list(zip(logits, maps))

    async def predict(self, uploads: Sequence[tuple[str, bytes]], top_k: int, explain: bool) -> list[dict[str, Any]]:
        try:
            self.batcher.admit(len(uploads))  # before decoding: an overloaded server refuses at once
        except QueueFull as err:
            raise ApiError(503, str(err), {"Retry-After": str(err.retry_after_s)}) from None
        try:
            images = await run_in_threadpool(self.preprocess, uploads)
        except BaseException:
            self.batcher.release(len(uploads))
            raise
        results = await self.batcher.submit([(image, explain) for image in images], admitted=True)
        logits, maps = zip(*results)
        answers = []
        for (name, _), image, best, heat in zip(uploads, images, top_k_classes(torch.stack(logits), self.names, top_k), maps):
            answer: dict[str, Any] = {"filename": name, "top_k": best}
            if heat is not None:
                answer["attention"] = await run_in_threadpool(self._attention_answer, image, heat)
            answers.append(answer)
        return answers

    def _attention_answer(self, image: Tensor, heat: Tensor) -> dict[str, Any]:
        from vitkit.explain.figures import heatmap_png, model_view_png

        size = (int(image.shape[-2]), int(image.shape[-1]))
        return {
            "grid": list(heat.shape),
            "rollout": [[round(v, 6) for v in row] for row in heat.tolist()],
            "heatmap_png": _base64(heatmap_png(heat, size)),
            "input_png": _base64(model_view_png(image, self.mean, self.std)),
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
    import swagger_ui_bundle  # type: ignore[import-untyped]

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
