"""Requests with httpx over HTTP/2 through warden, one client (so one tunnel per origin).

Usage: httpx_calls.py PLAN, PLAN being a JSON list of {"name", "method", "url", "headers"?,
"json"?, "stream"?}. warden is HTTPS_PROXY; only the CA in WARDEN_CA_FILE is trusted. A
streamed response is read as it arrives. Prints one JSON object: per name, the status, the
negotiated http_version, the response headers and the body text.
"""

import json
import os
import sys

import httpx


def main():
    plan = json.loads(sys.argv[1])
    out = {}
    with httpx.Client(
        http2=True,
        proxy=os.environ["HTTPS_PROXY"],
        verify=os.environ["WARDEN_CA_FILE"],
        timeout=20,
    ) as client:
        for step in plan:
            req = client.build_request(
                step["method"], step["url"], headers=step.get("headers"), json=step.get("json")
            )
            resp = client.send(req, stream=bool(step.get("stream")))
            try:
                body = "".join(resp.iter_text())
            finally:
                resp.close()
            out[step["name"]] = {
                "status": resp.status_code,
                "http_version": resp.http_version,
                "headers": {k.lower(): v for k, v in resp.headers.items()},
                "body": body,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
