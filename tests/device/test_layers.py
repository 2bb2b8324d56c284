"""The device layer imports only the layers below it (errors, topics, config, transport), even for typing."""

import ast
from pathlib import Path

import iotfleet.device

ABOVE_DEVICE = ("iotfleet.shadow", "iotfleet.provisioning", "iotfleet.jobs", "iotfleet.cloud", "iotfleet.sim")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING and function bodies too
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_device_module_imports_a_layer_above_it() -> None:
    package = Path(iotfleet.device.__file__).parent
    offenders = {
        f"{path.name}: {module}"
        for path in sorted(package.glob("*.py"))
        for module in imported_modules(path)
        if module.startswith(ABOVE_DEVICE) or module in ("iotfleet.testing", "iotfleet.cli")
    }
    assert offenders == set()
