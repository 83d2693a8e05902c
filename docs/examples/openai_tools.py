"""Tool calling with the official `openai` client: forced calls whose arguments validate, a
streamed call, and a follow-up turn with the tool's result.

Run against `fluent-ai-candle serve --api-key sk-local` on 127.0.0.1:8080:
`pip install openai jsonschema`, then `python3 docs/examples/openai_tools.py [BASE_URL]`.
Exits non-zero when a forced call's arguments do not validate. Not part of CI."""
import json
import sys

import jsonschema
from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
client = OpenAI(base_url=base_url, api_key="sk-local")
MODEL = "smollm2-135m-instruct"

params = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.", "parameters": params}}]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
named = {"type": "function", "function": {"name": "get_weather"}}

# Forced calls over several seeds: the arguments always parse and validate.
for seed in range(5):
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice=named,
        parallel_tool_calls=False, temperature=0.7, seed=seed, max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), params)
    print(f"seed {seed}: {call.function.name}({call.function.arguments}) id={call.id}")

# The same call streamed: the deltas assemble into one call.
stream = client.chat.completions.create(
    model=MODEL, messages=messages, tools=tools, tool_choice="required",
    parallel_tool_calls=False, temperature=0.7, seed=0, max_tokens=80, stream=True,
)
calls = {}
finish = None
for chunk in stream:
    if not chunk.choices:
        continue
    for d in chunk.choices[0].delta.tool_calls or []:
        c = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
        c["name"] += d.function.name or ""
        c["arguments"] += d.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
print("streamed:", calls, finish)
assert finish == "tool_calls"
jsonschema.validate(json.loads(calls[0]["arguments"]), params)

# A follow-up turn with the tool's result.
call = r.choices[0].message.tool_calls[0]
follow = client.chat.completions.create(
    model=MODEL, tools=tools, max_tokens=40, seed=1,
    messages=messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ],
)
print("follow-up:", follow.choices[0].message.content, follow.choices[0].message.tool_calls)
print("ok")
