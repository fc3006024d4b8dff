"""Internal token logprobs → the chat and legacy completion wire formats."""

from __future__ import annotations

from gateway.engine.types import TokenLogprob
from gateway.schemas.chat import TokenLogprob as WireTokenLogprob
from gateway.schemas.chat import TopLogprob
from gateway.schemas.completions import CompletionLogprobs


def chat_logprobs(items: list[TokenLogprob], top: int) -> list[WireTokenLogprob]:
    return [
        WireTokenLogprob(
            token=item.token,
            logprob=item.logprob if item.logprob is not None else 0.0,
            bytes=list(item.token.encode("utf-8")),
            top_logprobs=[
                TopLogprob(token=text, logprob=lp, bytes=list(text.encode("utf-8"))) for text, lp in item.top[:top]
            ],
        )
        for item in items
    ]


def extend_completion_logprobs(target: CompletionLogprobs, items: list[TokenLogprob], offset: int) -> int:
    """Append items in the legacy format (top dicts include the sampled token); returns the new offset."""
    for item in items:
        target.tokens.append(item.token)
        target.token_logprobs.append(item.logprob)
        if item.logprob is None:
            target.top_logprobs.append(None)
        else:
            top = dict(item.top)
            top.setdefault(item.token, item.logprob)
            target.top_logprobs.append(top)
        target.text_offset.append(offset)
        offset += len(item.token)
    return offset
