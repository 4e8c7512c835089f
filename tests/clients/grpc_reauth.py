"""Two gRPC calls on one grpcio channel through warden, the proxy credentials in https_proxy's
user part (grpcio sends them as Basic on its CONNECT), with a pause between them in which the
test changes warden's config.

Usage: grpc_reauth.py ID_PREFIX TARGET. Prints {"first": ...} after the first call, waits for a
line on standard input, makes the second call on the same connection and prints
{"second": ...}. Each result holds the status code and details.
"""

import json
import os
import sys

import grpc

TIMEOUT = 20


def call(unary, rid):
    try:
        reply = unary(b"hi", timeout=TIMEOUT, metadata=(("x-request-id", rid),))
        return {"code": "OK", "reply": reply.decode()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def main():
    prefix, target = sys.argv[1], sys.argv[2]
    with open(os.environ["WARDEN_CA_FILE"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    ch = grpc.secure_channel(target, creds)
    unary = ch.unary_unary("/test.Echo/Unary")
    print(json.dumps({"first": call(unary, f"{prefix}-first")}), flush=True)
    sys.stdin.readline()
    print(json.dumps({"second": call(unary, f"{prefix}-second")}), flush=True)


if __name__ == "__main__":
    main()
