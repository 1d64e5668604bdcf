"""The layout's rules: no module imports a package above its own layer, no import cycles, and
``import tomoseg`` + ``score`` / ``measure_objects`` never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tomoseg"

#: layer of each top-level part of the package: a module may import only from a lower layer or
#: from its own package. README's "Layout" section draws the same order.
LAYERS: dict[str, float] = {
    "_version": 0,
    "errors": 0,
    "utils": 0.5,  # layer 0 too, above errors.py and _version.py (progress raises TomosegError)
    "io": 1,
    "metrics": 1,
    "config": 1,
    "data": 2,
    "models": 2,
    "reporting": 2,
    "evaluation": 3,
    "synthetic": 3,
    "runtime": 4,
    "inference": 5,
    "training": 6,
    "experiments": 7,
    "cluster": 7,
    "sharing": 7,  # sharing a trained network (bioimage.io packages, TorchScript, ONNX)
    "api": 8,
    "cli": 9,
    "napari": 9,  # a front end beside the CLI (the only part that imports napari or Qt)
    # the top-level package itself: its lazy names are the API's (``tomoseg.train``, ...)
    "": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("tomoseg", *parts))] = p
    return out


def _imports(path: Path) -> set[str]:
    """Every tomoseg module imported anywhere in a file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tomoseg"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tomoseg"))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _modules()} - {""}
    assert parts <= set(LAYERS), f"give these a layer: {sorted(parts - set(LAYERS))}"


def test_no_module_imports_a_layer_above_its_own():
    mods = _modules()
    bad = []
    for mod, path in mods.items():
        if mod == "tomoseg":
            continue
        mine = LAYERS[_part(mod)]
        for imp in _imports(path):
            if imp not in mods:
                continue  # a name imported from a module
            theirs = _part(imp)
            if theirs != _part(mod) and LAYERS[theirs] >= mine:
                bad.append(f"{mod} -> {imp}")
    assert not bad, "imports that reach up or sideways:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}
    # a package's __init__ re-exporting its own modules is not a cycle back into it
    for m in graph:
        graph[m] = {i for i in graph[m] if not m.startswith(i + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_scoring_and_objects_do_not_import_torch():
    code = (
        "import sys, numpy as np, tomoseg\n"
        "t = np.zeros((8, 8), np.uint8); t[2:5, 2:5] = 1\n"
        "assert tomoseg.score(t, t)['mean']['iou']['1'] == 1.0\n"
        "v = np.zeros((4, 8, 8), np.uint8); v[1:3, 2:5, 2:5] = 1\n"
        "assert list(tomoseg.measure_objects(v)['num_pixels']) == [18]\n"
        "import tomoseg.evaluation.score, tomoseg.evaluation.objects, tomoseg.io\n"
        "heavy = [m for m in ('torch', 'monai', 'lightning') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tests_mirror_the_packages():
    """Each folder of ``tests/`` is named after the package whose modules its tests exercise;
    what spans packages (the API, the layout, the shared input cases, every command's crash
    consistency, real data) stays at the top."""
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "test module names must be unique across folders"
    top = {p.name for p in tests.glob("test_*.py")}
    spanning = {"test_api.py", "test_architecture.py", "test_cases.py", "test_crash.py"}
    assert top <= spanning | {"test_realdata.py"}, top


def _compared_strings(node: ast.Compare) -> set[str]:
    """String constants an ``==`` / ``!=`` / ``in`` comparison tests against (tuples, lists and
    sets of them included)."""
    found = set()
    for side in (node.left, *node.comparators):
        elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        found.update(
            e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        )
    return found


def test_no_network_name_compared_outside_models():
    """What differs between networks (a fixed depth, defaults) is declared in the model
    registry: no module outside ``models/`` branches on a network's name."""
    from tomoseg.models.registry import REGISTRY

    names = set(REGISTRY)
    bad = []
    for mod, path in _modules().items():
        if _part(mod) == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and _compared_strings(node) & names:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
            elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
                value = node.pattern.value
                if isinstance(value, ast.Constant) and value.value in names:
                    bad.append(f"{path.relative_to(SRC)}:{node.pattern.lineno}")
    assert not bad, "network names compared outside models/ (use the registry):\n" + "\n".join(bad)


def test_registry_declares_each_networks_depth():
    from tomoseg.models.registry import REGISTRY, build_model, network_hparams

    for name, arch in REGISTRY.items():
        hp = network_hparams(name, 1, 2, 4, 3)
        assert hp["depth"] == (arch.default_depth if arch.fixed_depth else 3), name
        assert build_model(**hp).hparams_dict["depth"] == hp["depth"], name


def _message_texts(node: ast.AST) -> list[str]:
    """The literal text of an error or warning call's arguments (f-string parts included)."""
    texts = []
    for arg in [*getattr(node, "args", []), *(k.value for k in getattr(node, "keywords", []))]:
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                texts.append(sub.value)
    return texts


def test_library_messages_name_parameters_not_options():
    """Library errors and warnings name parameters (``tile_size=0``, ``use overwrite=True``);
    only the command line speaks of ``--options`` (it rewrites the names, ``cli_message``)."""
    import re

    flag = re.compile(r"(?<![\w-])--[a-z]")
    calls = {"TomosegError", "Cancelled", "TomosegWarning", "warn", "_warn"}
    bad = []
    for mod, path in _modules().items():
        if _part(mod) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in calls and any(flag.search(t) for t in _message_texts(node)):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bad, "library messages naming --options:\n" + "\n".join(bad)


def test_only_the_napari_plugin_imports_a_gui():
    """The base install has no Qt: napari, magicgui and Qt bindings are imported only by
    ``tomoseg.napari``."""
    gui = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt")
    bad = []
    for mod, path in _modules().items():
        if _part(mod) == "napari":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [f"{mod}: {n}" for n in names if n.split(".")[0] in gui]
    assert not bad, "GUI imports outside tomoseg.napari:\n" + "\n".join(bad)
