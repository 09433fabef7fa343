"""The benchmark harness: contenders in their own processes, plain-text header, ratios that
follow from the printed medians. Nothing here asserts a timing."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest

import im2colbp as ib
from im2colbp import benchmark as bm

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None

TINY = {"tiny": bm.Config((2, 2, 8, 8), (3, 2, 3, 3), dict(stride=1, padding=1)),
        "tiny_s2": bm.Config((1, 4, 9, 9), (4, 2, 3, 3), dict(stride=2, padding=1, groups=2),
                             gemm_bound=False)}


# --------------------------------------------------------------------------
# parsing what the harness prints
# --------------------------------------------------------------------------
def parse_text(output: str) -> dict:
    """Header pairs, table rows (dicts by column) and the summary lines of the text report."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config "))
    header = {}
    for line in lines[:start]:
        if line.strip():
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    columns = re.split(r"\s{2,}", lines[start].strip())
    assert set(lines[start + 1].replace(" ", "")) == {"-"}
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(columns), line
        rows.append(dict(zip(columns, cells)))
    return {"header": header, "columns": columns, "rows": rows, "text": output}


def parse_markdown(output: str) -> dict:
    lines = output.splitlines()
    table = [line for line in lines if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    columns, rule, body = split[0], split[1], split[2:]
    assert all(set(cell) <= set("-:") for cell in rule)
    assert all(len(row) == len(columns) for row in split)
    header = {}
    for line in lines:
        match = re.match(r"- \*\*(.+?)\*\*: (.*)", line)
        if match:
            header[match.group(1)] = match.group(2)
    return {"header": header, "columns": columns,
            "rows": [dict(zip(columns, row)) for row in body]}


def number(cell: str) -> float:
    return float(cell.rstrip("*"))


def check_ratios_follow_medians(parsed: dict, header: dict) -> int:
    """Every a/b cell is (a ms)/(b ms) of the same row up to the printed rounding; so is %."""
    checked = 0
    for row in parsed["rows"]:
        for column, cell in row.items():
            match = re.fullmatch(r"(\w+)/(\w+)", column)
            if match is None or cell == "-":
                continue
            a, b = number(row[f"{match.group(1)} ms"]), number(row[f"{match.group(2)} ms"])
            # medians carry >= 4 significant digits (<= 5e-4 relative each), ratios 2 decimals
            assert abs(number(cell) - a / b) <= 0.005 + 1.2e-3 * a / b, (column, row)
            checked += 1
        if row.get("% peak", "-") != "-":
            peak = float(re.match(r"([\d.]+) GFLOP/s", header["GEMM peak"]).group(1)) * 1e9
            config = {**TINY, **bm.CONFIGS}[row["config"]]
            expected = 100 * config.flops / (number(row["ours ms"]) / 1e3) / peak
            assert abs(float(row["% peak"]) - expected) <= 0.05 + 2e-3 * expected
            checked += 1
    return checked


REPR_MARKS = ("None", "{", "}", "[", "]", "'", '"', "True", "False", "dict(", "dtype(")


# --------------------------------------------------------------------------
# one real run of the harness, shared by the tests below
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report() -> bm.Report:
    # one thread per contender: every pool must really be pinned to it (the machine has more)
    return bm.run_suite(TINY, rounds=2, repeats=1, dtype="float32", threads=1, peak_size=256)


def test_every_contender_ran_in_its_own_process(report):
    expected = {"ours", "floor", "direct"} | ({"torch"} if HAS_TORCH else set()) \
        | ({"jax"} if HAS_JAX else set()) \
        | ({"im2col", "winograd"} if bm.engine_has_method() else set())
    assert set(report.contenders) == expected
    assert set(report.processes) == expected
    pids = list(report.processes.values())
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for result in report.results:
        for kind in expected:
            if kind == "winograd" and not bm.winograd_applies(result.config):
                assert kind not in result.rounds and "3-tap" in result.notes[kind]
                continue
            assert len(result.rounds[kind]) == 2, (result.name, kind)  # one median per round
            assert result.median_ms(kind) > 0


def test_im2col_contender_is_gated_on_the_method_keyword(report):
    has_method = "method" in __import__("inspect").signature(ib.conv_forward).parameters
    assert ("im2col" in report.contenders) == has_method
    assert ("im2col" in report.skipped) == (not has_method)


def test_threads_are_pinned_in_the_workers(report):
    if HAS_THREADPOOLCTL:  # it reports the BLAS pool; without it the header says so
        assert "1 threads" in report.machine["BLAS (ours process)"]
        assert "2 threads" not in report.machine["BLAS (ours process)"]
    else:
        assert "threadpoolctl not installed" in report.machine["BLAS (ours process)"]
    if HAS_TORCH:
        assert report.machine["PyTorch"].endswith(", 1 threads")
    if HAS_JAX:
        assert "PJRT_NPROC=1" in report.machine["JAX"]


def test_text_report_header_has_no_reprs(report):
    parsed = parse_text(bm.format_report(report))
    header = parsed["header"]
    for key in ("CPU", "SIMD", "BLAS (ours process)", "GEMM peak", "PyTorch", "JAX", "load average",
                "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "Python", "NumPy", "run"):
        assert header.get(key), key
    for key, value in header.items():
        for mark in REPR_MARKS:
            assert mark not in value, (key, value)
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        assert header[name] == os.environ.get(name, "unset")
    assert header["NumPy"] == np.__version__
    assert "float32" in header["run"] and "2 rounds of 1 timed call each" in header["run"]


def test_text_report_ratios_follow_the_printed_medians(report):
    parsed = parse_text(bm.format_report(report))
    assert [row["config"] for row in parsed["rows"]] == list(TINY)
    assert "ours/floor" in parsed["columns"]
    assert parsed["rows"][1]["ours/floor"].endswith("*")  # not GEMM-bound
    assert not parsed["rows"][0]["ours/floor"].endswith("*")
    checked = check_ratios_follow_medians(parsed, parsed["header"])
    assert checked >= 2 * (1 + HAS_TORCH + HAS_JAX + bm.engine_has_method() + 1)


def test_every_column_is_explained_in_the_legend(report):
    text = bm.format_report(report)
    legend = text.split("\ncolumns:\n")[1].split("\n\n")[0].splitlines()
    keys = [line.strip().split(": ", 1)[0] for line in legend]
    columns = parse_text(text)["columns"]
    assert keys == columns + ["times", "memory", "-"]


def test_markdown_report_is_a_table_with_the_same_numbers(report):
    parsed = parse_markdown(bm.format_report(report, markdown=True))
    text = parse_text(bm.format_report(report))
    assert parsed["columns"] == text["columns"]
    assert parsed["rows"] == text["rows"]
    assert parsed["header"]["SIMD"] == text["header"]["SIMD"]
    check_ratios_follow_medians(parsed, parsed["header"])


def test_json_has_the_medians_of_the_table(report):
    payload = json.loads(json.dumps(bm.report_to_json(report)))
    rows = parse_text(bm.format_report(report))["rows"]
    for entry, row in zip(payload["results"], rows):
        assert entry["config"] == row["config"]
        for kind, median in entry["median_ms"].items():
            assert bm.format_ms(median) == row[f"{kind} ms"]
            assert median == pytest.approx(np.median(entry["round_medians_s"][kind]) * 1e3)
        assert entry["ratios"]["ours/floor"] == pytest.approx(
            entry["median_ms"]["ours"] / entry["median_ms"]["floor"])


def test_memory_is_measured_for_ours_and_torch(report):
    for result in report.results:
        assert result.memory_mib("ours") is not None and result.memory_mib("ours") >= 0
        assert (result.memory_mib("torch") is not None) == HAS_TORCH


def test_peak_memory_sees_the_results_of_one_call():
    # y and dx are 8 MiB each: one forward + backward must raise the peak RSS by >= 16 MiB
    config = {"big": bm.Config((1, 1, 2048, 1024), (1, 1, 1, 1))}
    result = bm.run_suite(config, rounds=1, repeats=1, contenders=["ours"], threads=1,
                          peak_size=256).results[0]
    if os.access("/proc/self/clear_refs", os.W_OK):
        assert result.memory["ours"]["how"] == "VmHWM after clear_refs"
    assert 15.5 <= result.memory_mib("ours") < 200


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch")
def test_a_contender_that_cannot_run_leaves_a_dash_and_a_note():
    config = {"rank4": bm.Config((1, 1, 4, 4, 4, 4), (1, 1, 2, 2, 2, 2))}  # torch has no conv4d
    report = bm.run_suite(config, rounds=1, repeats=1, contenders=["ours", "torch"],
                          memory=False, threads=1, peak_size=256)
    text = bm.format_report(report)
    assert "rank4, torch: ValueError: PyTorch has no 4-d convolution" in text
    assert report.results[0].median_ms("torch") is None
    assert "torch ms" not in parse_text(text)["columns"]  # no contender time: no column


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
def test_command_line_run_writes_json_and_plot(tmp_path, capsys):
    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--configs", "teach", "--rounds", "1", "--repeats", "1", "--no-memory",
            "--contenders", "ours", "floor", "--threads", "1", "--json", str(json_path)]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(plot_path)]
    assert bm.main(argv) == 0
    captured = capsys.readouterr()
    parsed = parse_text(captured.out)
    assert [row["config"] for row in parsed["rows"]] == ["teach"]
    assert parsed["columns"][:3] == ["config", "ours ms", "floor ms"]
    check_ratios_follow_medians(parsed, parsed["header"])
    assert "bench: round 1/1 done" in captured.err
    payload = json.loads(json_path.read_text())
    assert payload["settings"] == {**payload["settings"], "rounds": 1, "repeats": 1,
                                   "threads": 1, "dtype": "float32"}
    if HAS_MATPLOTLIB:
        assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_fails_before_any_work(monkeypatch, capsys, tmp_path):
    def no_work(*args, **kwargs):
        raise AssertionError("a worker was started")

    real = bm._has_module
    monkeypatch.setattr(bm, "_has_module", lambda name: name != "matplotlib" and real(name))
    monkeypatch.setattr(bm, "Worker", no_work)
    assert bm.main(["--configs", "teach", "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "im2colbp[bench]" in err and "Traceback" not in err


def test_unwritable_json_path_fails_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bm, "Worker", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    assert bm.main(["--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "--json" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--repeats", "-1"], ["--threads", "0"],
                                  ["--threads", "two"], ["--configs", "nope"],
                                  ["--dtype", "float16"]])
def test_bad_options_exit_2_without_work(argv, monkeypatch, capsys):
    monkeypatch.setattr(bm, "Worker", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    assert bm.main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(bm.CONFIGS))
def test_config_output_shape_is_the_library_s(name):
    config = bm.CONFIGS[name]
    x = np.zeros((1,) + config.input_shape[1:], dtype=np.float32)  # one sample is enough
    w = np.zeros(config.weight_shape, dtype=np.float32)
    y = ib.conv(x, w, **config.kwargs)
    assert config.output_shape == (config.input_shape[0],) + y.shape[1:]


def test_config_flops_count_every_multiply_add():
    # teach: 8 filters × 32·32 positions × (3 channels × 9 taps) multiply-adds per pass
    assert bm.CONFIGS["teach"].flops == 3 * 2 * 8 * 1024 * 27
    # depthwise: one input channel per filter
    assert bm.CONFIGS["depthwise"].flops == 3 * 2 * 8 * 128 * 28 * 28 * 9


def test_config_description_is_plain_text():
    assert bm.CONFIGS["resnet_s2"].describe() == "N8 C128 28×28 K256 3×3 s2 p1"
    assert bm.CONFIGS["depthwise"].describe() == "N8 C128 28×28 K128 3×3 p1 g128"
    assert bm.CONFIGS["conv1d"].describe() == "N8 C32 16000 K32 9 s2 p4"


def test_round_order_rotates_so_no_contender_always_follows_another():
    kinds = ["ours", "floor", "torch"]
    orders = [bm.round_order(kinds, index) for index in range(3)]
    assert orders == [["ours", "floor", "torch"], ["floor", "torch", "ours"],
                      ["torch", "ours", "floor"]]
    assert {order[0] for order in orders} == set(kinds)


@pytest.mark.parametrize("value, text", [(0.051234, "0.05123"), (4.51234, "4.512"),
                                         (45.1234, "45.12"), (1234.4, "1234"), (None, "-")])
def test_format_ms_keeps_four_significant_digits(value, text):
    assert bm.format_ms(value) == text


@pytest.mark.parametrize("flags, level", [("fpu sse2 avx avx2 fma avx512f", "AVX-512 (avx512f)"),
                                          ("fpu sse2 sse4_2 avx avx2", "AVX2 (avx2)"),
                                          ("fpu sse2", "SSE2 (sse2)"), ("", "unknown")])
def test_simd_level_from_cpu_flags(flags, level):
    assert bm.simd_level(flags) == level


def test_blas_description_is_plain_text():
    info = [{"user_api": "blas", "internal_api": "openblas", "num_threads": 2,
             "version": "0.3.31", "architecture": "Haswell",
             "filepath": "/x/numpy.libs/libscipy_openblas64_.so"},
            {"user_api": "openmp", "internal_api": "openmp", "num_threads": 2}]
    assert bm._blas_description(info) == ("OpenBLAS 0.3.31 kernel Haswell, 2 threads "
                                          "(internal_api openblas, from numpy.libs)")


def test_geometric_mean():
    assert bm.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert math.isclose(bm.geometric_mean([1.5]), 1.5)


def test_a_worker_that_does_not_answer_is_stopped():
    worker = bm.Worker("ours", 1, "float32", reply_timeout=0.05)  # start-up alone takes longer
    try:
        with pytest.raises(bm.WorkerError, match="no reply within 0.05 s"):
            worker.request(op="peak", size=2048)
        assert worker.process.poll() is not None  # killed, not left running
    finally:
        worker.close()
