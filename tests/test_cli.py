"""The im2colbp command: every subcommand's success and error paths, exit codes, no tracebacks."""

from __future__ import annotations

import os
import re
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
    assert len(err.splitlines()) == 1


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
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "error:" in err and "--help" in err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["explain", "--help"],
                                  ["check", "-h"]])
def test_help_has_an_example(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    assert "example" in out and "im2colbp" in out


def test_every_command_registers_a_handler_that_main_runs(capsys, monkeypatch):
    """Each ``_add_<name>`` sets a handler; main dispatches to it and returns its status."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) == {"demo", "explain", "check", "bench"}
    calls = []
    for name, sub in commands.choices.items():
        assert callable(sub.get_default("handler")), name
        sub.set_defaults(handler=lambda args, name=name: calls.append(name) or 7)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for name in commands.choices:
        argv = [name] + (["--input", "1x1x3", "--weight", "1x1x3"]
                         if name in ("explain", "check") else [])
        assert main(argv) == 7
    assert calls == list(commands.choices)


def test_explain_sections_are_a_list_to_extend(capsys, monkeypatch):
    def plan_section(spec, say, number):
        say(f"{number}. A new section for {spec.output_shape}")

    monkeypatch.setattr(cli, "EXPLAIN_SECTIONS", cli.EXPLAIN_SECTIONS + [plan_section])
    code, out, _ = run(capsys, "explain", *GEOMETRY)
    assert code == 0
    numbers = [line.split(".")[0] for line in out.splitlines() if line[:1].isdigit()]
    assert numbers == [str(i) for i in range(1, len(cli.EXPLAIN_SECTIONS) + 1)]
    assert out.rstrip().endswith(f"{len(cli.EXPLAIN_SECTIONS)}. A new section for (1, 2, 3, 3)")


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


# --------------------------------------------------------------------------
# every bad argument: status 2, one line, the right message (issue 12)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["check", *GEOMETRY, "--seed", "-1"], "--seed must be an int >= 0"),
    (["check", "--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding", "-1:2,0"],
     "padding[0][0] must be >= 0, got -1"),
    (["explain", "--input", "1x3x5x5", "--weight", "2x3x3x3", "--padding", "-1"],
     "padding must be >= 0"),
    (["explain", "--input", "1x3x5x5", "--weight", "2x3x3x3", "--stride", "-1,2"],
     "must be positive, got -1"),
    (["explain", "--input", "1x3x5x5", "--wieght", "2x3x3x3"],
     "unknown option --wieght; did you mean --weight?"),
    (["check", *GEOMETRY, "--sed", "1"], "unknown option --sed; did you mean --seed?"),
    (["explain", *GEOMETRY, "--frobnicate"], "unknown option --frobnicate (see"),
    (["--verison"], "unknown option --verison; did you mean --version?"),
    (["--bogus", "explain", *GEOMETRY], "unknown option --bogus (see 'im2colbp --help')"),
    (["explain", *GEOMETRY, "stray"], "unexpected argument 'stray'"),
    (["explain", "--weight", "2x3x3x3"], "required: --input"),
    (["explain", *GEOMETRY, "--output-padding", "1"], "add --transposed"),
    (["explain", "--input", "1x2x3x3", "--weight", "2x1x3x3", "--stride", "2", "--transposed",
      "--output-padding", "2"], "output_padding must satisfy 0 <= output_padding"),
    (["check", "--input", "1x2x3x3", "--weight", "2x1x3x3", "--stride", "2", "--transposed",
      "--output-size", "9x9"], "admissible sizes are 7..8"),
    (["explain", "--input", "1x2x3x3", "--weight", "2x1x3x3", "--transposed",
      "--padding", "same"], "padding='same' is not defined for transposed"),
    # the benchmark's own parser may refuse these first: either message will do
    (["bench", "--threads", "0"], re.compile(r"--threads.* a positive int.*got 0")),
    (["bench", "--repeats", "-2"], re.compile(r"--repeats.* a positive int.*got -2")),
    (["bench", "--json", "/nonexistent-folder/b.json"], "does not exist"),
])
def test_bad_arguments_are_one_line_and_status_2(capsys, monkeypatch, argv, message):
    from im2colbp import benchmark

    def no_work(*args, **kwargs):
        raise AssertionError("the benchmark ran before the arguments were checked")

    monkeypatch.setattr(benchmark, "run_suite", no_work)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    found = message.search(err) if isinstance(message, re.Pattern) else message in err
    assert len(err.splitlines()) == 1 and found, err
    prog = "im2colbp" if argv[0].startswith("-") else f"im2colbp {argv[0]}"
    assert err.startswith(f"{prog}: error:")


def test_bench_plot_without_matplotlib_stops_before_any_work(capsys, monkeypatch):
    import importlib.util

    from im2colbp import benchmark

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(benchmark, "run_suite", lambda *a, **k: pytest.fail("benchmark ran"))
    code, out, err = run(capsys, "bench", "--quick", "--plot", "bench.png")
    assert code == 2 and out == ""
    assert "--plot needs matplotlib" in err and "pip install 'matplotlib" in err
    assert ".[figures]" in err and sys.executable in err


def test_version(capsys):
    import im2colbp

    code, out, err = run(capsys, "--version")
    assert code == 0 and out.strip() == f"im2colbp {im2colbp.__version__}"


def test_a_closed_pipe_exits_0_quietly():
    """`im2colbp demo | head -1`: the reader closes the pipe before the output is flushed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        result = subprocess.run([sys.executable, "-m", "im2colbp", "demo", "--no-timing"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""


# --------------------------------------------------------------------------
# explain: bias, memory, transposed convolution
# --------------------------------------------------------------------------
def test_explain_without_bias_has_no_bias_terms(capsys):
    _, with_bias, _ = run(capsys, "explain", *GEOMETRY)
    assert "+ b" in with_bias and "db (2,)" in with_bias
    code, out, _ = run(capsys, "explain", *GEOMETRY, "--no-bias")
    assert code == 0 and "(no bias)" in out
    assert "+ b" not in out and "db (" not in out and "bias grad" not in out


def test_explain_says_what_memory_a_huge_geometry_needs(capsys):
    code, out, err = run(capsys, "explain", "--input", "1x1x100000x100000", "--weight", "1x1x3x3")
    assert code == 0 and err == ""
    entries = 9 * 99998 * 99998  # X_col of the one sample, 4 bytes each
    assert f"X_col of one sample: 9 x {99998 * 99998} = {entries:,} entries" in out
    assert f"{entries * 4 / 2**30:.1f} GiB" in out
    assert "cannot run here" in out  # 335 GiB: more than this machine's memory


def test_explain_memory_of_a_small_geometry(capsys):
    code, out, _ = run(capsys, "explain", "--input", "4x3x5x5", "--weight", "2x3x3x3")
    assert code == 0
    assert "X_col of one sample: 27 x 9 = 243 entries, 972 bytes; of the batch (N=4): 3.8 KiB" \
        in out
    assert "4 of 4 samples per chunk" in out and "cannot run" not in out


@pytest.mark.parametrize("method", ["auto", "im2col"])
@pytest.mark.parametrize("extra", [[], ["--transposed"]])
def test_explain_prints_the_engines_plan(capsys, method, extra):
    argv = ["explain", "--input", "2x4x9x9", "--weight", "4x4x3x3", "--padding", "1",
            "--method", method] + extra
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    import im2colbp as ib
    geometry = dict(stride=1, padding=1, dilation=1, groups=1, padding_mode="zeros")
    plan = ib.plan_conv((2, 4, 9, 9), (4, 4, 3, 3), method=method, transposed=bool(extra),
                        **geometry)
    for line in str(plan).splitlines()[1:]:
        assert line in out
    route = plan.forward if extra else plan.input_gradient
    assert route.route.choice == ("transposition" if method == "auto" else "col2im")


@pytest.mark.parametrize("method, weight, groups, route", [
    ("winograd", "4x4x3x3", "1", "winograd"), ("direct", "4x1x3x3", "4", "direct")])
def test_explain_prints_every_methods_plan(capsys, method, weight, groups, route):
    code, out, err = run(capsys, "explain", "--input", "2x4x9x30", "--weight", weight,
                         "--padding", "1", "--groups", groups, "--method", method)
    assert code == 0 and err == ""
    assert f"forward          {route}:" in out and f"method='{method}'" in out


def test_explain_refuses_a_method_that_cannot_serve(capsys):
    code, out, err = run(capsys, "explain", "--input", "2x4x9x9", "--weight", "4x4x3x3",
                         "--stride", "2", "--method", "winograd")
    assert code == 2 and out == ""
    assert "--method: method='winograd' cannot serve this geometry: winograd needs stride 1" in err
    assert "Traceback" not in err


def test_explain_html_writes_the_explorer(capsys, tmp_path):
    page = tmp_path / "geometry.html"
    code, out, err = run(capsys, "explain", *GEOMETRY, "--html", str(page))
    assert code == 0 and err == "" and f"wrote the interactive explorer to {page}" in out
    from im2colbp.explorer import explorer_html
    expected = explorer_html((1, 3, 5, 5), (2, 3, 3, 3), stride=2, padding=1)
    assert page.read_text() == expected
    code, _, err = run(capsys, "explain", *GEOMETRY, "--html", str(tmp_path / "no" / "x.html"))
    assert code == 2 and "--html" in err and "does not exist" in err
    code, _, err = run(capsys, "explain", "--input", "8x64x56x56", "--weight", "64x64x3x3",
                       "--html", str(page))
    assert code == 2 and "--html: geometry too big to draw" in err and len(err.splitlines()) == 1


def _independent_landing_map(x_shape, y_channels, kernel, stride, padding, y_size):
    """Where col2im adds each entry of W^T @ x, by brute force: row (c, k), column o ->
    flat index of y[c, o*S + k*D - P] in (C_out, *O), -1 when cropped."""
    in_size = x_shape[2:]
    rows = []
    for c in range(y_channels):
        for offset in np.ndindex(*kernel):
            row = []
            for position in np.ndindex(*in_size):
                target = tuple(o * stride + k - padding for o, k in zip(position, offset))
                inside = all(0 <= t < size for t, size in zip(target, y_size))
                row.append(int(np.ravel_multi_index((c,) + target, (y_channels,) + y_size))
                           if inside else -1)
            rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("x_shape, weight_shape, stride, padding, output_padding, y_size", [
    ((1, 2, 3, 3), (2, 1, 3, 3), 2, 1, 1, (6, 6)),
    ((1, 1, 4), (1, 2, 3), 3, 2, 0, (8,)),
    ((2, 2, 2, 3), (2, 3, 2, 2), 1, 0, 0, (3, 4)),
])
def test_explain_transposed_landing_map_matches_brute_force(capsys, x_shape, weight_shape, stride,
                                                            padding, output_padding, y_size):
    argv = ["explain", "--input", "x".join(map(str, x_shape)),
            "--weight", "x".join(map(str, weight_shape)), "--stride", str(stride),
            "--padding", str(padding), "--transposed", "--output-padding", str(output_padding)]
    spec = cli.conv_spec(cli.build_parser().parse_args(argv))
    assert spec.output_shape == x_shape[:1] + (weight_shape[1],) + y_size
    source, _ = cli._column_index_map(spec)
    np.testing.assert_array_equal(source, _independent_landing_map(
        x_shape, weight_shape[1], weight_shape[2:], stride, padding, y_size))
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == ""
    assert f"-> y {spec.output_shape}" in out and "col2im" in out


def test_explain_transposed_arithmetic_and_gemms(capsys):
    code, out, _ = run(capsys, "explain", "--input", "1x2x3x3", "--weight", "2x4x3x3",
                       "--stride", "2", "--padding", "1", "--transposed", "--output-size", "6x6")
    assert code == 0
    for text in [
        "transposed convolution of x (1, 2, 3, 3) with weight (2, 4, 3, 3) + bias (4,)",
        "C_in = 2, C_out = 4",
        "O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1",
        "output_size asks for O=6: output_padding = O - 5 = 1",
        "O = (3-1)*2 - 1 - 1 + 1*2 + 1 + 1 = 6",
        "floor((6 + 1 + 1 - 1*2 - 1) / 2) + 1 = 3",
        "-> y (1, 4, 6, 6)",
        "Y_col[n] (36 x 9)", "W^T (36 x 2)", "X[n] (2 x 9)",
        "dW (2 x 36)", "delta_col[n]^T (9 x 36)",
        "dX[n] (2 x 9)", "W (2 x 36)", "delta_col[n] (36 x 9)",
        "y[n] = col2im(Y_col[n]) + b",
        "db (4,)", "36 positions",
        "'.' lands in the padding and is cropped away",
    ]:
        assert text in out, text


@pytest.mark.parametrize("argv", [
    ["--input", "1x2x3x3", "--weight", "2x3x3x3", "--stride", "2", "--padding", "1"],
    ["--input", "2x4x3x4", "--weight", "4x3x3x3", "--stride", "2", "--padding", "1",
     "--groups", "2", "--output-size", "6x8"],
    ["--input", "3x5", "--weight", "3x2x3", "--stride", "2", "--dilation", "3",
     "--output-padding", "2", "--no-bias"],  # output_padding >= stride: dx is cropped
    ["--input", "1x2x4", "--weight", "2x2x3", "--stride", "2", "--padding", "1",
     "--padding-mode", "reflect", "--dtype", "float32"],
    ["--input", "1x1x2x3x2", "--weight", "1x2x2x2x2", "--stride", "2", "--padding", "0:1,1,0",
     "--padding-mode", "circular"],
])
def test_check_transposed_passes(capsys, argv):
    code, out, err = run(capsys, "check", "--transposed", *argv)
    assert code == 0 and err == "", out
    assert "OK: forward and every gradient agree" in out and "conv_transpose" in out
    names = [line.split()[0] for line in out.splitlines() if line.startswith("   ")]
    for name in ("y", "dx", "dW"):
        assert name in names
    assert ("db" in names) == ("--no-bias" not in argv)
    assert "y (no bias) by channel transposition" in out


def test_check_transposed_reports_a_mismatch(capsys, monkeypatch):
    real = cli.conv_transpose_backward

    def wrong(dy, ctx, **kwargs):
        grads = real(dy, ctx, **kwargs)
        return ConvGrads(grads.input * 1.01, grads.weight, grads.bias)

    monkeypatch.setattr(cli, "conv_transpose_backward", wrong)
    code, out, _ = run(capsys, "check", "--transposed", "--input", "1x2x3x3", "--weight",
                       "2x3x3x3", "--stride", "2")
    assert code == 1
    assert "<-- MISMATCH" in next(line for line in out.splitlines()
                                  if line.strip().startswith("dx"))


def test_demo_marks_padding_not_data_zeros(capsys):
    code, out, _ = run(capsys, "demo", "--no-timing")
    assert code == 0 and "zeros are padding" not in out
    lines = {line.split(")")[0].strip() + ")": line.split(")", 1)[1].split()
             for line in out.splitlines() if line.strip().startswith("(0,")}
    red = np.arange(5.0)  # red ramp: columns 0..4, so column 0 is data 0
    for kh in range(3):
        for kw in range(3):
            row = lines[f"(0,{kh},{kw})"]
            for window, cell in enumerate(row):
                oh, ow = divmod(window, 3)
                i, j = 2 * oh + kh - 1, 2 * ow + kw - 1  # unpadded index
                if 0 <= i < 5 and 0 <= j < 5:
                    assert cell == f"{red[j]:g}", (kh, kw, window)
                else:
                    assert cell == ".", (kh, kw, window)


def test_the_readmes_commands_run(capsys):
    """Every `.venv/bin/im2colbp ...` command of the README (but the benchmark) exits 0."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"`\.venv/bin/im2colbp ([^`]+)`", text)
    assert len(commands) >= 5
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "bench":
            continue
        code, _, err = run(capsys, *argv)
        assert code == 0 and err == "", command
