"""GET /metrics over the ASGI app: it parses, and after a known workload every counter moved by exactly that much."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounting import RequestRecord
from gateway.engine.admission import Admission, AdmittedEngine
from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, Gateway, open_gateway, post_then_disconnect, sse_events, wait_until

pytestmark = pytest.mark.anyio

CHAT_ROUTE = "/v1/chat/completions"


async def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    response = await gw.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_known_workload_moves_each_counter_by_exactly_its_amount() -> None:
    async with open_gateway(FakeEngine()) as gw:
        before = await scrape(gw)
        usages = []
        for model in (MODEL, "short"):  # an alias counts under the model's canonical id
            usages.append((await gw.chat(model=model, max_tokens=5)).json()["usage"])
        stream = await gw.chat(max_tokens=5, stream=True, stream_options={"include_usage": True})
        usages.append(sse_events(stream.text)[-1]["usage"])
        usages.append((await gw.completion(prompt="Once upon", max_tokens=2)).json()["usage"])
        assert (await gw.chat(model="no-such-model")).status_code == 404
        assert (await gw.client.get("/no/such/path")).status_code == 404
        assert (await gw.client.get(f"/v1/models/{MODEL}")).status_code == 200
        after = await scrape(gw)

    assert delta(before, after, "gantry_requests_total", model=MODEL, route=CHAT_ROUTE, status="200") == 3
    assert delta(before, after, "gantry_requests_total", model=MODEL, route="/v1/completions", status="200") == 1
    assert delta(before, after, "gantry_requests_total", model="none", route=CHAT_ROUTE, status="404") == 1
    assert delta(before, after, "gantry_requests_total", model="none", route="unmatched", status="404") == 1
    assert delta(before, after, "gantry_requests_total", model="none", route="/v1/models/{model_id}", status="200") == 1
    assert value(after, "gantry_requests_total", model="none", route="/metrics", status="200") == 1  # the 1st scrape
    assert not [key for key in after if ("model", "short") in key[1]]
    assert delta(before, after, "gantry_prompt_tokens_total", model=MODEL) == sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert generated == 3 * 3 + 2  # FakeEngine: 3 tokens per chat, max_tokens=2 on the completion
    assert delta(before, after, "gantry_generation_tokens_total", model=MODEL) == generated
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert delta(before, after, f"gantry_{histogram}_seconds_count", model=MODEL) == 4, histogram
        assert delta(before, after, f"gantry_{histogram}_seconds_bucket", model=MODEL, le="+Inf") == 4
    # one gap between consecutive tokens: 2 per chat of 3 tokens, 1 for the completion of 2
    assert delta(before, after, "gantry_inter_token_latency_seconds_count", model=MODEL) == 3 * 2 + 1
    assert delta(before, after, "gantry_sequences_aborted_total", model=MODEL) == 0


async def test_model_state_and_load_time_are_read_at_scrape_time() -> None:
    async with open_gateway(FakeEngine(), load=False) as gw:
        unloaded = await scrape(gw)
        await gw.app.state.registry.load_all()
        loaded = await scrape(gw)
    assert value(unloaded, "gantry_model_state", model=MODEL, state="unloaded") == 1
    assert value(unloaded, "gantry_model_state", model=MODEL, state="ready") == 0
    assert ("gantry_model_load_seconds", (("model", MODEL),)) not in unloaded
    assert value(loaded, "gantry_model_state", model=MODEL, state="ready") == 1
    assert value(loaded, "gantry_model_state", model=MODEL, state="unloaded") == 0
    assert ("gantry_model_load_seconds", (("model", MODEL),)) in loaded


async def test_running_and_waiting_sequences_and_overload_429s() -> None:
    engine = AdmittedEngine(FakeEngine(pieces=["tick"] * 40, delay=0.02), Admission(max_running=1, max_queued=1))
    async with open_gateway(engine) as gw:  # type: ignore[arg-type]
        busy = [asyncio.create_task(gw.chat(max_tokens=100)) for _ in range(2)]
        assert await wait_until(lambda: engine.admission.in_flight == 2, timeout=5)
        during = await scrape(gw)
        assert (await gw.chat()).status_code == 429
        await asyncio.gather(*busy)
        after = await scrape(gw)
    assert value(during, "gantry_sequences_running", model=MODEL) == 1
    assert value(during, "gantry_sequences_waiting", model=MODEL) == 1
    assert value(after, "gantry_sequences_running", model=MODEL) == 0
    assert value(after, "gantry_sequences_waiting", model=MODEL) == 0
    assert delta(during, after, "gantry_rate_limited_requests_total", key_name="anonymous") == 1
    assert delta(during, after, "gantry_requests_total", model=MODEL, route=CHAT_ROUTE, status="429") == 1


async def test_a_429_is_counted_under_the_key_that_got_it() -> None:
    """The API-key layer sets record.key_name; its 429s count per key name (never the key)."""
    async with open_gateway(FakeEngine()) as gw:
        before = await scrape(gw)
        for status in (429, 429, 200):
            record = RequestRecord(request_id="r", method="POST", path=CHAT_ROUTE, key_name="team-a", status=status)
            record.route = CHAT_ROUTE
            gw.app.state.metrics.observe(record)
        after = await scrape(gw)
    assert delta(before, after, "gantry_rate_limited_requests_total", key_name="team-a") == 2


async def test_a_client_that_leaves_mid_stream_counts_as_an_aborted_sequence() -> None:
    async with open_gateway(FakeEngine(pieces=["tick"] * 200, delay=0.01)) as gw:
        before = await scrape(gw)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 200}
        exchange = await post_then_disconnect(gw.app, CHAT_ROUTE, body, disconnect_when=lambda c: len(c) > 3)
        await exchange.task
        assert await wait_until(lambda: bool(gw.engine.aborted), timeout=5)
        after = await scrape(gw)
    assert delta(before, after, "gantry_sequences_aborted_total", model=MODEL) == 1
    assert delta(before, after, "gantry_requests_total", model=MODEL, route=CHAT_ROUTE, status="200") == 1
    assert 0 < delta(before, after, "gantry_generation_tokens_total", model=MODEL) < 200


async def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    async with open_gateway(FakeEngine()) as gw:
        response = await gw.client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_two_apps_in_one_process_count_apart() -> None:
    async with open_gateway(FakeEngine()) as first, open_gateway(FakeEngine()) as second:
        await first.chat(max_tokens=2)
        one, other = await scrape(first), await scrape(second)
    assert value(one, "gantry_requests_total", model=MODEL, route=CHAT_ROUTE, status="200") == 1
    assert value(other, "gantry_requests_total", model=MODEL, route=CHAT_ROUTE, status="200") == 0
