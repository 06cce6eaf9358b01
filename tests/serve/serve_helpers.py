"""Helpers of the serve tests: images to send, the model's own answers, a real uvicorn server on loopback."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from vitkit import VisionTransformer
from vitkit.data import decode_image, eval_transform

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def png_bytes(seed: int, size: tuple[int, int] = (24, 20), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """A noisy image of one random colour, of (width, height) `size`, encoded in memory."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def direct_probabilities(model: VisionTransformer, images: list[bytes]) -> torch.Tensor:
    """What the model says about encoded images when called directly, without the server: (len(images), classes)."""
    transform = eval_transform(model.config)
    batch = torch.stack([transform(decode_image(data, model.in_channels)) for data in images])
    with torch.no_grad():
        return model(batch).softmax(dim=1)


def probabilities_of(answer: dict, classes: list[str]) -> torch.Tensor:
    """A prediction's top_k list back as a probability vector in class order (top_k must list every class)."""
    by_name = {entry["class"]: entry["probability"] for entry in answer["top_k"]}
    return torch.tensor([by_name[name] for name in classes])


@contextlib.contextmanager
def running_server(app: object) -> Iterator[str]:
    """Run `app` on uvicorn in a thread, on a free port of 127.0.0.1; yield its base URL, stop it afterwards."""
    import uvicorn

    settled = threading.Event()  # set once the server listens, or once its thread has ended (a failed start)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            settled.set()

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            settled.set()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not settled.wait(timeout=60) or not server.started:  # the timeout guards against a hang only
        raise RuntimeError("the test server did not start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class Gate:
    """A predictor that runs ``model`` only while the gate is open, so that a test decides when forward passes end.

    Open at first (the warm-up pass goes through); :meth:`close` makes the next forward passes wait for
    ``opened``; ``entered`` is set when a forward pass starts, ``sizes`` lists the images of each.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def close(self) -> None:
        self.opened.clear()
        self.entered.clear()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(batch))
        self.entered.set()
        if not self.opened.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        return self.model(batch)
