"""The two generated pages of docs/, written from the sources they describe:

- docs/mlbackend.md, the MLBackend reference, from crds/mlbackend.yaml: every field's path, type,
  default, enum and bounds, and description, the CEL rules' messages, the printer columns;
- docs/backend-env.md, the backend's environment variables, from
  backend_image/prelabel_backend/settings.py: the variables `Settings.from_env` reads, the default it
  gives each one (from_env of an empty environment) and the meaning its comment states.

    python -m prelabel_local.docs            # rewrite both pages (make docs)
    python -m prelabel_local.docs --check    # exit 1, naming the stale pages, when a source changed

tests/unit/local/test_docs.py runs the check. Nothing here imports the backend: settings.py is loaded
from the file under the root given, so a copy of the repository is read as it is.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
import re
import sys
import tokenize
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = Path("crds/mlbackend.yaml")
SETTINGS = Path("backend_image/prelabel_backend/settings.py")
MLBACKEND_PAGE = Path("docs/mlbackend.md")
BACKEND_ENV_PAGE = Path("docs/backend-env.md")
REGENERATE = "`make docs` (`python -m prelabel_local.docs`)"


# -- Markdown ----------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    """Text for a table cell: one line, `|` escaped, and `<...>` outside code spans kept visible
    (GitHub hides what looks like an unknown HTML tag)."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _code(value: str) -> str:
    return f"`{value}`".replace("|", "\\|")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# -- the MLBackend reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    path: str
    type: str
    required: bool
    default: str
    constraints: str
    description: str


@dataclass(frozen=True)
class Rule:
    path: str
    rule: str
    message: str


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"array of {_type(schema.get('items') or {})}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type(schema['additionalProperties'])}"
    if kind == "object" and schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return "object (free-form)"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(str(v)) for v in schema["enum"]))
    if schema.get("exclusiveMinimum") or schema.get("exclusiveMaximum"):  # OpenAPI v3.0's booleans
        lower = ("over" if schema.get("exclusiveMinimum") else "at least", schema.get("minimum"))
        upper = ("under" if schema.get("exclusiveMaximum") else "at most", schema.get("maximum"))
        parts.append(", ".join(f"{word} {value}" for word, value in (lower, upper) if value is not None))
        schema = {k: v for k, v in schema.items() if k not in ("minimum", "maximum")}
    for low, high, unit in (("minimum", "maximum", ""), ("minLength", "maxLength", " character"), ("minItems", "maxItems", " item")):
        if low in schema and high in schema:
            parts.append(f"{schema[low]} to {schema[high]}{unit}{'s' if unit else ''}")
        elif low in schema:
            parts.append(f"at least {schema[low]}{unit}{'s' if unit and schema[low] != 1 else ''}")
        elif high in schema:
            parts.append(f"at most {schema[high]}{unit}{'s' if unit and schema[high] != 1 else ''}")
    if "pattern" in schema:
        parts.append("matches " + _code(str(schema["pattern"])))
    if schema.get("x-kubernetes-preserve-unknown-fields") and schema.get("properties"):
        parts.append("other fields kept as given")
    items = schema.get("items") or {}
    if items.get("x-kubernetes-preserve-unknown-fields") and items.get("properties"):
        parts.append("an item may hold other fields too")
    return "; ".join(parts)


def _walk(schema: dict[str, Any], path: str, required: bool, fields: list[Field], rules: list[Rule]) -> None:
    if path:
        default = _code(json.dumps(schema["default"], separators=(", ", ": "))) if "default" in schema else ""
        fields.append(Field(path, _type(schema), required, default, _constraints(schema), str(schema.get("description", ""))))
    for rule in schema.get("x-kubernetes-validations") or []:
        rules.append(Rule(path or "(the resource)", str(rule["rule"]), " ".join(str(rule.get("message", "")).split())))
    needed = set(schema.get("required") or [])
    for name, child in (schema.get("properties") or {}).items():
        if not path and name in ("apiVersion", "kind", "metadata"):
            continue
        _walk(child, f"{path}.{name}" if path else name, name in needed, fields, rules)
    items = schema.get("items")
    if isinstance(items, dict) and (items.get("properties") or items.get("x-kubernetes-validations")):
        _walk_items(items, f"{path}[]", fields, rules)


def _walk_items(items: dict[str, Any], path: str, fields: list[Field], rules: list[Rule]) -> None:
    """An array's items: their own rules and fields, under path[] (the item itself is no row)."""
    for rule in items.get("x-kubernetes-validations") or []:
        rules.append(Rule(path, str(rule["rule"]), " ".join(str(rule.get("message", "")).split())))
    needed = set(items.get("required") or [])
    for name, child in (items.get("properties") or {}).items():
        _walk(child, f"{path}.{name}", name in needed, fields, rules)


def crd_fields(crd: dict[str, Any]) -> tuple[list[Field], list[Rule]]:
    """Every field of the served version's schema (spec and status) and every CEL rule, in schema order."""
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    fields: list[Field] = []
    rules: list[Rule] = []
    _walk(version["schema"]["openAPIV3Schema"], "", False, fields, rules)
    return fields, rules


def render_mlbackend(crd_text: str) -> str:
    crd = yaml.safe_load(crd_text)
    spec = crd["spec"]
    names = spec["names"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    fields, rules = crd_fields(crd)
    root = version["schema"]["openAPIV3Schema"]
    out = [
        f"# The {names['kind']} resource ({spec['group']}/{version['name']})",
        "",
        f"<!-- Generated from {CRD} by {REGENERATE}: edit the CRD's descriptions, then regenerate. -->",
        "",
        (f"{root.get('description', '')} Group `{spec['group']}`, version `{version['name']}`, {spec['scope'].lower()}; "
        f"plural `{names['plural']}`, short name{'s' if len(names.get('shortNames', [])) > 1 else ''} "
        f"{', '.join(_code(s) for s in names.get('shortNames', []))}, categor{'ies' if len(names.get('categories', [])) > 1 else 'y'} "
        f"{', '.join(_code(c) for c in names.get('categories', []))}. "
        f"`kubectl explain {names['singular']}.spec` prints the same descriptions. "
        "An example: [`examples/mlbackend.yaml`](../examples/mlbackend.yaml); how the operator acts on it: "
        "[operations.md](operations.md); what its conditions say: [troubleshooting.md](troubleshooting.md)."),
        "",
        "A field's default is filled in by the API server when the field is left out; a field marked required must be set.",
        "",
        "## `kubectl get` columns",
        "",
        *_table(("column", "type", "from", "description"),
                [(c["name"], c["type"], _code(c["jsonPath"]), _cell(c.get("description", ""))) for c in version.get("additionalPrinterColumns", [])]),
    ]
    for part in ("spec", "status"):
        rows = [(_code(f.path) + (" (required)" if f.required else ""), f.type, f.default, _cell(f.description), f.constraints)
                for f in fields if f.path == part or f.path.startswith(f"{part}.")]
        out += ["", f"## {part}", "", *_table(("field", "type", "default", "description", "allowed"), rows)]
    out += ["", "## Validation rules", "",
            "Rules across fields (CEL, `x-kubernetes-validations`): the API server refuses a resource that breaks one, with the message.",
            "", *_table(("where", "rule", "message"), [(_code(r.path) if r.path[:1].isalpha() else r.path, _code(r.rule), _cell(r.message)) for r in rules])]
    return "\n".join(out) + "\n"


# -- the backend's environment variables -------------------------------------------------------------
@dataclass(frozen=True)
class EnvVar:
    names: tuple[str, ...]  # the variable, then the older names it also reads
    default: str
    meaning: str
    prelabel: bool  # an addition of Prelabel's (not in HumanSignal's example)
    section: str


_SECTION = re.compile(r"^#\s*---\s*(?P<name>.*?)\s*-+\s*$")


def _load_settings(path: Path) -> Any:
    """settings.py as a module of its own (not the installed backend's): what the file under the root says."""
    name = f"_prelabel_docs_settings_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while making the class
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text without '#', whether the line holds only the comment)."""
    found: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, col = token.start
            found[row] = (token.string, not lines[row - 1][:col].strip())
    return found


def _env_names(node: ast.AST, local: Mapping[str, ast.AST], constants: Mapping[str, Any]) -> list[str]:
    """The environment variables an expression of from_env reads: the name in `env.get("NAME")` and in
    a helper's `(env, "NAME", ...)`, through the locals it names, and the variables of a module-level
    table it iterates (DEFAULT_MODEL_ENV)."""
    names: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            args = sub.args
            if isinstance(sub.func, ast.Attribute) and sub.func.attr == "get" and isinstance(sub.func.value, ast.Name) \
                    and sub.func.value.id == "env":
                read = args[:1]
            else:
                read = [args[i + 1] for i, a in enumerate(args[:-1]) if isinstance(a, ast.Name) and a.id == "env"]
            names += [a.value for a in read if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif isinstance(sub, ast.Name) and sub.id in local and local[sub.id] is not node:
            names += _env_names(local[sub.id], local, constants)
        elif isinstance(sub, ast.Name) and isinstance(constants.get(sub.id), dict):
            names += [v[0] for v in constants[sub.id].values() if isinstance(v, tuple) and v and isinstance(v[0], str)]
    return list(dict.fromkeys(names))


def _meaning(text: str, names: list[str]) -> tuple[str, bool]:
    """A comment without its leading "NAME (Prelabel):" (or "NAME (or OTHER):", "MODEL_<TASK> (...):"),
    and whether that prefix marked the variable as Prelabel's addition."""
    head, colon, rest = text.partition(":")
    first = (head.split() or [""])[0].rstrip(",")
    if first in names or re.fullmatch(r"[A-Z][A-Z0-9_]*<[A-Z]+>", first):
        return (rest.strip() if colon else ""), "(Prelabel)" in head
    return text, False


def _default(value: Any, root: Path, field_name: str) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, Path):
        resolved = value.resolve()
        return _code(str(resolved.relative_to(root.resolve())) if resolved.is_relative_to(root.resolve()) else str(value))
    if isinstance(value, tuple):
        return ", ".join(_default(v, root, field_name) for v in value) if value else "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and field_name.endswith("_bytes") and value % (1024 * 1024) == 0:
        return f"{_code(str(value))} ({value // (1024 * 1024)} MiB)"
    return _code(str(value))


def settings_env(root: Path) -> list[EnvVar]:
    """Every variable Settings.from_env reads, with from_env's default and the field's comment.
    Raises ValueError for a field without a variable or a meaning: the page must cover them all."""
    path = root / SETTINGS
    source = path.read_text()
    module = _load_settings(path)
    defaults = module.Settings.from_env({})
    constants = {k: v for k, v in vars(module).items() if k.isupper()}
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    from_env = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "from_env")
    local = {t.id: n.value for n in from_env.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    call = next(n for n in ast.walk(from_env) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "cls")
    reads = {k.arg: _env_names(k.value, local, constants) for k in call.keywords if k.arg}
    comments = _comments(source)
    found: list[EnvVar] = []
    section = ""
    previous_end = cls.lineno
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            previous_end = node.end_lineno or node.lineno
            continue
        name = node.target.id
        above: list[str] = []
        for row in range(previous_end + 1, node.lineno):
            text, alone = comments.get(row, ("", False))
            if alone and (m := _SECTION.match(text)):
                section, above = m["name"], []
            elif alone:
                above.append(text.lstrip("#").strip())
        previous_end = node.end_lineno or node.lineno
        trailing = [text.lstrip("#").strip() for row in range(node.lineno, previous_end + 1)
                    if (text := comments.get(row, ("", True))[0]) and not comments[row][1]]
        names = reads.get(name)
        if not names:
            raise ValueError(f"{SETTINGS}: Settings.{name} reads no environment variable in from_env")
        meaning, prelabel = [], False
        for comment in [*above, *trailing]:
            text, marked = _meaning(comment, names)
            prelabel = prelabel or marked
            if text:
                meaning.append(text)
        if not meaning:
            raise ValueError(f"{SETTINGS}: Settings.{name} ({', '.join(names)}) has no comment saying what it means")
        value = getattr(defaults, name)
        if isinstance(value, dict):  # one variable per key (DEFAULT_MODEL_ENV): each with its own default
            table = next(t for t in constants.values() if isinstance(t, dict) and set(t) == set(value))
            for key, (var, _) in table.items():
                found.append(EnvVar((var,), _default(value[key], root, name), " ".join(meaning), prelabel, section))
        else:
            found.append(EnvVar(tuple(names), _default(value, root, name), " ".join(meaning), prelabel, section))
    return found


def render_backend_env(root: Path) -> str:
    env = settings_env(root)
    out = [
        "# The backend's environment variables",
        "",
        f"<!-- Generated from {SETTINGS} by {REGENERATE}: edit the comments there, then regenerate. -->",
        "",
        (f"Every variable the YOLO backend reads (`Settings.from_env` in [`{SETTINGS}`](../{SETTINGS})), the default it gets when the "
        "variable is unset or empty, and what it means. The names and meanings are those of HumanSignal's YOLO example backend, so "
        "an existing deployment keeps its env; Prelabel's additions say so in the last column. With the operator, set them in an "
        "MLBackend's `spec.model.env` ([mlbackend.md](mlbackend.md)); the operator sets some itself (see [backend.md](backend.md))."),
    ]
    sections = list(dict.fromkeys(v.section for v in env))
    for section in sections:
        rows = [(", or ".join(_code(n) for n in v.names), v.default, _cell(v.meaning), "Prelabel" if v.prelabel else "HumanSignal")
                for v in env if v.section == section]
        out += ["", f"## {section[:1].upper() + section[1:]}" if section else "## Variables", "", *_table(("variable", "default", "meaning", "from"), rows)]
    return "\n".join(out) + "\n"


# -- the command ----------------------------------------------------------------------------------------
def pages(root: Path = ROOT) -> dict[Path, str]:
    """Each generated page (relative path) and what it must hold."""
    return {MLBACKEND_PAGE: render_mlbackend((root / CRD).read_text()), BACKEND_ENV_PAGE: render_backend_env(root)}


def stale(root: Path = ROOT) -> list[Path]:
    """The generated pages whose file differs from what their sources give now."""
    return [path for path, text in pages(root).items() if not (root / path).is_file() or (root / path).read_text() != text]


def write(root: Path = ROOT) -> Iterator[Path]:
    for path, text in pages(root).items():
        target = root / path
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prelabel_local.docs", description="Write docs/mlbackend.md and docs/backend-env.md from their sources")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs from its sources")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale(args.root)
        for path in out_of_date:
            print(f"{path} is stale: run {REGENERATE.replace('`', '')}", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in write(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
