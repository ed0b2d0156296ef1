// A version's certificate (its metadata.json, serving/metadata.schema.json) and signature,
// written out for people: what the model is, how it was trained, what it measured, whether its
// three runtimes agree, and the checksum of every file.

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function list(pairs) {
  return el("dl", {}, ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

const count = (n) => Number(n).toLocaleString("en-US");
const pct = (v) => `${(100 * v).toFixed(2)}%`;
const sci = (v) => (v === 0 ? "0" : Number(v).toExponential(2));
const verdict = (ok, yes = "yes", no = "no") => el("span", { class: ok ? "ok" : "no" }, ok ? yes : no);
const shape = (dims) => `[${dims.map((d) => (d === -1 || d === "-1" ? "batch" : d)).join(", ")}]`;

function bytes(n) {
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// The signature from GET .../metadata (TF Serving's SignatureDefMap as JSON).
export function signatureTable(metadata) {
  const defs = metadata.metadata.signature_def.signature_def;
  const rows = [];
  for (const [sig, def] of Object.entries(defs)) {
    if (sig.startsWith("__")) continue; // TF's internal signatures (__saved_model_init_op)
    for (const [kind, tensors] of [["input", def.inputs], ["output", def.outputs]]) {
      for (const [name, t] of Object.entries(tensors || {})) {
        const dims = (t.tensor_shape && t.tensor_shape.dim || []).map((d) => Number(d.size));
        rows.push(el("tr", {}, el("td", {}, sig), el("td", {}, kind), el("td", {}, el("code", {}, name)),
          el("td", {}, (t.dtype || "").replace(/^DT_/, "").toLowerCase()), el("td", {}, shape(dims))));
      }
    }
  }
  return el("table", { class: "signature" },
    el("thead", {}, el("tr", {}, ...["signature", "", "tensor", "dtype", "shape"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

export function certificateView(cert, metadata) {
  const c = cert.training.config || {};
  const t = cert.test_metrics, r = cert.reference, a = cert.agreement;
  const shown = new Set(["model", "optimizer", "learning_rate", "schedule", "warmup_epochs",
    "batch_size", "epochs", "steps", "steps_per_epoch", "loss", "seed", "precision",
    "precision_requested", "precision_reason", "dataset", "task"]);
  const metric = r.metric === "accuracy" ? `accuracy ≥ ${r.target}` : `${r.metric} ≤ ${r.target}`;
  const measured = r.metric === "accuracy" ? t.accuracy : t.loss;
  const runtimes = Object.entries(a.max_abs_diff).map(([rt, d]) => [
    `${rt === "onnx" ? `ONNX Runtime (opset ${cert.onnx.opset})` : rt === "savedmodel" ? "SavedModel" : rt} max |diff|`,
    el("span", {}, `${sci(d)} `, verdict(d <= a.tolerance, "within tolerance", "over tolerance"))]);
  const files = Object.entries(cert.files).map(([path, f]) => el("tr", {},
    el("td", {}, el("code", {}, path)), el("td", {}, bytes(f.bytes)), el("td", {}, el("code", {}, f.sha256))));
  return el("div", { class: "certificate" },
    el("h3", {}, "Certificate"),
    list([
      ["model", `${cert.name} v${cert.version}` + (cert.zoo_model !== cert.name ? ` (zoo model ${cert.zoo_model})` : "")],
      ["task", cert.task],
      ["parameters", count(cert.parameters)],
      ["exported", new Date(cert.created).toLocaleString()],
    ]),
    el("h3", {}, "Test result"),
    list([
      ["accuracy", t.accuracy !== undefined ? pct(t.accuracy) : null],
      ["loss", t.loss.toPrecision(4)],
      ["measured on", `${count(t.examples)} test examples, float32 graph`],
      ["reference", el("span", {}, `${metric}${measured !== undefined ? `, measured ${Number(measured).toPrecision(4)}` : ""} `,
        r.met === null ? "(not judged: another dataset)" : verdict(r.met, "met", "not met"))],
      ["provenance", r.provenance],
    ]),
    el("h3", {}, "Training recipe"),
    list([
      ["optimizer", c.optimizer],
      ["learning rate", c.learning_rate !== undefined ? `${c.learning_rate} (${c.schedule || "constant"} schedule)` : null],
      ["batch size", c.batch_size],
      ["epochs", c.epochs !== undefined ? `${c.epochs}` + (cert.training.epochs_completed !== null && cert.training.epochs_completed !== undefined ? ` (${cert.training.epochs_completed} completed)` : "") : null],
      ["steps", c.steps],
      ["loss", c.loss],
      ["seed", c.seed],
      ["precision", `${c.precision} (asked: ${c.precision_requested ?? c.precision}${c.precision_reason ? `; ${c.precision_reason}` : ""})`],
      ["train time", cert.training.train_seconds ? `${cert.training.train_seconds.toFixed(1)} s` : null],
      ["data", `${cert.data.dataset}, from ${cert.data.source}`],
      ["classes", cert.data.class_names ? el("span", { id: "class-names" },
        `${cert.data.class_names.length}: ` + cert.data.class_names.map((n, i) => `${i} ${n}`).join(", ")) : null],
      ["data sha256", el("code", {}, cert.data.sha256)],
      ...Object.entries(c).filter(([k, v]) => !shown.has(k) && v !== null)
        .map(([k, v]) => [k.replaceAll("_", " "), String(v)]),
    ]),
    el("h3", {}, "Export agreement"),
    list([
      ["checked on", `${count(a.examples)} test inputs` + (a.batch_sizes ? `, batch sizes ${a.batch_sizes.join(" and ")}` : "")],
      ["tolerance", sci(a.tolerance)],
      ...runtimes,
      ["same classes", a.identical_classes === undefined ? null : verdict(a.identical_classes)],
      ["vs training precision", a.max_abs_diff_vs_training_precision === undefined ? null
        : `${sci(a.max_abs_diff_vs_training_precision)} (informative)`],
    ]),
    el("h3", {}, "Signature"),
    signatureTable(metadata),
    el("h3", {}, "Software"),
    el("p", {}, `Python ${cert.python}; ` + Object.entries(cert.packages)
      .map(([k, v]) => `${k} ${v ?? "(none)"}`).join(", ")),
    el("h3", {}, "Files"),
    el("table", { class: "files" },
      el("thead", {}, el("tr", {}, el("th", {}, "file"), el("th", {}, "size"), el("th", {}, "sha256"))),
      el("tbody", {}, ...files)),
  );
}

export { el };
