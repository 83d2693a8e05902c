"""The README's `openai` client example, runnable: `python3 docs/examples/openai_client.py`
against `fluent-ai-candle serve --api-key sk-local` on 127.0.0.1:8080 (`pip install openai`)."""
from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="sk-local")

# Streaming
stream = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Write a haiku about the sea."}],
    max_tokens=64,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)

# json_schema response_format
person = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Invent a person."}],
    max_tokens=64,
    response_format={
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
                "additionalProperties": False,
            },
        },
    },
)
print(person.choices[0].message.content)  # e.g. {"name":"Ada","age":36}

# Extensions go through extra_body
regex = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Pick a number."}],
    extra_body={"regex": "[0-9]{3}", "top_k": 40, "min_p": 0.05},
)

print(regex.choices[0].message.content)

# Log-probabilities of each generated token and its top alternatives
lp = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Name a colour."}],
    max_tokens=4,
    temperature=0,
    logprobs=True,
    top_logprobs=2,
)
for t in lp.choices[0].logprobs.content:
    print(repr(t.token), round(t.logprob, 3), [(a.token, round(a.logprob, 3)) for a in t.top_logprobs])
