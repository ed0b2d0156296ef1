// A drawing or an image made into what the digit classifiers expect, the way MNIST was made
// (LeCun et al.): grey levels, the ink scaled into a 20x20 box keeping its aspect ratio
// (anti-aliased: here by area averaging), then placed in 28x28 so that its centre of mass is at
// the centre (where MNIST's are). Pixels are raw intensities 0-255, ink high, as the exported signature takes them.

const BOX = 20;
const SIDE = 28;
// Of the darkest ink: fainter pixels (a scan's or a photo's noise) do not widen the bounding box.
const INK_FLOOR = 0.02;

// Ink (0-255, ink high) of RGBA pixels. Transparent pixels are background. The background is
// whichever of dark or light the image's border mostly is: pen on paper and MNIST's own
// white-on-black PNGs both work.
export function inkOf(rgba, width, height) {
  const grey = new Float32Array(width * height);
  for (let i = 0; i < grey.length; i++) {
    const a = rgba[4 * i + 3] / 255;
    const g = 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
    grey[i] = a * g + (1 - a) * 255; // over white
  }
  let border = 0, n = 0;
  for (let x = 0; x < width; x++) { border += grey[x] + grey[(height - 1) * width + x]; n += 2; }
  for (let y = 0; y < height; y++) { border += grey[y * width] + grey[y * width + width - 1]; n += 2; }
  const darkBackground = border / n < 128;
  if (darkBackground) { // transparent pixels are background there too
    for (let i = 0; i < grey.length; i++) grey[i] *= rgba[4 * i + 3] / 255;
    return grey;
  }
  return grey.map((g) => 255 - g);
}

// Area-averaging weights from n source cells onto m output cells: [[index, weight], ...] each.
function areaWeights(n, m) {
  const scale = n / m, out = [];
  for (let o = 0; o < m; o++) {
    const a = o * scale, b = (o + 1) * scale, cells = [];
    for (let i = Math.floor(a); i < Math.min(n, Math.ceil(b)); i++) {
      const overlap = Math.min(b, i + 1) - Math.max(a, i);
      if (overlap > 0) cells.push([i, overlap / scale]);
    }
    out.push(cells);
  }
  return out;
}

function resample(src, width, height, x0, y0, w, h, outW, outH) {
  const wx = areaWeights(w, outW), wy = areaWeights(h, outH);
  const rows = new Float32Array(h * outW); // along x first
  for (let y = 0; y < h; y++) {
    for (let o = 0; o < outW; o++) {
      let s = 0;
      for (const [i, k] of wx[o]) s += k * src[(y0 + y) * width + x0 + i];
      rows[y * outW + o] = s;
    }
  }
  const out = new Float32Array(outW * outH);
  for (let o = 0; o < outH; o++) {
    for (let x = 0; x < outW; x++) {
      let s = 0;
      for (const [i, k] of wy[o]) s += k * rows[i * outW + x];
      out[o * outW + x] = s;
    }
  }
  return out;
}

// The 28x28 input (Float32Array, row-major, 0-255) for ink of width x height, or null when
// there is no ink at all.
export function mnistInput(ink, width, height) {
  let max = 0;
  for (const v of ink) max = Math.max(max, v);
  if (max <= 0) return null;
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] >= INK_FLOOR * max) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  const w = x1 - x0 + 1, h = y1 - y0 + 1, scale = BOX / Math.max(w, h);
  const outW = Math.max(1, Math.round(w * scale)), outH = Math.max(1, Math.round(h * scale));
  const boxed = resample(ink, width, height, x0, y0, w, h, outW, outH);
  let peak = 0, mass = 0, cx = 0, cy = 0;
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const v = boxed[y * outW + x];
      peak = Math.max(peak, v); mass += v; cx += v * x; cy += v * y;
    }
  }
  // MNIST's strokes reach full intensity; a faint drawing (thin pen, small digit) is brought
  // up to it so that it reads as ink.
  const gain = 255 / peak;
  // MNIST's centres of mass sit at 14 (pixel indices 0-27), not 13.5: measured on its test set.
  const dx = Math.round(SIDE / 2 - cx / mass), dy = Math.round(SIDE / 2 - cy / mass);
  const out = new Float32Array(SIDE * SIDE);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const tx = x + dx, ty = y + dy;
      if (tx >= 0 && tx < SIDE && ty >= 0 && ty < SIDE) {
        out[ty * SIDE + tx] = Math.min(255, boxed[y * outW + x] * gain);
      }
    }
  }
  return out;
}

// The input as 28 rows of 28 numbers, rounded as MNIST's bytes are.
export function asRows(pixels) {
  const rows = [];
  for (let y = 0; y < SIDE; y++) {
    rows.push(Array.from(pixels.subarray(y * SIDE, (y + 1) * SIDE), (v) => Math.round(v)));
  }
  return rows;
}

// What the model sees, white on black like MNIST, on a 28x28 canvas.
export function show(pixels, canvas) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const v = Math.round(pixels[i]);
    image.data.set([v, v, v, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
}
