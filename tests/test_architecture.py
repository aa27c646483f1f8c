"""The package's import graph: no cycles, the command line at the top, argparse only there.

Every module under gtr_jax/ is parsed with `ast`, and each of its imports, at module level
or inside a function, `import a.b` or `from a import b`, absolute or relative, is an edge
to the gtr_jax module it names. The command line is gtr_jax/cli/ and gtr_jax/__main__.py
(`python -m gtr_jax`); the library below it never imports it, nor the seqio registrations
in tasks/, nor argparse.
"""

import ast
import graphlib
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND_LINE = ("gtr_jax.cli", "gtr_jax.__main__")


def modules_under(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every module of `package`, a folder of `root`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: pathlib.Path, module: str) -> set[str]:
    """Every dotted name `module` imports anywhere: `import a.b` gives a.b, `from a import b` a and a.b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """{module: the modules of `modules` it imports}; a module's own packages (set up before it) left out."""
    graph = {}
    for module, path in modules.items():
        ancestors = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)}
        graph[module] = {name for name in imported_names(path, module) if name in modules and name not in ancestors}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle [a, b, ..., a] in which each module imports the next, or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        # graphlib takes {node: its predecessors} and lists each node before one that names it.
        return list(reversed(error.args[1]))
    return None


def outside_command_line(modules) -> list[str]:
    """The modules that are not part of the command line."""
    return [m for m in modules if not any(m == top or m.startswith(top + ".") for top in COMMAND_LINE)]


def violations(modules, forbidden) -> list[str]:
    """'module imports name' for each library module importing a name that `forbidden(name)` holds for."""
    return sorted(f"{module} imports {name}" for module in outside_command_line(modules)
                  for name in imported_names(modules[module], module) if forbidden(name))


def is_under(name: str, top: str) -> bool:
    """Whether `name` is the module `top` or inside it."""
    return name == top or name.startswith(top + ".")


def test_find_cycle_reports_a_cycle_in_import_order():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["a", "b", "c"]
    assert all(after in graph[before] for before, after in zip(cycle, cycle[1:]))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_function_level_and_relative_imports_are_edges(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (package / "b.py").write_text("import pkg.c\n")
    (package / "c.py").write_text("import argparse\n\n\ndef g():\n    from .a import f\n    return f\n")
    modules = modules_under(tmp_path, "pkg")
    assert import_graph(modules) == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert sorted(find_cycle(import_graph(modules))[:-1]) == ["pkg.a", "pkg.b", "pkg.c"]
    assert violations(modules, lambda name: name == "argparse") == ["pkg.c imports argparse"]


def test_gtr_jax_has_no_import_cycle():
    cycle = find_cycle(import_graph(modules_under(ROOT, "gtr_jax")))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_never_imports_the_command_line_or_tasks():
    modules = modules_under(ROOT, "gtr_jax")
    assert {"gtr_jax.cli.main", "gtr_jax.eval.evaluation"} <= set(modules)
    assert violations(modules, lambda name: is_under(name, "gtr_jax.cli") or is_under(name, "tasks")) == []


def test_only_the_command_line_parses_arguments():
    assert violations(modules_under(ROOT, "gtr_jax"), lambda name: is_under(name, "argparse")) == []
