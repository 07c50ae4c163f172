"""What the backend's answer to POST /setup says about a project's labeling config, as a pure
function: compatible or not (and why), the model version, and whether Label Studio will accept the
backend for that project (it connects a backend only when /setup answers 200).

The backend answers 200 with `"compatible": false` and the reason in `error` for a config with
nothing to serve yet (a new project's `<View></View>`, text-only controls), so Label Studio can
connect it before the config is set; 422 for a config it can never serve as written (a bad
`model_path`, ...) and 400 for a request it cannot read; and 200 with `warnings` (labels no model class maps to, controls not served)
for a config it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .status import version_text


@dataclass(frozen=True)
class ConfigCheck:
    compatible: bool | None  # None: the check could not be made
    message: str  # why not compatible, or the warnings of a compatible config ("" when none)
    model_version: str | None = None
    registrable: bool = True  # Label Studio's own /setup call will succeed, so registering makes sense


def interpret(status_code: int, body: Any, text: str = "") -> ConfigCheck:
    """The /setup answer (HTTP status, parsed JSON body or None, the raw text for an answer that is not
    JSON) as a ConfigCheck. 400 and 422 are the backend's refusal of the config, as Label Studio reads
    them (it connects a backend only on 200)."""
    body = body if isinstance(body, dict) else {}
    if status_code == 200:
        if body.get("compatible") is False:
            return ConfigCheck(False, str(body.get("error") or "the labeling config has no control the backend serves"), None, True)
        warnings = body.get("warnings") or []
        message = "; ".join(str(w) for w in warnings) if isinstance(warnings, list) else str(warnings)
        return ConfigCheck(True, message, version_text(body.get("model_version")), True)
    if status_code in (400, 422):
        return ConfigCheck(False, str(body.get("error") or "labeling config not supported"), None, False)
    detail = str(body.get("error") or text).strip()
    return ConfigCheck(None, f"backend answered HTTP {status_code} to /setup" + (f": {detail[:300]}" if detail else ""), None, True)
