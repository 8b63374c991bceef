"""The house: every import of the product runs down the data flow (a stage imports the ones before
it, never one after), no two modules import each other, and the product never imports its test
helpers. Read from the source with `ast`, lazy imports inside functions included."""

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).parents[1] / "pipeline"
ORDER = ("errors", "core", "config", "plan", "executors", "generate", "segmenter", "gate", "export", "data", "train",
         "tools", "cli")
"""Each part may import the parts before it: core needs nothing above it; the gate reaches the
segmenter, never the trainer; `cli` sits on top. `testing` (helpers of tests and benches) may
import anything but `cli`, and nothing imports it."""


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


def part(module: str) -> str:
    """`pipeline.gate.run` → `gate`; `pipeline.config` → `config`; `pipeline` → `pipeline` (the version)."""
    return module.split(".")[1] if "." in module else module


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules a file imports: `from pipeline.gate import metrics` imports pipeline.gate.metrics."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update((names & known.keys()) or {node.module})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
    return found


def graph() -> nx.DiGraph:
    known = modules()
    edges = nx.DiGraph()
    for module, path in known.items():
        edges.add_node(module)
        for target in imports(path, known):
            while target not in known and "." in target:  # a name inside a module
                target = target.rsplit(".", 1)[0]
            if target != module:
                edges.add_edge(module, target)
    return edges


def test_every_import_runs_down_the_data_flow():
    rank = {name: i for i, name in enumerate(ORDER)}
    wrong = []
    for source, target in graph().edges:
        a, b = part(source), part(target)
        if a == b or b == "pipeline" or a in ("__main__",):
            continue
        if b == "testing" or (a == "testing" and b == "cli"):
            wrong.append(f"{source} -> {target}")
        elif a in rank and b in rank and rank[b] > rank[a]:
            wrong.append(f"{source} -> {target} ({b} comes after {a})")
        elif a != "testing" and (a not in rank or b not in rank):
            wrong.append(f"{source} -> {target} (a part the order does not name)")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, cycles
