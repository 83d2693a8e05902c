"""The official `openai` client against `fluent-ai-candle serve`: the Responses API, whole and
streamed, and a function call round trip.

    fluent-ai-candle serve --model smollm2-135m-instruct --api-key sk-local &
    python3 docs/examples/openai_responses.py [http://127.0.0.1:8080]
"""

import json
import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
client = OpenAI(base_url=base + "/v1", api_key="sk-local")
model = "smollm2-135m-instruct"

r = client.responses.create(
    model=model,
    instructions="Answer in one short sentence.",
    input="What is the capital of France?",
    max_output_tokens=24,
    temperature=0,
)
print("whole:", r.status, repr(r.output_text), "usage", r.usage.input_tokens, r.usage.output_tokens)

text = ""
kinds = []
with client.responses.stream(
    model=model,
    instructions="Answer in one short sentence.",
    input="What is the capital of France?",
    max_output_tokens=24,
    temperature=0,
) as stream:
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    final = stream.get_final_response()
print("streamed:", repr(text), "same as whole:", text == r.output_text)
print("events:", kinds[0], "...", kinds[-1], f"({len(kinds)} events)")
print("final:", final.status, repr(final.output_text))

tools = [{
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False},
}]
r = client.responses.create(model=model, input="What is the weather in Paris?", tools=tools,
                            tool_choice="required", max_output_tokens=60, temperature=0)
call = next(item for item in r.output if item.type == "function_call")
print("call:", call.name, call.arguments, "-> parses:", json.loads(call.arguments))
r2 = client.responses.create(
    model=model, tools=tools, max_output_tokens=30, temperature=0,
    input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id,
         "output": json.dumps({"temperature_c": 18, "sky": "clear"})},
    ])
print("after the tool result:", r2.status, repr(r2.output_text))
