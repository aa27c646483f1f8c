"""The `pydocs` task: retrieve a third-party docstring from its summary, built offline.

    python bench/quality_data.py --output=DIR

gtr_jax's demo task (gtr_jax/data/sources/demo.py) over the installed packages of PACKAGES, parsed with
`ast` (never imported: fast, no side effects, deterministic). Query: the first sentence of a
public function's, class's or method's docstring; passage: qualified name and signature,
then the rest of the docstring, whitespace collapsed, cut at MAX_PASSAGE characters. Kept:
summaries of >= MIN_SUMMARY characters not starting with ">>>", rests of >= MIN_REST; then
dropped, each rule on what the ones before left: summaries several objects share
(ambiguous queries), passages that repeat another's, and pairs whose query or passage is
in the demo task. A pair's split follows from a blake2b hash of its summary.

Writes DIR/train in MS MARCO's layout (gtr_jax.data.sources.msmarco.train_pairs), DIR/test in BEIR's
(gtr_jax.data.sources.beir.eval_set; the corpus is the test passages only), DIR/spiece.model (8,000
pieces, trained on the training texts) and DIR/manifest.json (versions, counts, sha256 of
each file). A DIR whose manifest matches this environment is reused as it is.
"""

import argparse
import ast
import collections
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import tempfile
import time
import warnings

from gtr_jax.data import build_vocab
from gtr_jax.data.sources import demo, stdlib_docs

# Top-level packages walked, in this order: those setup.py pins, then (sympy, networkx,
# huggingface_hub, PIL, fontTools) hard requirements of torch, transformers and matplotlib,
# which bring the task to ~30k pairs. manifest.json records every version found.
PACKAGES = ("numpy", "scipy", "sklearn", "matplotlib", "jax", "flax", "optax", "orbax", "tensorflow", "keras",
            "torch", "transformers", "sentence_transformers", "seqio", "tensorflow_datasets", "tensorflow_text",
            "tensorboard", "clu", "absl", "gin", "bm25s", "tqdm", "sympy", "networkx", "huggingface_hub", "PIL",
            "fontTools")
# Directories left out, also with leading underscores (_vendor, _testing).
SKIP_DIRS = {"tests", "test", "testing", "third_party", "vendor", "vendored", "__pycache__"}
FORMAT = 1  # bump whenever the files written would change for the same environment
MIN_SUMMARY, MIN_REST = demo.MIN_SUMMARY, demo.MIN_REST
MAX_PASSAGE = 2000
TEST_PERCENT = 8
VOCAB_SIZE = 8000
FILES = ("train/collection.tsv", "train/queries.train.tsv", "train/qrels.train.tsv", "test/corpus.jsonl",
         "test/queries.jsonl", "test/qrels/test.tsv", "spiece.model")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Whitespace and control characters collapsed to single spaces; lone surrogates as '?'."""
    return " ".join(CONTROL.sub(" ", text).encode("utf-8", "replace").decode("utf-8").split())


def _source_files(package: str) -> list[tuple[str, str]]:
    """(module name, path) of the package's non-test .py files, in sorted path order.

    Private modules (jax._src, numpy._core, sklearn.linear_model._base ...) are walked: they
    define most of the public API, and without them the pinned packages give < 20k pairs.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed (pip install -e .[bench])")
    found = []
    for location in sorted(spec.submodule_search_locations):
        for directory, dirs, files in os.walk(location):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.strip("_") not in SKIP_DIRS)
            for file in sorted(files):
                stem = file[:-3]
                if file.endswith(".py") and not (
                        stem.startswith("test_") or stem.endswith(("_test", "_tests")) or stem == "conftest"):
                    parts = os.path.relpath(os.path.join(directory, stem), location).split(os.sep)
                    name = ".".join([package, *parts[:-1]] + ([] if stem == "__init__" else [parts[-1]]))
                    found.append((name, os.path.join(directory, file)))
    return sorted(found, key=lambda item: item[1])


def _signature(node) -> str:
    """`(args) -> returns` of a function; a class's `__init__` args without self, or ''."""
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == "__init__"), None)
        if init is None:
            return ""
        args = copy.copy(init.args)
        if args.posonlyargs and args.posonlyargs[0].arg == "self":
            args.posonlyargs = args.posonlyargs[1:]
        elif not args.posonlyargs and args.args and args.args[0].arg == "self":
            args.args = args.args[1:]
        return f"({ast.unparse(args)})"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"({ast.unparse(node.args)}){returns}"


def _module_entries(module: str, path: str) -> list[tuple[str, str, str, str]]:
    """(qualified name, signature, summary, rest) of a module's documented public objects."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequences in old sources
            tree = ast.parse(f.read(), path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a template or Python 2 file among the sources
        return []
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    entries = []

    def visit(name, node):
        doc = ast.get_docstring(node, clean=True)
        if doc:
            entries.append((name, _signature(node), *stdlib_docs.split_docstring(doc)[1:]))

    for node in tree.body:
        if isinstance(node, kinds) and not node.name.startswith("_"):
            visit(f"{module}.{node.name}", node)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, kinds[:2]) and not member.name.startswith("_"):
                        visit(f"{module}.{node.name}.{member.name}", member)
    return entries


def _pairs() -> tuple[list[tuple[str, str, str, str]], dict]:
    """(package, qualified name, query, passage) of every kept pair, in walk order; counts."""
    entries, per_package = [], {}
    for package in PACKAGES:
        found = [(package, *e) for module, path in _source_files(package) for e in _module_entries(module, path)]
        per_package[package] = len(found)
        entries += found
    counts = {"entries": len(entries), "entries_per_package": per_package, "dropped": {}}

    def keep(rule, kept):
        counts["dropped"][rule] = len(entries) - len(kept)
        return kept

    first: dict[str, tuple] = {}
    for entry in entries:  # a name defined twice (in one module, say) keeps its first definition
        first.setdefault(entry[1], entry)
    entries = keep("repeated_name", list(first.values()))
    entries = [(package, name, _clean(summary), _clean(f"{name}{signature} {rest}")[:MAX_PASSAGE], _clean(rest))
               for package, name, signature, summary, rest in entries]
    entries = keep("short", [e for e in entries if len(e[2]) >= MIN_SUMMARY and len(e[4]) >= MIN_REST
                             and not e[2].startswith(">>>")])
    for rule, field in (("ambiguous_summary", 2), ("repeated_passage", 3)):
        uses = collections.Counter(e[field] for e in entries)
        entries = keep(rule, [e for e in entries if uses[e[field]] == 1])
    demo_texts = {_clean(text) for _, query, passage, _ in demo.all_pairs() for text in (query, passage)}
    entries = keep("in_demo", [e for e in entries if e[2] not in demo_texts and e[3] not in demo_texts])
    return [e[:4] for e in entries], counts


def _environment() -> dict:
    """What the data depends on: builder format, Python, package and SentencePiece versions."""
    distributions = importlib.metadata.packages_distributions()
    packages = {p: {d: importlib.metadata.version(d) for d in sorted(set(distributions.get(p, [])))} for p in PACKAGES}
    return {"format": FORMAT, "python": platform.python_version(), "packages": packages,
            "sentencepiece": importlib.metadata.version("sentencepiece")}


def _sha256(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reusable(directory: str, environment: dict) -> dict | None:
    """The manifest of a complete `directory` built for `environment`, else None."""
    try:
        with open(os.path.join(directory, "manifest.json")) as f:
            manifest = json.load(f)
        files = manifest["files"]
        if all(manifest.get(k) == v for k, v in environment.items()) and sorted(files) == sorted(FILES) and all(
                _sha256(os.path.join(directory, name)) == digest for name, digest in files.items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _write_lines(path: str, lines) -> None:
    """Write UTF-8 lines, each ending in '\\n', creating the file's directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _write(directory: str, environment: dict) -> dict:
    """Write every file of the task into `directory`; return its manifest."""
    pairs, counts = _pairs()
    split = {"train": [], "test": []}  # ids: a pair's position in walk order
    for i, (_, _, query, passage) in enumerate(pairs):
        split[demo.split_of(query, TEST_PERCENT)].append((i, query, passage))
    train, test = split["train"], split["test"]
    join = os.path.join
    _write_lines(join(directory, "train", "collection.tsv"), (f"{i}\t{p}" for i, _, p in train))
    _write_lines(join(directory, "train", "queries.train.tsv"), (f"{i}\t{q}" for i, q, _ in train))
    _write_lines(join(directory, "train", "qrels.train.tsv"), (f"{i}\t0\t{i}\t1" for i, _, _ in train))
    dumps = lambda record: json.dumps(record, ensure_ascii=False)  # noqa: E731
    _write_lines(join(directory, "test", "corpus.jsonl"), (dumps({"_id": f"d{i}", "title": "", "text": p})
                                                           for i, _, p in test))
    _write_lines(join(directory, "test", "queries.jsonl"), (dumps({"_id": f"q{i}", "text": q}) for i, q, _ in test))
    _write_lines(join(directory, "test", "qrels", "test.tsv"),
                 ["query-id\tcorpus-id\tscore", *(f"q{i}\td{i}\t1" for i, _, _ in test)])
    texts = [text for _, query, passage in train for text in (query, passage)]
    # All of them (~55k texts, 23M characters): about 40 s on one thread, so no sample.
    with open(join(directory, "spiece.model"), "wb") as f:
        f.write(build_vocab.build(texts, vocab_size=VOCAB_SIZE))
    counts.update(pairs=len(pairs), pairs_per_package=dict(collections.Counter(p[0] for p in pairs)),
                  train_pairs=len(train), test_queries=len(test), vocab_texts=len(texts))
    manifest = {**environment, "test_percent": TEST_PERCENT, "vocab_size": VOCAB_SIZE, "counts": counts,
                "files": {name: _sha256(join(directory, name)) for name in FILES}}
    with open(join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def build(output_dir: str) -> dict:
    """Build the task into `output_dir` (atomically) unless it holds this environment's; return the manifest."""
    output_dir = os.path.abspath(output_dir)
    environment = _environment()
    manifest = _reusable(output_dir, environment)
    if manifest is not None:
        return manifest
    parent, base = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    old = os.path.join(temporary, "old")
    try:
        manifest = _write(os.path.join(temporary, "new"), environment)
        if os.path.exists(output_dir):  # stale or incomplete: move it aside first
            os.rename(output_dir, old)
        try:
            os.rename(os.path.join(temporary, "new"), output_dir)
        except OSError:  # another process finished first: keep its copy if it matches
            other = _reusable(output_dir, environment)
            if other is None:
                raise
            return other
        return manifest
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def main(argv=None):
    """Build (or reuse) the task in --output and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory to write (reused when already built here)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = build(args.output)
    print(json.dumps(manifest["counts"], indent=1))
    print(f"{args.output}: {manifest['counts']['train_pairs']} training pairs, "
          f"{manifest['counts']['test_queries']} test queries ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
