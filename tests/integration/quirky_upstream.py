"""A small OpenAI-style server with the quirks of FastAPI-based upstreams, for the upstream tests.

It is a real HTTP server (uvicorn), not a fake of Gantry's code: it stands for servers such as
`transformers serve` that end a stream without `data: [DONE]`, answer validation errors with 422 and
`{"detail": [...]}` and other failures with a bare string. Its answers echo the body it received, so a
test can see what the front forwarded. `--hang` makes every generation request wait forever (an
upstream that accepts the connection and never answers).

    python -m tests.integration.quirky_upstream --port 8123 [--hang]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

MODEL = "quirky-model"
WORDS = ["one", " two", " three", " four", " five"]


def build_app(hang: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 1234}]}

    async def refuse_or_hang(body: dict) -> JSONResponse | PlainTextResponse | None:
        if hang:
            await asyncio.sleep(3600)
        if "reject" in body:  # a field only this server validates
            detail = [{"loc": ["body", "reject"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]
            return JSONResponse({"detail": detail}, status_code=422)
        if body.get("model") != MODEL:
            return JSONResponse({"detail": f"model {body.get('model')!r} not found"}, status_code=404)
        if body.get("crash"):
            return PlainTextResponse("Internal Server Error", status_code=500)
        return None

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if (refusal := await refuse_or_hang(body)) is not None:
            return refusal
        created = int(time.time())
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(WORDS)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            usage = {"prompt_tokens": 3, "completion_tokens": len(WORDS), "total_tokens": 3 + len(WORDS)}
            answer = {"id": "q-1", "object": "chat.completion", "created": created, "model": MODEL}
            return {**answer, "choices": [choice], "usage": usage, "received": body}

        async def endless():  # until the client goes away: the log then says how far it got
            base = {"id": "q-2", "object": "chat.completion.chunk", "created": created, "model": MODEL}
            sent = 0
            try:
                while True:
                    choice = {"index": 0, "delta": {"content": " word"}, "finish_reason": None}
                    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
                    sent += 1
                    await asyncio.sleep(0.02)
            finally:
                print(f"stream closed by the client after {sent} chunks", flush=True)  # noqa: T201 (the log)

        async def events():
            base = {"id": "q-1", "object": "chat.completion.chunk", "created": created, "model": MODEL}
            for word in WORDS:
                choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
                yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
                await asyncio.sleep(0.01)
            yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
            # no `data: [DONE]`, like transformers serve

        return StreamingResponse(endless() if body.get("endless") else events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    uvicorn.run(build_app(args.hang), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
