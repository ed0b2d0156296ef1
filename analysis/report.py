"""One static page, reports/index.html, gathering every study's figures with captions that name the
report figure reproduced, what the report claimed and what we measured; checked in headless
Chromium, which loads the page, confirms every image decoded, and takes a screenshot.

    python -m analysis.report                 # page from the studies already in reports/
    python -m analysis.report --run           # run every study in full first (make report)
    python -m analysis.report --run --quick   # the whole pipeline in a few minutes
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.study_files import DEFAULT_OUT, SMOKE_VERDICT
from serving import quiet

# (section, studies) in the order of the page; every study is `python -m analysis.NAME`.
SECTIONS = (
    ("Report 1: Deep Learning Models to Train MNIST Dataset",
     ("function_fit", "mnist_curves", "trajectories", "grad_norm", "minimal_ratio")),
    ("Report 2: Deep Learning with PyTorch", ("digits",)),
    ("What report 1 left out: generalization",
     ("random_labels", "params_vs_generalization", "flatness")),
    ("Beyond the reports: landscape and curvature", ("landscape", "hessian")),
)
STUDIES = tuple(s for _, names in SECTIONS for s in names)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(Exception):
    """Chromium is missing, failed, or the page it rendered is broken."""


# ----------------------------------------------------------------------------- running studies


def run_studies(out: Path, quick: bool, studies=STUDIES) -> dict[str, dict]:
    """Each study in its own process (fresh TensorFlow state, its own memory), in page order;
    one failing study is reported and the others still run."""
    outcome, t_all = {}, time.perf_counter()
    for i, name in enumerate(studies, 1):
        cmd = [sys.executable, "-m", f"analysis.{name}", "--out", str(out)]
        cmd += ["--quick"] if quick else []
        print(f"[report] study {i}/{len(studies)}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        seconds = time.perf_counter() - t0
        outcome[name] = {"exit_status": rc, "seconds": round(seconds, 1)}
        done = time.perf_counter() - t_all
        print(f"[report] {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{seconds:.0f}s; {done / 60:.1f} min so far", flush=True)
    return outcome


# ----------------------------------------------------------------------------- the page


def collect(out: Path) -> dict[str, dict | None]:
    """Every study's JSON document, or None for a study not run (or whose JSON is unreadable)."""
    docs = {}
    for name in STUDIES:
        path = out / name / f"{name}.json"
        try:
            docs[name] = json.loads(path.read_text())
        except (OSError, ValueError):
            docs[name] = None
    return docs


def render(docs: dict[str, dict | None], runs: dict[str, dict] | None = None) -> str:
    e = html.escape
    parts = [_HEAD, "<h1>Keras Model Zoo: the two reports, reproduced and extended</h1>",
             f"<p class=meta>Built {e(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} from "
             f"{sum(d is not None for d in docs.values())} of {len(docs)} studies. Each section "
             "shows what the report claimed and what we measured; every number is in the "
             "study's JSON beside its figures.</p>", _summary_table(docs)]
    for section, names in SECTIONS:
        parts.append(f"<h2>{e(section)}</h2>")
        for name in names:
            parts.append(_study_html(name, docs.get(name), (runs or {}).get(name)))
    parts.append(_CHECK_SCRIPT + "</body></html>")
    return "\n".join(parts)


def _summary_table(docs) -> str:
    e = html.escape
    rows = []
    for name in STUDIES:
        doc = docs.get(name)
        if doc is None:
            rows.append(f"<tr><td><a href='#{name}'>{name}</a></td><td colspan=3 class=missing>"
                        "not run</td></tr>")
            continue
        cost = doc.get("cost", {})
        work = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in cost.items()
                         if k != "wall_seconds")
        figs = "; ".join(dict.fromkeys(c.get("report_figure", "") for c in doc.get("claims", [])))
        rows.append(f"<tr><td><a href='#{name}'>{name}</a></td><td>{e(figs)}</td>"
                    f"<td class=num>{cost.get('wall_seconds', 0):.0f} s</td><td>{e(work)}</td>"
                    "</tr>")
    return ("<table class=summary><tr><th>study</th><th>reproduces</th><th>wall time</th>"
            "<th>work counted</th></tr>" + "".join(rows) + "</table>")


def _study_html(name: str, doc: dict | None, run: dict | None) -> str:
    e = html.escape
    if doc is None:
        why = (f"its run failed (exit {run['exit_status']})" if run and run["exit_status"]
               else "not run yet")
        return (f"<section id={name}><h3>{name}</h3><p class=missing>{e(why)}: "
                f"<code>python -m analysis.{name}</code></p></section>")
    cfg = doc.get("config", {})
    quick = bool(cfg.get("quick"))
    mode = "quick (smoke-test size)" if quick else "full"
    prec = doc.get("precision") or {}
    precisions = (f"trained in {e(str(prec.get('training')))}, measured in "
                  f"{e(str(prec.get('measurement')))}; " if prec else "")
    out = [f"<section id={name}><h3>{name}</h3>",
           f"<p class=meta>{mode} run, seed {cfg.get('seed')}, {doc['cost']['wall_seconds']:.0f} s"
           f", created {e(doc.get('created', ''))}; {precisions}data: "
           f"<a href='{name}/{name}.json'>{name}.json</a></p>"]
    for c in doc.get("claims", []):
        # A smoke-size run decides nothing, whatever its JSON says; a full run shows its own.
        verdict = SMOKE_VERDICT if quick else c.get("verdict")
        out.append("<div class=claim>"
                   f"<div><b>{e(c.get('report_figure', ''))}</b></div>"
                   f"<div><span class=tag>claimed</span> {e(c.get('claim', ''))}</div>"
                   f"<div><span class='tag ours'>measured</span> {e(c.get('measured', ''))}</div>"
                   + (f"<div><span class=tag>verdict</span> {e(verdict)}</div>" if verdict
                      else "") + "</div>")
    for fig in doc.get("figures", []):
        src = f"{name}/{fig['file']}"
        out.append(f"<figure><a href='{e(src)}'><img src='{e(src)}' alt='{e(fig['file'])}'>"
                   f"</a><figcaption>{e(fig['caption'])}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


_HEAD = """<!doctype html><html lang=en><head><meta charset=utf-8>
<title>Keras Model Zoo: analysis report</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-bottom:.2em}
.meta{color:#666;font-size:.9em}.missing{color:#b00}
table.summary{border-collapse:collapse;font-size:.9em}
table.summary td,table.summary th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right}
.claim{background:#f6f8fa;border-left:4px solid #4a7;padding:.5em .8em;margin:.6em 0}
.tag{display:inline-block;min-width:5.5em;font-size:.8em;color:#555}.tag.ours{color:#174}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444}
</style></head><body>"""

# Lets the browser itself say whether every figure decoded, for check_in_browser.
_CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesOk = ok + '/' + imgs.length;
  document.body.dataset.height = document.documentElement.scrollHeight;
});
</script>"""


def write_page(out: Path, runs: dict[str, dict] | None = None) -> Path:
    page = out / "index.html"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".index.", suffix=".html")
    with os.fdopen(fd, "w") as f:
        f.write(render(collect(out), runs))
    os.replace(tmp, page)
    return page


# ----------------------------------------------------------------------------- the browser check


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def check_in_browser(page: Path, screenshot: Path, width: int = 1280,
                     max_height: int = 30000) -> dict:
    """Load the page in headless Chromium: every <img> must decode; then a full-page screenshot.
    Returns {"images_ok", "images", "height", "screenshot"}."""
    browser = find_browser()
    if browser is None:
        raise BrowserError("no Chromium found (apt-get install chromium)")
    url = page.resolve().as_uri()
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--allow-file-access-from-files", "--virtual-time-budget=10000",
            f"--user-data-dir={tempfile.mkdtemp(prefix='zoo-chromium-')}"]
    dom = _browser(base + [f"--window-size={width},1000", "--dump-dom", url]).stdout
    ok = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    height = re.search(r'data-height="(\d+)"', dom)
    if not ok or not height:
        raise BrowserError("the page's check script did not run in Chromium")
    loaded, total = int(ok.group(1)), int(ok.group(2))
    if loaded != total:
        raise BrowserError(f"only {loaded} of {total} figures decoded in Chromium")
    h = min(int(height.group(1)), max_height)
    screenshot.unlink(missing_ok=True)
    _browser(base + [f"--window-size={width},{h}", f"--screenshot={screenshot.resolve()}", url])
    if not screenshot.exists():
        raise BrowserError("Chromium wrote no screenshot")
    return {"images_ok": loaded, "images": total, "height": h, "screenshot": str(screenshot)}


def _browser(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        raise BrowserError("Chromium took over 120 s") from err
    if r.returncode != 0:
        raise BrowserError(f"Chromium exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return r


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split(
        "\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report root (default: "
                   "%(default)s)")
    p.add_argument("--run", action="store_true", help="run every study first, in full")
    p.add_argument("--quick", action="store_true", help="with --run: the studies' --quick size")
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES),
                   help="with --run: only these")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium check")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    runs = run_studies(args.out, args.quick, args.studies) if args.run else None
    page = write_page(args.out, runs)
    print(f"[report] page: {page}")
    status = 1 if runs and any(r["exit_status"] for r in runs.values()) else 0
    if not args.no_browser:
        try:
            seen = check_in_browser(page, args.out / "index.png")
        except BrowserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"[report] Chromium: {seen['images_ok']}/{seen['images']} figures decoded; "
              f"screenshot {seen['screenshot']} ({seen['height']} px tall)")
    print(f"[report] done in {(time.perf_counter() - t0) / 60:.1f} min")
    return status


if __name__ == "__main__":
    sys.exit(main())
