"""The layout of the code: imports flow one way, config -> engine -> study -> cli, with no cycles;
``analysis`` reads the tables and the config, and only the commands that write the report import it.
Read from the source with ast (of the package only the torch-free registry of experiment kinds is imported, so
the test takes well under a second), plus fresh interpreters to see that reading a study needs neither torch nor Ray
and that importing the charts loads neither torch nor the engine.

The kinds and the report name code lazily, by "module:function" strings (vaesweep/experiments/kind.py,
analysis/report.py:sections): every such entry is resolved here and its layer checked, as if it were an import."""

import ast
import subprocess
import sys

import pytest
from conftest import ROOT

from vaesweep.experiments import KINDS

PACKAGES = ("vaesweep", "analysis")
# layer -> the layers it must not import (vaesweep.experiments is checked should it appear)
FORBIDDEN = {
    "vaesweep.config": ("vaesweep.engine", "vaesweep.study", "vaesweep.cli", "analysis"),
    "vaesweep.experiments": ("vaesweep.engine", "vaesweep.study", "vaesweep.cli", "analysis"),
    "vaesweep.engine": ("vaesweep.study", "vaesweep.cli", "analysis"),
    "vaesweep.study": ("vaesweep.cli", "analysis"),
    "analysis": ("vaesweep.cli",),
}
# `report`, `run` (cli/study.py) at its end, and the answers `run` and `status` print with the report's rules
REPORT_WRITERS = {"vaesweep.cli.report", "vaesweep.cli.study", "vaesweep.cli.answers"}


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {
        module_name(p): ast.parse(p.read_text(), str(p))
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
    }


def imported(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's own modules that module ``name`` imports, anywhere in its body."""
    package = name if (ROOT / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package, one level up per extra dot
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a.b.c where only a.b is a module of ours
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found - {name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: imported(name, tree, set(trees)) for name, tree in trees.items()}


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_the_graph_is_read(graph):  # the checks below see the real imports
    assert {
        "vaesweep.config.spec",
        "vaesweep.engine.trial",
        "vaesweep.study.runner",
        "vaesweep.cli.main",
        "analysis.report",
    } <= set(graph)
    assert "vaesweep.config.trial" in graph["vaesweep.config.spec"]
    assert "vaesweep.study.runner" in graph["vaesweep.cli.study"]
    assert "vaesweep.study.tables" in graph["analysis.report"]


def test_no_import_cycles(graph):
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_imports_flow_one_way(graph):
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in sorted(targets)
        for layer, banned in FORBIDDEN.items()
        if in_layer(module, layer)
        if any(in_layer(target, b) for b in banned)
    ]
    assert not wrong, wrong


def test_only_the_report_writing_commands_import_analysis(graph):
    importers = {
        m for m, targets in graph.items() if in_layer(m, "vaesweep") and any(in_layer(t, "analysis") for t in targets)
    }
    assert importers <= REPORT_WRITERS, importers - REPORT_WRITERS


def heavy_modules_after(code: str) -> list[str]:
    """Which of torch, Ray and vaesweep's engine a fresh interpreter has loaded after running ``code``."""
    code += (
        "\nimport sys\nprint(sorted({m.split('.')[0] if m.split('.')[0] in ('torch', 'ray') else m for m in sys.modules"
        "\n    if m.split('.')[0] in ('torch', 'ray') or m.startswith('vaesweep.engine')}))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return ast.literal_eval(res.stdout.strip())


def test_reading_a_study_and_the_cli_parser_load_neither_torch_nor_ray():
    code = (
        "import vaesweep, vaesweep.config.spec, vaesweep.config.trial, vaesweep.study.tables, "
        "vaesweep.cli.main, vaesweep.cli.status\n"
        "vaesweep.load_study; vaesweep.TrialConfig; vaesweep.cli.main.build_parser()"
    )
    assert not {"torch", "ray"} & set(heavy_modules_after(code))


def test_a_wrong_spec_is_refused_before_torch_or_ray_load(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nbase: {lam: -1}\n")
    code = (
        "import sys\nfrom vaesweep.cli.main import main\n"
        f"rc = main(['run', {str(tmp_path / 'bad.yaml')!r}])\n"
        "print(rc, sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "2 []", res.stderr
    assert res.stderr.strip().endswith("base: lam: Input should be greater than or equal to 0")
    assert not (tmp_path / "runs").exists() and not (ROOT / "runs" / "bad").exists()


def defined(tree: ast.Module) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def report_sections() -> list[str]:
    """The sections analysis/report.py declares for every study (EVERY_STUDY), read as literals."""
    tree = ast.parse((ROOT / "analysis" / "report.py").read_text())
    return [
        path
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "EVERY_STUDY" for t in node.targets)
        for path in ast.literal_eval(node.value)
    ]


def lazy_entries() -> list[tuple[str, str, str]]:
    """(who names it, "module:function", the layer it must live in) for every lazily named entry."""
    entries = []
    for name, kind in KINDS.items():
        for part in ("trainable", "packed_trainable", "driver"):
            if getattr(kind, part) is not None:
                entries.append((f"kind {name}.{part}", getattr(kind, part), "vaesweep.study"))
        entries += [(f"kind {name}.sections", path, "analysis") for path in kind.sections]
    return entries + [("analysis/report.py", path, "analysis") for path in report_sections()]


def test_every_lazily_named_entry_exists_in_its_layer():
    trees = modules()
    entries = lazy_entries()
    assert {"analysis.noise:section", "analysis.method:section", "analysis.paper:section"} <= {e[1] for e in entries}
    wrong = []
    for who, path, layer in entries:
        module, _, function = path.partition(":")
        if module not in trees or function not in defined(trees[module]):
            wrong.append(f"{who}: {path} is not defined")
        elif not in_layer(module, layer):
            wrong.append(f"{who}: {path} is not in {layer}")
    assert not wrong, wrong


def test_importing_the_charts_and_the_report_loads_neither_torch_nor_the_engine():
    assert heavy_modules_after("import analysis, analysis.report") == []
