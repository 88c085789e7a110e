"""End-to-end: the official `openai` Python client against the gateway in front of mock replicas.

Usage: e2e_openai.py BASE_URL MODEL ALIAS
"""
import sys

from e2e_check import check, done

import openai
from openai import OpenAI

base, model, alias = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base, api_key="not-needed", max_retries=0, timeout=30)


# Non-streaming chat completion.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
)
check(r.object == "chat.completion", "chat completion object")
check(r.choices[0].message.content.startswith("tok0"), "chat completion content")
check(r.usage.completion_tokens == 5, "usage.completion_tokens honours max_tokens")

# Streaming chat completion, with the usage chunk requested.
parts, usage, finish = [], None, None
stream = client.chat.completions.create(
    model=alias,
    messages=[{"role": "user", "content": "Hello"}],
    stream=True,
    stream_options={"include_usage": True},
    max_tokens=7,
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check(len(parts) == 7, f"stream delivered 7 content deltas (got {len(parts)})")
check(finish == "length", "stream finish_reason")
check(usage is not None and usage.completion_tokens == 7, "stream usage chunk")

# Streaming without usage: no usage chunk appears.
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=3
)
chunks = list(stream)
check(all(c.usage is None for c in chunks), "no usage chunk unless asked")

# Legacy completions and embeddings.
r = client.completions.create(model=model, prompt="Say hi", max_tokens=2)
check(r.choices[0].text == "tok0 tok1 ", "completions text")
r = client.embeddings.create(model=model, input=["a", "b", "c"])
check(len(r.data) == 3 and len(r.data[0].embedding) > 0, "embeddings")

# Models listed from the gateway's config, aliases included.
ids = [m.id for m in client.models.list()]
check(model in ids and alias in ids, f"models.list() = {ids}")
check(client.models.retrieve(alias).id == alias, "models.retrieve(alias)")

# An unknown model is a NotFoundError with OpenAI's error code.
try:
    client.chat.completions.create(
        model="no-such-model", messages=[{"role": "user", "content": "x"}]
    )
    check(False, "unknown model raises")
except openai.NotFoundError as e:
    check(e.status_code == 404, "unknown model is 404")
    check(e.code == "model_not_found", f"error code model_not_found (got {e.code})")

done()
