"""Layering of vqkit (issue 13): a lower layer never imports a higher one, and there is no import cycle.

Every ``import`` / ``from ... import`` statement of every .py file under vqkit/ is read with ``ast``,
at module level and inside functions alike (a deferred import is still a dependency), and checked
against RULES. Imports spelled as strings (``importlib.import_module``, Hydra ``_target_``) are not seen.
A subprocess also imports every module of the low layers and checks that no training framework came in
transitively.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vqkit"


@dataclass(frozen=True)
class Rule:
    """What one part of vqkit may import.

    Attributes:
        only: the vqkit modules (dotted, relative to ``vqkit``; a prefix covers its submodules) it may import;
            None: any of vqkit except ``never``.
        never: vqkit modules it must not import (used with ``only=None``).
        banned: third-party top-level packages it must not import.
    """

    only: frozenset[str] | None
    never: frozenset[str] = frozenset()
    banned: frozenset[str] = frozenset()


def only(*modules: str, banned: Iterable[str] = ()) -> Rule:
    return Rule(frozenset(modules), banned=frozenset(banned))


def all_but(*modules: str, banned: Iterable[str] = ()) -> Rule:
    return Rule(None, frozenset(modules), frozenset(banned))


FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra")  # training frameworks: never in the inference path
LOW = ("files", "layers", "quantizers", "modalities", "models")
# command-line entry points: the top
CLIS = ("train", "train_prior", "eval", "export", "tokenize", "tools.codebook", "tools.audio")

# The layers, lowest first. Keys are modules relative to vqkit/ and cover their submodules; the longest
# matching key applies. A package's own __init__.py is "<package>.__init__" (vqkit/__init__.py is "__init__";
# it runs on every `import vqkit.X`, so it may only import what the lowest layers may). "__version__" is
# `from vqkit import __version__`, a constant.
RULES: dict[str, Rule] = {
    # module            | vqkit modules it may import                         | third-party it must not import
    "files":            only(banned=FRAMEWORKS),  # atomic writes, torch.load without unpickling: the lowest
    "layers":           only("files", "layers",                                banned=FRAMEWORKS),
    "quantizers":       only("files", "layers", "quantizers",                  banned=FRAMEWORKS),
    "modalities":       only("files", "quantizers", "layers", "modalities",    banned=FRAMEWORKS),
    "models":           only(*LOW, "__version__",                              banned=FRAMEWORKS),
    "tools.__init__":   only(),  # imported on the way to tools.assets: must stay empty
    "tools.assets":     only("quantizers",                                     banned=FRAMEWORKS),  # leaf tool
    "losses":           only(*LOW, "losses", "tools.assets",                   banned=FRAMEWORKS),
    "metrics":          only(*LOW, "losses", "metrics", "tools.assets",        banned=FRAMEWORKS),
    "tokenizers":       only(*LOW, "tokenizers", "__version__",                banned=FRAMEWORKS),
    "prior":            only(*LOW, "prior",                                    banned=FRAMEWORKS),  # generative priors
    "__init__":         only("quantizers", "tokenizers", *LOW,                 banned=FRAMEWORKS),
    "third_party_noise": only(banned=FRAMEWORKS),  # warning / log filters for other libraries' messages
    "data":             all_but("lit", "callbacks", "config", *CLIS),
    "lit":              all_but("callbacks", "config", *CLIS),
    "callbacks":        all_but("config", *CLIS),
    "config":           all_but(*CLIS),
    "preflight":        all_but(*CLIS),  # checks of a composed run config before vqkit.train builds anything
    "resume":           all_but(*CLIS),  # resume=RUN: recomposes the run (config), reads its checkpoint
    "export":           all_but("train", "eval", "tools.codebook", "tools.audio"),
    "eval":             all_but("train", "tools.codebook", "tools.audio"),
    "tokenize":         all_but("train", "eval", "export", "tools.codebook", "tools.audio"),
    "tools":            all_but("train", "eval"),  # tools.codebook (reads checkpoints via export), tools.audio
    "train":            all_but(),
    "train_prior":      all_but("train", "eval", "export", "tokenize", "tools.codebook", "tools.audio"),
}

# Imports allowed despite RULES: (file, function whose body may hold it, imported module).
# (file, function, imported module) allowed against the rules; none today: the safe artifact builder
# (vqkit/models/artifact.py) instantiates checked configs itself, without Hydra.
EXCEPTIONS: set[tuple[str, str, str]] = set()

# Violations of today's tree, removed by the issue-13 redesign: (file, imported module). Line numbers are
# left out on purpose so that unrelated edits do not break the test. An entry that no longer occurs makes
# the test fail: delete it when its import is gone.
# (file, imported module) pairs tolerated for now, each with the reason; an entry that no longer occurs fails.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    file: str  # relative to the tree's parent, e.g. vqkit/quantizers/vqgan_lc.py
    line: int
    function: str | None  # innermost enclosing def, None at module level
    target: str  # the imported module; for a name of the root package that is no module, "<package>.<name>"


def module_name(path: Path, root: Path) -> str:
    """``vqkit/a/b.py`` -> ``vqkit.a.b``; ``vqkit/a/__init__.py`` -> ``vqkit.a.__init__``."""
    return ".".join(path.relative_to(root.parent).with_suffix("").parts)


def is_package(name: str, root: Path) -> bool:
    return (root.parent.joinpath(*name.split(".")) / "__init__.py").is_file()


def is_module(name: str, root: Path) -> bool:
    return root.parent.joinpath(*name.split(".")).with_suffix(".py").is_file() or is_package(name, root)


def resolve(node: ast.Import | ast.ImportFrom, module: str, root: Path) -> list[str]:
    """The modules one import statement imports (``from P import n``: ``P.n`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative to the module's package
        base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
    if base.split(".")[0] != root.name:
        return [base]
    targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}", root) or base == root.name else base
               for a in node.names]
    return list(dict.fromkeys(targets))  # `from P import a, b` imports P once


def imports(root: Path) -> list[Import]:
    """Every import statement of every .py file under ``root`` (a package directory), in file order."""
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        module, file = module_name(path, root), path.relative_to(root.parent).as_posix()

        def walk(node: ast.AST, function: str | None, module: str = module, file: str = file) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    found.extend(Import(file, child.lineno, function, t) for t in resolve(child, module, root))
                walk(child, child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function)

        walk(ast.parse(path.read_text(), str(path)), None)
    return found


def rule_key(name: str, rules: dict[str, Rule]) -> str | None:
    """The longest RULES key covering ``name`` (relative to the package, e.g. ``tools.assets``), or None."""
    keys = [k for k in rules if name == k or name.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def source_key(file: str, rules: dict[str, Rule]) -> str | None:
    """The RULES key of a file (``vqkit/tools/__init__.py`` -> ``tools.__init__``, or ``tools``)."""
    return rule_key(".".join(Path(file).with_suffix("").parts[1:]), rules)


def target_key(target: str, root: Path, rules: dict[str, Rule]) -> str | None:
    """The RULES key whose code an import of ``target`` (one of the package) runs."""
    package = root.name
    if target == f"{package}.__version__":
        return "__version__"  # a constant
    if target == package or not is_module(target, root):
        return "__init__"  # the root package, or a name it re-exports
    name = target.removeprefix(package + ".")
    return rule_key(name + ".__init__" if is_package(target, root) else name, rules)


def allowed(rule: Rule, target: str, package: str) -> bool:
    if target.split(".")[0] != package:
        return target.split(".")[0] not in rule.banned

    def covered(entries: Iterable[str]) -> bool:
        return any(target == f"{package}.{e}" or target.startswith(f"{package}.{e}.") for e in entries)

    return covered(rule.only) if rule.only is not None else not covered(rule.never)


def violations(
    root: Path,
    rules: dict[str, Rule],
    exceptions: Iterable[tuple[str, str, str]] = (),
    known: Iterable[tuple[str, str]] = (),
) -> tuple[list[str], set[tuple[str, str]]]:
    """``file:line imports X`` for each import the rules forbid, and the known violations that occur."""
    exceptions, known = set(exceptions), set(known)
    problems, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        file = path.relative_to(root.parent).as_posix()
        if source_key(file, rules) is None:
            problems.append(f"{file}: no layering rule; add its package to RULES")
    for imp in imports(root):
        key = source_key(imp.file, rules)
        if key is None or allowed(rules[key], imp.target, root.name):
            continue
        if (imp.file, imp.function, imp.target) in exceptions:
            continue
        if (imp.file, imp.target) in known:
            seen.add((imp.file, imp.target))
            continue
        problems.append(f"{imp.file}:{imp.line} imports {imp.target}")
    return problems, seen


def layer_cycles(root: Path, rules: dict[str, Rule], known: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Cycles between RULES keys in the imports actually made (known violations left out)."""
    known = set(known)
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports(root):
        if imp.target.split(".")[0] != root.name or (imp.file, imp.target) in known:
            continue
        source, target = source_key(imp.file, rules), target_key(imp.target, root, rules)
        if source and target and source != target:
            edges.setdefault(source, {}).setdefault(target, imp)
    cycles: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == "open":
                loop = [*path[path.index(nxt):], nxt]
                cycles.append(" -> ".join(
                    f"{a} ({edges[a][b].file}:{edges[a][b].line})" for a, b in zip(loop, loop[1:], strict=False)
                ) + f" -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


# --- the tree --------------------------------------------------------------------------------------------
def test_no_lower_layer_imports_a_higher_one() -> None:
    problems, seen = violations(ROOT / PACKAGE, RULES, EXCEPTIONS, KNOWN_VIOLATIONS)
    assert not problems, "layering violations (see RULES in tests/test_layering.py):\n" + "\n".join(problems)
    stale = sorted(KNOWN_VIOLATIONS - seen)
    assert not stale, f"fixed: delete these from KNOWN_VIOLATIONS in tests/test_layering.py: {stale}"


def test_no_import_cycle_between_layers() -> None:
    cycles = layer_cycles(ROOT / PACKAGE, RULES, KNOWN_VIOLATIONS)
    assert not cycles, "import cycles between parts of vqkit:\n" + "\n".join(cycles)


def test_the_low_layers_import_no_training_framework() -> None:
    """Importing every module of the layers with banned frameworks loads none of them, even transitively."""
    low = sorted(k for k, r in RULES.items() if r.banned and not k.endswith("__init__"))
    code = f"""
import importlib, importlib.util, json, pkgutil, sys
import {PACKAGE}
for name in {low!r}:
    if importlib.util.find_spec("{PACKAGE}." + name) is None:
        continue  # a layer that does not exist yet
    mod = importlib.import_module("{PACKAGE}." + name)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), mod.__name__ + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [], f"loaded by importing the modules of {low}"


# --- the checker itself, on a tiny synthetic tree -------------------------------------------------------
def make_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


TINY_RULES = {
    "__init__": only("low"),
    "low": only("low", banned=("lightning",)),
    "high": all_but(),
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tree(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "from pkg.low.a import f\n",
        "low/a.py": "import os\n\ndef f():\n    return 1\n",
        "high/__init__.py": "",
        "high/b.py": "from pkg.low import a\nimport lightning\n",
    })


def test_checker_passes_a_clean_tree(tiny: Path) -> None:
    assert violations(tiny, TINY_RULES) == ([], set())
    assert layer_cycles(tiny, TINY_RULES) == []


def test_checker_catches_upward_imports_anywhere_in_a_file(tiny: Path) -> None:
    upward = "import os\n\ndef f():\n    from pkg.high import b\n    from ..high.b import g\n"
    (tiny / "low" / "a.py").write_text(upward)
    (tiny / "low" / "c.py").write_text("import lightning.pytorch as pl\n")
    problems, _ = violations(tiny, TINY_RULES)
    assert problems == [
        "pkg/low/a.py:4 imports pkg.high.b",
        "pkg/low/a.py:5 imports pkg.high.b",
        "pkg/low/c.py:1 imports lightning.pytorch",
    ]
    assert any("low" in c and "high" in c for c in layer_cycles(tiny, TINY_RULES))


def test_checker_exceptions_known_violations_and_unruled_modules(tiny: Path) -> None:
    (tiny / "low" / "a.py").write_text("def build():\n    import lightning\n\ndef other():\n    import lightning\n")
    problems, _ = violations(tiny, TINY_RULES, exceptions={("pkg/low/a.py", "build", "lightning")})
    assert problems == ["pkg/low/a.py:5 imports lightning"]  # the exception holds in build() only
    problems, seen = violations(tiny, TINY_RULES, known={("pkg/low/a.py", "lightning")})
    assert problems == [] and seen == {("pkg/low/a.py", "lightning")}
    (tiny / "extra.py").write_text("")
    assert violations(tiny, TINY_RULES)[0][0] == "pkg/extra.py: no layering rule; add its package to RULES"
