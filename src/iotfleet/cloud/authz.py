"""What a region's broker plugin authorizes with: every policy and every ACTIVE certificate's principal,
written as the data file the plugin's C engine loads (``plugin/authz.c`` documents the format).

The documents were validated by :class:`~iotfleet.policy_engine.PolicyDocument`; the file carries them
statement by statement, with a principal per certificate: its thing (the thing variables resolve for a
connection whose client id is that thing's name), the thing's type and attributes, the certificate's
fields for ``${iot:Certificate.*}``, and which policies are attached. The plugin reloads the file on
SIGHUP, so the file is replaced atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotfleet.policy_engine import VERSIONS, PolicyDocument

__all__ = ["Principal", "render_authz", "write_authz"]

FORMAT_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Principal:
    """A certificate the broker accepts: its CN (the connection's identity), its thing, and its policies
    (indexes into the list of documents written with it)."""

    common_name: str
    policies: Sequence[int]
    thing: str | None = None
    thing_type: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    certificate: Mapping[str, str | Sequence[str]] = field(default_factory=dict)


def _field(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace("%", "%25").replace("\t", "%09").replace("\n", "%0A").replace("\r", "%0D")


def _line(kind: str, *fields: Any) -> str:
    return "\t".join([kind, *(_field(f) for f in fields)])


def _listed(value: Any) -> list[Any]:
    return [value] if isinstance(value, str | bool) else list(value)


def render_authz(
    region: str, account: str, documents: Sequence[PolicyDocument], principals: Iterable[Principal]
) -> str:
    """The data file's text: the documents in order (principals name them by index), then the principals."""
    lines = [_line("V", FORMAT_VERSION, region, account)]
    for document in documents:
        lines.append("P")
        raw = json.loads(document.text)
        statements = raw["Statement"] if isinstance(raw["Statement"], list) else [raw["Statement"]]
        variables = "1" if raw.get("Version") == VERSIONS[0] else "0"
        for statement in statements:
            not_action, not_resource = "NotAction" in statement, "NotResource" in statement
            effect = "D" if statement["Effect"] == "Deny" else "A"
            lines.append(_line("S", effect, int(not_action), int(not_resource), variables))
            lines.extend(_line("A", a) for a in _listed(statement["NotAction" if not_action else "Action"]))
            lines.extend(_line("R", r) for r in _listed(statement["NotResource" if not_resource else "Resource"]))
            for full, checks in statement.get("Condition", {}).items():
                quantifier, _, rest = full.rpartition(":")
                operator = rest.removesuffix("IfExists")
                for key, values in checks.items():
                    lines.append(_line("C", operator, quantifier, int(rest != operator), key, *_listed(values)))
    for principal in principals:
        indexes = ",".join(str(i) for i in principal.policies)
        lines.append(_line("U", principal.common_name, principal.thing or "", principal.thing_type or "", indexes))
        lines.extend(_line("T", name, value) for name, value in principal.attributes.items())
        for name, values in principal.certificate.items():
            lines.extend(_line("X", name, value) for value in _listed(values))
    return "\n".join(lines) + "\n"


def write_authz(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: the plugin never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
