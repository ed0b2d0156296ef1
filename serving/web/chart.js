// The live traffic chart: requests/s and p50/p99 latency per model, from the server's
// Prometheus text (GET /monitoring/prometheus/metrics), drawn on a canvas.
//
// requests/s: the change of `:tensorflow:serving:request_count` (every answer, any status)
// between two scrapes over the time between them. Latency: the change of the
// `:tensorflow:serving:request_latency` histogram (microseconds, successful requests, all APIs
// summed) between two scrapes, its quantiles interpolated linearly within a bucket as
// Prometheus' histogram_quantile does.

const COUNT = ":tensorflow:serving:request_count";
const BUCKET = ":tensorflow:serving:request_latency_bucket";
const WINDOW_SECONDS = 120;
const COLOURS = ["#2f6fdf", "#e8590c", "#0ca678", "#ae3ec9", "#f59f00", "#1098ad", "#e03131"];
const SAMPLE = /^([^\s{]+)(?:\{([^}]*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

// {model: {count, buckets: Map(le -> cumulative count)}} from Prometheus text.
export function parseMetrics(text) {
  const models = {};
  const of = (name) => (models[name] ??= { count: 0, buckets: new Map() });
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = SAMPLE.exec(line);
    if (!m || (m[1] !== COUNT && m[1] !== BUCKET)) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(LABEL)) labels[k] = v;
    const value = Number(m[3]);
    if (m[1] === COUNT) {
      of(labels.model_name).count += value;
    } else {
      const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
      const buckets = of(labels.model_name).buckets;
      buckets.set(le, (buckets.get(le) || 0) + value);
    }
  }
  return models;
}

// The q-quantile of the observations that fell between two cumulative bucket snapshots.
export function quantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - ((before && before.get(le)) || 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      if (bounds[i] === Infinity) return bounds[i - 1] ?? null;
      const lower = i ? bounds[i - 1] : 0, below = i ? counts[i - 1] : 0;
      const inBucket = counts[i] - below;
      return lower + (bounds[i] - lower) * (inBucket ? (rank - below) / inBucket : 1);
    }
  }
  return null;
}

export class TrafficChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.legend = legend;
    this.previous = null; // {time, models}
    this.series = new Map(); // model -> [{time, rate, p50, p99}]
  }

  // One scrape: Prometheus text read at `time` (ms).
  add(text, time) {
    const models = parseMetrics(text);
    if (this.previous) {
      const seconds = (time - this.previous.time) / 1000;
      for (const [name, now] of Object.entries(models)) {
        const then = this.previous.models[name];
        const delta = now.count - (then ? then.count : 0);
        const point = {
          time,
          rate: Math.max(0, delta) / seconds,
          p50: quantile(0.5, then && then.buckets, now.buckets),
          p99: quantile(0.99, then && then.buckets, now.buckets),
        };
        if (!this.series.has(name)) this.series.set(name, []);
        this.series.get(name).push(point);
      }
      for (const points of this.series.values()) {
        while (points.length && points[0].time < time - WINDOW_SECONDS * 1000) points.shift();
      }
    }
    this.previous = { time, models };
    this.draw(time);
  }

  colour(name) {
    const names = [...this.series.keys()].sort();
    return COLOURS[names.indexOf(name) % COLOURS.length];
  }

  draw(now) {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const width = c.clientWidth, height = c.clientHeight;
    c.width = Math.round(width * dpr);
    c.height = Math.round(height * dpr);
    const ctx = c.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, width, height);
    const half = (height - 12) / 2;
    const all = [...this.series.values()].flat();
    const rateMax = niceMax(Math.max(0, ...all.map((p) => p.rate)));
    const msMax = niceMax(Math.max(0, ...all.flatMap((p) => [p.p50, p.p99])
      .filter((v) => v !== null).map((v) => v / 1000)));
    const panels = [
      { top: 0, title: "requests/s", max: rateMax, lines: [["rate", 1, []]] },
      { top: half + 12, title: "latency ms (p50 solid, p99 dashed)", max: msMax,
        lines: [["p50", 1e-3, []], ["p99", 1e-3, [5, 4]]] },
    ];
    const left = 44, right = width - 8;
    const x = (t) => left + (right - left) * (1 - (now - t) / (WINDOW_SECONDS * 1000));
    ctx.font = "11px system-ui, sans-serif";
    for (const panel of panels) {
      const y = (v) => panel.top + half - 4 - (half - 20) * (v / panel.max);
      ctx.strokeStyle = "#d9dee7";
      ctx.fillStyle = "#667085";
      ctx.setLineDash([]);
      ctx.strokeRect(left, panel.top + 14, right - left, half - 18);
      ctx.fillText(panel.title, left, panel.top + 10);
      ctx.fillText(formatNumber(panel.max), 2, y(panel.max) + 4);
      ctx.fillText("0", 2, y(0));
      for (const [name, points] of this.series) {
        ctx.strokeStyle = this.colour(name);
        ctx.lineWidth = 1.6;
        for (const [key, scale, dash] of panel.lines) {
          ctx.setLineDash(dash);
          ctx.beginPath();
          let pen = false;
          for (const p of points) {
            if (p[key] === null) { pen = false; continue; }
            const px = x(p.time), py = y(p[key] * scale);
            if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
            pen = true;
          }
          ctx.stroke();
        }
      }
    }
    ctx.setLineDash([]);
    ctx.fillStyle = "#667085";
    ctx.fillText(`last ${WINDOW_SECONDS} s`, right - 60, height - 1);
    this.drawLegend();
  }

  drawLegend() {
    this.legend.replaceChildren(...[...this.series.keys()].sort().map((name) => {
      const points = this.series.get(name), last = points[points.length - 1];
      const recent = points.filter((p) => p.p50 !== null).pop();
      const li = document.createElement("li");
      li.dataset.model = name;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = this.colour(name);
      const ms = (v) => `${(v / 1000).toPrecision(3)} ms`;
      li.append(swatch, `${name}: ${last ? last.rate.toFixed(2) : "0"} req/s` +
        (recent ? `, p50 ${ms(recent.p50)}, p99 ${ms(recent.p99)}` : ", no answers yet"));
      return li;
    }));
  }
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((k) => k * step).find((m) => m >= v);
}

function formatNumber(v) {
  return v >= 100 ? v.toFixed(0) : String(+v.toPrecision(2));
}
