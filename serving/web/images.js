// What "Try it" can send a version, from its signature alone, and an image made into the
// input of an image model as training read its folder (training/data_paths.py): resized to
// the input's height and width, then grey levels (Pillow's "L": ITU-R 601-2 luma) or RGB.

const float = (t) => (t.dtype || "").replace(/^DT_/, "").toLowerCase();
const dimsOf = (t) => ((t.tensor_shape && t.tensor_shape.dim) || []).map((d) => Number(d.size));
const shapeText = (dims) => `[${dims.map((d) => (d === -1 ? "batch" : d)).join(", ")}]`;

// {mode: "digit" | "image" | "scalar" | null, input, image: {height, width, channels}, why}.
// channels 0: the input is (batch, H, W), grey without a channel axis.
export function inputKind(sig) {
  const inputs = Object.entries((sig && sig.inputs) || {});
  if (inputs.length !== 1) {
    return { mode: null, input: null, why: inputs.length
      ? `This signature takes ${inputs.length} inputs (${inputs.map(([n]) => n).join(", ")}): ` +
        "the page tries models of one input only."
      : "This version has no serving_default signature with inputs: there is nothing to try." };
  }
  const [input, t] = inputs[0];
  const dims = dimsOf(t);
  const described = `${input}: ${float(t)} ${shapeText(dims)}`;
  if (float(t) !== "float") {
    return { mode: null, input, why: `This model takes ${described}; the page sends float32 ` +
      "numbers only, so it cannot try it." };
  }
  const key = dims.join(",");
  if (key === "-1,28,28") return { mode: "digit", input };
  if (key === "-1,1") return { mode: "scalar", input };
  const [batch, height, width, channels] = dims;
  const image = batch === -1 && height > 0 && width > 0 &&
    (dims.length === 3 || (dims.length === 4 && (channels === 1 || channels === 3)));
  if (image) return { mode: "image", input, image: { height, width, channels: dims.length === 3 ? 0 : channels } };
  return { mode: null, input, why: `This model takes ${described}: the page can try images ` +
    "[batch, height, width] or [batch, height, width, 1 or 3] and one number [batch, 1], " +
    "not this input." };
}

// {instance, rgba}: the JSON instance for an image input of height x width and `channels`
// (0, 1 or 3), and what it looks like (RGBA bytes, for the preview).
export function imageInput(bitmap, height, width, channels) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  const px = ctx.getImageData(0, 0, width, height).data;
  const rgba = new Uint8ClampedArray(4 * width * height);
  const instance = [];
  for (let y = 0; y < height; y++) {
    const row = [];
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x), [r, g, b] = [px[i], px[i + 1], px[i + 2]];
      if (channels === 3) {
        row.push([r, g, b]);
        rgba.set([r, g, b, 255], i);
      } else {
        const l = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's convert("L")
        row.push(channels === 1 ? [l] : l);
        rgba.set([l, l, l, 255], i);
      }
    }
    instance.push(row);
  }
  return { instance, rgba };
}
