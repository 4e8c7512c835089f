#!/usr/bin/env bash
# The h2 scenario of benches/e2e.sh: HTTPS via CONNECT with HTTP/2 inside the tunnel, 1 KiB
# responses, keep-alive, at each of CONCS connections with H2_STREAMS streams in flight per
# connection (oha --http2 -p through -x). Measured against the origin directly (h2), warden
# (listening on $PROXY, pid $PROXY_PID, CA $PROXY_CA) and mitmproxy, which intercepts h2 too.
# The harness (../shared/bench/run.sh) has no h2 origin, so this starts its own: nginx with
# h2 on ALPN, on the harness's origin certificate. Rows go to $OUT/results.jsonl through the
# harness's measure.py, so report.py renders them with the rest.
#
# Called by benches/e2e.sh (which sets PROXY, PROXY_PID, PROXY_CA, HARNESS, WORK, OUT). Every
# load loop is bounded: oha runs DUR seconds and measure.py kills it at DUR+30. Loopback only.
set -euo pipefail
: "${PROXY:?}" "${PROXY_PID:?}" "${PROXY_CA:?}" "${HARNESS:?}" "${WORK:?}" "${OUT:?}"
DUR="${DUR:-12}"
CONCS="${CONCS:-1 64}"
H2_STREAMS="${H2_STREAMS:-16}"
SETTLE="${SETTLE:-1}"
OHA="${OHA:-$(command -v oha || echo /tmp/cargo-oha/bin/oha)}"
MITMDUMP="${MITMDUMP:-/tmp/venv-mitm/bin/mitmdump}"
PEERS_H2="${PEERS_H2:-direct warden mitmproxy}"
O_H2=18444
P_MITM_H2=18083
c="$WORK/certs"
mkdir -p "$OUT" "$WORK/run" "$WORK/logs" "$WORK/www-h2" "$WORK/mitm-conf-h2"
[ -x "$OHA" ] || { echo "oha missing (../shared/bench/setup.sh installs it)"; exit 1; }
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www-h2/1k.bin"

# mitmproxy's CA: the harness's when it made one, else one made the same way.
if [ ! -s "$c/mitm-ca.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$c/mitm-ca.key" -out "$c/mitm-ca.pem" -days 365 \
    -subj "/CN=Bench MITM CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
cat "$c/mitm-ca.key" "$c/mitm-ca.pem" >"$WORK/mitm-conf-h2/mitmproxy-ca.pem"
cat "$c/origin-ca.pem" "$c/mitm-ca.pem" "$PROXY_CA" >"$c/client-bundle-h2.pem"

cat >"$WORK/nginx-h2.conf" <<EOF
worker_processes 1;
pid $WORK/run/nginx-h2.pid;
error_log $WORK/logs/nginx-h2-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 75s;
    http2_max_requests 1000000; http2_max_concurrent_streams 256;
    default_type application/octet-stream;
    client_body_temp_path $WORK/run/h2-body; proxy_temp_path $WORK/run/h2-proxy;
    fastcgi_temp_path $WORK/run/h2-fcgi; uwsgi_temp_path $WORK/run/h2-uwsgi; scgi_temp_path $WORK/run/h2-scgi;
    server {
        listen 127.0.0.1:$O_H2 ssl http2;
        ssl_certificate $c/origin.pem; ssl_certificate_key $c/origin.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $WORK/www-h2;
    }
}
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

nginx -c "$WORK/nginx-h2.conf" -g "daemon off;" >"$WORK/logs/nginx-h2.out" 2>&1 &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
wait_port $O_H2 || { echo "h2 origin did not start"; exit 1; }

MITM_PID=""
if [[ " $PEERS_H2 " == *" mitmproxy "* ]]; then
  if [ -x "$MITMDUMP" ]; then
    "$MITMDUMP" -q --listen-host 127.0.0.1 -p $P_MITM_H2 --set confdir="$WORK/mitm-conf-h2" \
      --set ssl_verify_upstream_trusted_ca="$c/origin-ca.pem" >"$WORK/logs/mitm-h2.out" 2>&1 &
    MITM_PID=$!; PIDS+=("$MITM_PID")
    wait_port $P_MITM_H2 || { echo "mitmproxy did not start"; MITM_PID=""; }
  else
    echo "mitmdump missing (../shared/bench/setup.sh installs it); skipping mitmproxy"
  fi
fi

URL="https://localhost:$O_H2/1k.bin"
for conc in $CONCS; do
  for peer in $PEERS_H2; do
    args=(--no-tui --output-format json -z "${DUR}s" -c "$conc" --http2 -p "$H2_STREAMS"
          --cacert "$c/client-bundle-h2.pem")
    pidargs=()
    case "$peer" in
      direct) mode=none ;;
      warden) mode=mitm; args+=(-x "http://$PROXY"); pidargs=(--pid "$PROXY_PID") ;;
      mitmproxy)
        [ -n "$MITM_PID" ] || continue
        mode=mitm; args+=(-x "http://127.0.0.1:$P_MITM_H2"); pidargs=(--pid "$MITM_PID") ;;
      *) echo "unknown h2 peer $peer"; continue ;;
    esac
    echo "[$(date +%T)] https1k-h2 c=$conc $peer" >&2
    python3 "$HARNESS/lib/measure.py" --label "$peer|https1k-h2|c$conc|$mode" --gen oha \
      "${pidargs[@]}" --timeout $((DUR + 30)) --bg-pid "$ORIGIN_PID" --log "$OUT/raw.log" \
      -- "$OHA" "${args[@]}" "$URL" | tee -a "$OUT/results.jsonl"
    sleep "$SETTLE"
  done
done
