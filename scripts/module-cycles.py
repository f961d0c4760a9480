#!/usr/bin/env python3
"""Finds import cycles between the modules of a Rust crate.

Reads every `.rs` file under a crate's `src/`, names each file's module
(`src/protocol/connect.rs` -> `protocol::connect`), and records an edge from
it to every module of the same crate it names in code: `crate::a::b` paths,
`use crate::{a, b::c}` groups, `super::` paths and paths that start with
a child module. Comments and `#[cfg(test)]`
modules are left out (a test may reach anywhere). Edges are then folded to
one level below the crate root (`protocol::connect` -> `protocol`), where
the layering is meant to hold, and to whole files; any strongly connected
component of more than one node is a cycle and is printed.

Usage: module-cycles.py CRATE_DIR [CRATE_DIR ...]; exits 1 on a cycle.
"""

import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def code_only(text: str) -> str:
    """`text` with comments removed and string and char literals emptied."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find('"' + m.group(1), i + m.end())
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and (m := re.match(r"'(?:\\.[^']*|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip(text: str) -> str:
    """Code without comments, literals, `#[cfg(test)] mod … { … }`, module
    declarations or re-exports."""
    text = code_only(text)
    out, at = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < at:
            continue
        out.append(text[at : m.start()])
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        at = i
    out.append(text[at:])
    # Declaring a module or re-exporting its names is structure, not use.
    return re.sub(r"^\s*(?:(?:pub(?:\([\w:]+\))?\s+)?mod\s+\w+\s*;|pub(?:\([\w:]+\))?\s+use\s+[^;]*;)", "", "".join(out), flags=re.M)


def paths_in_use_group(prefix: list[str], body: str) -> list[list[str]]:
    """`a::{b, c::d}` -> [[a, b], [a, c, d]] (nested groups included)."""
    result, depth, item = [], 0, ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            item = item.strip()
            if item:
                m = re.match(r"([\w:]*?)::\{(.*)\}$", item, flags=re.S)
                if m:
                    head = [p for p in m.group(1).split("::") if p]
                    result.extend(paths_in_use_group(prefix + head, m.group(2)))
                else:
                    result.append(prefix + [p for p in item.split(" as ")[0].split("::") if p])
            item = ""
        else:
            item += ch
    return result


def references(module: tuple[str, ...], code: str, children: set[str]) -> list[list[str]]:
    found = []
    # Paths that start with a child module (`mod x;` puts `x` in scope), or `self::`.
    for m in re.finditer(r"(?<![\w:])(?:self::)?(\w+)((?:::\w+)*)::", code):
        if m.group(1) in children:
            found.append(list(module) + [m.group(1)] + [p for p in m.group(2).split("::") if p])
    for m in re.finditer(r"\bcrate::\{", code):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        found.extend(paths_in_use_group([], code[m.end() : i - 1]))
    for m in re.finditer(r"\bcrate((?:::\w+)+)", code):
        found.append(m.group(1).split("::")[1:])
    for m in re.finditer(r"\b((?:super::)+)(\w+(?:::\w+)*)", code):
        up = m.group(1).count("super::")
        found.append(list(module[: len(module) - up]) + m.group(2).split("::"))
    return found


def resolve(path: list[str], modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The longest known module that `path` starts with."""
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in modules:
            return tuple(path[:n])
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def check(crate: Path) -> bool:
    src = crate / "src"
    files = {module_of(src, f): f for f in sorted(src.rglob("*.rs"))}
    modules = set(files)
    by_file: dict[str, set[str]] = {}
    by_folder: dict[str, set[str]] = {}
    for module, file in files.items():
        name = "::".join(module) or "(root)"
        top = module[0] if module else "(root)"
        children = {m[len(module)] for m in modules if len(m) == len(module) + 1 and m[: len(module)] == module}
        for path in references(module, strip(file.read_text()), children):
            target = resolve(path, modules)
            if target is None or target == module:
                continue
            by_file.setdefault(name, set()).add("::".join(target) or "(root)")
            target_top = target[0] if target else "(root)"
            if target_top != top:
                by_folder.setdefault(top, set()).add(target_top)
    ok = True
    for level, edges in (("module", by_file), ("top-level module", by_folder)):
        for component in cycles(edges):
            ok = False
            print(f"{crate}: {level} cycle: {' <-> '.join(component)}")
    if ok:
        count = sum(len(v) for v in by_file.values())
        print(f"{crate}: no cycle among {len(modules)} modules ({count} edges)")
    return ok


if __name__ == "__main__":
    results = [check(Path(arg)) for arg in sys.argv[1:]]
    sys.exit(0 if all(results) else 1)
