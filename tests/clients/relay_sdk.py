"""The official Anthropic SDK through a warden relay, as an agent that must reach its API
directly (NO_PROXY): the base URL is warden's `/relay/{name}` with the client's login in its
userinfo, and the SDK holds only a dummy key.

Usage: relay_sdk.py BASE_URL json|stream, BASE_URL e.g.
http://run-42:TOKEN@127.0.0.1:9080/relay/claude. No proxy is configured. Prints one JSON
object: the text of the call (JSON or streamed), or the error it raised.
"""

import json
import sys

import anthropic


def main():
    client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-dummy", max_retries=0)
    out = {}
    if sys.argv[2] == "json":
        call_json(client, out)
    else:
        call_stream(client, out)
    print(json.dumps(out), flush=True)


def call_json(client, out):
    try:
        msg = client.messages.create(
            model="claude-x",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "relay-sdk-json"},
        )
        out["json"] = {"text": msg.content[0].text, "usage": msg.usage.input_tokens}
    except anthropic.APIError as e:
        out["json"] = {"error": type(e).__name__, "message": e.message}


def call_stream(client, out):
    try:
        with client.messages.stream(
            model="claude-x",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "relay-sdk-stream"},
        ) as stream:
            out["stream"] = {"text": "".join(stream.text_stream)}
    except anthropic.APIError as e:
        out["stream"] = {"error": type(e).__name__, "message": e.message}


if __name__ == "__main__":
    main()
