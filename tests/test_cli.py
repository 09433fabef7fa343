"""The im2colbp command: every subcommand's success and error paths, exit codes, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import im2colbp.cli as cli
from im2colbp.cli import main
from im2colbp.convolution import ConvGrads

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


GEOMETRY = ["--input", "1x3x5x5", "--weight", "2x3x3x3", "--stride", "2", "--padding", "1"]


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------
def test_demo_runs_and_checks_everything(capsys):
    code, out, err = run(capsys, "demo")
    assert code == 0 and err == ""
    for text in ["(2, 3, 5, 5)", "X_col (2, 27, 9)", "(2 x 27) @ (27 x 9)", "[0.5, -1.0]",
                 "dW", "dX", "db", "vs direct", "vs finite diff", "timing", "ratio",
                 "every result agrees"]:
        assert text in out, text
    assert len(out.splitlines()) < 60  # about a screen


def _table_errors(out, name):
    """The two error columns of the demo table row ``name``."""
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0] == name and fields[1].startswith("("):
            return [float(v) for v in fields[-2:] if v != "-"]
    raise AssertionError(f"no row {name!r} in:\n{out}")


def test_demo_prints_small_errors(capsys):
    _, out, _ = run(capsys, "demo", "--no-timing")
    assert "timing" not in out
    for name in ("dW", "dX", "db"):
        errors = _table_errors(out, name)
        assert len(errors) == 2 and max(errors) < 1e-6


def test_demo_shows_the_transposition_route_agreeing(capsys):
    code, out, _ = run(capsys, "demo", "--no-timing")
    assert code == 0 and "dX by transposition" in out


def _wrong_backward(real):
    def backward(dy, ctx, **kwargs):
        grads = real(dy, ctx, **kwargs)
        return ConvGrads(grads.input, grads.weight * 1.01, grads.bias)
    return backward


def test_demo_reports_a_mismatch(capsys, monkeypatch):
    monkeypatch.setattr(cli, "conv_backward", _wrong_backward(cli.conv_backward))
    code, out, _ = run(capsys, "demo", "--no-timing")
    assert code == 1 and "MISMATCH" in out


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------
def test_explain_issue_example(capsys):
    code, out, err = run(capsys, "explain", *GEOMETRY)
    assert code == 0 and err == ""
    for text in [
        "O = floor((5 + 1 + 1 - 1*2 - 1) / 2) + 1 = floor(4/2) + 1 = 3",
        "-> y (1, 2, 3, 3)",
        "C_in*prod(K) = 3*3*3 = 27 rows",
        "L = 9 columns",
        "Y[n] (2 x 9)",
        "W (2 x 27)",
        "X_col[n] (27 x 9)",
        "dW (2 x 27)",
        "X_col[n]^T (9 x 27)",
        "dX_col[n] (27 x 9)",
        "W^T (27 x 2)",
        "col2im",
        "db (2,)",
    ]:
        assert text in out, text
    # the centre tap of the first window reads x[0, 0, 0]; its corner tap reads padding
    row = next(line for line in out.splitlines() if line.strip().startswith("(0,1,1)"))
    assert row.split("|")[1].split()[0] == "0,0,0"
    row = next(line for line in out.splitlines() if line.strip().startswith("(0,0,0)"))
    assert row.split("|")[1].split()[0] == "."


def _independent_source_map(input_shape, kernel, stride, padding, mode):
    """Flat source index of every X_col entry, by brute force over windows (sample 0)."""
    channels, *size = input_shape[1:]
    index = np.arange(channels * int(np.prod(size))).reshape([channels] + size)
    numpy_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                  "circular": "wrap"}[mode]
    extra = {"constant_values": -1} if mode == "zeros" else {}
    padded = np.pad(index, [(0, 0)] + [(padding, padding)] * len(size), mode=numpy_mode,
                    **extra)
    out = [(p - k) // stride + 1 for p, k in zip(padded.shape[1:], kernel)]
    rows = []
    for c in range(channels):
        for offset in np.ndindex(*kernel):
            rows.append([padded[(c,) + tuple(o * stride + k for o, k in zip(pos, offset))]
                         for pos in np.ndindex(*out)])
    return np.array(rows)


@pytest.mark.parametrize("input_shape, kernel, stride, padding, mode", [
    ((1, 2, 5, 5), (3, 3), 2, 1, "zeros"),
    ((1, 1, 4, 5), (3, 2), 1, 2, "reflect"),
    ((2, 2, 6), (3,), 2, 2, "circular"),
    ((1, 1, 3, 3, 3), (2, 2, 2), 1, 1, "replicate"),
])
def test_explain_column_map_matches_brute_force(input_shape, kernel, stride, padding, mode):
    weight = "x".join(str(v) for v in (1, input_shape[1]) + kernel)
    argv = ["explain", "--input", "x".join(map(str, input_shape)), "--weight", weight,
            "--stride", str(stride), "--padding", str(padding), "--padding-mode", mode]
    spec = cli.conv_spec(cli.build_parser().parse_args(argv))
    source, border = cli._column_index_map(spec)
    np.testing.assert_array_equal(source, _independent_source_map(input_shape, kernel, stride,
                                                                  padding, mode))
    assert border.any()


@pytest.mark.parametrize("argv, texts", [
    (["--input", "1x4x6", "--weight", "4x2x3", "--groups", "2", "--padding", "same",
      "--stride", "2"],
     ["'same': O = ceil(I/S) = ceil(6/2) = 3", "before = 1//2 = 0, after = 1",
      "-- group 1", "Y[n,g] (2 x 3)", "W[g] (2 x 6)"]),
    (["--input", "1x1x4x4", "--weight", "1x1x3x3", "--padding", "1", "--stride", "2",
      "--padding-mode", "reflect"],
     ["never read (stride remainder)", "0,1,1*", "'reflect' padding copy"]),
    (["--input", "3x9", "--weight", "2x3x3", "--dilation", "2", "--padding", "0:2",
      "--no-bias"],
     ["(no bias)", "(unbatched)", "P=(0, 2)", "D=2"]),
    (["--input", "2x2x3x4x4", "--weight", "2x2x2x2x2", "--stride", "2,2,1"],
     ["axis 0 (depth)", "axis 2 (width)", "2 sample(s)"]),
    (["--input", "1x64x56x56", "--weight", "64x64x3x3", "--padding", "1"],
     ["too many to map", "115,605,504 multiply-adds"]),
    (["--input", "1x1x100000x100000", "--weight", "1x1x1x1", "--stride", "100000"],
     ["too many to map", "-> y (1, 1, 1, 1)"]),
    (["--input", "1x0x5x5", "--weight", "2x0x3x3"], ["no input channels", "db (2,)"]),
    (["--input", "0x2x5x5", "--weight", "2x2x3x3", "--no-bias"], ["0 sample(s)"]),
])
def test_explain_variants(capsys, argv, texts):
    code, out, err = run(capsys, "explain", *argv)
    assert code == 0 and err == ""
    for text in texts:
        assert text in out, text


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    GEOMETRY,
    GEOMETRY + ["--dtype", "float32", "--seed", "3"],
    ["--input", "2x4x7x7", "--weight", "6x2x3x3", "--stride", "2", "--padding", "same",
     "--groups", "2"],
    ["--input", "3x9", "--weight", "2x3x3", "--padding", "0:2", "--padding-mode", "reflect",
     "--no-bias"],
    ["--input", "1x3x9", "--weight", "2x3x3", "--dilation", "2", "--padding", "3",
     "--padding-mode", "circular", "--dtype", "float32"],
    ["--input", "1x4x20x20", "--weight", "2x4x3x3", "--padding", "1"],  # directional FD
    ["--input", "0x3x5x5", "--weight", "2x3x3x3"],  # empty batch
])
def test_check_passes(capsys, argv):
    code, out, err = run(capsys, "check", *argv)
    assert code == 0 and err == ""
    assert "OK: forward and every gradient agree" in out
    assert "MISMATCH" not in out
    names = [line.split()[0] for line in out.splitlines() if line.startswith("   ")]
    for name in ("y", "dx", "dW"):
        assert name in names
    assert ("db" in names) == ("--no-bias" not in argv)


def test_check_uses_directional_derivatives_for_large_arrays(capsys):
    _, out, _ = run(capsys, "check", "--input", "1x4x20x20", "--weight", "2x4x3x3")
    assert "3 directions" in out


def test_check_reports_a_mismatch_with_exit_status_1(capsys, monkeypatch):
    monkeypatch.setattr(cli, "conv_backward", _wrong_backward(cli.conv_backward))
    code, out, _ = run(capsys, "check", *GEOMETRY)
    assert code == 1
    assert "MISMATCH" in out
    assert "<-- MISMATCH" in next(line for line in out.splitlines() if "dW" in line)


# --------------------------------------------------------------------------
# errors and help
# --------------------------------------------------------------------------
BAD = [
    (["--input", "1x3x5x5", "--weight", "2x4x3x3"], "input has C_in=3 channels"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--groups", "2"],
     "groups=2 must divide"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding-mode", "mirror"],
     "padding_mode must be one of"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding", "full"],
     "padding string must be one of"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding", "1:2:3"], "--padding must be"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding", "-1"], "padding must be >= 0"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--stride", "0"], "stride must be positive"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--stride", "1,2,3"], "stride must be"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--dilation", "two"], "--dilation must be"),
    (["--input", "1x3x5x5", "--weight", "2x3x3x3", "--groups", "x"], "--groups must be an int"),
    (["--input", "1x3xa", "--weight", "2x3x3"], "--input must be a shape"),
    (["--input", "1x3x2x2", "--weight", "2x3x3x3"], "kernel larger than the padded input"),
    (["--input", "1x3x5x5", "--weight", "2x3"], "weight must have at least 3 dimensions"),
    (["--input", "1x3x0x5", "--weight", "2x3x3x3"], "spatial size must be positive"),
    (["--input", "1x3x4x4", "--weight", "2x3x3x3", "--padding", "4",
      "--padding-mode", "reflect"], "reflect padding must be smaller"),
]


@pytest.mark.parametrize("command", ["explain", "check"])
@pytest.mark.parametrize("argv, message", BAD)
def test_bad_arguments_give_the_library_message_and_status_2(capsys, command, argv, message):
    code, out, err = run(capsys, command, *argv)
    assert code == 2
    assert out == ""
    assert f"im2colbp {command}: error:" in err and message in err


def test_check_refuses_geometries_too_large_for_the_reference(capsys):
    code, out, err = run(capsys, "check", "--input", "64x64x56x56", "--weight", "64x64x3x3")
    assert code == 2 and "give a smaller --input" in err and out == ""


@pytest.mark.parametrize("argv", [
    [], ["bench-nonexistent"], ["demo", "--bogus"], ["explain"],
    ["check", "--input", "1x1x3", "--weight", "1x1x3", "--dtype", "float16"],
    ["check", "--input", "1x1x3", "--weight", "1x1x3", "--seed", "x"],
])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err and "error:" in err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["explain", "--help"],
                                  ["check", "-h"]])
def test_help_has_an_example(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    assert "example" in out and "im2colbp" in out


def test_parser_has_room_for_more_commands():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) >= {"demo", "explain", "check"}


@pytest.mark.parametrize("argv, status", [
    (["explain", "--input", "1x1x4", "--weight", "1x1x3"], 0),
    (["check", "--input", "1x1x4", "--weight", "1x2x3"], 2),
])
def test_python_dash_m(argv, status):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "im2colbp", *argv], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == status
    assert "Traceback" not in result.stderr
    if status:
        assert "error:" in result.stderr
    else:
        assert "im2colbp explain" in result.stdout
