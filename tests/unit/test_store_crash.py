"""kill -9 of a writer in the middle of transactions leaves a store that reopens consistent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cri_shim.store.db import SCHEMA_VERSION, MetadataStore

REPO = Path(__file__).resolve().parents[2]

# Each transaction writes a pair a<i>/b<i> with many filler rows between them, so
# a kill inside a transaction would show as an 'a' without its 'b'.
WRITER = """
import sys
from pathlib import Path
from cri_shim.store.db import MetadataStore
store = MetadataStore.open(Path(sys.argv[1]))
i = 0
while True:
    with store.transaction() as conn:
        conn.execute("INSERT INTO settings VALUES (?, ?)", (f"a{i}", "x"))
        for j in range(200):
            conn.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (f"filler{j}", str(i)))
        if i == 3:
            sys.stdout.write("inside\\n"); sys.stdout.flush()
        conn.execute("INSERT INTO settings VALUES (?, ?)", (f"b{i}", "x"))
    i += 1
"""


def test_kill_writer_mid_transaction(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"inside\n"
        time.sleep(0.05 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = MetadataStore.open(db)  # runs the integrity check
        keys = {r["key"] for r in store.query("SELECT key FROM settings")}
        store.close()
        a = {k[1:] for k in keys if k[0] == "a"}
        b = {k[1:] for k in keys if k[0] == "b"}
        assert a == b, f"half-written transactions visible: {sorted(a ^ b)}"
        # start the next round from a clean table so 'a<i>' keys do not collide
        store = MetadataStore.open(db)
        with store.transaction() as conn:
            conn.execute("DELETE FROM settings")
        store.close()


def test_schema_version_and_newer_store_refused(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    store = MetadataStore.open(db)
    assert store.schema_version == SCHEMA_VERSION
    with store.transaction() as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store.close()
    try:
        MetadataStore.open(db)
    except Exception as e:  # noqa: BLE001
        assert "newer cri-shim" in str(e)
    else:
        raise AssertionError("a store from a newer version was opened")


def test_corrupt_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    MetadataStore.open(db).close()
    db.write_bytes(b"this is not a database" * 100)
    try:
        MetadataStore.open(db)
    except Exception as e:  # noqa: BLE001
        assert str(db) in str(e)
    else:
        raise AssertionError("a corrupt store was opened")
