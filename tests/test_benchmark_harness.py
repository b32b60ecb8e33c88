"""The benchmarks' one harness (benchmarks/harness.py): what it saves and how it compares, and that
every benchmark script goes through it."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.stem not in {"__init__", "harness", "fixtures"})


def test_save_stamps_name_command_date_and_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", [str(BENCHMARKS / "augment_speed.py"), "--repeats", "2"])
    out = tmp_path / "deep" / "result.json"
    stamped = harness.save({"figure": np.float32(1.5), "where": tmp_path}, out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(stamped, default=str))
    assert saved["benchmark"] == "augment_speed"
    assert saved["command"] == "python benchmarks/augment_speed.py --repeats 2"
    assert saved["date"].endswith("+00:00")
    assert saved["machine"]["cpus"] >= 1 and saved["machine"]["python"]
    assert saved["figure"] == "1.5" and saved["where"] == str(tmp_path)  # not JSON numbers: written as text
    assert f"saved {out}" in capsys.readouterr().out


def test_report_keys_win_over_the_stamp(tmp_path):
    saved = harness.save({"machine": "given"}, tmp_path / "r.json", name="x", quiet=True)
    assert saved["machine"] == "given" and saved["benchmark"] == "x"


def test_timings_warm_up_then_time_each_call():
    calls = []
    seconds = harness.timings(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(seconds) == 4 and all(s >= 0 for s in seconds)


def test_timings_on_a_given_clock():
    ticks = iter(range(100))
    assert harness.timings(lambda: None, repeats=3, warmup=0, clock=lambda: float(next(ticks))) == [1.0, 1.0, 1.0]


def test_summary_and_ratios():
    assert harness.summary([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0, "n": 3}
    assert harness.ratios({"base": 2.0, "fast": 1.0, "slow": 5.0}, "base") == {"base": 1.0, "fast": 0.5, "slow": 2.5}


def test_side_by_side_interleaves_variants_round_by_round():
    order: list[str] = []
    medians = harness.side_by_side(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3, calls=2, warmup=1
    )
    assert set(medians) == {"a", "b"}
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-ups first, then each round times both


def test_out_argument_defaults_to_the_benchmarks_results_file():
    import argparse

    parser = argparse.ArgumentParser()
    harness.add_out_argument(parser, "thing")
    assert parser.parse_args([]).out == BENCHMARKS / "results" / "thing.json"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_saves_through_the_harness(script):
    """One way to time and save: no script writes its own result JSON or keeps its own machine stamp."""
    text = script.read_text()
    calls = {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call)
    }
    assert "save" in calls, f"{script.name} does not save through benchmarks.harness.save"
    assert "getloadavg" not in calls and "platform" not in calls, f"{script.name} stamps the machine itself"
    assert "write_text(json.dumps" not in text, f"{script.name} writes its own result file"
    importlib.import_module(f"benchmarks.{script.stem}")  # its imports resolve


def test_serve_fast_path_passes_flags_serve_latency_accepts(tmp_path):
    # serve_fast_path.py runs serve_latency.py as a subprocess, by its command-line flags.
    from benchmarks import serve_fast_path, serve_latency

    argv = serve_fast_path.latency_argv(serve_fast_path.get_args_parser().parse_args([]), tmp_path / "out.json")
    parsed = serve_latency.get_args_parser().parse_args(argv)
    assert parsed.configs == ["batch", "overload"] and parsed.model_niceness == ["idle"] and parsed.rounds == 1
