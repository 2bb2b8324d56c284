"""What a region's broker plugin authorizes with: every policy and every ACTIVE certificate's principal,
written as the data file the plugin's C engine loads (``plugin/authz.c`` documents the format).

The documents were validated by :class:`~iotfleet.policy_engine.PolicyDocument`; the file carries them
statement by statement, with a principal per certificate and thing it is attached to (the thing
variables resolve for a connection whose client id is that thing's name; a certificate attached to
several things is written once for each), the thing's type and attributes, the certificate's fields for
``${iot:Certificate.*}``, and which policies are attached. The plugin reloads the file on
SIGHUP, so the file is replaced atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotfleet._files import write_private
from iotfleet.policy_engine import VERSIONS, Effect, PolicyDocument

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
    return str(value).replace("%", "%25").replace("\t", "%09").replace("\n", "%0A").replace("\r", "%0D")


def _line(kind: str, *fields: Any) -> str:
    return "\t".join([kind, *(_field(f) for f in fields)])


def render_authz(
    region: str, account: str, documents: Sequence[PolicyDocument], principals: Iterable[Principal]
) -> str:
    """The data file's text: the documents in order (principals name them by index), then the principals."""
    lines = [_line("V", FORMAT_VERSION, region, account)]
    for document in documents:
        lines.append("P")
        variables = int(document.version == VERSIONS[0])
        for statement in document.statements:
            effect = "D" if statement.effect is Effect.DENY else "A"
            lines.append(_line("S", effect, int(statement.not_action), int(statement.not_resource), variables))
            lines.extend(_line("A", action) for action in statement.actions)
            lines.extend(_line("R", resource.text) for resource in statement.resources)
            for c in statement.conditions:
                lines.append(_line("C", c.operator, c.quantifier, int(c.if_exists), c.key, *c.raw))
    for principal in principals:
        indexes = ",".join(str(i) for i in principal.policies)
        lines.append(_line("U", principal.common_name, principal.thing or "", principal.thing_type or "", indexes))
        lines.extend(_line("T", name, value) for name, value in principal.attributes.items())
        for name, values in principal.certificate.items():
            lines.extend(_line("X", name, value) for value in ([values] if isinstance(values, str) else values))
    return "\n".join(lines) + "\n"


def write_authz(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (the plugin never reads half a file), owner-only."""
    write_private(path, text.encode())
