"""run_human_study.py: clip pairs from a tiny random-init checkpoint and real 64x48 ViZDoom recordings, the study
page in a real headless Chromium (Playwright), the answers file, resuming, refusals, and the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_script, save_tiny_checkpoint, script_env
from PIL import Image

import run_human_study
from gamengen.context import episode_context, episode_frames
from gamengen.engine import GameEngine
from gamengen.episodes import open_dataset
from gamengen.layout import DatasetError
from gamengen.play.guard import HostCheck
from gamengen.study.answers import read_answers
from gamengen.study.clips import StudyError, load_study
from gamengen.study.report import wilson_interval
from gamengen.study.server import request_refusal

CHROMIUM = os.environ.get("GAMENGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


@pytest.fixture(scope="module")
def study_dir(tiny_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    """Two pairs of each of the paper's lengths, from the episode the checkpoint's trainer held out."""
    root = tmp_path_factory.mktemp("study")
    checkpoint = root / "wm"
    shutil.copytree(tiny_checkpoint, checkpoint)
    config = json.loads((checkpoint / "gamengen_config.json").read_text())
    config["dataset"] = {**config.get("dataset", {}), "heldout_episodes": [open_dataset(tiny_dataset).episode_ids[1]]}
    (checkpoint / "gamengen_config.json").write_text(json.dumps(config))
    threads = torch.get_num_threads()
    run_human_study.main(
        run_human_study.parse_args(
            [
                *("--model_folder", str(checkpoint), "--dataset_name", str(tiny_dataset), "--prepare_only"),
                *("--study_dir", str(root / "study"), "--clips_per_length", "2", "--batch_size", "2"),
            ]
        )
    )
    torch.set_num_threads(threads)
    return root / "study"


def strip(path: Path, frames: int) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels.reshape(frames, -1, *pixels.shape[1:])


def test_prepare_makes_real_and_generated_clips_of_the_papers_lengths_from_the_same_held_out_start(
    study_dir, tiny_dataset
):
    study = load_study(study_dir)
    dataset = open_dataset(tiny_dataset)
    heldout = dataset.episode_ids[1]
    assert [(c.seconds, c.frames) for c in study.clips] == [(1.6, 14)] * 2 + [(3.2, 28)] * 2  # at 8.75 frames/s
    assert study.fps == 8.75 and study.episodes_source.startswith("held out by the trainer")
    assert {c.episode_id for c in study.clips} == {heldout} and study.engine["carry_detail"] is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as prepare ran (another thread count sums in another order: a level off here and there)
    engine = GameEngine.from_pretrained(study.model_folder, dtype="fp32")
    for ids in {tuple(c.batch) for c in study.clips}:  # clips generated together share one engine batch
        clips = [study.clip(i) for i in ids]
        contexts = [episode_context(dataset, 1, c.start_step, engine.context_length) for c in clips]
        engine.reset(np.stack([x[0] for x in contexts]), np.stack([x[1] for x in contexts]), seed=clips[0].seed)
        generated = engine.rollout([[c.actions[t] for c in clips] for t in range(clips[0].frames)])
        for index, clip in enumerate(clips):
            real = episode_frames(dataset, 1, clip.start_step, clip.start_step + clip.frames)
            np.testing.assert_array_equal(strip(study_dir / clip.image("real"), clip.frames), real)
            # the generated clip is the model's own rollout from the same context with the same recorded actions
            np.testing.assert_array_equal(strip(study_dir / clip.image("model"), clip.frames), generated[index])
            recorded = dataset.actions(1)[clip.start_step - 1 : clip.start_step - 1 + clip.frames]
            assert clip.actions == [engine.action_names[a] for a in recorded]
    torch.set_num_threads(threads)


def test_prepare_refuses_a_mismatched_model_a_clip_longer_than_the_episodes_and_an_existing_study(
    study_dir, tiny_checkpoint, tiny_dataset, tmp_path, in_process, capsys
):
    other = save_tiny_checkpoint(tmp_path / "other", ["NOOP", "JUMP", "CROUCH"])
    base = ["--model_folder", tiny_checkpoint, "--dataset_name", tiny_dataset, "--prepare_only", "--study_dir"]
    with pytest.raises(DatasetError, match="are not the checkpoint's .*use a dataset recorded with the action set"):
        in_process(run_human_study, base[0], other, *base[2:], tmp_path / "a")
    too_long = run_script("run_human_study.py", *base, tmp_path / "b", "--lengths", "1.6,5", check=False)
    assert too_long.returncode == 1 and "Traceback" not in too_long.stderr
    assert (
        "a 5 s clip is 44 frames: after the model's 4-frame context it needs an episode of at least 48 steps, but the "
        "longest of the 2 episodes used has 40"
        in too_long.stderr
        and "pass shorter --lengths" in too_long.stderr
    )
    assert not (tmp_path / "b").exists()  # refused before any clip was made
    with pytest.raises(StudyError, match="holds a study of the model .* its answers belong to its clips"):
        in_process(run_human_study, *base, study_dir)  # another model than the study's
    with pytest.raises(StudyError, match="holds no study yet: give --model_folder"):
        in_process(run_human_study, "--study_dir", tmp_path / "none")
    with pytest.raises(SystemExit):
        in_process(run_human_study, *base, tmp_path / "c", "--carry_detail", 8)
    assert "the study shows the model's own frames" in capsys.readouterr().err


def start_server(study: Path, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(REPO / "run_human_study.py"), "--study_dir", str(study), "--port", "0"]
    with open(log, "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=script_env(), cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        found = re.findall(r"serving the study at (http://127\.0\.0\.1:\d+/)", log.read_text())
        if found:
            return process, found[-1]
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the study server did not start:\n" + log.read_text())


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(study_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process, url = start_server(study_dir, log)
    yield {"url": url, "process": process, "log": log}
    stop_server(process)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does, or set GAMENGEN_CHROMIUM)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def answer_clips(page, count: int, keys=("ArrowLeft", "ArrowRight")) -> list[dict]:
    """Answer ``count`` clips with the keyboard, each once it has played; the clips as the page showed them."""
    shown = []
    for index in range(count):
        answered = page.evaluate("window.study.answered")
        page.wait_for_function("window.study.ready === true", timeout=60000)
        shown.append(page.evaluate("window.study.clip"))
        page.keyboard.press(keys[index % len(keys)])
        page.wait_for_function(f"window.study.answered === {answered + 1}", timeout=60000)
    return shown


def get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: bytes, **headers: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_rater_answers_in_the_browser_every_answer_is_on_disk_and_a_reload_resumes(server, browser, study_dir):
    answers = study_dir / "answers.jsonl"
    page = browser.new_page()
    try:
        page.goto(server["url"])
        page.fill("#rater", "ada")
        page.press("#rater", "Enter")
        first = answer_clips(page, 2)
        records, problems = read_answers(answers)
        assert problems == [] and [r["clip"] for r in records] == [c["clip"] for c in first]
        for record, clip in zip(records, first, strict=True):
            assert record["rater"] == "ada" and record["answer"] in ("left", "right")
            assert record["picked_real"] == (record["answer"] == record["real_side"])
            assert record["time_ms"] >= 1000 * (clip["frames"] - 1) / clip["fps"] - 50  # answered after it played
            # the side the record calls real is the side whose image is the real clip
            _, shown = get(server["url"].rstrip("/") + clip[record["real_side"]])
            assert shown == (study_dir / "clips" / f"{clip['clip']}.real.png").read_bytes()
        page.reload()  # an interrupted rater comes back: the study resumes after the answered clips
        page.wait_for_function("window.study.clip !== null", timeout=60000)
        assert page.url.endswith("?rater=ada") and "clip 3 of 4" in page.inner_text("#progress")
        rest = answer_clips(page, 2)
        page.wait_for_function("window.study.done === true", timeout=60000)
        assert "all 4 answers are recorded" in page.inner_text("#done")
        assert len({c["clip"] for c in first + rest}) == 4  # every clip once
        assert {c["seconds"] for c in first + rest} == {1.6, 3.2}
        load_times = page.evaluate("window.study.loadTimes")
        assert len(load_times) == 2 and max(load_times) < 5000  # each clip ready within seconds
        assert page.evaluate("window.study.errors") == []

        page.click("#next-rater")  # a second person at the same machine
        page.fill("#rater", "bob")
        page.press("#rater", "Enter")
        answer_clips(page, 1)
    finally:
        page.close()
    records, _ = read_answers(answers)
    assert [r["rater"] for r in records] == ["ada"] * 4 + ["bob"]


def test_malformed_and_foreign_requests_are_refused_and_no_answer_is_lost(server, study_dir):
    url = server["url"].rstrip("/")
    origin = {"Origin": url}
    answers = study_dir / "answers.jsonl"
    before = answers.read_bytes() if answers.exists() else b""
    ok = {"rater": "cy", "clip": "c000", "answer": "left", "time_ms": 2000}
    refused = {
        "not json": post(url + "/api/answer", b"{nope", **origin),
        "a list": post(url + "/api/answer", b"[1, 2]", **origin),
        "missing": post(url + "/api/answer", json.dumps({"rater": "cy"}).encode(), **origin),
        "clip": post(url + "/api/answer", json.dumps({**ok, "clip": "c999"}).encode(), **origin),
        "side": post(url + "/api/answer", json.dumps({**ok, "answer": "middle"}).encode(), **origin),
        "time": post(url + "/api/answer", json.dumps({**ok, "time_ms": -5}).encode(), **origin),
        "rater": post(url + "/api/answer", json.dumps({**ok, "rater": "<script>"}).encode(), **origin),
        "extra": post(url + "/api/answer", json.dumps({**ok, "picked_real": True}).encode(), **origin),
        "huge": post(url + "/api/answer", b'{"rater": "' + b"x" * 10_000 + b'"}', **origin),
        "no origin": post(url + "/api/answer", json.dumps(ok).encode()),
        "other site": post(url + "/api/answer", json.dumps(ok).encode(), Origin="http://evil.example"),
        "rebinding": post(
            url + "/api/answer",
            json.dumps(ok).encode(),
            Host="evil.example:" + url.rsplit(":", 1)[1],
            Origin="http://evil.example:" + url.rsplit(":", 1)[1],
        ),
    }
    assert (answers.read_bytes() if answers.exists() else b"") == before  # nothing written
    statuses = {name: status for name, (status, _) in refused.items()}
    assert statuses == {
        **dict.fromkeys(["not json", "a list", "missing", "clip", "side", "time", "rater", "extra"], 400),
        "huge": 413,
        "no origin": 403,
        "other site": 403,
        "rebinding": 403,
    }
    messages = {name: reply["error"] for name, (_, reply) in refused.items()}
    assert "an answer is a JSON object" in messages["not json"] and "lacks clip, answer, time_ms" in messages["missing"]
    assert "unknown clip 'c999'" in messages["clip"] and '"left" or "right"' in messages["side"]
    assert (
        "time_ms is the milliseconds" in messages["time"]
        and "unknown answer fields ['picked_real']" in messages["extra"]
    )
    assert (
        "only from the study page itself" in messages["other site"]
        and "is not this study server" in messages["rebinding"]
    )
    status, body = get(url + "/api/next?rater=cy", Host="evil.example:" + url.rsplit(":", 1)[1])
    assert status == 403 and b"pass --allow_host NAME" in body  # reading the clips through another name, too

    assert post(url + "/api/answer", json.dumps(ok).encode(), **origin)[0] == 200
    status, reply = post(url + "/api/answer", json.dumps({**ok, "answer": "right"}).encode(), **origin)
    assert status == 409 and "already answered clip c000: kept the first answer" in reply["error"]
    assert answers.read_bytes().startswith(before)  # appended, nothing rewritten
    records, _ = read_answers(answers)
    assert [(r["rater"], r["answer"]) for r in records if r["rater"] == "cy"] == [("cy", "left")]
    assert server["process"].poll() is None


def test_an_interrupted_study_resumes_keeping_every_answer_and_the_report_gives_the_papers_table(
    server, study_dir, tmp_path
):
    answers = study_dir / "answers.jsonl"
    # A second server on the same answers is refused while the first runs.
    second = run_script("run_human_study.py", "--study_dir", study_dir, "--port", 0, check=False, timeout=120)
    assert second.returncode == 1 and "another study server is recording answers" in second.stderr
    stop_server(server["process"])  # Ctrl-C: the report is printed
    assert "| 1.6 s | 14 |" in server["log"].read_text()
    kept = answers.read_bytes()
    with open(answers, "ab") as file:  # a crash in the middle of a write leaves half a line
        file.write(b'{"rater": "dee", "clip": "c0')
    process, url = start_server(study_dir, tmp_path / "again.log")
    try:
        status, reply = post(
            url + "api/answer",
            json.dumps({"rater": "dee", "clip": "c001", "answer": "right", "time_ms": 900}).encode(),
            Origin=url.rstrip("/"),
        )
        assert status == 200 and reply == {"ok": True, "answered": 1, "total": 4}
        status, body = get(url + "api/next?rater=dee")
        assert status == 200 and json.loads(body)["answered"] == 1 and json.loads(body)["clip"] != "c001"
    finally:
        stop_server(process)
    text = answers.read_bytes()
    assert text.startswith(kept) and text.endswith(b"\n")  # every earlier byte kept; the torn line left as it was
    records, problems = read_answers(answers)
    assert problems == [f"answers.jsonl line {len(kept.splitlines()) + 1} is not an answer: skipped"]
    assert records[-1]["rater"] == "dee" and len(records) == len(kept.splitlines()) + 1
    assert "is not an answer" in (tmp_path / "again.log").read_text()

    result = run_human_study.main(run_human_study.parse_args(["--study_dir", str(study_dir), "--report"]))
    rows = {row["seconds"]: row for row in result["rows"]}
    for seconds, paper in ((1.6, 0.58), (3.2, 0.60)):
        counted = [r for r in records if r["seconds"] == seconds]
        picked = sum(r["picked_real"] for r in counted)
        row = rows[seconds]
        assert row["answers"] == len(counted) and row["picked_real"] == picked and row["paper_rate"] == paper
        assert row["interval_95"] == list(wilson_interval(picked, len(counted)))
    report = (study_dir / "report.md").read_text()
    assert "| clip length | frames | answers | raters |" in report and "| 58% |" in report and "| 60% |" in report
    assert "is not an answer" in report  # the skipped line is reported, not silently dropped


def test_the_interval_and_the_host_rules():
    low, high = wilson_interval(58, 100)  # the paper's rate over 100 answers
    assert (round(low, 3), round(high, 3)) == (0.482, 0.672)
    assert wilson_interval(0, 0) == (0.0, 1.0) and wilson_interval(10, 10)[1] == 1.0
    local, lan = HostCheck("127.0.0.1"), HostCheck("0.0.0.0")
    assert request_refusal("GET", "127.0.0.1:8001", None, local) is None
    assert request_refusal("GET", "[::1]:8001", None, local) is None
    assert request_refusal("GET", "localhost:8001", None, local) is None
    assert request_refusal("GET", "192.168.1.20:8001", None, lan) is None  # a rater on the LAN, by address
    assert request_refusal("GET", "192.168.1.20:8001", None, local) is not None  # not an address it listens on
    assert request_refusal("GET", "study.lab:8001", None, lan) is not None  # a DNS name pointed at this machine
    assert request_refusal("GET", "study.lab:8001", None, HostCheck("0.0.0.0", ["study.lab"])) is None
    # the option has the play server's name, and the study's earlier spelling still works
    for option in ("--allow_host", "--allowed_host"):
        args = run_human_study.parse_args(["--study_dir", "s", "--report", option, "study.lab", option, "b.lab"])
        assert args.allow_host == ["study.lab", "b.lab"]
    assert request_refusal("POST", "127.0.0.1:8001", "http://127.0.0.1:8001", local) is None
    assert request_refusal("POST", "127.0.0.1:8001", "http://localhost:8001", local) is not None
    assert request_refusal("POST", "127.0.0.1:8001", None, local) is not None  # a POST must name its page
    with pytest.raises(StudyError, match="holds no study"):
        load_study("/nonexistent/study")
