"""serving.server: request parsing and the micro-batcher (the HTTP end to end is tests/test_cli_serve.py)."""
from __future__ import annotations

import asyncio

import pytest
import torch

from jrft_cli.serving.server import Limits, MicroBatcher, RequestError, Stats, parse_request

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(multitask_runs):
    from jrft_cli.serving.multitask import MultiTaskModel

    return MultiTaskModel.load({"sent": multitask_runs["sent"], "sim": multitask_runs["sim"]})


def test_both_request_forms(model):
    limits = Limits()
    assert parse_request({"task": "sent", "texts": ["good", "bad"]}, model, limits) == [
        ("sent", ("good",)), ("sent", ("bad",))]
    assert parse_request([{"task": "sim", "text": ["a", "b"]}, {"task": "sent", "text": "ok"}], model, limits) == [
        ("sim", ("a", "b")), ("sent", ("ok",))]


@pytest.mark.parametrize("body, status, message", [
    ({"task": "nope", "texts": ["x"]}, 404, "texts[0]: unknown task 'nope'; known tasks: sent, sim"),
    ({"task": "sent", "texts": ["  "]}, 422, "texts[0]: text is empty"),
    ({"task": "sent", "texts": ["x" * 51]}, 413, "texts[0]: text is too long (51 characters; at most 50)"),
    ({"task": "sent", "texts": ["a"] * 5}, 413, "5 texts in one request; at most 4"),
    ({"task": "sim", "texts": ["one"]}, 422, "texts[0]: task 'sim' (stsb) takes sentence pairs (two texts); got 1"),
    ([{"task": "sent", "text": ["a", "b"]}], 422, "item 0: task 'sent' (sst2) takes one text; got 2"),
    ({"task": "sent", "texts": []}, 422, "no texts given"),
    ({"task": "sent"}, 400, "needs 'task' and 'texts' (missing texts)"),
    ({"task": "sent", "texts": "abc"}, 400, "'texts' must be a list"),
    ([{"task": "sent"}], 400, "item 0: expected an object"),
    ("just a string", 400, "the body must be a JSON object"),
    ({"task": 3, "texts": ["x"]}, 422, "'task' must be a string"),
    ({"task": "sent", "texts": [5]}, 422, "a text is a string"),
])
def test_bad_requests_name_the_problem(model, body, status, message):
    with pytest.raises(RequestError) as err:
        parse_request(body, model, Limits(max_rows=4, max_chars=50))
    assert err.value.status == status and message in str(err.value), str(err.value)


def test_queued_rows_of_different_tasks_run_as_one_batch(model):
    # Two requests of two tasks queued before the worker runs: its first batch takes both (the rows
    # already queued never wait), and each request gets its own rows' outputs.
    async def scenario():
        stats = Stats()
        batcher = MicroBatcher(model, Limits(max_batch_size=8, max_wait_ms=0), stats)
        a = asyncio.ensure_future(batcher.submit(model.encode_rows([("sent", ("great",)), ("sent", ("awful",))])))
        b = asyncio.ensure_future(batcher.submit(model.encode_rows([("sim", ("A man sings.", "A man is singing."))])))
        await asyncio.sleep(0)          # both submits enqueue their rows
        batch = await batcher.next_batch()
        assert len(batch) == 3
        await batcher.run_batch(batch)
        return await a, await b, stats

    a, b, stats = asyncio.run(scenario())
    assert [t.shape[0] for t in a] == [2, 2] and [t.shape[0] for t in b] == [1]
    assert stats.batches == 1 and stats.mixed_batches == 1 and stats.largest_batch == 3
    alone = model.logits(model.encode_rows([("sent", ("great",)), ("sent", ("awful",))]))
    assert torch.allclose(torch.stack(a), torch.stack(alone), atol=1e-5)


def test_a_batch_never_exceeds_max_batch_size(model):
    async def scenario():
        batcher = MicroBatcher(model, Limits(max_batch_size=2, max_wait_ms=0), Stats())
        fut = asyncio.ensure_future(batcher.submit(model.encode_rows([("sent", (f"text {i}",)) for i in range(5)])))
        await asyncio.sleep(0)
        sizes = []
        while not batcher.queue.empty():
            batch = await batcher.next_batch()
            sizes.append(len(batch))
            await batcher.run_batch(batch)
        return sizes, await fut

    sizes, rows = asyncio.run(scenario())
    assert sizes == [2, 2, 1] and len(rows) == 5
