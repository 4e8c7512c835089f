"""A gRPC origin for the integration tests: grpcio over TLS on 127.0.0.1:0, service test.Echo
with generic handlers on raw bytes (no protoc), and a bearer check standing for a real API's
authentication.

Usage: grpc_server.py CERT KEY, with the expected bearer secret in GRPC_ORIGIN_SECRET (the
origin's side of the credential warden injects; the client never holds it).

Stdout, one JSON object a line: first {"port": N}, then one line per call received
({"method", "request_id", "authorized"}), printed before the call is answered. The server
stops when its standard input closes, so the test reads every line to EOF and knows it has
seen every call.
"""

import json
import os
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "test.Echo"
SECRET = os.environ["GRPC_ORIGIN_SECRET"]
_out = threading.Lock()


def emit(obj):
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def admit(method, context):
    """Records the call; aborts it UNAUTHENTICATED unless it carries the expected bearer. The
    message never repeats what was sent."""
    md = dict(context.invocation_metadata())
    authorized = md.get("authorization") == f"Bearer {SECRET}"
    emit({"method": method, "request_id": md.get("x-request-id"), "authorized": authorized})
    if not authorized:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer credential")


def done(context, method):
    context.set_trailing_metadata((("x-trailer", f"{method}-done"),))


def unary(request, context):
    admit("Unary", context)
    done(context, "unary")
    return b"echo:" + request


def server_stream(request, context):
    admit("ServerStream", context)
    n = int(request.decode())
    for i in range(n):
        yield f"part-{i}".encode()
    done(context, "server-stream")


def client_stream(request_iterator, context):
    admit("ClientStream", context)
    parts = [r for r in request_iterator]
    done(context, "client-stream")
    return b"+".join(parts)


def bidi(request_iterator, context):
    admit("Bidi", context)
    for i, r in enumerate(request_iterator):
        yield f"{i}:".encode() + r
    done(context, "bidi")


def missing(request, context):
    admit("Missing", context)
    # A status with details and a binary trailer, as a real API's NOT_FOUND carries them.
    context.set_trailing_metadata((("x-why-bin", b"\x00\x01\xfe\xff"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such widget: 42")


def forbidden(request, context):
    admit("Forbidden", context)
    return b"the policy should have stopped this call"


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "Missing": grpc.unary_unary_rpc_method_handler(missing),
    "Forbidden": grpc.unary_unary_rpc_method_handler(forbidden),
}


def main():
    cert_path, key_path = sys.argv[1], sys.argv[2]
    with open(cert_path, "rb") as f:
        cert = f.read()
    with open(key_path, "rb") as f:
        key = f.read()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(((key, cert),)))
    server.start()
    emit({"port": port})
    sys.stdin.read()
    server.stop(grace=None).wait()


if __name__ == "__main__":
    main()
