#!/usr/bin/env bash
# Builds the image and checks it as an operator would meet it:
#   - it runs as uid 10001 and answers /healthz;
#   - Docker's HEALTHCHECK turns healthy;
#   - the proxy wants a login (407), and refuses a host off the allow list with that login
#     (403 policy_denied_host);
#   - the CA lands in the volume;
#   - `docker kill -s HUP` reloads;
#   - `docker stop` drains and exits 0.
# Needs docker and the base images (rust, debian) from a registry.
#
#   deploy/docker/smoke.sh                 # builds warden:smoke from the repository root
#   IMAGE=warden:1.2 deploy/docker/smoke.sh   # checks an image already built
#
# Everything it starts is removed on exit. Ports: 127.0.0.1:19080 (proxy), :19090 (admin).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image="${IMAGE:-}"
if [ -z "$image" ]; then
  image=warden:smoke
  docker build -t "$image" "$root"
fi
name="warden-smoke-$$"
volume="warden-smoke-ca-$$"
token="smoke-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "smoke: FAIL: $*" >&2; docker logs "$name" 2>&1 | tail -20 >&2; exit 1; }

docker run -d --name "$name" -e WARDEN_AGENT_TOKEN="$token" -v "$volume:/var/lib/warden/ca" \
  -p 127.0.0.1:19080:9080 -p 127.0.0.1:19090:9090 "$image" >/dev/null

# Bounded wait for the health check (its interval is 10 s, start period 5 s).
health=""
for _ in $(seq 1 60); do
  health="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
  [ "$health" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK is $health after 60 s"
echo "smoke: healthy"

[ "$(docker exec "$name" id -u)" = 10001 ] || fail "not uid 10001"
curl -fsS http://127.0.0.1:19090/healthz >/dev/null || fail "/healthz"
docker exec "$name" test -s /var/lib/warden/ca/ca.crt || fail "no CA in the volume"
echo "smoke: uid 10001, /healthz, CA in the volume"

code="$(curl -s -o /dev/null -w '%{http_code}' -x http://127.0.0.1:19080 http://example.com/)"
[ "$code" = 407 ] || fail "no login: $code, not 407"
code="$(curl -s -o /dev/null -w '%{http_code}' -x "http://agent:$token@127.0.0.1:19080" http://example.com/)"
[ "$code" = 403 ] || fail "a host off the allow list: $code, not 403"
docker logs "$name" 2>&1 | grep -q policy_denied_host || fail "no policy_denied_host line"
echo "smoke: 407 without the login, 403 policy_denied_host with it"

docker kill -s HUP "$name" >/dev/null
for _ in $(seq 1 20); do
  docker logs "$name" 2>&1 | grep -qi reload && break
  sleep 0.5
done
docker logs "$name" 2>&1 | grep -qi reload || fail "no reload line after SIGHUP"
echo "smoke: SIGHUP reloaded"

docker stop -t 40 "$name" >/dev/null
exit_code="$(docker inspect -f '{{.State.ExitCode}}' "$name")"
[ "$exit_code" = 0 ] || fail "exit code $exit_code after docker stop"
echo "smoke: docker stop drained, exit 0"
if docker logs "$name" 2>&1 | grep -q "$token"; then fail "the token is in the log"; fi
echo "smoke: passed ($image)"
