#!/usr/bin/env bash
# End-to-end load: warden beside direct, squid, squid-bump, mitmproxy and hudsucker in one run
# of the shared harness (../shared/bench/run.sh), on conf/bench.yaml. Run
# ../shared/bench/setup.sh once first (it installs the peers and load generators).
#
#   benches/e2e.sh                          # every scenario, 12 s per cell
#   DUR=5 SCEN="https1k http1k" benches/e2e.sh
#   SCEN=https1k-h2 benches/e2e.sh          # HTTP/2 inside CONNECT only (benches/h2.sh)
#
# https1k-h2 is warden's own scenario (the harness has no h2 origin): benches/h2.sh measures
# it against direct h2 and mitmproxy into the same results, and the table is rendered again.
#
# Results land in ../shared/bench/results/<timestamp>/ (or $WORK/results/ when that folder is
# read-only); table.md is the table the README quotes. Loopback only; every load loop is bounded by the harness (DUR, hard kill at DUR+30).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${WORK:-/tmp/bench}"
export WORK
[ -x "$HARNESS/run.sh" ] || { echo "no harness at $HARNESS (set HARNESS=)"; exit 1; }

bash "$ROOT/.ci/deps"
(cd "$ROOT" && cargo build --release --locked)

# The harness creates its origin CA on first run; warden must trust it before it starts, so
# make it the same way here when it is missing (run.sh then reuses it).
c="$WORK/certs"
mkdir -p "$c" "$WORK/warden"
if [ ! -s "$c/origin.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$c/origin-ca.key" -out "$c/origin-ca.pem" -days 365 \
    -subj "/CN=Bench Origin CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$c/origin.key" -out "$c/origin.csr" -subj "/CN=localhost" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" >"$c/origin.ext"
  openssl x509 -req -in "$c/origin.csr" -CA "$c/origin-ca.pem" -CAkey "$c/origin-ca.key" -CAcreateserial \
    -out "$c/origin.pem" -days 365 -extfile "$c/origin.ext" 2>/dev/null
  cat "$c/origin.pem" "$c/origin.key" >"$c/origin-bundle.pem"
fi

"$ROOT/target/release/warden" run -c "$ROOT/conf/bench.yaml" >"$WORK/warden.log" 2>&1 &
WARDEN_PID=$!
trap 'kill -TERM $WARDEN_PID 2>/dev/null; wait $WARDEN_PID 2>/dev/null' EXIT
for _ in $(seq 1 50); do
  (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null && break
  sleep 0.2
done

# The harness's own folder may be read-only: then results go under WORK.
results="$HARNESS/results"
{ mkdir -p "$results" && [ -w "$results" ]; } 2>/dev/null || results="$WORK/results"
OUT="${OUT:-$results/$(date +%Y%m%d-%H%M%S)}"
export OUT
all="http1k http1m https1k https1m https1k-new https1k-newres http1k-new ws wss https1k-h2"
scen=" ${SCEN:-$all} "
harness_scen="${scen// https1k-h2 / }"
if [ -n "${harness_scen// /}" ]; then
  PROXY=127.0.0.1:18090 PROXY_NAME=warden PROXY_PID=$WARDEN_PID PROXY_CA="$WORK/warden/ca.crt" \
    PEERS="${PEERS:-direct squid squid-bump mitmproxy hudsucker}" SCEN="$harness_scen" \
    "$HARNESS/run.sh"
fi
if [[ "$scen" == *" https1k-h2 "* ]]; then
  PROXY=127.0.0.1:18090 PROXY_PID=$WARDEN_PID PROXY_CA="$WORK/warden/ca.crt" HARNESS="$HARNESS" \
    bash "$ROOT/benches/h2.sh"
  python3 "$HARNESS/lib/report.py" "$OUT/results.jsonl" >"$OUT/table.md"
  cat "$OUT/table.md"
fi
