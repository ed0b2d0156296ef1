// The page: the served models (polled), the chosen version's certificate and signature, the
// traffic chart, and "try it" (docs/ARCHITECTURE.md, "The web page"). Only the public REST API.

import { ApiError, bindToken, call, modelPath } from "./api.js";
import { certificateView, el } from "./certificate.js";
import { TrafficChart } from "./chart.js";
import { asRows, inkOf, mnistInput, show } from "./mnist.js";
import { imageInput, inputKind } from "./images.js";

const POLL_MS = 2000;
const PEN_WIDTH = 18; // on the 280-pixel pad: about MNIST's stroke width once scaled to 20x20
const $ = (id) => document.getElementById(id);

const state = {
  models: [], // GET /v1/models
  chosen: null, // {name, version}: version a string, or null for the latest
  mode: null, // "digit" | "image" | "scalar" | null, from the chosen version's signature
  input: null, // the signature's input name
  image: null, // "image" mode: {height, width, channels} of the input
  dataset: null, // the certificate's data set
  classNames: null, // the certificate's class names: class id i is classNames[i]
};

// ------------------------------------------------------------------ errors and server state
function showError(where, error) {
  where.textContent = error instanceof ApiError ? error.toString() : String(error);
  where.hidden = false;
}

function serverState(up, error) {
  const pill = $("server-state");
  // 401: the server is there but wants the token field (--auth_token_file).
  const refused = !up && error instanceof ApiError && error.status === 401;
  pill.textContent = up ? "server up" : refused ? "token required" : "server unreachable";
  pill.className = `pill ${up ? "up" : "down"}`;
  if (up) $("error").hidden = true; else showError($("error"), error);
}

// ------------------------------------------------------------------ the models, polled
async function refreshModels() {
  try {
    state.models = (await call("/v1/models")).models;
    serverState(true);
  } catch (e) {
    serverState(false, e);
    return;
  }
  renderModels();
  if (!state.chosen && !location.hash) chooseDefault();
}

function renderModels() {
  const rows = [];
  for (const m of state.models) {
    const labels = m.version_labels || {};
    const versions = m.model_version_status || [];
    if (!versions.length) {
      rows.push(el("tr", {}, el("td", {}, m.name), el("td", {}, "—"), el("td", {}, "no versions"), el("td"), el("td")));
    }
    versions.forEach((v, i) => {
      const tags = Object.entries(labels).filter(([, n]) => n === v.version)
        .map(([label]) => el("span", { class: "label" }, label));
      const message = v.status && v.status.error_message;
      const row = el("tr", { "data-model": m.name, "data-version": v.version },
        el("td", {}, i ? "" : m.name), el("td", {}, v.version),
        el("td", {}, el("span", { class: `state-${v.state}` }, v.state),
          message ? el("div", { class: "warn" }, message) : null),
        el("td", {}, ...tags), planeCell((m.data_planes || {})[v.version]));
      const c = state.chosen;
      if (c && c.name === m.name && (c.version === v.version || (c.version === null && i === 0))) {
        row.classList.add("chosen");
      }
      row.addEventListener("click", () => navigate(m.name, v.version));
      rows.push(row);
    });
  }
  $("models").tBodies[0].replaceChildren(...rows);
}

// Which data plane answers the version's gRPC Predict (native: predictd; python), and why not
// the native one; empty for a version that is not available.
function planeCell(plane) {
  if (!plane) return el("td");
  return el("td", { class: `plane plane-${plane.plane}` }, plane.plane,
    plane.reason ? el("div", { class: "why" }, plane.reason) : null);
}

function chooseDefault() {
  for (const m of state.models) {
    const v = (m.model_version_status || []).find((s) => s.state === "AVAILABLE");
    if (v) {
      history.replaceState(null, "", `#/models/${encodeURIComponent(m.name)}/versions/${v.version}`);
      route();
      return;
    }
  }
}

function navigate(name, version) {
  location.hash = `#/models/${encodeURIComponent(name)}` + (version ? `/versions/${version}` : "");
}

function route() {
  const m = /^#\/models\/([^/]+)(?:\/versions\/([^/]+))?$/.exec(location.hash);
  if (m) choose(decodeURIComponent(m[1]), m[2] ?? null);
}

// ------------------------------------------------------------------ the chosen version
async function choose(name, version) {
  state.chosen = { name, version };
  state.mode = null;
  renderModels();
  $("detail").hidden = false;
  $("detail-title").textContent = `${name}${version ? ` v${version}` : " (latest)"}`;
  $("detail-description").textContent = "";
  $("detail-error").hidden = true;
  $("certificate").replaceChildren();
  for (const id of ["try-digit", "try-image", "try-scalar", "try-none", "try"]) $(id).hidden = true;
  const path = modelPath(name, version);
  let metadata;
  try {
    await call(path); // the status: the server's own words if the model or version is unknown
    metadata = await call(`${path}/metadata`);
  } catch (e) {
    showError($("detail-error"), e);
    return;
  }
  $("try").hidden = false;
  if (!sameChoice(name, version)) return;
  let cert = null;
  try {
    cert = (await call(`${path}/certificate`)).certificate;
  } catch (e) {
    showError($("detail-error"), e);
  }
  if (!sameChoice(name, version)) return;
  state.dataset = cert ? cert.data.dataset : null;
  state.classNames = cert && cert.data.class_names ? cert.data.class_names : null;
  if (cert) {
    $("detail-description").textContent = cert.description || "";
    $("certificate").replaceChildren(certificateView(cert, metadata));
  }
  setUpTry(metadata);
}

const sameChoice = (name, version) =>
  state.chosen && state.chosen.name === name && state.chosen.version === version;

function setUpTry(metadata) {
  const sig = metadata.metadata.signature_def.signature_def.serving_default;
  const kind = inputKind(sig);
  state.input = kind.input;
  state.mode = kind.mode;
  state.image = kind.image || null;
  if (state.mode === "digit") {
    $("try-digit").hidden = false;
    clearPad();
  } else if (state.mode === "image") {
    $("try-image").hidden = false;
    clearImage();
  } else if (state.mode === "scalar") {
    $("try-scalar").hidden = false;
    $("x-name").textContent = state.input;
    drawCurve();
  } else {
    $("try-none").hidden = false;
    $("try-none").textContent = kind.why;
  }
}

async function predict(instances) {
  const { name, version } = state.chosen;
  const answer = await call(`${modelPath(name, version)}:predict`, { instances });
  return answer.predictions;
}

// ------------------------------------------------------------------ try it: a digit
const pad = $("pad");
const pen = pad.getContext("2d", { willReadFrequently: true });
let padSource = "drawing", strokes = 0, drawingWith = null, last = null;
let classifying = false, again = null, timer = null;

function clearPad() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
  padSource = "drawing";
  strokes = 0;
  $("bars").replaceChildren();
  const p = $("prediction");
  p.textContent = "";
  delete p.dataset.class;
  delete p.dataset.input;
  $("preview").getContext("2d").clearRect(0, 0, 28, 28);
}

function at(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

function stroke(from, to) {
  pen.strokeStyle = "#000";
  pen.lineWidth = PEN_WIDTH;
  pen.lineCap = pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(...from);
  pen.lineTo(...to);
  pen.stroke();
}

pad.addEventListener("pointerdown", (e) => {
  if (drawingWith !== null) return;
  if (padSource !== "drawing") clearPad();
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  drawingWith = e.pointerId;
  last = at(e);
  stroke(last, last); // a tap is a dot
});
pad.addEventListener("pointermove", (e) => {
  if (e.pointerId !== drawingWith) return;
  for (const c of (e.getCoalescedEvents ? e.getCoalescedEvents() : []).concat([e])) {
    const p = at(c);
    stroke(last, p);
    last = p;
  }
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, (e) => {
    if (e.pointerId !== drawingWith) return;
    drawingWith = null;
    strokes += 1;
    clearTimeout(timer);
    timer = setTimeout(() => classifyPad(), 150);
  });
}
$("clear").addEventListener("click", clearPad);

function classifyPad() {
  const ink = inkOf(pen.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
  classify(mnistInput(ink, pad.width, pad.height), `drawing:${strokes}`);
}

async function classify(pixels, what) {
  if (classifying) { again = [pixels, what]; return; } // the latest waits for the one in flight
  if (!pixels) {
    $("prediction").textContent = "No ink: draw a digit first.";
    return;
  }
  classifying = true;
  show(pixels, $("preview"));
  try {
    const [out] = await predict([asRows(pixels)]);
    showBars(probabilitiesOf(out), what, $("bars"), $("prediction"));
    $("detail-error").hidden = true;
  } catch (e) {
    showError($("detail-error"), e);
  } finally {
    classifying = false;
  }
  if (again) { const [p, w] = again; again = null; classify(p, w); }
}

const probabilitiesOf = (out) => (Array.isArray(out) ? out
  : out.probabilities ?? Object.values(out).find((v) => Array.isArray(v) && v.length > 1));

// Class i by the certificate's name for it (the server answers class ids).
const className = (i) => (state.classNames && state.classNames[i] !== undefined
  ? state.classNames[i] : String(i));

function showBars(probabilities, what, bars, prediction) {
  const best = probabilities.indexOf(Math.max(...probabilities));
  bars.classList.toggle("named", probabilities.some((_, i) => className(i).length > 2));
  bars.replaceChildren(...probabilities.map((p, i) => {
    const bar = el("span", { class: "bar" });
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    return el("li", { class: i === best ? "top" : "", "data-digit": i, title: className(i) },
      el("span", {}, className(i)), el("span", {}, bar), el("span", { class: "p" }, `${(100 * p).toFixed(1)}%`));
  }));
  prediction.textContent = `It reads ${className(best)} (${(100 * probabilities[best]).toFixed(1)}%)`;
  prediction.dataset.class = best;
  prediction.dataset.name = className(best);
  prediction.dataset.input = what;
}

// A dropped (or chosen) image: classified from its own pixels, and shown on the pad.
async function useFile(file) {
  const bitmap = await bitmapOf(file, ": drop a PNG");
  if (!bitmap) return;
  const scratch = new OffscreenCanvas(bitmap.width, bitmap.height);
  const sctx = scratch.getContext("2d");
  sctx.drawImage(bitmap, 0, 0);
  const ink = inkOf(sctx.getImageData(0, 0, bitmap.width, bitmap.height).data, bitmap.width, bitmap.height);
  const grey = sctx.createImageData(bitmap.width, bitmap.height);
  ink.forEach((v, i) => grey.data.set([255 - v, 255 - v, 255 - v, 255], 4 * i));
  sctx.putImageData(grey, 0, 0);
  clearPad();
  const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
  pen.drawImage(scratch, (pad.width - bitmap.width * scale) / 2, (pad.height - bitmap.height * scale) / 2,
    bitmap.width * scale, bitmap.height * scale);
  padSource = "file";
  classify(mnistInput(ink, bitmap.width, bitmap.height), `file:${file.name}`);
}

pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("over"); });
pad.addEventListener("dragleave", () => pad.classList.remove("over"));
pad.addEventListener("drop", (e) => {
  e.preventDefault();
  pad.classList.remove("over");
  if (e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
});
for (const type of ["dragover", "drop"]) { // a drop beside the pad must not open the file
  document.addEventListener(type, (e) => e.preventDefault());
}
$("file").addEventListener("change", (e) => { if (e.target.files.length) useFile(e.target.files[0]); });

// ------------------------------------------------------------------ try it: an image file
// For any other image input (another size, or colour): the file resized to the input's size
// and converted to its channels, as training read the folder (training/data_paths.py).
function clearImage() {
  const { height, width, channels } = state.image;
  const preview = $("image-preview");
  preview.width = width;
  preview.height = height;
  preview.getContext("2d").clearRect(0, 0, width, height);
  $("image-hint").textContent = `Choose an image, or drop one here: it is resized to ${width}×${height} ` +
    `and read as ${channels === 3 ? "RGB colour" : "grey levels"}, as the model was trained.`;
  $("image-size").textContent = `${width}×${height}, ${channels === 3 ? "RGB" : "grey"}`;
  $("image-bars").replaceChildren();
  const p = $("image-prediction");
  p.textContent = "";
  for (const k of ["class", "name", "input"]) delete p.dataset[k];
}

// A chosen file's pixels, or null once the page has said why it cannot read them.
async function bitmapOf(file, advice = "") {
  if (!file.type.startsWith("image/")) {
    showError($("detail-error"), `${file.name} is not an image (${file.type || "unknown type"})${advice}`);
    return null;
  }
  try {
    return await createImageBitmap(file);
  } catch {
    showError($("detail-error"), `${file.name} could not be decoded as an image`);
    return null;
  }
}

async function useImageFile(file) {
  const bitmap = await bitmapOf(file);
  if (!bitmap) return;
  const { height, width, channels } = state.image;
  const { instance, rgba } = imageInput(bitmap, height, width, channels);
  $("image-preview").getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
  $("image-size").textContent = `${bitmap.width}×${bitmap.height} image, resized to ${width}×${height}` +
    `, ${channels === 3 ? "RGB" : "grey"}`;
  try {
    const [out] = await predict([instance]);
    showBars(probabilitiesOf(out), `file:${file.name}`, $("image-bars"), $("image-prediction"));
    $("detail-error").hidden = true;
  } catch (e) {
    showError($("detail-error"), e);
  }
}

$("image-file").addEventListener("change", (e) => { if (e.target.files.length) useImageFile(e.target.files[0]); });
$("try-image").addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) useImageFile(e.dataTransfer.files[0]);
});

// ------------------------------------------------------------------ try it: one number
const GRID = Array.from({ length: 201 }, (_, i) => -1 + i / 100);
let curve = null; // the model's y over GRID

const sinc = (x) => (x === 0 ? 1 : Math.sin(5 * Math.PI * x) / (5 * Math.PI * x));
const scalarOf = (out) => (Array.isArray(out) ? out[0] : Object.values(out)[0][0]);

async function drawCurve() {
  curve = null;
  try {
    curve = (await predict(GRID.map((x) => [x]))).map(scalarOf);
  } catch (e) {
    showError($("detail-error"), e);
  }
  slide();
}

let slideTimer = null;
$("x").addEventListener("input", () => {
  $("x-value").textContent = Number($("x").value).toFixed(2);
  clearTimeout(slideTimer);
  slideTimer = setTimeout(slide, 80);
});

async function slide() {
  const x = Number($("x").value);
  $("x-value").textContent = x.toFixed(2);
  let y = null;
  try {
    y = scalarOf((await predict([[x]]))[0]);
    const truth = state.dataset === "sinc" ? `; sin(5πx)/(5πx) = ${sinc(x).toFixed(4)}` : "";
    $("y-value").textContent = `model: ${y.toFixed(4)}${truth}`;
    $("y-value").dataset.y = y;
    $("y-value").dataset.x = x.toFixed(2);
  } catch (e) {
    showError($("detail-error"), e);
  }
  plot(x, y);
}

function plot(x, y) {
  const c = $("curve"), ctx = c.getContext("2d"), w = c.width, h = c.height;
  ctx.clearRect(0, 0, w, h);
  const values = (curve || []).concat(state.dataset === "sinc" ? GRID.map(sinc) : []);
  const lo = Math.min(-0.3, ...values), hi = Math.max(1.05, ...values);
  const px = (v) => 8 + (w - 16) * (v + 1) / 2, py = (v) => h - 8 - (h - 16) * (v - lo) / (hi - lo);
  ctx.strokeStyle = "#d9dee7";
  ctx.beginPath(); ctx.moveTo(px(-1), py(0)); ctx.lineTo(px(1), py(0)); ctx.stroke();
  const line = (ys, colour, dash) => {
    ctx.strokeStyle = colour; ctx.setLineDash(dash); ctx.lineWidth = 2; ctx.beginPath();
    GRID.forEach((g, i) => (i ? ctx.lineTo(px(g), py(ys[i])) : ctx.moveTo(px(g), py(ys[i]))));
    ctx.stroke(); ctx.setLineDash([]);
  };
  if (state.dataset === "sinc") line(GRID.map(sinc), "#98a2b3", [5, 4]);
  if (curve) line(curve, "#2f6fdf", []);
  if (y !== null) {
    ctx.fillStyle = "#e8590c";
    ctx.beginPath(); ctx.arc(px(x), py(y), 5, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.fillStyle = "#667085";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(state.dataset === "sinc" ? "model (solid), sin(5πx)/(5πx) (dashed)" : "model", 12, 14);
}

// ------------------------------------------------------------------ start
const chart = new TrafficChart($("chart"), $("chart-legend"));

async function pollMetrics() {
  try {
    chart.add(await call("/monitoring/prometheus/metrics"), performance.now());
  } catch { /* the model list's poll reports a server that went away */ }
}

async function loop() {
  await Promise.all([refreshModels(), pollMetrics()]);
  setTimeout(loop, POLL_MS);
}

bindToken($("token"));
window.addEventListener("hashchange", route);
route();
loop();
