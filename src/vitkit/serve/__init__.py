"""`vitkit serve`: an HTTP API and a web page around one model, with micro-batched forward passes.

FastAPI and uvicorn are the optional `serve` extra: `import vitkit` does not import this package.
"""

from vitkit.serve.app import ApiError, ServeSettings, create_app
from vitkit.serve.batching import MicroBatcher

__all__ = ["ApiError", "MicroBatcher", "ServeSettings", "create_app"]
