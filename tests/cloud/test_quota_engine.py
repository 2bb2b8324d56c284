"""The broker plugin's quota engine (plugin/quota.c) on its own, through ctypes: the rules the broker tests
cannot reach quickly, such as the table being rebuilt with thousands of client ids."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "src" / "iotfleet" / "cloud" / "plugin"
PUBLISH_CONNECTION = 2  # enum quota_kind


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: the local cloud's plugin needs one too (./dev installs gcc)")
    library = tmp_path_factory.mktemp("quota") / "quota.so"
    source = PLUGIN / "quota.c"
    # entries are forgotten as soon as their connection is gone (2 s later in the plugin), so that a rebuild
    # of the table shows at once which entries it keeps
    flags = ["-DQUOTA_TEST", "-DQUOTA_FORGET_S=0.0"]
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", *flags, "-o", str(library), str(source)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.quota_test_configure.argtypes = [ctypes.c_double] * 4
    lib.quota_test_connect.argtypes = [ctypes.c_char_p, ctypes.c_long]
    lib.quota_test_disconnected.argtypes = [ctypes.c_char_p, ctypes.c_long]
    lib.quota_test_publish.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.quota_test_count.restype = ctypes.c_ulong
    return lib


def test_a_connection_taken_over_keeps_the_new_ones_publish_quota_through_a_table_rebuild(engine: ctypes.CDLL) -> None:
    engine.quota_test_configure(0.0, 0.0, 3.0, 0.0)  # only 3 publishes a second per connection
    assert engine.quota_test_connect(b"lamp", 1) == 0
    assert engine.quota_test_connect(b"lamp", 2) == 0  # a new connection takes the client id over
    engine.quota_test_disconnected(b"lamp", 1)  # the old one's end comes after: it must not free the new one
    for n in range(3000):  # enough new client ids to rebuild the table several times
        assert engine.quota_test_connect(f"other-{n}".encode(), 100 + n) == 0
        engine.quota_test_disconnected(f"other-{n}".encode(), 100 + n)
    refused = [engine.quota_test_publish(b"lamp", 1) for _ in range(5)]
    assert refused == [0, 0, 0, 1, 1]  # still limited: the live connection's entry survived
    assert engine.quota_test_count(PUBLISH_CONNECTION) == 2
