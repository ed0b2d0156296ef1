"""The studies' command lines: a bad number is one line and status 2 before anything is made;
a report is swapped in whole, so a study that fails or is interrupted (Ctrl-C: status 130)
leaves the previous report as it was."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import pytest

from analysis import cli, report, study_files
from tests.conftest import ROOT, subprocess_env
from training import cli_types

STUDIES = report.STUDIES

# Every numeric flag of every study, with a value each must refuse: counts, sizes and steps
# must be positive, rates and scales positive and finite, fractions in [0, 1].
REFUSED = {
    "digits": [("--steps", "0"), ("--samples", "0")],
    "flatness": [("--batch-sizes", "0"), ("--small-batch", "-64"), ("--large-batch", "0"),
                 ("--epochs", "0"), ("--seeds", "0"), ("--train-limit", "0"),
                 ("--alphas", "0"), ("--eval-train", "0"), ("--eval-test", "-1"),
                 ("--jacobian-images", "0")],
    "function_fit": [("--seeds", "0"), ("--seeds", "-2"), ("--epochs", "0")],
    "grad_norm": [("--steps", "0"), ("--seeds", "0"), ("--learning-rate", "0"),
                  ("--learning-rate", "-0.05"), ("--learning-rate", "nan")],
    "hessian": [("--epochs", "0"), ("--steps-per-epoch", "0"), ("--train-limit", "0"),
                ("--examples", "0"), ("--batch-size", "0"), ("--top-k", "0"),
                ("--lanczos-steps", "0"), ("--trace-samples", "1"), ("--slq-runs", "0"),
                ("--slq-steps", "0"), ("--exact-max", "-1")],
    "landscape": [("--epochs", "0"), ("--train-limit", "0"), ("--eval-images", "0"),
                  ("--grid", "1"), ("--points", "-1"), ("--span", "0"), ("--span", "inf"),
                  ("--directions", "0")],
    "minimal_ratio": [("--runs", "0"), ("--examples", "0"), ("--train-steps", "0"),
                      ("--gn-steps", "-1"), ("--gn-lr", "0"), ("--max-params", "0"),
                      ("--eig-tol", "-1e-6"), ("--grad-tol", "-1"), ("--flat-tol", "-1"),
                      ("--perturbations", "0"), ("--perturb-scale", "0")],
    "mnist_curves": [("--seeds", "0"), ("--epochs", "0"), ("--train-limit", "0")],
    "params_vs_generalization": [("--factors", "0"), ("--factors", "-0.5"),
                                 ("--train-limit", "0"), ("--epochs", "0"), ("--seeds", "0")],
    "random_labels": [("--fractions", "1.5"), ("--fractions", "-0.1"), ("--train-limit", "0"),
                      ("--epochs", "0"), ("--batch-size", "0"), ("--seeds", "0")],
    "trajectories": [("--runs", "0"), ("--epochs", "0"), ("--every", "0"),
                     ("--train-limit", "0"), ("--learning-rate", "0")],
}


def _parse_error(parser, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err  # one line, no usage block
    return err


def test_every_numeric_flag_of_every_study_refuses_zero_negative_and_non_finite(tmp_path,
                                                                                capsys):
    assert set(REFUSED) == set(STUDIES)
    for name, cases in REFUSED.items():
        parser = importlib.import_module(f"analysis.{name}").build_parser()
        for flag, value in cases:
            err = _parse_error(parser, ["--quick", flag, value, "--out", str(tmp_path)], capsys)
            assert err.startswith(f"error: argument {flag}: "), (name, err)
    assert not any(tmp_path.iterdir())


def test_every_study_takes_seeds_0_to_2_32_minus_1_only(tmp_path, capsys):
    for name in STUDIES:
        parser = importlib.import_module(f"analysis.{name}").build_parser()
        for bad in ("-1", str(2**32), "99999999999999999999", "1.5"):
            err = _parse_error(parser, ["--seed", bad], capsys)
            assert err.startswith("error: argument --seed: "), err
        assert parser.parse_args(["--seed", str(cli_types.MAX_SEED)]).seed == 2**32 - 1


def test_seeds_of_several_runs_past_2_32_are_refused_before_anything_is_made(tmp_path, capsys):
    from analysis import grad_norm

    out = tmp_path / "reports"
    argv = ["--quick", "--seed", str(cli_types.MAX_SEED), "--out", str(out)]
    assert cli.run(grad_norm.main, grad_norm.build_parser(), argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"error: --seed {cli_types.MAX_SEED} with --seeds 2 needs seeds up to {2**32}; seeds go "
        f"up to {cli_types.MAX_SEED} (2**32-1)")
    assert not out.exists()
    args = grad_norm.build_parser().parse_args(["--seed", str(cli_types.MAX_SEED - 1)])
    assert cli.run_seeds(args, 2) == [2**32 - 2, 2**32 - 1]


@pytest.mark.slow
def test_the_command_lines_of_issue_16_are_one_line_and_status_2(tmp_path):
    for argv in (["function_fit", "--quick", "--seeds", "0"],
                 ["landscape", "--quick", "--seed", "-1"],
                 ["hessian", "--quick", "--examples", "0"]):
        done = subprocess.run([sys.executable, "-m", f"analysis.{argv[0]}", *argv[1:],
                               "--out", str(tmp_path)], cwd=ROOT, env=subprocess_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (argv, done.stderr)
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: argument "), done.stderr
        assert not any(tmp_path.iterdir()), "nothing may be made"


# ----------------------------------------------------------------------------- the report swap


def _previous_report(out, name="demo") -> dict[str, bytes]:
    """A previous report of the study `name` in out: its JSON and two figures."""
    d = out / name
    d.mkdir(parents=True)
    files = {f"{name}.json": json.dumps({"study": name, "old": True}).encode(),
             "a.png": b"\x89PNG old figure a", "b.png": b"\x89PNG old figure b"}
    for f, content in files.items():
        (d / f).write_bytes(content)
    return files


def _contents(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _one_figure(study):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    study.savefig(fig, "a.png", "a line")


def test_a_study_that_fails_midway_leaves_the_previous_report_as_it_was(tmp_path, capsys):
    old = _previous_report(tmp_path)

    def fails_after_a_figure(args):
        study = study_files.Study("demo", args)
        _one_figure(study)
        assert (study.out_dir / "a.png").exists() and study.out_dir != tmp_path / "demo"
        raise cli_types.UsageError("the data ran out")

    parser = cli.build_parser("demo", "demo")
    assert cli.run(fails_after_a_figure, parser, ["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: the data ran out"
    assert _contents(tmp_path / "demo") == old
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary left behind

    def bug(args):
        study = study_files.Study("demo", args)
        _one_figure(study)
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        cli.run(bug, parser, ["--out", str(tmp_path)])
    assert _contents(tmp_path / "demo") == old
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_finish_swaps_the_whole_new_report_in(tmp_path):
    _previous_report(tmp_path, "digits")
    args = cli.build_parser("digits", "demo").parse_args(["--out", str(tmp_path)])
    study = study_files.Study("digits", args)
    _one_figure(study)
    assert _contents(tmp_path / "digits")["a.png"] == b"\x89PNG old figure a"  # not yet
    out = study.finish({"x": 1.0})
    new = _contents(tmp_path / "digits")
    assert set(new) == {"digits.json", "a.png"}  # the old report's b.png went with it
    assert new["a.png"].startswith(b"\x89PNG") and len(new["a.png"]) > 1000
    assert out["json"] == str(tmp_path / "digits" / "digits.json")
    assert study.out_dir == tmp_path / "digits"
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]
    assert report.collect(tmp_path)["digits"]["results"] == {"x": 1.0}  # the page reads it


def test_leftovers_of_a_killed_run_are_cleared_and_a_report_set_aside_comes_back(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = _previous_report(tmp_path)
    (tmp_path / "demo").rename(tmp_path / f".demo.old-{dead.pid}-1a2b3c4d")  # killed mid-swap
    (tmp_path / f".demo.tmp-{dead.pid}-x1y2z3").mkdir()
    alive = tmp_path / f".demo.tmp-{os.getpid()}-stillrunning"
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}-abc"
    other.mkdir()
    args = cli.build_parser("demo", "demo").parse_args(["--out", str(tmp_path)])
    study = study_files.Study("demo", args)
    assert _contents(tmp_path / "demo") == old
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"demo", alive.name, other.name, study.out_dir.name}
    study.abort()
    assert {p.name for p in tmp_path.iterdir()} == {"demo", alive.name, other.name}


def test_an_out_that_cannot_hold_a_report_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    parser = cli.build_parser("demo", "demo")
    for out, why in ((tmp_path / "file", "cannot write a report there"),
                     (tmp_path / "file" / "below", "cannot write a report there")):
        assert cli.run(lambda args: study_files.Study("demo", args).finish({}), parser,
                          ["--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: --out {out}: ") and why in err[-1], err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo").write_text("")
    assert cli.run(lambda args: study_files.Study("demo", args).finish({}), parser,
                      ["--out", str(tmp_path / "out")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "demo").read_text() == ""
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"demo"}


@pytest.mark.slow
def test_ctrl_c_while_figures_are_written_exits_130_and_keeps_the_previous_report(tmp_path):
    old = _previous_report(tmp_path, "digits")
    proc = subprocess.Popen([sys.executable, "-m", "analysis.digits", "--quick",
                             "--out", str(tmp_path)], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        # Wait until the study has begun writing its new report: a file in its temporary.
        while not any(f for d in tmp_path.glob(".digits.tmp-*") for f in d.iterdir()):
            assert proc.poll() is None, f"the study ended first: {proc.communicate()}"
            assert time.monotonic() < deadline, "no figure within the deadline"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: nothing written, {tmp_path / 'digits'} is as it was")
    assert "report:" not in stdout
    assert _contents(tmp_path / "digits") == old
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]
