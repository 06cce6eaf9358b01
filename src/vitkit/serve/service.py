"""The model behind `vitkit serve`: preprocessing, the batched forward passes, the JSON answers, readiness.

The routes in ``app`` call it; it refuses a request with :class:`ApiError` (413/422 for a bad image, 503 when the
queue is full) and otherwise answers every image of the request with that image's own prediction.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor
from torchvision.transforms import v2

from vitkit.data import ImageLoadError, ImageTooLargeError, decode_image, eval_transform
from vitkit.evaluation import class_names_of
from vitkit.model import VisionTransformer
from vitkit.prediction import top_k_classes
from vitkit.serve.batching import MicroBatcher, QueueFull
from vitkit.serve.limits import ApiError, ServeSettings
from vitkit.serve.metrics import ServeMetrics

logger = logging.getLogger(__name__)


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
        best_classes = top_k_classes(torch.stack(logits), self.names, top_k)
        for (name, _), image, best, heat in zip(uploads, images, best_classes, maps):
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
