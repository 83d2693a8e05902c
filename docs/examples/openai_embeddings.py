"""Embeddings from a running `fluent-ai-candle serve` with the official `openai` client.

    fluent-ai-candle serve --model smollm2-135m-instruct --api-key sk-local
    python3 docs/examples/openai_embeddings.py [BASE_URL] [MODEL]

Prints each vector's length and norm, the cosine similarities of a similar and an unrelated
pair, what `dimensions` and base64 encoding return, and the /tokenize round trip.
"""

import base64
import json
import math
import struct
import sys
import urllib.request

from openai import OpenAI

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
MODEL = sys.argv[2] if len(sys.argv) > 2 else "smollm2-135m-instruct"
TEXTS = [
    "The cat sat on the mat.",
    "A cat was sitting on the mat.",
    "Quarterly tax filings are due in April.",
]

client = OpenAI(base_url=f"{BASE}/v1", api_key="sk-local")


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b))


response = client.embeddings.create(model=MODEL, input=TEXTS)
vectors = [d.embedding for d in response.data]
for text, v in zip(TEXTS, vectors):
    print(f"{len(v)} dims, norm {math.sqrt(cosine(v, v)):.6f}: {text}")
print(f"usage: {response.usage.prompt_tokens} prompt tokens, model {response.model}")
print(f"cos(similar)   = {cosine(vectors[0], vectors[1]):.4f}")
print(f"cos(unrelated) = {cosine(vectors[0], vectors[2]):.4f}")

last = client.embeddings.create(model=MODEL, input=TEXTS[0], extra_body={"pooling": "last"})
print(f"pooling=last: cos(mean, last) = {cosine(vectors[0], last.data[0].embedding):.4f}")

short = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=64)
print(f"dimensions=64 -> {len(short.data[0].embedding)} dims")

# The client asks for base64 by default when numpy is installed; ask explicitly here and
# decode the little-endian f32 bytes by hand.
raw = client.embeddings.with_raw_response.create(
    model=MODEL, input=TEXTS[0], encoding_format="base64"
)
packed = json.loads(raw.text)["data"][0]["embedding"]
floats = struct.unpack(f"<{len(base64.b64decode(packed)) // 4}f", base64.b64decode(packed))
same = max(abs(a - b) for a, b in zip(floats, vectors[0]))
print(f"base64 -> {len(floats)} floats, max difference from float: {same}")


def post(path, body):
    request = urllib.request.Request(
        f"{BASE}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-local"},
    )
    with urllib.request.urlopen(request) as r:
        return json.load(r)


tokens = post("/tokenize", {"model": MODEL, "prompt": TEXTS[0]})
text = post("/detokenize", {"model": MODEL, "tokens": tokens["tokens"]})["prompt"]
print(f"tokenize: {tokens['count']} tokens (max_model_len {tokens['max_model_len']}),"
      f" round trip {'ok' if text == TEXTS[0] else 'FAILED'}")
