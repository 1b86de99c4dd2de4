#!/usr/bin/env python3
"""The module dependencies of each crate, and the import loops among them.

A module (one file: `src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is
`a::b`, `lib.rs`/`main.rs` is the crate root) depends on another when it
names it: `crate::a::…`, `super::…`, or a child declared with `mod a;` and
then used as `a::…`; a re-export (`pub use`) is the module's face, not a
use. Unit tests (`#[cfg(test)]` modules at the end of a
file) are left out: they may use anything.

    scripts/module-deps.py [--check] [CRATE_DIR...]

prints each crate's modules with what they use and every loop (a group of
modules that reach each other); with `--check` it prints only the loops,
and exits 1 when there is one. Without directories it reads every crate of the workspace.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["common", "api", "gateway", "persister", "presence", "komunikator"]

COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')
# A re-export is a module's face, not a use of what it re-exports.
REEXPORT = re.compile(r"^\s*pub(?:\([^)]*\))?\s+use\b[^;]*;", re.M)
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", re.S)
MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
# A path start: `crate::`, `super::` or `name::`, then the rest of the path
# and any `{…}` group it opens.
PATH = re.compile(r"(?<![\w:$])(crate|super|self|[a-z_][a-z0-9_]*)::")


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"], ["main"]):
        parts = []
    return tuple(parts)


def production_text(file: pathlib.Path) -> str:
    text = file.read_text()
    cut = TESTS.search(text)
    if cut:
        text = text[: cut.start()]
    text = COMMENT.sub(" ", text)
    text = REEXPORT.sub(" ", text)
    return STRING.sub('""', text)


def expand(text: str, start: int) -> list:
    """The paths that begin at `start` (just after a `::`), with `{…}`
    groups expanded: `a::{b, c::d}` gives [a::b, a::c::d] as lists."""
    out = []

    def walk(i, prefix):
        # Reads one path element sequence from i.
        names = list(prefix)
        while True:
            m = re.compile(r"\s*(\w+|\{|\*)").match(text, i)
            if not m:
                out.append(names)
                return i
            tok = m.group(1)
            i = m.end()
            if tok == "*":
                out.append(names)
                return i
            if tok == "{":
                while True:
                    i = walk(i, names)
                    m = re.compile(r"\s*([,}])").match(text, i)
                    if not m:
                        return i
                    i = m.end()
                    if m.group(1) == "}":
                        return i
                    if re.compile(r"\s*\}").match(text, i):
                        i = re.compile(r"\s*\}").match(text, i).end()
                        return i
            names.append(tok)
            m = re.compile(r"\s*::").match(text, i)
            if not m:
                out.append(names)
                return i
            i = m.end()

    walk(start, [])
    return out


def crate_graph(crate: pathlib.Path) -> dict:
    src = crate / "src"
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f): f for f in files}
    graph = {}
    for module, file in modules.items():
        text = production_text(file)
        children = set(MOD_DECL.findall(text))
        uses = set()
        for m in PATH.finditer(text):
            head = m.group(1)
            if head == "crate":
                base = ()
            elif head in ("super", "self"):
                base = module[:-1] if head == "super" else module
            elif head in children:
                base = module + (head,)
            else:
                continue
            for path in expand(text, m.end()):
                if head in children:
                    path = []
                target = base
                for name in path:
                    if target + (name,) in modules:
                        target = target + (name,)
                    else:
                        break
                if target != module:
                    uses.add(target)
        graph[module] = uses
    return graph


def loops(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def name(module: tuple) -> str:
    return "::".join(module) or "(root)"


def main() -> int:
    args = sys.argv[1:]
    check = "--check" in args
    dirs = [a for a in args if a != "--check"] or [str(ROOT / c) for c in CRATES]
    found = 0
    for d in dirs:
        crate = pathlib.Path(d)
        graph = crate_graph(crate)
        if not check:
            print(f"# {crate.name}")
            for module in sorted(graph):
                used = ", ".join(name(u) for u in sorted(graph[module])) or "-"
                print(f"  {name(module)} -> {used}")
        for group in loops(graph):
            found += 1
            print(f"{crate.name}: import loop: {' <-> '.join(name(m) for m in group)}")
    if check and found:
        print(f"{found} import loop(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
