"""The package layers are one-way (jobs -> demo -> dataprep -> pipeline) and no module imports itself back.

Read from the source with ``ast`` (every import, also those inside functions), so a lazy import cannot hide an
upward edge.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A package may import only the packages below it.
ALLOWED = {"pipeline": {"pipeline"}, "dataprep": {"dataprep", "pipeline"},
           "demo": {"demo", "dataprep", "pipeline"}, "jobs": {"dataprep", "pipeline", "demo"}}


def _modules() -> dict[str, str]:
    out = {}
    for pkg in ALLOWED:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    out[mod] = path
    return out


def _imports(path: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p) if i in mods} for m, p in mods.items()}


def test_no_import_goes_up_a_layer():
    bad = [(m, i) for m, deps in _graph().items() for i in deps
           if i.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not bad, f"imports against the layers: {bad}"


def test_jobs_do_not_import_each_other():
    bad = [(m, i) for m, deps in _graph().items() if m.startswith("jobs.") for i in deps if i.startswith("jobs")]
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [m, d])}")
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a lazy import of dataprep inside a pipeline function is found."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from dataprep.sources import list_shards\n")
    assert "dataprep.sources" in _imports(str(p))
