// The page of `vitkit serve`: send one image to /predict?explain=1, show the top-5 bars and the attention overlay.
"use strict";

const $ = (id) => document.getElementById(id);
let modelInfo = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function loadModelInfo() {
  try {
    const response = await fetch("/model");
    modelInfo = await response.json();
    const [h, w] = modelInfo.image_size;
    $("model-info").textContent =
      `${modelInfo.name}: ${modelInfo.classes.length} classes, ${h}x${w} input, ` +
      `${modelInfo.parameters.toLocaleString("en")} parameters`;
    $("view").style.aspectRatio = `${w} / ${h}`;
  } catch (err) {
    showError(`cannot reach the server: ${err}`);
  }
}

function renderBars(topK) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const { class: name, probability } of topK) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * probability).toFixed(1)} %`;
    item.append(label, track, value);
    bars.append(item);
  }
}

async function classify(file) {
  $("error").hidden = true;
  if (modelInfo && file.size > modelInfo.limits.max_bytes) {
    showError(`${file.name} is ${file.size} bytes; this server accepts up to ${modelInfo.limits.max_bytes}`);
    return;
  }
  $("status").textContent = `classifying ${file.name}…`;
  const form = new FormData();
  form.append("files", file, file.name);
  let body;
  try {
    const response = await fetch("/predict?explain=1&top_k=5", { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) {
      showError(body.error || `the server answered ${response.status}`);
      return;
    }
  } catch (err) {
    showError(`the request failed: ${err}`);
    return;
  }
  const prediction = body.predictions[0];
  $("preview").src = URL.createObjectURL(file);
  $("model-view").src = `data:image/png;base64,${prediction.attention.input_png}`;
  $("heatmap").src = `data:image/png;base64,${prediction.attention.heatmap_png}`;
  $("prediction").textContent = prediction.top_k[0].class;
  renderBars(prediction.top_k);
  $("result").hidden = false;
  $("status").textContent = `${file.name}: done`;
}

function setUp() {
  const input = $("file-input");
  const zone = $("drop-zone");
  input.addEventListener("change", () => input.files.length && classify(input.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });
  $("opacity").addEventListener("input", (event) => ($("heatmap").style.opacity = event.target.value));
  loadModelInfo();
}

setUp();
