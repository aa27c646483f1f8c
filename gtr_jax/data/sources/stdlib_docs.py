"""Print (qualified name, signature, summary, rest) of the standard library's docstrings as JSON.

Run in a fresh, isolated interpreter (`python -I -S stdlib_docs.py`) by gtr_jax.data.sources.demo:
importing ~600 modules has side effects the caller must not inherit, and without
site-packages nothing but the standard library can change what is found. Standard
library only, on purpose.

Walked: every public module and submodule of `sys.stdlib_module_names` (built-in and C
modules included) that imports, except GUI, test and side-effect modules; in each, the
public functions and classes it defines, and the public methods and properties those
classes define. An object reached twice keeps its first name in sorted order.
"""

import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import warnings

LITERALS = (type(None), bool, int, float, complex, str, bytes)
SKIP = {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "lib2to3", "distutils"}
# A C docstring may start with its signature: "getattr(object, name[, default]) -> value".
SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)\s*(->.*|--)?$|^--$")
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Under -S a virtual environment's python reports the base prefix, so its own root (the
# parent of bin/) is listed too: defaults such as platform.architecture's sys.executable.
INSTALL_PREFIXES = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix,
                          os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))})


class _Shown:
    """A default value shown as given text (repr of this object is the text)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown_default(value):
    """Literal defaults as they are; anything else (os.environ, objects, install paths) as '...'.

    Those would print the machine's environment, paths or memory addresses into the data.
    """
    literal = isinstance(value, LITERALS) or (
        isinstance(value, (tuple, frozenset)) and all(isinstance(v, LITERALS) for v in value)
    )
    if literal and not (isinstance(value, str) and value.startswith(INSTALL_PREFIXES)):
        return value
    return _Shown("...")


def _module_names() -> list[str]:
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP:
            continue
        try:
            module = importlib.import_module(top)
        except Exception:  # noqa: BLE001 - platform-specific modules (winreg, msvcrt ...) do not import
            continue
        names.append(top)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + "."):
            if not any(part.startswith("_") or "test" in part for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def _signature(obj, leading: list[str]) -> str:
    try:
        signature = inspect.signature(obj)
        signature = str(signature.replace(parameters=[
            p if p.default is p.empty else p.replace(default=_shown_default(p.default))
            for p in signature.parameters.values()
        ]))
    except Exception:  # noqa: BLE001 - C text signatures may name constants that do not exist
        signature = leading[0][leading[0].index("(") :] if leading and "(" in leading[0] else ""
    # Default values such as sentinels print their address, which changes every run.
    return ADDRESS.sub("", signature)


def split_docstring(doc: str) -> tuple[list[str], str, str]:
    """(leading signature and blank lines, summary, rest) of a cleaned docstring.

    The summary is the first sentence, even when the docstring wraps it over lines; the
    rest is everything after it, paragraphs kept.
    """
    lines = doc.splitlines()
    leading = []
    while lines and (SIGNATURE_LINE.match(lines[0].strip()) or not lines[0].strip()):
        leading.append(lines.pop(0).strip())
    paragraphs = re.split(r"\n\s*\n", "\n".join(lines).strip())
    first = " ".join(paragraphs[0].split())
    end = re.search(r"[.!?](\s|$)", first)
    cut = end.end() if end else len(first)
    rest = "\n\n".join(p for p in [first[cut:].strip(), *paragraphs[1:]] if p)
    return leading, first[:cut].strip(), rest


def _entry(name: str, obj):
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc:
        return None
    leading, summary, rest = split_docstring(inspect.cleandoc(doc))
    return [name, _signature(obj, [l for l in leading if l != "--"]), summary, rest]


def main():
    """Print a JSON list of [qualified name, signature, summary, rest] in name order."""
    warnings.simplefilter("ignore")
    entries, seen = [], set()

    def visit(name, obj):
        if id(obj) not in seen:
            seen.add(id(obj))
            entry = _entry(name, obj)
            if entry:
                entries.append(entry)

    for module_name in _module_names():
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - a submodule may need an optional system library
            continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            owner = getattr(obj, "__module__", None) or ""
            if owner.lstrip("_").split(".")[0] != module_name.split(".")[0] and module_name != "builtins":
                continue  # defined elsewhere and imported here: visit it where it is defined
            visit(f"{module_name}.{attr}", obj)
            if inspect.isclass(obj):
                for method, member in sorted(vars(obj).items()):
                    member_kinds = (property, staticmethod, classmethod)
                    if not method.startswith("_") and (inspect.isroutine(member) or isinstance(member, member_kinds)):
                        visit(f"{module_name}.{attr}.{method}", getattr(member, "__func__", member))
    json.dump(entries, sys.stdout)


if __name__ == "__main__":
    main()
