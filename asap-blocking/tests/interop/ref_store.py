"""Drives the Python reference's SQLite stores for asap-blocking's interop test.

    ref_store.py write DB   write snapshots and usage events; print them as JSON
    ref_store.py read DB    read task "rust_task" / agent "urn:asap:agent:rust"; print JSON
"""
import json
import sys
from datetime import datetime, timedelta, timezone

from asap.models.entities import StateSnapshot
from asap.state.metering import UsageEvent, UsageMetrics
from asap.state.stores.sqlite import SQLiteMeteringStore, SQLiteSnapshotStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def dump(model):
    return model.model_dump(mode="json") if model is not None else None


def write(db):
    snaps = SQLiteSnapshotStore(db)
    meter = SQLiteMeteringStore(db)
    written = []
    for version, data in [
        (2, {"step": 2, "ü": "x", "nested": {"list": [1, 2.5, None, True]}}),
        (1, {"emoji": "😀 𝄞", "float": 0.1, "big": 2**62, "neg": -1e300}),
        (10, {}),
    ]:
        s = StateSnapshot(
            id=f"snap_{version}",
            task_id="py_task_ü",
            version=version,
            data=data,
            checkpoint=version == 2,
            created_at=T0 + timedelta(seconds=version, microseconds=123 * version),
        )
        snaps.save(s)
        written.append(dump(s))
    events = []
    for i in range(5):
        e = UsageEvent(
            task_id=f"task_{i}",
            agent_id="urn:asap:agent:py",
            consumer_id="urn:asap:agent:client",
            metrics=UsageMetrics(tokens_in=i, tokens_out=1, duration_ms=100 * i, api_calls=1),
            timestamp=T0 + timedelta(minutes=30 * i),
        )
        meter.record(e)
        events.append(dump(e))
    print(json.dumps({"snapshots": written, "events": events}))


def read(db):
    snaps = SQLiteSnapshotStore(db)
    meter = SQLiteMeteringStore(db)
    out = {
        "latest": dump(snaps.get("rust_task")),
        "v1": dump(snaps.get("rust_task", 1)),
        "versions": snaps.list_versions("rust_task"),
        "query": [
            dump(e)
            for e in meter.query("urn:asap:agent:rust", T0, T0 + timedelta(days=1))
        ],
        "aggregate": dump(meter.aggregate("urn:asap:agent:rust", "total")),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
