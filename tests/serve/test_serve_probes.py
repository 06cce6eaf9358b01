"""Probes for a load balancer: /livez answers throughout, /readyz only once the warm-up pass has run and until
shutdown begins. The warm-up pass is held behind a Gate, so "before" and "after" do not depend on timing."""

from __future__ import annotations

import pytest
from serve_helpers import Gate

from vitkit import VisionTransformer

pytest.importorskip("fastapi", reason="vitkit serve needs the `serve` extra (fastapi)")
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.serve import create_app  # noqa: E402


def test_readyz_waits_for_the_warm_up_pass_and_turns_503_when_draining(served_model: VisionTransformer) -> None:
    app = create_app(served_model)
    service = app.state.service
    gate = service.predictor = Gate(service.predictor)
    gate.close()
    with TestClient(app) as client:
        assert gate.entered.wait(60), "the warm-up forward pass starts with the app"
        assert client.get("/livez").status_code == 200
        warming = client.get("/readyz")
        assert (warming.status_code, warming.json()) == (503, {"status": "warming up"})

        gate.opened.set()
        assert service.warm.wait(60)
        assert gate.sizes == [1], "one warm-up pass on one image"
        assert client.get("/readyz").status_code == 200 and client.get("/livez").status_code == 200
        assert client.get("/health").json()["forward_passes"] == 0, "the warm-up pass is not a request's"

        client.portal.call(service.begin_drain)  # what SIGTERM does
        draining = client.get("/readyz")
        assert (draining.status_code, draining.json()) == (503, {"status": "draining"})
        assert client.get("/livez").status_code == 200
