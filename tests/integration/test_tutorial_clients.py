"""The tutorials' clients, as written, against a real server (issue 14 item 1).

Two servers: the suite's shared one on the embedded default model, and one of this module with a tiny
random GPT-2 (the GPT-2 tokenizer fixture; the default entry, so clients that name no model get it) and a
tiny Phi-4 with the ORIGINAL Dec-2024 tokenizer (eos <|endoftext|>; its turns end with <|im_end|>).

The tiny Phi-4's weights are fixed so that it answers one known token and then <|im_end|> (the tutorials'
request has no logit_bias to force tokens with): every layer's output projections are zeroed, so the last
hidden state is the (normed) embedding of the last token only, a bigram model; the embeddings of <|im_sep|>
(the end of the generation prompt) and of "Paris" are orthogonal unit directions, and the lm_head rows of
"Paris" and <|im_end|> point along them. So after the prompt the model says "Paris", then <|im_end|>; a
server that did not stop there would go on with whatever follows <|im_end|> (random weights).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.adapters.tiny_models import build_family_model
from tests.integration.conftest import RunningServer, start_server, stop_server

GPT2 = "tiny-gpt2"
PHI4 = "tiny-phi4"
IM_END, IM_SEP = 100265, 100266
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TUTORIAL_BEAMS = {"max_length": 200, "num_beams": 5, "no_repeat_ngram_size": 2, "early_stopping": True}


# ---- the tutorials' clients, as they are written ---------------------------------------------------
def distilgpt2_client(url: str, prompt: str) -> str:
    response = requests.post(f"{url}/generate", json={"prompt": prompt})
    return response.json()["generated_text"]


def deepseek_client(url: str, prompt: str) -> str:
    """The DeepSeek-Coder-V2 / Qwen2 tutorials' get_completion (headers + data=json.dumps)."""
    headers = {"Content-Type": "application/json"}
    data = {"prompt": prompt}
    response = requests.post(url=url, headers=headers, data=json.dumps(data))
    return response.json()["response"]


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(url, json=body, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"response", "history", "status", "time"} and data["status"] == 200
    datetime.datetime.strptime(data["time"], TIME_FORMAT)  # raises unless YYYY-MM-DD HH:MM:SS
    return data


# ---- models ----------------------------------------------------------------------------------------
def build_phi4_answering(out: Path, answer_token: str = "Paris") -> int:
    """The tiny Phi-4 described in the module docstring; returns the answer's token id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_family_model("phi4-original", out)
    answer = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(answer_token)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()  # layers add nothing: the residual stream is the token's embedding
        embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        for token, axis in ((IM_SEP, 0), (answer, 1)):
            embed[token].zero_()
            embed[token, axis] = 1.0
        head[answer].zero_()
        head[answer, 0] = 10.0  # after <|im_sep|>: "Paris" by a logit of ~40 (|normed hidden| = 4)
        head[IM_END].zero_()
        head[IM_END, 1] = 10.0  # after "Paris": <|im_end|>
    model.save_pretrained(out)
    return answer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("tutorial-models")
    build_family_model("gpt2", root / GPT2, n_positions=256)  # room for the tutorial's max_length=200
    build_phi4_answering(root / PHI4)
    # float32 and no oneDNN pre-packing: the same kernels as the reference generate() in this process, so
    # the beam search can be compared token for token (a different summation order could flip a near-tie).
    common = {"preload": True, "dtype": "float32", "prepack": False}
    entries = [
        {"name": GPT2, "source": str(root / GPT2), **common},
        {"name": PHI4, "source": str(root / PHI4), **common},
    ]
    models_file = root / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": entries}), encoding="utf-8")
    running = start_server(root, "--models-file", str(models_file), "--device", "cpu")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def gpt2_reference(tiny: RunningServer) -> Iterator[Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny.log.parent / GPT2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # speed only (a busy CPU); a 16-wide model's matmuls do not split their sums
    try:
        yield AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)  # the rest of the session's tests keep their thread count


# ---- tests -----------------------------------------------------------------------------------------
def test_generate_is_transformers_beam_search_on_the_tiny_gpt2(tiny: RunningServer, gpt2_reference: Any) -> None:
    import torch

    tokenizer, model = gpt2_reference
    prompt = "Hello GPT"
    inputs = tokenizer.encode(prompt, return_tensors="pt")
    with torch.inference_mode():
        outputs = model.generate(inputs, **TUTORIAL_BEAMS, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(outputs[0], skip_special_tokens=True)
    greedy = tokenizer.decode(model.generate(inputs, max_length=200, do_sample=False)[0], skip_special_tokens=True)
    assert expected != greedy  # so equality below shows that 5 beams ran, not greedy decoding

    assert distilgpt2_client(tiny.url, prompt) == expected


def test_post_root_on_the_template_less_gpt2_returns_prompt_plus_continuation(tiny: RunningServer) -> None:
    answer = deepseek_client(tiny.url, "Once upon a time")  # as written: prompt only, model defaults
    assert answer.startswith("Once upon a time") and len(answer) > len("Once upon a time")
    data = post(tiny.url, {"prompt": "OpenELM says", "max_length": 8, "temperature": 0.0})  # OpenELM tutorial
    assert data["response"].startswith("OpenELM says") and data["history"] == [["OpenELM says", data["response"]]]


@pytest.mark.parametrize("form", ["pairs", "messages"])
def test_phi4_stops_on_im_end_and_history_round_trips(tiny: RunningServer, form: str) -> None:
    history: list[Any] = []
    for turn, question in enumerate(["Capital of France?", "Again?", "Once more?"]):
        if form == "messages" and turn == 0:
            history = [{"role": "system", "content": "You are a helpful assistant."}]
        data = post(tiny.url, {"model": PHI4, "prompt": question, "history": history})  # Phi-4: greedy, 512
        assert data["response"] == "Paris"  # one token, then <|im_end|> ended it (not the 512-token budget)
        if form == "pairs":
            expected = [*history, [question, "Paris"]]
        else:
            expected = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": "Paris"}]
        assert data["history"] == expected
        history = data["history"]


BAD: dict[str, tuple[str, Any, str]] = {  # the bad-input battery's cases that apply to these routes
    "prompt-10MB": ("/", {"prompt": "word " * 2_000_000}, "application/json"),
    "lone-surrogate": ("/generate", {"prompt": "\ud800"}, "application/json"),
    "lone-surrogate-history": ("/", {"prompt": "hi", "history": [["\ud800", "a"]]}, "application/json"),
    "max_length-string": ("/", {"prompt": "hi", "max_length": "8"}, "application/json"),
    "max_length-true": ("/generate", {"prompt": "hi", "max_length": True}, "application/json"),
    "temperature-1e-300": ("/", {"prompt": "hi", "temperature": 1e-300, "max_length": 2}, "application/json"),
    "text-plain-body": ("/", {"prompt": "hi"}, "text/plain"),
    "field-name-with-newline": ("/", {"prompt": "hi", "x\nERROR forged": 1}, "application/json"),
    "prompt-bools": ("/generate", {"prompt": [True, False]}, "application/json"),
    "history-huge-within-body": ("/", {"prompt": "hi", "history": [["word " * 150_000, "a"]]}, "application/json"),
    "gguf-path-missing": ("/", {"prompt": "hi", "model": "/nonexistent/model.gguf"}, "application/json"),
    "not-an-object": ("/generate", ["prompt"], "application/json"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_4xx_detail(tiny: RunningServer, case: str) -> None:
    path, body, content_type = BAD[case]
    response = requests.post(
        f"{tiny.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": content_type}, timeout=300
    )
    if case == "temperature-1e-300":  # a valid request (greedy), as on chat completions
        assert response.status_code == 200, response.text
        return
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"detail"} and isinstance(response.json()["detail"], str)


@pytest.mark.timeout(1200)  # a 5-beam search to 200 tokens on the 135M model (and its first load): slow on a busy CPU
def test_tutorial_clients_on_the_default_model(server: RunningServer) -> None:
    text = distilgpt2_client(server.url, "Hello GPT")
    assert text.startswith("Hello GPT") and len(text) > len("Hello GPT")
    assert deepseek_client(server.url, "What is the capital of France?").strip()
    history: list[Any] = []
    for question in ["Hi!", "What is 2+2?", "Thanks."]:
        data = post(server.url, {"prompt": question, "history": history, "max_length": 16, "top_k": 5})
        assert data["response"].strip()
        assert data["history"] == [*history, [question, data["response"]]]
        history = data["history"]
    bad = requests.post(f"{server.url}/generate", json={"prompt": ""})
    assert (bad.status_code, bad.json()) == (400, {"detail": "No prompt provided"})
