#!/usr/bin/env bash
# Where the time goes in the scenarios warden misses, beside hudsucker: for each scenario and
# concurrency, the proxy's system calls per request (strace -c -f) and its CPU samples by
# component (perf record, cpu-clock: this VM has no hardware counters).
#
#   benches/profile.sh                                   # https1k https1m http1k wss, c1 and c64
#   SCEN="https1k" CONCS=64 DUR=4 benches/profile.sh
#
# Run benches/e2e.sh once first: it leaves the origin's certificates, nginx.conf, the files it
# serves and ws_echo.py in WORK (/tmp/bench), and setup.sh's peers in /tmp. This script starts
# nginx, the WebSocket echo, hudsucker and warden (conf/bench.yaml) itself and stops them on
# exit. Each measurement is bounded by DUR (the generators' own limit) plus a hard kill.
# Output: OUT/profile.md (OUT defaults to WORK/profile-<timestamp>), with the raw strace and
# perf reports beside it. Loopback only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${HARNESS:-$ROOT/../shared/bench}"
WORK="${WORK:-/tmp/bench}"
DUR="${DUR:-4}"
SCEN="${SCEN:-https1k https1m http1k wss}"
CONCS="${CONCS:-1 64}"
OUT="${OUT:-$WORK/profile-$(date +%Y%m%d-%H%M%S)}"
PY="${PY:-/tmp/venv-mitm/bin/python}"
HSPROXY="${HSPROXY:-/tmp/hsproxy/target/release/hsproxy}"
for need in "$WORK/nginx.conf" "$WORK/ws_echo.py" "$WORK/certs/client-bundle.pem" "$HSPROXY" \
  "$ROOT/target/release/warden"; do
  [ -e "$need" ] || { echo "missing $need: run benches/e2e.sh (and setup.sh) first"; exit 1; }
done
command -v strace >/dev/null && command -v perf >/dev/null || { echo "needs strace and perf"; exit 1; }
mkdir -p "$OUT" "$WORK/logs" "$WORK/run"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1"; exit 1
}
(exec 3<>/dev/tcp/127.0.0.1/18443) 2>/dev/null || {
  nginx -c "$WORK/nginx.conf" -g "daemon off;" >"$WORK/logs/nginx.out" 2>&1 & PIDS+=($!)
}
(exec 3<>/dev/tcp/127.0.0.1/18766) 2>/dev/null || {
  "$PY" "$WORK/ws_echo.py" "$WORK" 18765 18766 >"$WORK/logs/wsecho.out" 2>&1 & PIDS+=($!)
}
"$HSPROXY" 127.0.0.1:18082 "$WORK/certs/mitm-ca.pem" "$WORK/certs/mitm-ca.key" \
  "$WORK/certs/origin-ca.pem" >"$OUT/hudsucker.log" 2>&1 & HS_PID=$!; PIDS+=($HS_PID)
"$ROOT/target/release/warden" run -c "$ROOT/conf/bench.yaml" >"$OUT/warden.log" 2>&1 & W_PID=$!
PIDS+=($W_PID)
wait_port 18443; wait_port 18766; wait_port 18082; wait_port 18090
cat "$WORK/certs/client-bundle.pem" "$WORK/warden/ca.crt" >"$OUT/bundle.pem"

# load PROXYPORT SCEN CONC -> measure.py's JSON line (requests, cpu) on stdout
load() {
  local port=$1 sc=$2 c=$3 pid=$4
  local gen
  case "$sc" in
    https1k|https1m)
      gen=(oha oha --no-tui --output-format json -z "${DUR}s" -c "$c" --cacert "$OUT/bundle.pem"
        -x "http://127.0.0.1:$port" "https://localhost:18443/${sc#https}.bin") ;;
    http1k)
      gen=(oha oha --no-tui --output-format json -z "${DUR}s" -c "$c" -x "http://127.0.0.1:$port"
        "http://127.0.0.1:18080/1k.bin") ;;
    wss)
      gen=(ws "$PY" "$HARNESS/lib/ws_bench.py" --url wss://localhost:18766/ --proxy "http://127.0.0.1:$port"
        --cafile "$OUT/bundle.pem" -c "$c" -d "$DUR" --max-msgs 2000000) ;;
    *) echo "unknown scenario $sc" >&2; exit 1 ;;
  esac
  local oha
  oha="$(command -v oha || echo /tmp/cargo-oha/bin/oha)"
  [ "${gen[1]}" = oha ] && gen[1]="$oha"
  python3 "$HARNESS/lib/measure.py" --label "$sc" --gen "${gen[0]}" --pid "$pid" \
    --timeout $((DUR + 30)) -- "${gen[@]:1}"
}

report="$OUT/profile.md"
echo "# Keep-alive profile, $(date -u +%F), DUR=${DUR}s per measurement" >"$report"
for sc in $SCEN; do
  for c in $CONCS; do
    for name in warden hudsucker; do
      if [ $name = warden ]; then port=18090 pid=$W_PID; else port=18082 pid=$HS_PID; fi
      tag="$name-$sc-c$c"
      load $port "$sc" 1 $pid >/dev/null   # warm: leaves, pools
      # System calls: strace follows every thread; it slows the proxy, not the count per request.
      timeout $((DUR + 40)) strace -c -f -q -o "$OUT/strace-$tag.txt" -p "$pid" & st=$!
      sleep 0.5
      load $port "$sc" "$c" $pid >"$OUT/strace-load-$tag.json"
      kill -INT $st; wait $st 2>/dev/null || true
      # CPU samples, all threads, with call graphs for the report's callers.
      perf record -q -F 999 -g -p "$pid" -o "$OUT/perf-$tag.data" -- sleep $((DUR + 1)) 2>/dev/null & pr=$!
      sleep 0.3
      load $port "$sc" "$c" $pid >"$OUT/perf-load-$tag.json"
      wait $pr || true
      perf report -i "$OUT/perf-$tag.data" --stdio --no-children --sort dso,sym -F overhead,dso,sym \
        --percent-limit 0.3 2>/dev/null | grep -v '^$' >"$OUT/perf-$tag.txt" || true
      python3 - "$OUT" "$tag" "$name" "$sc" "$c" >>"$report" <<'EOF'
import json, re, sys
out, tag, name, sc, c = sys.argv[1:]
def load(p):
    return json.loads(open(p).read().strip().splitlines()[-1])
st = load(f"{out}/strace-load-{tag}.json")
pf = load(f"{out}/perf-load-{tag}.json")
n = max(st.get("requests") or 0, 1)
calls = {}
for line in open(f"{out}/strace-{tag}.txt"):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        calls[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 and f[4].isdigit() else 0)
top = sorted(calls.items(), key=lambda kv: -kv[1][0])[:8]
m = max(pf.get("requests") or 0, 1)
cpu_pct = pf.get("proxy_cpu_pct")
cpu = None if cpu_pct is None else cpu_pct / 100 * pf["wall_s"]
# Components: shared objects by name; inside the binary, the crate at the head of the symbol.
groups = {}
def group(dso, sym):
    if "kernel" in dso: return "kernel"
    if "libcrypto" in dso or "libssl" in dso: return "OpenSSL"
    if "libc" in dso: return "libc"
    s = re.sub(r"^(_?<|\{)", "", sym)
    for pfx, g in (("tokio_openssl", "OpenSSL glue"), ("openssl", "OpenSSL glue"),
                   ("pingora", "pingora"), ("tokio", "tokio"), ("warden", "warden"),
                   ("hudsucker", "hudsucker"), ("hyper", "hyper"), ("h2", "h2"),
                   ("rustls", "rustls"), ("ring", "ring"), ("aws_lc", "aws-lc"),
                   ("http", "http"), ("bytes", "bytes"), ("hashbrown", "hashbrown"),
                   ("_rjem", "jemalloc"), ("je_", "jemalloc"), ("malloc", "allocator"),
                   ("free", "allocator"), ("sdallocx", "allocator"), ("mallocx", "allocator"),
                   ("core", "core/alloc"), ("alloc", "core/alloc"), ("std", "std")):
        if s.startswith(pfx): return g
    return "other"
for line in open(f"{out}/perf-{tag}.txt"):
    mm = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if mm:
        g = group(mm.group(2), mm.group(3))
        groups[g] = groups.get(g, 0) + float(mm.group(1))
print(f"\n## {name}, {sc}, c{c}\n")
rps = pf.get("rps") or 0
print(f"- {rps:,.0f} req/s under perf; CPU {cpu_pct}% of a core" if cpu_pct is not None else f"- {rps:,.0f} req/s under perf")
if cpu is not None:
    print(f"- CPU per request: {cpu / m * 1e6:.1f} µs")
print(f"- system calls per request ({n} requests under strace): " +
      ", ".join(f"{k} {v[0] / n:.2f}" + (f" ({v[1] / n:.2f} failed)" if v[1] else "") for k, v in top))
print("- CPU samples by component (% of the proxy's samples, symbols at 0.3% and above): " +
      ", ".join(f"{g} {p:.1f}" for g, p in sorted(groups.items(), key=lambda kv: -kv[1])))
EOF
    done
  done
done
cat "$report"
