"""Chat completions with the official OpenAI SDK, its httpx client on HTTP/2 through warden.

Usage: openai_chat.py ID_PREFIX ALLOWED_BASE DENIED_BASE JSON_DENIED_BASE, each a base URL
(https://host:port/v1) of a fake provider: a stream calling an allowed tool, a stream calling
a denied one, and a JSON answer calling a denied one. warden is HTTPS_PROXY; only the CA in
WARDEN_CA_FILE is trusted. Prints one JSON object: per call, what the SDK assembled (text, tool
calls, finish reason, usage) or the error it raised.
"""

import json
import os
import sys

import httpx
import openai

TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("get_weather", "read_file", "bash")
]
MESSAGES = [{"role": "user", "content": "What is in /etc/hosts, and the weather in Paris?"}]


def sdk(base_url, http_client):
    return openai.OpenAI(base_url=base_url, api_key="sk-agent-dummy", http_client=http_client)


def error(e):
    return {
        "type": type(e).__name__,
        "message": e.message,
        "status": getattr(e, "status_code", None),
        "body": e.body,
    }


def stream(client, rid):
    got = {"content": "", "tool_calls": {}, "finish_reason": None, "usage": None, "error": None}
    try:
        chunks = client.chat.completions.create(
            model="gpt-5",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": rid},
        )
        for chunk in chunks:
            if chunk.usage:
                got["usage"] = chunk.usage.model_dump(exclude_none=True)
            for choice in chunk.choices:
                delta = choice.delta
                got["content"] += delta.content or ""
                for tc in delta.tool_calls or []:
                    call = got["tool_calls"].setdefault(str(tc.index), {"name": "", "arguments": ""})
                    call["name"] += (tc.function and tc.function.name) or ""
                    call["arguments"] += (tc.function and tc.function.arguments) or ""
                if choice.finish_reason:
                    got["finish_reason"] = choice.finish_reason
    except openai.APIError as e:
        got["error"] = error(e)
    return got


def whole(client, rid):
    try:
        c = client.chat.completions.create(
            model="gpt-5", messages=MESSAGES, tools=TOOLS, extra_headers={"x-request-id": rid}
        )
        return {"message": c.choices[0].message.model_dump(exclude_none=True), "error": None}
    except openai.APIError as e:
        return {"error": error(e)}


def main():
    prefix, allowed, denied, json_denied = sys.argv[1:5]
    with httpx.Client(
        http2=True,
        proxy=os.environ["HTTPS_PROXY"],
        verify=os.environ["WARDEN_CA_FILE"],
        timeout=20,
    ) as http:
        out = {
            "allowed": stream(sdk(allowed, http), f"{prefix}-allowed"),
            "denied": stream(sdk(denied, http), f"{prefix}-denied"),
            "json_denied": whole(sdk(json_denied, http), f"{prefix}-json-denied"),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
