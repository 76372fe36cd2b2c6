// The background-removal page: upload (picker or drag and drop), POST remove-background, show the
// original and the cut-out side by side, re-run on option changes, download the PNG. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, controller: null, originalUrl: null, resultUrl: null, maxUploadMb: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  $("spinner").hidden = !busy;
  document.body.dataset.busy = busy ? "true" : "false";
}

function setDownload(url, name) {
  const link = $("download");
  if (url) {
    link.href = url;
    link.download = name;
    link.classList.remove("disabled");
    link.setAttribute("aria-disabled", "false");
  } else {
    link.removeAttribute("href");
    link.classList.add("disabled");
    link.setAttribute("aria-disabled", "true");
  }
}

function stem(name) {
  const base = (name || "image").replace(/^.*[\\/]/, "");
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(0, dot) : base;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) {
    // not JSON: fall through
  }
  return `The server answered ${response.status} ${response.statusText}`.trim();
}

function setFile(file) {
  if (!file) return;
  clearError();
  if (state.maxUploadMb && file.size > state.maxUploadMb * 1024 * 1024) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${state.maxUploadMb} MB.`);
    return;
  }
  state.file = file;
  if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
  state.originalUrl = URL.createObjectURL(file);
  const original = $("original");
  original.onload = () => { $("original-size").textContent = `${original.naturalWidth}×${original.naturalHeight}`; };
  original.onerror = () => { original.hidden = true; $("original-size").textContent = "(no preview)"; };
  original.src = state.originalUrl;
  original.hidden = false;
  run();
}

async function run() {
  if (!state.file) return;
  if (state.controller) state.controller.abort(); // only the latest request's answer is shown
  const controller = new AbortController();
  state.controller = controller;

  const form = new FormData();
  form.append("file", state.file, state.file.name);
  if ($("use-threshold").checked) form.append("threshold", $("threshold").value);
  if ($("use-bg").checked) form.append("bg_color", $("bg-color").value);
  if ($("mask-only").checked) form.append("mask_only", "true");
  if ($("crop").checked) form.append("crop", "true");
  if ($("post-process").checked) form.append("post_process", "true");
  if (!$("stretch").checked) form.append("stretch", "false");
  form.append("quality", $("quality").value);
  if ($("model").value) form.append("model", $("model").value);
  if ($("decontaminate").checked) form.append("decontaminate", "true");

  clearError();
  setBusy(true);
  $("status").textContent = "processing…";
  const started = performance.now();
  try {
    const response = await fetch("remove-background", { method: "POST", body: form, signal: controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    const blob = await response.blob();
    if (state.controller !== controller) return;
    if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
    state.resultUrl = URL.createObjectURL(blob);
    const result = $("result");
    result.src = state.resultUrl;
    result.hidden = false;
    const size = response.headers.get("X-Image-Size");
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("status").textContent = `${size ? size.replace("x", "×") + ", " : ""}${seconds} s`;
    showQuality(response.headers.get("X-Confidence"), response.headers.get("X-QA-Flags"));
    setDownload(state.resultUrl, `${stem(state.file.name)}-${$("mask-only").checked ? "mask" : "cutout"}.png`);
  } catch (error) {
    if (error.name === "AbortError") return;
    if (state.controller !== controller) return;
    $("result").hidden = true;
    $("qa-badge").hidden = true;
    $("status").textContent = "failed";
    setDownload(null);
    showError(error.message || String(error));
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      setBusy(false);
    }
  }
}

// The mask's confidence and QA flags (X-Confidence, X-QA-Flags): a green badge when nothing is flagged.
function showQuality(confidence, flags) {
  const badge = $("qa-badge");
  if (confidence === null || flags === null) { badge.hidden = true; return; }
  const ok = flags === "ok";
  badge.textContent = `${ok ? "looks good" : "check: " + flags.replaceAll("_", " ").replaceAll(",", ", ")}`
    + ` · confidence ${Math.round(100 * Number(confidence))}%`;
  badge.className = `badge ${ok ? "good" : "warn"}`;
  badge.hidden = false;
}

let debounce = null;
function rerunSoon(delay = 250) {
  clearTimeout(debounce);
  debounce = setTimeout(run, delay);
}

async function loadModelInfo() {
  try {
    const response = await fetch("model-info");
    if (!response.ok) throw new Error(await errorMessage(response));
    const info = await response.json();
    const params = info.parameters ? `, ${(info.parameters / 1e6).toFixed(1)} M parameters` : "";
    const size = info.input_size ? `, ${info.input_size} px input` : "";
    const backend = info.backend ? ` on ${info.backend}` : "";
    $("model-info").textContent = `Model: ${info.name}${params}${size}${backend}`;
    const choices = info.choices || [];
    const select = $("model");
    select.replaceChildren(...choices.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === info.model;
      return option;
    }));
    $("model-choice").hidden = choices.length < 2;
    if (info.limits) {
      state.maxUploadMb = info.limits.max_upload_mb;
      $("limits").textContent = `, up to ${info.limits.max_upload_mb} MB and ${(info.limits.max_pixels / 1e6).toFixed(0)} MP`;
    }
  } catch (error) {
    $("model-info").textContent = `Model information unavailable (${error.message})`;
  }
}

function init() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => { setFile(input.files[0]); input.value = ""; });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("dragging")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setFile(file);
  });
  // A file dropped beside the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  const threshold = $("threshold");
  threshold.addEventListener("input", () => {
    $("threshold-value").textContent = Number(threshold.value).toFixed(2);
    rerunSoon();
  });
  $("use-threshold").addEventListener("change", (event) => { threshold.disabled = !event.target.checked; run(); });
  $("use-bg").addEventListener("change", (event) => { $("bg-color").disabled = !event.target.checked; run(); });
  $("bg-color").addEventListener("input", () => rerunSoon());
  ["model", "mask-only", "crop", "post-process", "stretch", "quality", "decontaminate"]
    .forEach((id) => $(id).addEventListener("change", () => run()));
  setBusy(false);
  loadModelInfo();
}

document.addEventListener("DOMContentLoaded", init);
