"""gRPC calls with grpcio through warden: all four call kinds, a status error with a binary
trailer, a call the policy refuses, and one to a host warden injects no credential for.

Usage: grpc_calls.py ID_PREFIX TARGET OTHER_TARGET (host:port of tests/clients/grpc_server.py
under two names). grpcio finds warden in https_proxy and trusts only the CA in WARDEN_CA_FILE.
Prints one JSON object: per call, its status code and details, replies and trailing metadata.
"""

import json
import os
import sys

import grpc

TIMEOUT = 20


def trailers(md):
    return {k: (v.hex() if k.endswith("-bin") else v) for k, v in (md or ())}


def channel(target):
    with open(os.environ["WARDEN_CA_FILE"], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(target, creds)


def main():
    prefix, target, other = sys.argv[1], sys.argv[2], sys.argv[3]
    ch = channel(target)

    def md(name, *extra):
        return (("x-request-id", f"{prefix}-{name}"),) + extra

    def method(name, kind):
        return getattr(ch, kind)(f"/test.Echo/{name}")

    out = {}

    # The agent's own bearer, which warden overwrites with the injected one.
    reply, call = method("Unary", "unary_unary").with_call(
        b"hello",
        timeout=TIMEOUT,
        metadata=md("unary", ("authorization", "Bearer agent-supplied")),
    )
    out["unary"] = {
        "code": call.code().name,
        "reply": reply.decode(),
        "trailers": trailers(call.trailing_metadata()),
    }

    call = method("ServerStream", "unary_stream")(b"3", timeout=TIMEOUT, metadata=md("server-stream"))
    replies = [r.decode() for r in call]
    out["server_stream"] = {
        "code": call.code().name,
        "replies": replies,
        "trailers": trailers(call.trailing_metadata()),
    }

    reply, call = method("ClientStream", "stream_unary").with_call(
        iter([b"a", b"b", b"c"]), timeout=TIMEOUT, metadata=md("client-stream")
    )
    out["client_stream"] = {
        "code": call.code().name,
        "reply": reply.decode(),
        "trailers": trailers(call.trailing_metadata()),
    }

    call = method("Bidi", "stream_stream")(
        iter([b"x", b"y", b"z", b"w"]), timeout=TIMEOUT, metadata=md("bidi")
    )
    replies = [r.decode() for r in call]
    out["bidi"] = {
        "code": call.code().name,
        "replies": replies,
        "trailers": trailers(call.trailing_metadata()),
    }

    for key, name, target_ch in (
        ("missing", "Missing", ch),
        ("forbidden", "Forbidden", ch),
        ("uncredentialed", "Unary", channel(other)),
    ):
        try:
            target_ch.unary_unary(f"/test.Echo/{name}")(b"q", timeout=TIMEOUT, metadata=md(key))
            out[key] = {"code": "OK"}
        except grpc.RpcError as e:
            out[key] = {
                "code": e.code().name,
                "details": e.details(),
                "trailers": trailers(e.trailing_metadata()),
            }

    # One more call after the refusal: the connection still serves.
    reply = method("Unary", "unary_unary")(b"again", timeout=TIMEOUT, metadata=md("after"))
    out["after"] = {"reply": reply.decode()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
