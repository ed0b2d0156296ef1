"""The report page: built from real --quick study runs, loaded in headless Chromium."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest

from analysis import report

needs_chromium = pytest.mark.skipif(report.find_browser() is None,
                                    reason="Chromium not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory):
    """Two studies really run (--quick) through the same entry point `make report` uses."""
    out = tmp_path_factory.mktemp("reports")
    status = report.main(["--run", "--quick", "--studies", "digits", "random_labels",
                          "--out", str(out), "--no-browser"])
    assert status == 0
    return out


def test_page_gathers_figures_claims_and_missing_studies(page_dir):
    text = (page_dir / "index.html").read_text()
    for name in ("digits", "random_labels"):
        doc = json.loads((page_dir / name / f"{name}.json").read_text())
        for fig in doc["figures"]:
            assert f"src='{name}/{fig['file']}'" in text
        for claim in doc["claims"]:
            assert claim["report_figure"] in text
    for name in ("digits", "random_labels"):  # quick runs: every claim left undecided
        doc = json.loads((page_dir / name / f"{name}.json").read_text())
        assert text.count(report.SMOKE_VERDICT) >= len(doc["claims"])
    # studies not run are listed with the command that makes them
    assert "python -m analysis.landscape" in text
    assert text.count("not run") >= len(report.STUDIES) - 2


def _doc(quick: bool, verdict):
    return {"config": {"quick": quick, "seed": 0}, "cost": {"wall_seconds": 1.0},
            "precision": {"training": "mixed_bfloat16", "measurement": "float32"},
            "claims": [{"report_figure": "report 1, Figs 1-6", "claim": "deeper fits better",
                        "measured": "MSE 0.01 vs 0.02", "verdict": verdict}],
            "figures": []}


def test_the_page_shows_a_verdict_only_for_full_runs_and_the_precisions():
    page = report.render({"function_fit": _doc(True, "yes")})
    claim = page[page.index("id=function_fit"):]
    assert report.SMOKE_VERDICT in claim and "> yes<" not in claim  # a forged quick "yes"
    assert "trained in mixed_bfloat16, measured in float32" in claim
    page = report.render({"function_fit": _doc(False, "no")})
    claim = page[page.index("id=function_fit"):]
    assert "<span class=tag>verdict</span> no</div>" in claim
    assert report.SMOKE_VERDICT not in claim
    page = report.render({"function_fit": _doc(False, None)})  # a claim without a verdict
    assert "class=tag>verdict" not in page


@needs_chromium
def test_chromium_decodes_every_figure_and_screenshots_the_page(page_dir):
    shot = page_dir / "index.png"
    seen = report.check_in_browser(page_dir / "index.html", shot)
    figures = sum(len(json.loads((page_dir / n / f"{n}.json").read_text())["figures"])
                  for n in ("digits", "random_labels"))
    assert seen["images_ok"] == seen["images"] == figures
    img = matplotlib.image.imread(shot)
    assert img.shape[1] == 1280 and img.shape[0] == seen["height"] > 1000
    assert np.asarray(img).std() > 0.05  # not a blank page


@needs_chromium
def test_a_missing_figure_is_caught_by_the_browser(page_dir, tmp_path):
    broken = tmp_path / "reports"
    for name in ("digits",):
        (broken / name).mkdir(parents=True)
        for f in (page_dir / name).iterdir():
            (broken / name / f.name).write_bytes(f.read_bytes())
    doc = json.loads((broken / "digits" / "digits.json").read_text())
    (broken / "digits" / doc["figures"][0]["file"]).unlink()
    page = report.write_page(broken)
    with pytest.raises(report.BrowserError, match=f"of {len(doc['figures'])} figures"):
        report.check_in_browser(page, tmp_path / "shot.png")
