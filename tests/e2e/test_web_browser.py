"""The web page in a real browser: Debian's Chromium driven by Playwright against `agentloop serve` (the real
model, SQLite, the training worker process), then /metrics scraped from outside.

One server and one browser serve the whole module; the tests run in order, as a newcomer would use the page
(ask, rate, look at the models, start a training job). Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from test_server_process import (  # tests/e2e is on sys.path: reuse the real-server helpers
    TURN_TIMEOUT_S,
    Server,
    admin_key_for,
    agentloop_command,
    cache_dir,  # noqa: F401  (a fixture)
    free_port,
    process_env,
    run_cli,
)

from agentloop.adapters.storage import create_engine, create_sessionmaker
from agentloop.adapters.storage.learning_repository import SqlLearningStore
from agentloop.domain.learning import ModelVersion, VersionStatus
from conftest import model_unavailable

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TURN_MS = TURN_TIMEOUT_S * 1000
JOB_MS = 120_000
# Made with `agentloop users create` before the server starts; the page signs in with them.
ADMIN = ("ada", "correct horse battery staple")
VIEWER = ("bob", "another long passphrase")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def start_json_logging_server(data_dir: Path, cache: Path) -> Server:
    """`agentloop serve` with JSON logs (to check correlation ids in them) and answers capped short."""
    port = free_port()
    log = data_dir.parent / f"web-server-{port}.log"
    env = process_env(data_dir, cache) | {"AGENTLOOP_LOG_JSON": "true", "AGENTLOOP_MAX_TOKENS": "48"}
    command = [*agentloop_command(), "--data-dir", str(data_dir), "serve", "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, cwd=data_dir.parent, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, port, data_dir, log)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def create_user(data_dir: Path, cache: Path, credentials: tuple[str, str], role: str) -> None:
    name, password = credentials
    done = run_cli(data_dir, cache, "users", "create", name, "--role", role, stdin=password + "\n")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def served(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    data_dir = tmp_path_factory.mktemp("web") / "data"
    run_cli(data_dir, cache_dir, "db", "upgrade")
    create_user(data_dir, cache_dir, ADMIN, "admin")
    create_user(data_dir, cache_dir, VIEWER, "user")
    server = start_json_logging_server(data_dir, cache_dir)
    server.key = admin_key_for(data_dir, cache_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        model_unavailable("no /usr/bin/chromium (scripts/test.sh installs the Debian package)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser: Any, served: Server) -> Iterator[Any]:
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def seed_evaluated_candidate(data_dir: Path) -> None:
    """A rejected candidate with the reports a training job's gate stores (a real job evaluates for minutes on
    this hardware): the chart then has the base model's and the candidate's accuracy to show."""

    async def add() -> None:
        database = create_engine(f"sqlite+aiosqlite:///{data_dir / 'agentloop.db'}")
        try:
            store = SqlLearningStore(create_sessionmaker(database))
            report = {"accuracy": 0.62, "suites": {}}
            metrics = {
                "evaluation": report,
                "serving_evaluation": {"version": "base", "accuracy": 0.41, "suites": {}},
                "gate": {"promote": False, "reasons": ["seeded for the browser test"]},
            }
            candidate = ModelVersion(
                id="v1",
                base_sha256="seeded",
                parent_id="base",
                status=VersionStatus.REJECTED,
                metrics=metrics,
            )
            await store.add_version(candidate)
        finally:
            await database.dispose()

    # Playwright's sync API runs an event loop in this thread: the seeding gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, add()).result()


def sign_in(page: Any, credentials: tuple[str, str]) -> None:
    page.goto("/")
    expect(page.locator("#signin")).to_be_visible()  # auth is on: /api/v1/auth/me answers 401
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#signin-username", credentials[0])
    page.fill("#signin-password", credentials[1])
    page.click("#signin-form button[type='submit']")
    expect(page.locator("#app")).to_be_visible()


def api(server: Server, path: str) -> Any:
    response = httpx.get(f"{server.url}{path}", headers=server.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# --- the page -----------------------------------------------------------------------------------------------


def test_chat_shows_the_tool_step_and_the_answer_and_stores_a_rating(page: Any, served: Server) -> None:
    frames: list[dict[str, Any]] = []
    page.on(
        "websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload)))
    )
    page.goto("/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#signin-username", ADMIN[0])
    page.fill("#signin-password", "wrong password")
    page.click("#signin-form button[type='submit']")
    expect(page.locator("#signin-error")).not_to_be_empty()
    expect(page.locator("#app")).to_be_hidden()
    shot(page, "0-signin")
    sign_in(page, ADMIN)
    expect(page.locator("#user")).to_have_text("ada (admin)")
    shot(page, "1-start")

    page.fill("#prompt", "What is 12*7?")
    page.click("#send")
    step = page.locator(".tool-step[data-tool='calculator']")
    expect(step.locator(".tool-result.ok")).to_have_text("84", timeout=TURN_MS)
    answer = page.locator(".message.assistant[data-message-id]").last
    expect(answer).to_be_visible(timeout=TURN_MS)
    expect(answer.locator(".answer-text")).to_contain_text("84")
    expect(page.locator("#conversations .conversation.current")).to_have_text("What is 12*7?")
    shot(page, "2-answer")
    # What came over the WebSocket: the tool step, the answer streamed as tokens, then the final event.
    kinds = [frame["type"] for frame in frames]
    assert (
        kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("token") < kinds.index("final")
    ), kinds

    answer.locator(".rate.up").click()
    expect(answer.locator(".feedback-status")).to_have_text("Rated good · saved")
    message_id = answer.get_attribute("data-message-id")
    conversation_id = page.locator("#conversations .conversation.current").get_attribute("data-id")
    stored = api(served, f"/api/v1/conversations/{conversation_id}/feedback")
    assert [(f["message_id"], f["rating"]) for f in stored] == [(message_id, "up")]

    # Reloaded from the server, the conversation shows the tool step and the stored rating.
    page.reload()
    page.locator(f".conversation[data-id='{conversation_id}']").click()
    expect(page.locator(".tool-step[data-tool='calculator'] .tool-result.ok")).to_have_text("84")
    expect(page.locator(f"[data-message-id='{message_id}'] .rate.up")).to_have_attribute(
        "aria-pressed", "true"
    )
    shot(page, "3-rated")


def test_models_page_charts_accuracy_per_version(page: Any, served: Server) -> None:
    seed_evaluated_candidate(served.data_dir)
    page.click(".tab[data-view='models']")
    chart = page.locator("#accuracy-chart")
    expect(chart.locator("rect.bar")).to_have_count(2)
    expect(chart.locator("rect.bar[data-version='base']")).to_be_visible()
    expect(chart.locator("rect.bar[data-version='v1']")).to_be_visible()
    expect(chart).to_contain_text("62.0 %")
    expect(chart).to_contain_text("41.0 %")
    expect(page.locator("#versions tr[data-version='base'] .badge.serving")).to_be_visible()
    expect(page.locator("#versions tr[data-version='v1'] button.promote")).to_be_enabled()
    expect(page.locator("#serving-badge")).to_have_text("serving: base")
    shot(page, "4-models")


def test_training_page_queues_a_job_and_shows_how_it_ended(page: Any, served: Server) -> None:
    page.click(".tab[data-view='training']")
    page.fill("input[name='max_steps']", "1")
    # One rated answer is not enough for this job: the worker fails it at the dataset stage, in seconds.
    page.fill("input[name='min_examples']", "1000")
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/training/jobs") and r.request.method == "POST"
    ) as sent:
        page.click("#start-training")
    response = sent.value
    assert response.status == 202, response.text()
    job_id, request_id = response.json()["id"], response.headers["x-request-id"]
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("failed", timeout=JOB_MS)
    expect(row.locator(".outcome")).to_contain_text("not enough usable examples")
    shot(page, "5-training")

    # The worker process logged the job under the id of the request that queued it.
    lines = [json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")]
    worker = [line for line in lines if line.get("job_id") == job_id]
    assert worker and all(line.get("request_id") == request_id for line in worker), worker


# --- /metrics after all that ------------------------------------------------------------------------------


def test_metrics_add_up_the_server_and_its_worker(served: Server) -> None:
    response = httpx.get(f"{served.url}/metrics", timeout=10)
    assert response.status_code == 200
    values = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def get(name: str, **labels: str) -> float:
        return values.get((name, frozenset(labels.items())), 0.0)

    assert get("tool_executions_total", tool_name="calculator", status="ok") >= 1
    page_loads = get("agent_request_duration_seconds_count", method="GET", endpoint="/", status="200")
    assert page_loads >= 2
    assert (
        get(
            "agent_request_duration_seconds_count",
            method="POST",
            endpoint="/api/v1/training/jobs",
            status="202",
        )
        == 1
    )
    assert get("agent_inference_duration_seconds_count") >= 2
    assert get("agent_time_to_first_token_seconds_count") >= 2
    assert get("agent_inference_tokens_per_second_count") >= 1
    assert 0 < get("agent_prompt_cache_hit_ratio") <= 1  # the answer step reuses the tool step's prefix
    assert get("agent_active_conversations") == 0
    assert get("agent_model_version_info", version="base") == 1
    assert get("agent_evaluation_accuracy", version="v1") == pytest.approx(0.62)
    assert get("agent_evaluation_accuracy", version="base") == pytest.approx(0.41)
    assert get("agent_training_jobs", status="failed") == 1
    assert get("agent_events_processed_total", event="FeedbackGiven") == 1
    # Recorded by the worker process, exported by the server's /metrics.
    assert get("agent_events_processed_total", event="TrainingStarted") == 1
    assert get("agent_events_processed_total", event="TrainingFailed") == 1


def test_a_plain_user_signs_in_and_may_not_switch_models(browser: Any, served: Server) -> None:
    """A `user` signs in with a real token (kept for the tab only), sees no one else's conversations, and the
    page offers no promote or rollback; signing out forgets the token."""
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        sign_in(page, VIEWER)
        expect(page.locator("#user")).to_have_text("bob (user)")
        token = page.evaluate("sessionStorage.getItem('agentloop.access_token')")
        me = httpx.get(f"{served.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert (me.json()["username"], me.json()["role"]) == ("bob", "user")
        expect(page.locator("#conversations .conversation")).to_have_count(0)  # ada's are not listed
        # An access token the server refuses (run out, or tampered with): the page spends its refresh token
        # for a new pair instead of asking for the password again.
        refresh = page.evaluate("sessionStorage.getItem('agentloop.refresh_token')")
        page.evaluate("sessionStorage.setItem('agentloop.access_token', 'run.out.token')")
        page.reload()
        expect(page.locator("#user")).to_have_text("bob (user)")
        expect(page.locator("#signin")).to_be_hidden()
        renewed = page.evaluate("sessionStorage.getItem('agentloop.access_token')")
        assert renewed not in (token, "run.out.token")
        assert page.evaluate("sessionStorage.getItem('agentloop.refresh_token')") not in (None, refresh)
        page.click("#sign-out")
        expect(page.locator("#signin")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('agentloop.access_token')") is None
    finally:
        context.close()


def test_training_page_shows_a_running_job_s_progress(page: Any) -> None:
    """A real job's training stage takes minutes here, so the browser answers the job list with a running job
    as the API reports one (the same fields the trainer writes), to check what the page makes of it."""
    running = {
        "id": "job-live",
        "status": "running",
        "reason": "manual",
        "params": {"max_steps": 10},
        "progress": {
            "stage": "train",
            "step": 3,
            "max_steps": 10,
            "loss": 1.2345,
            "tokens_per_s": 250.4,
            "eta_s": 75,
        },
        "error": None,
        "version_id": None,
        "created_at": "2026-11-25T18:00:00Z",
        "started_at": "2026-11-25T18:00:01Z",
        "finished_at": None,
    }
    page.route("**/api/v1/training/jobs?limit=20", lambda route: route.fulfill(status=200, json=[running]))
    try:
        page.click(".tab[data-view='chat']")
        page.click(".tab[data-view='training']")
        panel = page.locator("#active-job")
        expect(panel).to_be_visible()
        expect(panel.locator("dd[data-fact='step']")).to_have_text("3 / 10")
        expect(panel.locator("dd[data-fact='loss']")).to_have_text("1.234")
        expect(panel.locator("dd[data-fact='eta']")).to_have_text("1 min 15 s")
        expect(panel.locator("progress")).to_have_attribute("value", "3")
        expect(page.locator("#jobs tr[data-job='job-live'] .badge")).to_have_text("running")
        shot(page, "6-training-live")
    finally:
        page.unroute("**/api/v1/training/jobs?limit=20")
