"""The official OpenAI and Anthropic SDKs against clients whose warden budget gets spent.

Usage: budget_sdks.py CALLS, where CALLS is a JSON list of {"sdk": "openai" | "anthropic",
"base_url": ..., "proxy": "http://name:token@host:port", "id": REQUEST_ID_PREFIX}. For each, two
calls are made through warden (its proxy URL carries the client's credentials; only the CA in
WARDEN_CA_FILE is trusted), with max_retries=0 so a 429 is raised at once instead of waited
out. Prints one JSON object: per entry, the first call's usage and what the second raised.
"""

import json
import os
import sys

import anthropic
import httpx
import openai


def http_client(proxy):
    return httpx.Client(proxy=proxy, verify=os.environ["WARDEN_CA_FILE"], timeout=20)


def raised(e):
    return {
        "type": type(e).__name__,
        "status": e.status_code,
        "body": e.body,
        "retry_after": e.response.headers.get("retry-after"),
        "should_retry": e.response.headers.get("x-should-retry"),
    }


def openai_calls(entry, http):
    client = openai.OpenAI(
        base_url=entry["base_url"], api_key="sk-agent-dummy", http_client=http, max_retries=0
    )

    def once(n):
        return client.chat.completions.create(
            model="gpt-5",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": f"{entry['id']}-{n}"},
        )

    out = {"usage": once(1).usage.model_dump(exclude_none=True)}
    try:
        once(2)
        out["error"] = None
    except openai.RateLimitError as e:
        out["error"] = raised(e)
    return out


def anthropic_calls(entry, http):
    client = anthropic.Anthropic(
        base_url=entry["base_url"], api_key="sk-ant-dummy", http_client=http, max_retries=0
    )

    def once(n):
        return client.messages.create(
            model="claude-sonnet-4",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": f"{entry['id']}-{n}"},
        )

    out = {"usage": once(1).usage.model_dump(exclude_none=True)}
    try:
        once(2)
        out["error"] = None
    except anthropic.RateLimitError as e:
        out["error"] = raised(e)
    return out


def main():
    out = []
    for entry in json.loads(sys.argv[1]):
        with http_client(entry["proxy"]) as http:
            run = openai_calls if entry["sdk"] == "openai" else anthropic_calls
            out.append(run(entry, http))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
