// The Gemma Agent Loop page: chat over the WebSocket, rate answers, watch model versions and training jobs.
// Plain DOM code, no framework and nothing fetched from elsewhere. Text from the server is only ever set as
// textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "agentloop.access_token";
const REFRESH_KEY = "agentloop.refresh_token";
const MANAGER_ROLES = ["admin", "trainer"];  // promote and rollback need the trainer role
const POLL_MS = 2000;
// Material Design's thumb icon (Apache-2.0), drawn inline: no icon font or emoji font needed.
const THUMB = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  authEnabled: false,
  user: null,
  conversationId: null,
  socket: null,
  turn: null,
  sending: false,
  view: "chat",
  pollTimer: null,
};

// --- small helpers -------------------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumb(down) {
  const icon = svg("svg", { viewBox: "0 0 24 24", width: "16", height: "16", "aria-hidden": "true" });
  icon.append(svg("path", { d: THUMB, transform: down ? "rotate(180 12 12)" : "" }));
  return icon;
}

function toast(message, kind = "info") {
  const box = $("#toast");
  box.textContent = message;
  box.className = `toast ${kind}`;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 8000 : 3500);
}

const percent = (value) => `${(value * 100).toFixed(1)} %`;
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

function storeTokens(data) {
  state.token = data.access_token;
  sessionStorage.setItem(TOKEN_KEY, data.access_token);
  if (data.refresh_token) sessionStorage.setItem(REFRESH_KEY, data.refresh_token);
}

// Spend the refresh token for a new pair, once for everyone waiting: the server revokes the whole login when
// a spent refresh token comes back, so two requests failing together must share one rotation.
let refreshing = null;
function refreshTokens() {
  const refreshToken = sessionStorage.getItem(REFRESH_KEY);
  if (!refreshToken) return Promise.resolve(false);
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const response = await fetch("/api/v1/auth/refresh", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ refresh_token: refreshToken }),
        });
        if (!response.ok) return false;
        storeTokens(await response.json());
        return true;
      } catch {
        return false;
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

// True when the access token ends within a minute (a WebSocket cannot be retried after a 401 like fetch).
function tokenExpiresSoon() {
  if (!state.token) return false;
  try {
    const part = state.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).exp * 1000 - Date.now() < 60000;
  } catch {
    return true;
  }
}

async function api(path, { method = "GET", body } = {}, retried = false) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (response.status === 401 && state.authEnabled) {
    if (!retried && await refreshTokens()) return api(path, { method, body }, true);
    signedOut("Your session has ended; sign in again.");
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" ? (data.detail ?? data.error?.message) : data;
    const message = typeof detail === "string" ? detail : JSON.stringify(detail ?? response.statusText);
    throw new ApiError(response.status, `${response.status}: ${message}`);
  }
  return data;
}

// --- sign-in -------------------------------------------------------------------------------------------

// /api/v1/auth/me answers 404 where the server has no sign-in, 401 when a token is needed.
async function checkSignIn(retried = false) {
  const response = await fetch("/api/v1/auth/me", { headers: authHeaders() });
  if (response.status === 404) {
    state.authEnabled = false;
    return true;
  }
  state.authEnabled = true;
  if (response.ok) {
    state.user = await response.json();
    return true;
  }
  // An access token that ran out (or a reload after a long pause): the refresh token may still be good.
  if (response.status === 401 && !retried && await refreshTokens()) return checkSignIn(true);
  return false;
}

function showSignIn(message = "") {
  $("#app").hidden = true;
  $(".top nav").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  $("#signin-username").focus();
}

function signedOut(message) {
  state.token = null;
  state.user = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(REFRESH_KEY);
  closeSocket();
  stopPolling();
  showSignIn(message);
  renderUser();
}

async function signIn(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch("/api/v1/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    $("#signin-error").textContent = typeof data.detail === "string" ? data.detail : "Wrong user name or password.";
    return;
  }
  storeTokens(data);
  $("#signin-password").value = "";
  await start();
}

function renderUser() {
  $("#user").textContent = state.user ? `${state.user.username} (${state.user.role})` : "";
  $("#sign-out").hidden = !state.user;
}

function canManageModels() {
  return !state.authEnabled || (state.user && MANAGER_ROLES.includes(state.user.role));
}

// --- views ---------------------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  stopPolling();
  if (view === "chat") loadConversations();
  if (view === "models") loadModels();
  if (view === "training") {
    loadJobs();
    state.pollTimer = setInterval(loadJobs, POLL_MS);
  }
}

function stopPolling() {
  if (state.pollTimer) clearInterval(state.pollTimer);
  state.pollTimer = null;
}

async function refreshServing() {
  try {
    const versions = await api("/api/v1/models");
    const serving = versions.find((v) => v.serving);
    $("#serving-badge").textContent = serving ? `serving: ${serving.id}` : "";
  } catch (error) {
    $("#serving-badge").textContent = "";
  }
}

// --- chat ----------------------------------------------------------------------------------------------

async function loadConversations() {
  const list = $("#conversations");
  try {
    const page = await api("/api/v1/conversations?limit=50");
    list.replaceChildren(
      ...page.items.map((c) =>
        el("li", {},
          el("button", {
            type: "button",
            class: c.id === state.conversationId ? "conversation current" : "conversation",
            "data-id": c.id,
            title: when(c.updated_at),
            onclick: () => openConversation(c.id).catch((error) => toast(error.message, "error")),
          }, c.title || "Untitled"),
        ),
      ),
    );
    if (!page.items.length) list.replaceChildren(el("li", { class: "hint" }, "No conversations yet."));
  } catch (error) {
    toast(`Could not list conversations: ${error.message}`, "error");
  }
}

function newConversation() {
  closeSocket();
  state.conversationId = null;
  $("#messages").replaceChildren(el("p", { class: "empty" }, "New conversation: ask your first question."));
  loadConversations();
  $("#prompt").focus();
}

async function openConversation(id) {
  closeSocket();
  state.conversationId = id;
  const [conversation, feedback] = await Promise.all([
    api(`/api/v1/conversations/${id}`),
    api(`/api/v1/conversations/${id}/feedback`).catch(() => []),
  ]);
  const given = new Map(feedback.map((f) => [f.message_id, f]));
  const box = $("#messages");
  box.replaceChildren();
  let answer = null;
  for (const message of conversation.messages) {
    if (message.role === "user") {
      box.append(userBubble(message.content));
      answer = null;
      continue;
    }
    answer = answer || assistantBubble();
    if (message.role === "assistant" && message.tool_call) {
      addToolCall(answer, message.tool_call);
    } else if (message.role === "tool") {
      addToolResult(answer, { id: message.tool_call?.id, ...message.tool_result });
    } else if (message.role === "assistant") {
      finishAnswer(answer, {
        answer: message.content,
        message_id: message.id,
        model_version: message.model_version,
        latency_ms: message.latency_ms,
        usage: { prompt_tokens: message.prompt_tokens, completion_tokens: message.completion_tokens },
      }, given.get(message.id));
      answer = null;
    }
  }
  box.scrollTop = box.scrollHeight;
  loadConversations();
}

function userBubble(text) {
  return el("div", { class: "message user" }, el("div", { class: "bubble" }, text));
}

function assistantBubble() {
  const steps = el("div", { class: "steps" });
  const text = el("div", { class: "answer-text" });
  const meta = el("div", { class: "meta" });
  const node = el("div", { class: "message assistant" }, el("div", { class: "bubble" }, steps, text, meta));
  $("#messages").append(node);
  return { node, steps, text, meta, calls: new Map() };
}

function addToolCall(answer, call) {
  const result = el("pre", { class: "tool-result pending" }, "running…");
  const step = el("div", { class: "tool-step", "data-tool": call.name },
    el("div", { class: "tool-head" }, el("span", { class: "tool-icon" }, "tool"),
      el("strong", {}, call.name), el("code", {}, JSON.stringify(call.arguments))),
    result,
  );
  answer.steps.append(step);
  answer.calls.set(call.id, result);
}

function addToolResult(answer, result) {
  const box = answer.calls.get(result.id) || [...answer.calls.values()].pop();
  if (!box) return;
  box.textContent = result.output;
  box.className = `tool-result ${result.ok ? "ok" : "failed"}`;
}

function finishAnswer(answer, final, stored) {
  answer.text.textContent = final.answer;
  answer.node.dataset.messageId = final.message_id;
  const parts = [];
  if (final.model_version) parts.push(`model ${final.model_version}`);
  if (typeof final.latency_ms === "number") parts.push(`${(final.latency_ms / 1000).toFixed(1)} s`);
  if (final.usage) parts.push(`${final.usage.completion_tokens} tokens`);
  answer.meta.textContent = parts.join(" · ");
  answer.node.querySelector(".bubble").append(feedbackBar(final.message_id, stored));
}

function feedbackBar(messageId, stored) {
  const status = el("span", { class: "feedback-status" });
  const up = el("button", { type: "button", class: "rate up", "aria-label": "Good answer", title: "Good answer" }, thumb(false));
  const down = el("button", { type: "button", class: "rate down", "aria-label": "Bad answer", title: "Bad answer" }, thumb(true));
  const correction = el("textarea", { rows: "2", placeholder: "What should the answer have been?", class: "correction-text" });
  const form = el("form", { class: "correction", hidden: true },
    correction, el("button", { type: "submit" }, "Save correction"));
  const toggle = el("button", { type: "button", class: "link correct" }, "Correct it");

  function mark(feedback) {
    up.setAttribute("aria-pressed", String(feedback.rating === "up"));
    down.setAttribute("aria-pressed", String(feedback.rating === "down"));
    const said = [];
    if (feedback.rating) said.push(feedback.rating === "up" ? "Rated good" : "Rated bad");
    if (feedback.correction) said.push("corrected");
    status.textContent = said.length ? `${said.join(", ")} · saved` : "";
  }

  async function send(body) {
    try {
      const saved = await api(`/api/v1/messages/${messageId}/feedback`, { method: "POST", body });
      mark(saved);
      return true;
    } catch (error) {
      toast(`Feedback not saved: ${error.message}`, "error");
      return false;
    }
  }

  up.addEventListener("click", () => send({ rating: "up" }));
  down.addEventListener("click", () => send({ rating: "down" }));
  toggle.addEventListener("click", () => { form.hidden = !form.hidden; if (!form.hidden) correction.focus(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = correction.value.trim();
    if (!text) return;
    if (await send({ correction: text })) form.hidden = true;
  });
  if (stored) mark(stored);
  return el("div", { class: "feedback" }, up, down, toggle, status, form);
}

function closeSocket() {
  if (state.socket) {
    state.socket.onclose = null;
    state.socket.close();
  }
  state.socket = null;
  setBusy(false);
}

async function socketFor(conversationId) {
  if (state.socket && state.socket.readyState <= WebSocket.OPEN) return state.socket;
  if (state.authEnabled && tokenExpiresSoon()) await refreshTokens();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = state.token ? `?access_token=${encodeURIComponent(state.token)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/conversations/${conversationId}/ws${query}`);
  state.socket = socket;
  socket.onmessage = (event) => onEvent(JSON.parse(event.data));
  socket.onclose = (event) => {
    state.socket = null;
    if (state.turn) {
      failTurn(event.code === 4401 || event.code === 1008 ? "Not signed in." : "The connection closed.");
    }
  };
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("could not connect the WebSocket"));
  });
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#send").textContent = busy ? "Thinking…" : "Send";
}

async function sendMessage(event) {
  event.preventDefault();
  const prompt = $("#prompt");
  const text = prompt.value.trim();
  if (!text || state.turn || state.sending) return;
  state.sending = true; // a second Enter while the socket opens must not start a second conversation
  try {
    if (!state.conversationId) {
      const created = await api("/api/v1/conversations", { method: "POST", body: { title: text.slice(0, 80) } });
      state.conversationId = created.id;
      $("#messages").replaceChildren();
      loadConversations();
    }
    const socket = await socketFor(state.conversationId);
    $("#chat-empty")?.remove();
    $("#messages").append(userBubble(text));
    state.turn = assistantBubble();
    state.turn.text.classList.add("streaming");
    prompt.value = "";
    setBusy(true);
    socket.send(JSON.stringify({ content: text }));
  } catch (error) {
    toast(`Not sent: ${error.message}`, "error");
    state.turn = null;
    setBusy(false);
  } finally {
    state.sending = false;
  }
}

function onEvent(event) {
  const turn = state.turn;
  if (!turn) return;
  if (event.type === "token") {
    turn.text.textContent += event.text;
  } else if (event.type === "tool_call") {
    turn.text.textContent = "";
    addToolCall(turn, event);
  } else if (event.type === "tool_result") {
    addToolResult(turn, event);
  } else if (event.type === "final") {
    turn.text.classList.remove("streaming");
    finishAnswer(turn, event);
    state.turn = null;
    setBusy(false);
    loadConversations();
  } else if (event.type === "error") {
    failTurn(event.detail);
  }
  const box = $("#messages");
  box.scrollTop = box.scrollHeight;
}

function failTurn(message) {
  if (state.turn) {
    state.turn.text.classList.remove("streaming");
    state.turn.node.querySelector(".bubble").append(el("p", { class: "error" }, message));
  }
  state.turn = null;
  setBusy(false);
}

// --- models --------------------------------------------------------------------------------------------

function accuracies(versions) {
  // A version's own evaluation, else the one the gate ran on it while it served (the base model's).
  const found = new Map();
  for (const v of versions) {
    const serving = v.metrics?.serving_evaluation;
    if (serving && typeof serving.accuracy === "number" && !found.has(serving.version)) {
      found.set(serving.version, serving.accuracy);
    }
  }
  for (const v of versions) {
    const own = v.metrics?.evaluation;
    if (own && typeof own.accuracy === "number") found.set(v.id, own.accuracy);
  }
  return found;
}

async function loadModels() {
  let versions;
  try {
    versions = await api("/api/v1/models");
  } catch (error) {
    toast(`Could not load the models: ${error.message}`, "error");
    return;
  }
  const scores = accuracies(versions);
  drawChart($("#accuracy-chart"), [...versions].reverse(), scores);
  const manage = canManageModels();
  $("#rollback").disabled = !manage;
  $("#rollback").title = manage ? "Serve the previous version again" : "Needs the trainer role";
  $("#versions tbody").replaceChildren(...versions.map((v) => versionRow(v, scores, manage)));
  const serving = versions.find((v) => v.serving);
  $("#serving-badge").textContent = serving ? `serving: ${serving.id}` : "";
}

function versionRow(v, scores, manage) {
  const gate = v.metrics?.gate?.reasons?.join("; ") || "";
  const promote = v.serving
    ? el("span", { class: "badge serving" }, "serving")
    : el("button", {
      type: "button", class: "promote", disabled: !manage, title: manage ? "Serve this version" : "Needs the trainer role",
      onclick: () => switchModel(`/api/v1/models/${v.id}/promote`, `Promote ${v.id}?`),
    }, "Promote");
  return el("tr", { "data-version": v.id },
    el("td", {}, el("strong", {}, v.id)),
    el("td", {}, el("span", { class: `badge ${v.status}` }, v.status)),
    el("td", {}, scores.has(v.id) ? percent(scores.get(v.id)) : "–"),
    el("td", {}, v.parent_id || ""),
    el("td", {}, when(v.created_at)),
    el("td", { class: "gate" }, gate),
    el("td", {}, promote),
  );
}

async function switchModel(path, question) {
  if (!confirm(question)) return;
  try {
    const result = await api(path, { method: "POST" });
    toast(`Now serving ${result.serving} (was ${result.previous ?? "none"})`);
  } catch (error) {
    toast(error.status === 403 ? "Your role may not change the serving model." : error.message, "error");
  }
  loadModels();
}

function drawChart(chart, versions, scores) {
  const width = 640;
  const height = 240;
  const pad = { left: 48, right: 12, top: 16, bottom: 40 };
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.replaceChildren();
  const plotted = versions.filter((v) => scores.has(v.id));
  const innerW = width - pad.left - pad.right;
  const innerH = height - pad.top - pad.bottom;
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const y = pad.top + innerH * (1 - tick);
    chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: pad.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, `${tick * 100}%`));
  }
  if (!plotted.length) {
    chart.append(svg("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" },
      "No evaluation yet: a training job evaluates the serving version and its candidate."));
    return;
  }
  const slot = innerW / plotted.length;
  const bar = Math.min(64, slot * 0.6);
  const points = [];
  plotted.forEach((v, i) => {
    const value = scores.get(v.id);
    const x = pad.left + slot * i + (slot - bar) / 2;
    const h = innerH * value;
    const y = pad.top + innerH - h;
    const rect = svg("rect", { x, y, width: bar, height: Math.max(h, 1), class: `bar ${v.status}`, "data-version": v.id });
    rect.append(svg("title", {}, `${v.id}: ${percent(value)} (${v.status})`));
    chart.append(rect);
    chart.append(svg("text", { x: x + bar / 2, y: y - 4, class: "value", "text-anchor": "middle" }, percent(value)));
    chart.append(svg("text", { x: x + bar / 2, y: height - pad.bottom + 16, class: "axis", "text-anchor": "middle" }, v.id));
    chart.append(svg("text", { x: x + bar / 2, y: height - pad.bottom + 30, class: "axis small", "text-anchor": "middle" }, v.status));
    points.push(`${x + bar / 2},${y}`);
  });
  if (points.length > 1) chart.append(svg("polyline", { points: points.join(" "), class: "trend" }));
}

// --- training ------------------------------------------------------------------------------------------

async function startTraining(event) {
  event.preventDefault();
  const body = {};
  for (const [key, value] of new FormData(event.target)) {
    if (value !== "") body[key] = Number(value);
  }
  try {
    const job = await api("/api/v1/training/jobs", { method: "POST", body });
    toast(`Training job ${job.id} queued`);
    loadJobs();
  } catch (error) {
    toast(error.message, "error");
  }
}

async function loadJobs() {
  let jobs;
  try {
    jobs = await api("/api/v1/training/jobs?limit=20");
  } catch (error) {
    toast(`Could not load training jobs: ${error.message}`, "error");
    stopPolling();
    return;
  }
  renderActiveJob(jobs.find((j) => j.status === "queued" || j.status === "running"));
  $("#jobs tbody").replaceChildren(...jobs.map(jobRow));
}

function renderActiveJob(job) {
  const box = $("#active-job");
  box.hidden = !job;
  if (!job) return;
  const p = job.progress || {};
  const total = p.max_steps || job.params.max_steps;
  const step = p.step || 0;
  const bar = el("progress", { max: total || 1, value: total ? step : 0 });
  const facts = [
    ["Status", job.status],
    ["Stage", p.stage || "waiting for the worker"],
    ["Step", total ? `${step} / ${total}` : String(step)],
    ["Loss", typeof p.loss === "number" ? p.loss.toFixed(3) : "–"],
    ["Tokens/s", typeof p.tokens_per_s === "number" ? p.tokens_per_s.toFixed(0) : "–"],
    ["ETA", p.stage === "train" ? duration(p.eta_s) : "–"],
  ];
  box.replaceChildren(
    el("div", { class: "row" }, el("h3", {}, `Job ${job.id}`),
      el("button", { type: "button", onclick: () => cancelJob(job.id) }, "Cancel")),
    bar,
    el("dl", { class: "facts" }, ...facts.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k.toLowerCase() }, v)])),
  );
}

async function cancelJob(id) {
  try {
    await api(`/api/v1/training/jobs/${id}/cancel`, { method: "POST" });
    toast(`Job ${id} cancelled`);
  } catch (error) {
    toast(error.message, "error");
  }
  loadJobs();
}

function jobRow(job) {
  const p = job.progress || {};
  let outcome = job.error || "";
  if (job.status === "completed") outcome = p.promoted ? "promoted" : `rejected${p.gate ? `: ${p.gate.join("; ")}` : ""}`;
  return el("tr", { "data-job": job.id, class: job.status },
    el("td", {}, job.id),
    el("td", {}, when(job.created_at)),
    el("td", {}, el("span", { class: `badge ${job.status}` }, job.status)),
    el("td", {}, job.reason),
    el("td", {}, p.step !== undefined ? `${p.step}${p.max_steps ? ` / ${p.max_steps}` : ""}` : "–"),
    el("td", {}, typeof p.loss === "number" ? p.loss.toFixed(3) : "–"),
    el("td", {}, job.version_id || ""),
    el("td", { class: "outcome" }, outcome),
  );
}

// --- start ---------------------------------------------------------------------------------------------

async function start() {
  let signedIn;
  try {
    signedIn = await checkSignIn();
  } catch (error) {
    toast(`The server does not answer: ${error.message}`, "error");
    return;
  }
  renderUser();
  if (!signedIn) {
    showSignIn(state.token ? "Your session has ended; sign in again." : "");
    return;
  }
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $(".top nav").hidden = false;
  refreshServing();
  show(state.view);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("#signin-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signedOut(""));
  $("#composer").addEventListener("submit", sendMessage);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#new-conversation").addEventListener("click", newConversation);
  $("#rollback").addEventListener("click", () => switchModel("/api/v1/models/rollback", "Roll back to the previous version?"));
  $("#train-form").addEventListener("submit", startTraining);
  start();
});
