"""Every example runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_local_cloud_example_shows_own_topic_accepted_and_foreign_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "local_cloud.py")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for region in ("eu-west-1", "us-east-1"):
        assert f"{region}: dt/acme/hq/lamp-1/power -> PUBACK 0x10" in lines  # nobody subscribed: 0x10
        assert f"{region}: dt/acme/hq/lamp-2/power -> PUBACK 0x87" in lines
