"""The HTTP API through FastAPI's test client: answers equal the model's own, every bad input is a 4xx JSON error."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import CLASSES, direct_probabilities, png_bytes, probabilities_of

pytest.importorskip("fastapi", reason="vitkit serve needs the `serve` extra (fastapi)")
from fastapi.testclient import TestClient  # noqa: E402

from vitkit import VisionTransformer  # noqa: E402
from vitkit.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture
def client(run_dir: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(run_dir, settings=ServeSettings(max_files=3, max_bytes=20_000, max_pixels=300 * 300))
    ) as c:
        yield c


def upload(*images: tuple[str, bytes, str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", image) for image in images]


def test_predict_several_images_gives_the_models_probabilities_in_order(
    client: TestClient, served_model: VisionTransformer
) -> None:
    images = [png_bytes(1), png_bytes(2, (7, 40), "L"), png_bytes(3, (64, 48), fmt="JPEG")]
    response = client.post(
        "/predict?top_k=10",
        files=upload(
            ("a.png", images[0], "image/png"), ("b.png", images[1], "image/png"), ("c.jpg", images[2], "image/jpeg")
        ),
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny-run", "the model is named after its folder"
    assert [p["filename"] for p in body["predictions"]] == ["a.png", "b.png", "c.jpg"]
    for answer, expected in zip(body["predictions"], direct_probabilities(served_model, images)):
        assert torch.allclose(probabilities_of(answer, CLASSES), expected, atol=1e-5)
        probabilities = [entry["probability"] for entry in answer["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert "attention" not in answer


def test_top_k_defaults_to_five_and_is_capped_at_the_number_of_classes(client: TestClient) -> None:
    files = upload(("a.png", png_bytes(1), "image/png"))
    assert len(client.post("/predict", files=files).json()["predictions"][0]["top_k"]) == 5
    assert len(client.post("/predict?top_k=50", files=files).json()["predictions"][0]["top_k"]) == len(CLASSES)


def test_explain_adds_the_attention_rollout_as_png(client: TestClient, served_model: VisionTransformer) -> None:
    from vitkit.data import decode_image, eval_transform
    from vitkit.explain import attention_rollout

    data = png_bytes(5, (30, 30))
    response = client.post("/predict?explain=1", files=upload(("x.png", data, "image/png")))
    assert response.status_code == 200, response.text
    attention = response.json()["predictions"][0]["attention"]

    image = eval_transform(served_model.config)(decode_image(data, 3))[None]
    expected = attention_rollout(served_model, image)[0]
    assert attention["grid"] == [4, 4]
    assert torch.allclose(torch.tensor(attention["rollout"]), expected.float(), atol=1e-5)
    heatmap = Image.open(io.BytesIO(base64.b64decode(attention["heatmap_png"])))
    assert (heatmap.format, heatmap.size, heatmap.mode) == ("PNG", (16, 16), "RGB")
    view = Image.open(io.BytesIO(base64.b64decode(attention["input_png"])))
    assert (view.format, view.size) == ("PNG", (16, 16))
    # The model's view is the preprocessed image with the normalisation undone: the model's input, up to rounding.
    pixels = torch.from_numpy(np.asarray(view, dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = torch.tensor(served_model.config.mean), torch.tensor(served_model.config.std)
    assert torch.allclose(
        (pixels - mean[:, None, None]) / std[:, None, None], image[0], atol=0.5 / 255 / float(std.min()) + 1e-6
    )
    # The hottest patch of the rollout is the brightest patch of the heat map (inferno grows brighter with value).
    grey = torch.from_numpy(np.asarray(heatmap.convert("L"), dtype=np.float32))
    patch_brightness = grey.reshape(4, 4, 4, 4).mean(dim=(1, 3))
    assert patch_brightness.argmax() == expected.argmax()


def test_fast_predicts_through_vitkit_optimize_and_explains_with_the_plain_model(
    served_model: VisionTransformer,
) -> None:
    from vitkit import optimize
    from vitkit.data import decode_image, eval_transform
    from vitkit.explain import attention_rollout

    data = png_bytes(4)
    image = eval_transform(served_model.config)(decode_image(data, 3))[None]
    with torch.no_grad():
        expected = optimize(served_model)(image).float().softmax(dim=1)[0]
        plain = served_model(image).softmax(dim=1)[0]
    with TestClient(create_app(served_model, fast=True)) as client:
        assert client.get("/model").json()["fast"] is True
        response = client.post("/predict?top_k=10&explain=1", files=upload(("a.png", data, "image/png")))
    answer = response.json()["predictions"][0]
    assert torch.allclose(probabilities_of(answer, CLASSES), expected, atol=1e-5)
    assert not torch.allclose(expected, plain, atol=1e-5), "the fast path is a different computation"
    assert torch.allclose(
        torch.tensor(answer["attention"]["rollout"]), attention_rollout(served_model, image)[0].float(), atol=1e-5
    )


def test_health_counts_forward_passes_and_model_describes_the_model(
    client: TestClient, served_model: VisionTransformer
) -> None:
    assert client.get("/health").json() == {"status": "ok", "forward_passes": 0, "images": 0}
    client.post("/predict", files=upload(("a.png", png_bytes(1), "image/png"), ("b.png", png_bytes(2), "image/png")))
    health = client.get("/health").json()
    assert health["images"] == 2 and 1 <= health["forward_passes"] <= 2

    info = client.get("/model").json()
    assert info["name"] == "tiny-run"
    assert info["classes"] == CLASSES
    assert info["image_size"] == [16, 16] and info["patch_size"] == [4, 4] and info["in_channels"] == 3
    assert info["parameters"] == sum(p.numel() for p in served_model.parameters())
    assert info["limits"] == {"max_files": 3, "max_bytes": 20_000, "max_pixels": 90_000}


def test_openapi_describes_the_endpoints_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/predict", "/health", "/model", "/livez", "/readyz", "/metrics"}
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"]["format"] == "binary"
    assert {p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]} == {"top_k", "explain"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle(" in docs.text


def test_docs_load_swagger_ui_from_the_server_itself(client: TestClient) -> None:
    """/docs works offline: no external URL in the page, and every file it names is Swagger UI's own, served here."""
    import re

    import swagger_ui_bundle

    page = client.get("/docs").text
    assert not re.search(r"(https?:)?//", page), "the page names an external URL"
    referenced = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]|url: ?['"]([^'"]+)['"]""", page)
    urls = {first or second for first, second in referenced}
    scripts = {url for url in urls if url.endswith(".js")}
    assert scripts == {"/static/swagger-ui/swagger-ui-bundle.js"}
    assert "/openapi.json" in urls and any(url.endswith(".css") for url in urls)
    for url in urls - {"/openapi.json"}:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.content == (Path(swagger_ui_bundle.swagger_ui_path) / Path(url).name).read_bytes()


def test_the_page_and_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, kind in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/index.html").status_code == 404, "only the page's own assets are served"


def truncated_png() -> bytes:
    return png_bytes(9, (64, 64))[:300]


def blank_gif(width: int, height: int) -> bytes:
    """A few hundred bytes that decode to width x height pixels."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="GIF")
    return buffer.getvalue()


def chunked(data: bytes) -> Iterator[bytes]:
    """A body sent in pieces without a Content-Length, so the server must count what it reads."""
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


BAD_REQUESTS = {
    "not an image": (dict(files=upload(("notes.png", b"hello, not an image", "image/png"))), 422, "notes.png"),
    "truncated image": (dict(files=upload(("cut.png", truncated_png(), "image/png"))), 422, "cut.png"),
    "wrong part type": (dict(files=upload(("a.txt", png_bytes(1), "text/plain"))), 415, "text/plain"),
    "not multipart": (dict(content=png_bytes(1), headers={"content-type": "image/png"}), 415, "multipart/form-data"),
    "form without a file": (dict(data={"files": "a.png"}), 415, "multipart/form-data"),
    "multipart without a file": (dict(files={"note": (None, "hello")}), 400, "no file"),
    "too many files": (dict(files=upload(*[("a.png", png_bytes(1), "image/png")] * 4)), 413, "Too many files"),
    "too many bytes": (dict(files=upload(("big.png", png_bytes(1, (120, 120)), "image/png"))), 413, "big.png"),
    "too many pixels": (
        dict(files=upload(("wide.gif", blank_gif(400, 300), "image/gif"))),
        413,
        "wide.gif as an image: 400x300 = 120,000 pixels is more than the limit of 90,000",
    ),
    "top_k below 1": (dict(params={"top_k": 0}, files=upload(("a.png", png_bytes(1), "image/png"))), 422, "top_k"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(case: str, client: TestClient) -> None:
    request, status, words = BAD_REQUESTS[case]
    response = client.post("/predict", **request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert client.post("/predict", files=upload(("ok.png", png_bytes(1), "image/png"))).status_code == 200


def test_a_body_over_the_limit_is_refused_even_without_content_length(client: TestClient) -> None:
    big = png_bytes(1, (300, 300))
    boundary = "vitkit-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + big * 4
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/predict", content=chunked(body), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413 and "larger than the limit" in response.json()["error"]
    too_long = client.post("/predict", content=body, headers=headers)
    assert too_long.status_code == 413 and f"({len(body)} bytes)" in too_long.json()["error"]


def test_a_failing_forward_pass_is_a_json_500_and_the_next_request_works(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(run_dir)
    files = upload(("a.png", png_bytes(1), "image/png"))
    with TestClient(app, raise_server_exceptions=False) as client:
        with monkeypatch.context() as patch:
            patch.setattr(app.state.service, "predictor", lambda images: torch.full((3,), float("nan")).sum(dim=1))
            failed = client.post("/predict", files=files)
        assert failed.status_code == 500 and failed.json()["error"].startswith("internal error (IndexError")
        assert client.post("/predict", files=files).status_code == 200


def test_unknown_paths_and_methods_answer_json(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json()


def test_client_file_names_are_labels_only(client: TestClient, tmp_path: Path) -> None:
    target = tmp_path / "written-by-client.png"
    name = str(tmp_path / "x" / ".." / target.name)
    response = client.post("/predict", files=upload((name, png_bytes(1), "image/png")))
    assert response.json()["predictions"][0]["filename"] == name
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny-run"], "nothing was written"


def test_create_app_from_a_model_object_and_bad_sources(served_model: VisionTransformer, tmp_path: Path) -> None:
    with TestClient(create_app(served_model, name="mine")) as c:
        assert c.get("/model").json()["name"] == "mine"
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        create_app(tmp_path)
    headless = VisionTransformer(
        image_size=8, patch_size=4, num_classes=0, hidden_dim=8, depth=1, num_heads=2, mlp_dim=8
    )
    with pytest.raises(ValueError, match="no classification head"):
        create_app(headless)
    with pytest.raises(ValueError, match="max_files must be at least 1"):
        ServeSettings(max_files=0)
