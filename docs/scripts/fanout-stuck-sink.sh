#!/bin/bash
# A stuck sink on a fan-out (docs/BENCHMARKS.md): the shop example with an
# inventory API that never answers and an accounting API that answers at
# once; 200 orders at 20/s; prints accounting's lag after each 202.
# Usage: docs/scripts/fanout-stuck-sink.sh path/to/weft [label]
# (a release build: target/release/weft; needs python3 and curl; uses ports
# 8080, 8081, 9101, 9102 and a scratch directory).
set -eu
BIN=$(realpath "$1"); L=${2:-run}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
W=$(mktemp -d)
cd "$W"
sed -e "s#data_dir = .*#data_dir = \"$W/data\"#" "$ROOT/examples/shop/weft.toml" > weft.toml
LOG="$W/accounting.log" python3 "$HERE/stuck-downstreams.py" & DP=$!
sleep 0.5
WEFT_PLUGIN_DIR="$ROOT/target/plugins/wasm32-wasip2/plugin" "$BIN" --log-level warn serve --config weft.toml > weft.log 2>&1 & WP=$!
trap 'kill $WP $DP 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 300); do curl -s localhost:8081/healthz >/dev/null && break; sleep 0.1; done
python3 - "$W" "$L" <<'PY'
import json, http.client, sys, time
w, label = sys.argv[1], sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
acks, answer = {}, []
t0 = time.time()
for i in range(200):
    d = t0 + i / 20 - time.time()
    if d > 0:
        time.sleep(d)
    oid = f"{label}-{i}"
    body = json.dumps({"order_id": oid, "customer": {"email": "a@b.c"},
                       "items": [{"sku": "MUG", "quantity": 1, "unit_price": 1.0}]})
    ts = time.time()
    c.request("POST", "/hooks/shop-orders", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    answer.append(time.time() - ts); acks[oid] = ts
time.sleep(8)
arrived = {}
for line in open(f"{w}/accounting.log"):
    oid, t = line.split(); arrived.setdefault(oid, float(t))
lags = sorted(arrived[o] - acks[o] for o in acks if o in arrived)
answer.sort()
n = len(lags)
print(f"{label}: webhook answer p99 {answer[int(len(answer)*.99)]*1e3:.0f} ms; accounting got {n}/{len(acks)}; "
      f"lag p50 {lags[n//2]:.3f} s, p90 {lags[int(n*.9)]:.3f} s, max {lags[-1]:.3f} s")
PY
