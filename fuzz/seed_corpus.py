#!/usr/bin/env python3
"""Seed fuzz/corpus/<target>/ from the reference vectors (tests/vectors).

Usage: python3 fuzz/seed_corpus.py [VECTORS_DIR]
(default: $ASAP_VECTORS_DIR, else ../tests/vectors relative to this file)
"""
import hashlib
import json
import os
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
vectors = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ASAP_VECTORS_DIR", here / "../tests/vectors"))


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

# manifest_registry: manifest, registry and health documents, plus the header and
# limit strings the discovery/reliability parsers read.
manifest = json.loads((vectors / "discovery/manifest_endpoint.json").read_text())["response_200"]
put("manifest_registry", manifest["body_text"].encode())
m = dict(manifest["body_json"], auth={"schemes": ["bearer"], "oauth2": None}, ttl_seconds=1)
m["capabilities"] = dict(m["capabilities"], asap_version="1!2.0a1.post3.dev4+local.7")
put("manifest_registry", compact(m))
registry = json.loads((vectors / "discovery/lite_registry.json").read_text())
put("manifest_registry", compact(registry["input"]))
put("manifest_registry", compact(dict(registry["input"], updated_at=1767225600)))
health = json.loads((vectors / "discovery/health_endpoint.json").read_text())
put("manifest_registry", health["response"]["body_text"].encode())
put("manifest_registry", compact(health["unhealthy_example_via_helper"][0]))
for text in ("public, max-age=300", "10/second;100/minute", "5 per 2 hours|1/day", "none",
             "Sun, 06 Nov 1994 08:49:37 GMT", "1.0.0rc1.post2.dev3+abc.5"):
    put("manifest_registry", text.encode())

for target in ("envelope_decode", "jsonrpc_request", "manifest_registry"):
    print(target, len(list((here / "corpus" / target).iterdir())), "seeds")
