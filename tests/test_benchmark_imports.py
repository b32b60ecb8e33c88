"""Every name a benchmark imports from another benchmark exists there. Benchmarks import each other
lazily, inside main(), so a rename in one broke another only when it ran (serve_latency's
write_course_checkpoints became model_paths; serve_soak still imported the old name)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark_imports() -> list[tuple[str, str, str]]:
    """(file, module, name) of each `from benchmarks.X import name` in benchmarks/*.py."""
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
                found += [(path.name, node.module or "", alias.name) for alias in node.names]
    return found


def test_benchmarks_import_each_other():
    assert any(file == "serve_soak.py" for file, _, _ in _benchmark_imports())


@pytest.mark.parametrize(("file", "module", "name"), _benchmark_imports())
def test_imported_name_exists(file, module, name):
    assert hasattr(importlib.import_module(module), name), f"{file}: {module} has no {name}"


def test_serve_fast_path_passes_flags_serve_latency_accepts(tmp_path):
    # serve_fast_path.py runs serve_latency.py as a subprocess, by its command-line flags.
    from benchmarks import serve_fast_path, serve_latency

    argv = serve_fast_path.latency_argv(serve_fast_path.get_args_parser().parse_args([]), tmp_path / "out.json")
    parsed = serve_latency.get_args_parser().parse_args(argv)
    assert parsed.configs == ["batch", "overload"] and parsed.model_niceness == ["idle"] and parsed.rounds == 1
