#!/usr/bin/env python3
"""Seed fuzz/corpus/<target>/ from the reference vectors (shared/vectors).

Usage: python3 fuzz/seed_corpus.py [VECTORS_DIR]
(default: $ASAP_VECTORS_DIR, else ../../shared/vectors relative to this file)
"""
import hashlib
import json
import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
vectors = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ASAP_VECTORS_DIR", here / "../../shared/vectors"))


def put(target: str, data: bytes) -> None:
    d = here / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def compact(v) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


for f in sorted((vectors / "envelopes").glob("*.json")):
    v = json.loads(f.read_text())
    for key in ("envelope", "input", "materialised"):
        if key in v:
            put("envelope_decode", compact(v[key]))
            put("jsonrpc_request", compact({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": v[key]}, "id": "req-1"}))
    if "wire_text_python_json_dumps" in v:
        put("envelope_decode", v["wire_text_python_json_dumps"].encode())

for case in json.loads((vectors / "rejected_inputs.json").read_text())["cases"]:
    if case["model"].startswith("Envelope"):
        put("envelope_decode", compact(case["input"]))

errors = json.loads((vectors / "jsonrpc/errors.json").read_text())
for name, case in errors.items():
    body = case.get("request_body") if isinstance(case, dict) else None
    if body is None:
        continue
    # Raw bodies are Latin-1 text of the bytes sent; others were sent as JSON.
    data = body.encode("latin1") if isinstance(body, str) and name != "invalid_request_not_object" else compact(body)
    put("jsonrpc_request", data)

exchange = json.loads((vectors / "jsonrpc/client_task_request_exchange.json").read_text())
put("jsonrpc_request", exchange["request"]["body_text"].encode())

for target in ("envelope_decode", "jsonrpc_request"):
    print(target, len(list((here / "corpus" / target).iterdir())), "seeds")
