"""The documentation against the code: the generated pages (docs/mlbackend.md from the CRD,
docs/backend-env.md from the backend's settings.py) are current, troubleshooting.md explains every
reason the operator writes, and no link or repository path in the docs points at nothing."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

from prelabel_local import docs

ROOT = Path(__file__).resolve().parents[3]
OPERATOR = ROOT / "operator" / "prelabel_operator"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
         ROOT / "bench" / "HISTORY.md"]

# -- the generated pages --------------------------------------------------------------------------------
def _copy(tmp_path: Path) -> Path:
    """The sources and pages of the generator in a repository of their own."""
    for path in (docs.CRD, docs.SETTINGS, docs.MLBACKEND_PAGE, docs.BACKEND_ENV_PAGE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    return tmp_path


def test_generated_pages_match_their_sources() -> None:
    assert docs.stale(ROOT) == [], "a generated page is stale: run `make docs` and commit the result"


def test_check_fails_when_the_crd_changes_without_regenerating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(tmp_path)
    assert docs.main(["--check", "--root", str(root)]) == 0
    crd = root / docs.CRD
    crd.write_text(crd.read_text().replace("description: Backend pods (ignored when autoscaling is enabled).",
                                           "description: Backend pods, ignored when autoscaling is on."))
    assert docs.main(["--check", "--root", str(root)]) == 1
    assert "docs/mlbackend.md is stale" in capsys.readouterr().err
    assert docs.main(["--root", str(root)]) == 0  # regenerating makes it current again
    assert docs.main(["--check", "--root", str(root)]) == 0
    assert "Backend pods, ignored when autoscaling is on." in (root / docs.MLBACKEND_PAGE).read_text()


def test_check_fails_when_a_setting_changes_without_regenerating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(tmp_path)
    settings = root / docs.SETTINGS
    source = settings.read_text()
    assert '_int(env, "THREADS", 8)' in source
    settings.write_text(source.replace('_int(env, "THREADS", 8)', '_int(env, "THREADS", 4)'))  # a new default
    assert docs.main(["--check", "--root", str(root)]) == 1
    assert "docs/backend-env.md is stale" in capsys.readouterr().err
    docs.main(["--root", str(root)])
    assert "| `THREADS` | `4` |" in (root / docs.BACKEND_ENV_PAGE).read_text()


def test_a_setting_without_a_meaning_fails_the_generator(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    settings = root / docs.SETTINGS
    settings.write_text(settings.read_text().replace("  # VERIFY_SSL: check TLS certificates when fetching media", ""))
    with pytest.raises(ValueError, match="verify_ssl"):
        docs.settings_env(root)


def _schema_paths(schema: dict[str, object], path: str) -> list[str]:
    found = [path] if path else []
    for name, child in (schema.get("properties") or {}).items():  # type: ignore[attr-defined]
        if not path and name in ("apiVersion", "kind", "metadata"):
            continue
        found += _schema_paths(child, f"{path}.{name}" if path else name)
    items = schema.get("items")
    if isinstance(items, dict):
        for name, child in (items.get("properties") or {}).items():
            found += _schema_paths(child, f"{path}[].{name}")
    return found


def test_reference_names_every_field_and_every_rule_message() -> None:
    crd = yaml.safe_load((ROOT / docs.CRD).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    page = (ROOT / docs.MLBACKEND_PAGE).read_text()
    paths = _schema_paths(schema, "")
    assert len(paths) > 80
    assert [p for p in paths if f"| `{p}`" not in page] == []
    messages = _rule_messages(crd)
    assert len(messages) == 14
    assert [m for m in messages if docs._cell(m) not in page] == []


def _rule_messages(node: object) -> list[str]:
    """The message of every x-kubernetes-validations rule anywhere in the CRD."""
    if isinstance(node, list):
        return [m for item in node for m in _rule_messages(item)]
    if not isinstance(node, dict):
        return []
    own = [str(rule["message"]) for rule in node.get("x-kubernetes-validations") or []]
    return own + [m for key, value in node.items() if key != "x-kubernetes-validations" for m in _rule_messages(value)]


@pytest.mark.parametrize(("schema", "said"), [
    ({"type": "number", "minimum": 0, "maximum": 1}, "0 to 1"),
    ({"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True, "exclusiveMaximum": True}, "over 0, under 1"),
    ({"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True}, "over 0, at most 1"),
    ({"type": "number", "minimum": 0, "exclusiveMinimum": True}, "over 0"),
    ({"type": "string", "minLength": 1, "maxLength": 63}, "1 to 63 characters"),
])
def test_bounds_say_whether_they_are_included(schema: dict, said: str) -> None:
    """OpenAPI v3.0's exclusiveMinimum/exclusiveMaximum (booleans in a CRD) exclude the bound itself."""
    assert docs._constraints(schema) == said


def test_env_page_names_every_variable_settings_reads() -> None:
    source = (ROOT / docs.SETTINGS).read_text()
    names = set(re.findall(r'env(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', source)) | set(re.findall(r'\("(MODEL_[A-Z]+)", "shapes-', source))
    assert len(names) > 35
    page = (ROOT / docs.BACKEND_ENV_PAGE).read_text()
    assert sorted(n for n in names if f"`{n}`" not in page) == []


# -- troubleshooting.md: every reason the operator writes ---------------------------------------------
REASON = re.compile(r"[A-Z][a-zA-Z]*[a-z][a-zA-Z]*")  # CamelCase, acronyms included (OOMKilled)
STATUSES = {"True", "False", "Unknown"}


def _constants(node: ast.AST | None) -> list[str]:
    """The string constants an expression can evaluate to (a constant, or either side of `a if c else b`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _constants(node.body) + _constants(node.orelse)
    return []


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def reasons_written(package: Path) -> dict[str, str]:
    """Every reason the operator's code writes, with where: a condition's reason (Condition(type,
    status, reason, ...), a (status, reason, message) tuple, a {"reason": ...} body), an error's reason
    (KubeError/LabelStudioError(...) and the subclasses' __init__), an Event's (Event(reason, ...) or
    reason=...), and the
    reasons it counts in prelabel_operator_errors_total (ERRORS.labels(...)), a diagnosis's
    (Diagnosis(reason, ...)) and a reason field's default."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            candidates: list[str] = []
            if isinstance(node, ast.Call):
                name = _name(node.func)
                candidates += [c for k in node.keywords if k.arg == "reason" for c in _constants(k.value)]
                if (name.endswith("Error") or name in ("__init__", "Event", "Diagnosis")) and node.args:
                    candidates += _constants(node.args[0])
                if name == "Condition" and len(node.args) > 2 and not any(isinstance(a, ast.Starred) for a in node.args[:3]):
                    candidates += _constants(node.args[2])
                if name == "labels" and isinstance(node.func, ast.Attribute) and _name(node.func.value) == "ERRORS" and node.args:
                    candidates += _constants(node.args[0])
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3 and set(_constants(node.elts[0])) <= STATUSES and _constants(node.elts[0]):
                candidates += _constants(node.elts[1])
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.endswith("reason") and node.value:
                candidates += _constants(node.value)  # a reason's default (status.Observed.available_reason)
            elif isinstance(node, ast.Dict):
                candidates += [c for k, v in zip(node.keys, node.values, strict=True) if _constants(k) == ["reason"] for c in _constants(v)]
            for reason in candidates:
                if REASON.fullmatch(reason):
                    found.setdefault(reason, f"{path.relative_to(ROOT)}:{node.lineno}")  # type: ignore[attr-defined]
    return found


def test_the_reason_finder_finds_the_known_ones() -> None:
    found = reasons_written(OPERATOR)
    for reason in ("InvalidSpec", "SecretMissing", "Forbidden", "KubernetesAPIError", "Unauthorized", "BackendAddressBlocked",
                   "LabelStudioUnreachable", "ProjectNotFound", "RegistrationFailed", "IncompatibleLabelConfig", "Deregistering",
                   "Paused", "Progressing", "PrelabelFailed", "RegistrationDrift", "PrelabelOutage", "ImagePullFailed", "OOMKilled",
                   "DeploymentNotAvailable", "DeregistrationSkipped"):
        assert reason in found, reason


def test_troubleshooting_explains_every_reason_the_operator_writes() -> None:
    page = TROUBLESHOOTING.read_text()
    missing = {reason: where for reason, where in reasons_written(OPERATOR).items() if f"`{reason}`" not in page}
    assert missing == {}, f"explain these in docs/troubleshooting.md (what it means, what to do): {missing}"


# -- links and paths ---------------------------------------------------------------------------------------
TOP = {p.name for p in ROOT.iterdir()} - {".git", ".venv"}
PACKAGES = {"prelabel_operator": "operator/prelabel_operator", "prelabel_backend": "backend_image/prelabel_backend",
            "prelabel_local": "local/prelabel_local"}
EXTENSIONS = (".py", ".md", ".yaml", ".yml", ".json", ".sh", ".txt", ".lua", ".toml", ".c", ".lock", ".tpl")


def _files() -> set[str]:
    return {p.name for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts and p.is_file()}


def _links_and_paths(page: Path) -> tuple[list[str], list[str]]:
    text = page.read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    spans = re.findall(r"`([^`\s]+)`", prose)
    outside_code = re.sub(r"`[^`]*`", "", prose)
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", outside_code) if not re.match(r"[a-z]+:", link)]
    links += [link for link in re.findall(r"\[`[^`]*`\]\(([^)\s]+)\)", prose) if not re.match(r"[a-z]+:", link)]
    paths = []
    for span in spans:
        path = span.split("::")[0].rstrip(".,;:")
        if any(c in path for c in "*<>$=") or path.startswith(("/", "~", ".venv")):
            continue
        first = path.split("/")[0]
        in_repo = first in TOP or first in PACKAGES if "/" in path else path.endswith(EXTENSIONS) or path in TOP
        if in_repo:
            paths.append(path)
    return links, paths


def _anchors(page: Path) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation but - and _ dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_repository_paths_exist(page: Path) -> None:
    files = _files()
    links, paths = _links_and_paths(page)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (page.parent / target) if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(link)
    assert broken == [], f"{page.name}: links to nothing"
    missing = []
    for path in paths:
        first = path.split("/")[0]
        full = ROOT / (path.replace(first, PACKAGES[first], 1) if first in PACKAGES else path)
        exists = full.exists() if "/" in path else (path in files or (ROOT / path).exists())
        if not exists:
            missing.append(path)
    assert missing == [], f"{page.name}: paths that do not exist"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen
