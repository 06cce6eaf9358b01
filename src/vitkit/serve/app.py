"""The HTTP API and web page of `vitkit serve`, as a FastAPI app built around one model.

FastAPI is the optional `serve` extra: this module imports it, so nothing imports this module at `import vitkit`.

Uploads are read in memory and never written under a name the client chose; every bad request gets a 4xx answer
of the form {"error": message} and the server goes on serving.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from torch import Tensor
from torchvision.transforms import v2

from vitkit.data import ImageLoadError, ImageTooLargeError, decode_image, eval_transform
from vitkit.evaluation import class_names_of
from vitkit.model import VisionTransformer
from vitkit.prediction import top_k_classes
from vitkit.serve.batching import MicroBatcher

ENVIRONMENT_VARIABLE = "VITKIT_SERVE"  # create_app's arguments as JSON, for the worker processes of --workers N
ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream")  # what a file part may declare (or nothing)
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}


@dataclass(frozen=True)
class ServeSettings:
    """How much one request may ask for, and how requests are batched.

    max_files: images in one request. max_bytes: size of one image file. max_pixels: width x height of one image,
    checked from its header before decoding. max_batch / max_wait_ms: a forward pass takes up to max_batch images and
    waits at most max_wait_ms for them to arrive (max_batch=1: one request at a time).
    """

    max_files: int = 16
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_batch: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_bytes", "max_pixels", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeSettings.max_wait_ms must be >= 0, got {self.max_wait_ms!r}")

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: every file at its limit, plus room for the multipart headers."""
        return self.max_files * (self.max_bytes + 4096) + 65536


class ApiError(Exception):
    """A request the server refuses: answered with ``status`` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _limited(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """Wrap an ASGI ``receive`` so that a body longer than ``limit`` bytes stops being read (also when chunked)."""
    received = 0

    async def wrapped() -> dict:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError(413, f"the request body is larger than the limit of {limit} bytes")
        return message

    return wrapped


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file part of a multipart request, in order, after checking every limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            415, f"expected a multipart/form-data upload with images in fields named 'files', got {content_type or 'no content type'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise ApiError(413, f"the request body ({declared} bytes) is larger than the limit of {settings.max_request_bytes} bytes")
    limited = Request(request.scope, _limited(request.receive, settings.max_request_bytes))
    try:
        form = await limited.form(max_files=settings.max_files, max_fields=settings.max_files)
    except HTTPException as err:  # starlette's multipart errors: too many files or fields, a malformed body
        raise ApiError(413 if "Too many" in str(err.detail) else 400, f"cannot read the upload: {err.detail}") from None
    uploads = []
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise ApiError(400, "the upload holds no file; send one or more images in multipart fields named 'files'")
        for number, upload in enumerate(files, 1):
            name = upload.filename or f"file {number}"
            declared_type = upload.content_type or ""
            if declared_type and not declared_type.startswith(ACCEPTED_CONTENT_TYPES):
                raise ApiError(415, f"{name} was sent as {declared_type!r}; expected an image (image/png, image/jpeg, ...)")
            if upload.size is not None and upload.size > settings.max_bytes:
                raise ApiError(413, f"{name} is {upload.size} bytes, more than the limit of {settings.max_bytes} bytes")
            uploads.append((name, await upload.read()))
    finally:
        await form.close()
    return uploads


def heatmap_png(values: Tensor, size: tuple[int, int]) -> bytes:
    """A (gh, gw) map as a PNG of the model's input size (h, w), one square per patch, coloured as `vitkit explain`
    draws it (its colour map, from 0 to the map's largest value)."""
    from matplotlib import colormaps

    from vitkit.explain.figures import HEAT

    values = values.detach().float().cpu()
    scaled = values / values.max().clamp_min(1e-12)
    squares = torch.nn.functional.interpolate(scaled[None, None], size=size, mode="nearest")[0, 0]
    return _png(Image.fromarray(colormaps[HEAT](squares.clamp(0, 1).numpy(), bytes=True)[..., :3]))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ModelService:
    """The model behind the API: preprocessing, the batched forward passes and the JSON answers."""

    def __init__(self, model: VisionTransformer, name: str, settings: ServeSettings, fast: bool = False) -> None:
        if model.num_classes < 1:
            raise ValueError("this model has no classification head (num_classes is 0); it cannot be served")
        self.model = model.eval()
        self.name = name
        self.settings = settings
        self.fast = fast
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
        self.batcher = MicroBatcher(self._forward, settings.max_batch, settings.max_wait_ms)

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
        batch = torch.stack([image for image, _ in items]).to(self.device)
        logits = self.predictor(batch).float().cpu()
        maps: list[Tensor | None] = [None] * len(items)
        wanted = [i for i, (_, explain) in enumerate(items) if explain]
        if wanted:
            from vitkit.explain import attention_rollout

            for i, heat in zip(wanted, attention_rollout(self.model, batch[wanted]).float().cpu()):
                maps[i] = heat
        return list(zip(logits, maps))

    def model_view_png(self, image: Tensor) -> bytes:
        """The preprocessed image as the model sees it (resized, cropped), normalisation undone."""
        from vitkit.explain.figures import display_image

        pixels = np.rint(display_image(image, self.mean, self.std) * 255).astype(np.uint8)
        return _png(Image.fromarray(pixels))

    async def predict(self, uploads: Sequence[tuple[str, bytes]], top_k: int, explain: bool) -> list[dict[str, Any]]:
        images = await run_in_threadpool(self.preprocess, uploads)
        logits, maps = zip(*await self.batcher.submit([(image, explain) for image in images]))
        answers = []
        for (name, _), image, best, heat in zip(uploads, images, top_k_classes(torch.stack(logits), self.names, top_k), maps):
            answer: dict[str, Any] = {"filename": name, "top_k": best}
            if heat is not None:
                answer["attention"] = await run_in_threadpool(self._attention_answer, image, heat)
            answers.append(answer)
        return answers

    def _attention_answer(self, image: Tensor, heat: Tensor) -> dict[str, Any]:
        size = tuple(image.shape[-2:])
        return {
            "grid": list(heat.shape),
            "rollout": [[round(v, 6) for v in row] for row in heat.tolist()],
            "heatmap_png": _base64(heatmap_png(heat, size)),
            "input_png": _base64(self.model_view_png(image)),
        }


def _page_asset(name: str) -> str:
    return resources.files("vitkit.serve").joinpath("static", name).read_text(encoding="utf-8")


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
    )
}


def create_app(
    source: str | os.PathLike | VisionTransformer,
    *,
    name: str | None = None,
    settings: ServeSettings | None = None,
    fast: bool = False,
    device: torch.device | str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``source``: a model, or a folder saved by ``save_pretrained`` or ``vitkit train``.

    ``name`` is what GET /model reports (default: the folder's name, or the class name of a model object);
    ``fast`` runs predictions through ``vitkit.optimize`` (explanations keep the plain model, which they read);
    ``device`` moves the model there (default: where it is).
    """
    if isinstance(source, VisionTransformer):
        model, default_name = source, type(source).__name__
    else:
        model, default_name = VisionTransformer.from_pretrained(source), Path(source).resolve().name
    if device is not None:
        model = model.to(device)
    service = ModelService(model, name or default_name, settings or ServeSettings(), fast)
    page = _page_asset("index.html")
    assets = {asset: _page_asset(asset) for asset in STATIC_FILES}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="vitkit serve",
        description=f"Classify images with the Vision Transformer {service.name!r}.",
        lifespan=lifespan,
    )
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error(err.status, err.message)

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
        uploads = await read_uploads(request, service.settings)
        return {"model": service.name, "predictions": await service.predict(uploads, top_k, explain)}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, and how many forward passes answered how many images (batching at work)."""
        return {"status": "ok", "forward_passes": service.batcher.batches, "images": service.batcher.items}

    @app.get("/model")
    async def model_info() -> dict[str, Any]:
        """The served model: name, class names, image size, parameter count, limits."""
        return service.info()

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    def static_route(text: str, media_type: str) -> Callable[[], Awaitable[Response]]:
        async def asset() -> Response:
            return Response(text, media_type=media_type)

        return asset

    for asset, media_type in STATIC_FILES.items():  # a fixed set read at start-up: no path comes from the client
        app.add_api_route(f"/static/{asset}", static_route(assets[asset], media_type), include_in_schema=False)
    return app


def create_app_from_environment() -> FastAPI:
    """The app of one `--workers N` worker process: create_app with the arguments the CLI put in VITKIT_SERVE."""
    options = json.loads(os.environ[ENVIRONMENT_VARIABLE])
    torch.set_num_threads(options.pop("threads"))
    settings = ServeSettings(**options.pop("settings"))
    return create_app(options.pop("run_dir"), settings=settings, **options)


def environment_for_workers(
    run_dir: str | os.PathLike, *, name: str, settings: ServeSettings, fast: bool, device: str, threads: int
) -> str:
    """The VITKIT_SERVE value that makes create_app_from_environment rebuild this app in each worker."""
    settings_dict = dataclasses.asdict(settings)
    return json.dumps(
        {"run_dir": str(run_dir), "name": name, "settings": settings_dict, "fast": fast, "device": device, "threads": threads}
    )
