"""`vitkit serve`: an HTTP API and a web page around one model, with micro-batched forward passes.

FastAPI and uvicorn are the optional `serve` extra: `import vitkit` does not import this package.
"""

from vitkit.serve.app import create_app
from vitkit.serve.batching import MicroBatcher, QueueFull
from vitkit.serve.limits import ApiError, ServeSettings
from vitkit.serve.metrics import ServeMetrics

__all__ = ["ApiError", "MicroBatcher", "QueueFull", "ServeMetrics", "ServeSettings", "create_app"]
