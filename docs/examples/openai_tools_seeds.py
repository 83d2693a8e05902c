"""Forced tool calls over many seeds with the official `openai` client: `tool_choice="required"`
between two tools at temperature 1.0, 20 seeds; every call's arguments must parse and validate
against its function's schema. Run against `fluent-ai-candle serve` with the key `sk-local`:
`pip install openai jsonschema`, then `python3 docs/examples/openai_tools_seeds.py [BASE_URL]`.
Not part of CI (CI checks the same through HTTP in crates/server/tests/tools.rs)."""
import sys
import json, jsonschema
from openai import OpenAI
c = OpenAI(base_url=sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1", api_key="sk-local")
params = {"type":"object","properties":{"city":{"type":"string","maxLength":40},"unit":{"enum":["celsius","fahrenheit"]},"days":{"type":"integer","minimum":1,"maximum":7}},"required":["city","unit"],"additionalProperties":False}
t2 = {"type":"object","properties":{"timezone":{"type":"string","pattern":"^[A-Z][a-z]+/[A-Z][a-z]+$"}},"required":["timezone"],"additionalProperties":False}
tools=[{"type":"function","function":{"name":"get_weather","description":"Weather forecast of a city.","parameters":params}},
       {"type":"function","function":{"name":"get_time","description":"Current time in a timezone.","parameters":t2}}]
schemas={"get_weather":params,"get_time":t2}
ok=0; n=0; names={}
for seed in range(20):
    r=c.chat.completions.create(model="smollm2-135m-instruct",messages=[{"role":"user","content":"What's the weather in Tokyo for the next days, and what time is it there?"}],
        tools=tools,tool_choice="required",parallel_tool_calls=False,temperature=1.0,seed=seed,max_tokens=120)
    ch=r.choices[0]; assert ch.finish_reason=="tool_calls", ch
    for call in ch.message.tool_calls:
        n+=1; jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name]); ok+=1
        names[call.function.name]=names.get(call.function.name,0)+1
    print(seed, [(x.function.name, x.function.arguments) for x in ch.message.tool_calls], flush=True)
print(f"{ok}/{n} calls validated over 20 seeds (tool_choice=required, parallel_tool_calls=False, temperature 1.0); by name {names}")
