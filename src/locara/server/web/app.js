// Locara's dashboard: plain DOM, no framework, no build step.
// Every text that comes from the server or a model goes through textContent (never
// innerHTML), so model output, file names and model names can never become markup.
// docs/web.md lists every request this file makes.
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "locara.token";        // sessionStorage only: gone when the tab closes
const CHAT_KEY = "locara.chat";          // localStorage: the conversation and its settings
const TABS = ["chat", "models", "usage", "device"];
const SVG = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------- small DOM helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fillTable(table, rows, empty) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: table.tHead.rows[0].cells.length, class: "empty" }, empty)));
    return;
  }
  for (const cells of rows) body.append(el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c ?? "-")))));
}

const fmt = {
  bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  num(n, digits = 1) { return n === null || n === undefined ? "-" : Number(n).toFixed(digits); },
  int(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString("en"); },
  // Cents hide the small sums a light user saves: two significant digits below a cent.
  money(v) { return v === 0 ? "0" : v >= 0.01 ? v.toFixed(2) : Number(v.toPrecision(2)).toString(); },
  secs(s) { return s === null || s === undefined ? "-" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`; },
  ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= n) return `${Math.floor(s / n)}${unit} ago`;
    return "just now";
  },
  countdown(iso) {
    if (!iso) return "kept loaded";
    const s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
    return s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
  },
};

// ---------------------------------------------------------------- talking to the server
class ApiError extends Error {
  constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
  get text() { return this.hint ? `${this.message} (${this.hint})` : this.message; }
}

// Both error shapes the server sends: Ollama's {"error": "...", "hint"} and OpenAI's
// {"error": {"message", "hint"}}.
function errorOf(status, body) {
  const e = body && body.error;
  if (typeof e === "string") return new ApiError(status, e, body.hint);
  if (e && typeof e === "object") return new ApiError(status, e.message || "error", e.hint);
  return new ApiError(status, `HTTP ${status}`);
}

async function request(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    serverLost();
    throw new ApiError(0, "cannot reach the server", "is `locara serve` still running? reload when it is back");
  }
  if (resp.status === 401) {
    showLogin(token ? "The server refused this token (wrong or revoked): sign in again." : "");
    throw errorOf(401, await resp.json().catch(() => null));
  }
  if (!resp.ok) throw errorOf(resp.status, await resp.json().catch(() => null));
  return resp;
}

const getJSON = async (path) => (await request(path)).json();

// Lines of a streamed body (NDJSON or SSE), as they arrive.
async function* lines(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield line;
    }
  }
  if (buffer.trim()) yield buffer.trim();
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// The server went away: say so, and watch /health until it is back.
let watching = null;
function serverLost() {
  banner("The server stopped responding (connection lost). Reload this page when `locara serve` is running again.");
  $("#server-status").textContent = "offline";
  if (watching) return;
  watching = setInterval(async () => {
    try {
      if ((await fetch("/health")).ok) {
        clearInterval(watching);
        watching = null;
        banner("The server is back. Reload the page to continue.");
        $("#server-status").textContent = "online";
      }
    } catch { /* still down */ }
  }, 2000);
}

// ---------------------------------------------------------------- sign-in
function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  for (const t of TABS) $(`#panel-${t}`).hidden = true;
  $("nav").hidden = true;
  $("#logout").hidden = true;
  $("#login-token").focus();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#login-token").value.trim());
  $("#login-token").value = "";
  try {
    await request("/api/version");
  } catch (err) {
    if (err.status !== 401) $("#login-error").textContent = err.text;
    return;
  }
  $("#login").hidden = true;
  start(true);
}

// ---------------------------------------------------------------- tabs
function selectTab(name, focus = false) {
  for (const t of TABS) {
    const tab = $(`#tab-${t}`);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#panel-${t}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  location.hash = name;
  ({ chat: loadChatModels, models: loadModels, usage: loadUsage, device: loadDevice })[name]();
}

function tabKeys(event) {
  const i = TABS.indexOf(event.target.id.replace("tab-", ""));
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  selectTab(TABS[(next + TABS.length) % TABS.length], true);
}

// ---------------------------------------------------------------- markdown, safely
// A small subset: fenced code blocks, headings, lists, paragraphs, `code`, **bold**,
// *italic* and [links](https://…). Nodes are built one by one; text stays text.
function inline(text, cite) {
  const out = [];
  const pattern = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)|\[(\d+)\]/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1] !== undefined) out.push(el("code", {}, m[1]));
    else if (m[2] !== undefined) out.push(el("strong", {}, m[2]));
    else if (m[3] !== undefined) out.push(el("em", {}, m[3]));
    else if (m[4] !== undefined) out.push(el("a", { href: m[5], rel: "noopener noreferrer", target: "_blank" }, m[4]));
    else out.push(cite && cite(Number(m[6])) ? el("a", { href: `#${cite(Number(m[6]))}`, class: "cite" }, m[0]) : m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

// ``cite(n)`` gives the id of citation n's quote, so a marker "[n]" links to it.
function markdown(text, cite) {
  const frag = document.createDocumentFragment();
  const parts = text.split(/^```/m);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {  // inside a fence: first line is the language
      const nl = part.indexOf("\n");
      const lang = nl >= 0 ? part.slice(0, nl).trim() : "";
      const code = nl >= 0 ? part.slice(nl + 1) : "";
      frag.append(el("pre", { class: "code", "data-lang": lang || null, tabindex: "0" }, el("code", {}, code.replace(/\n$/, ""))));
      return;
    }
    let list = null;
    for (const block of part.split(/\n{2,}/)) {
      for (const line of block.split("\n")) {
        const item = line.match(/^\s*(?:[-*]|(\d+)\.)\s+(.*)$/);
        const heading = line.match(/^(#{1,4})\s+(.*)$/);
        if (item) {
          const tag = item[1] ? "ol" : "ul";
          if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag); frag.append(list); }
          list.append(el("li", {}, ...inline(item[2], cite)));
          continue;
        }
        list = null;
        if (heading) frag.append(el(`h${heading[1].length + 2}`, {}, ...inline(heading[2], cite)));
        else if (line.trim()) frag.append(el("p", {}, ...inline(line, cite)));
      }
      list = null;
    }
  });
  return frag;
}

// ---------------------------------------------------------------- chat
const chat = {
  state: { model: "", system: "", temperature: 0.7, maxTokens: "", messages: [] },
  controller: null,   // the AbortController of the answer being streamed
  adapters: [],       // LoRA adapters from /api/locara/models, offered for their base
};

function saveChat() { localStorage.setItem(CHAT_KEY, JSON.stringify(chat.state)); }

function loadChat() {
  try { Object.assign(chat.state, JSON.parse(localStorage.getItem(CHAT_KEY) || "{}")); } catch { /* a damaged entry starts over */ }
  $("#chat-system").value = chat.state.system || "";
  $("#chat-temperature").value = chat.state.temperature ?? 0.7;
  $("#chat-max-tokens").value = chat.state.maxTokens || "";
  renderLog();
}

// An answer from a document collection: its citations, each a quoted span of a document
// (path, page, byte range, digest), which the markers in the text link to.
function citationList(m, i) {
  const list = el("ol", { class: "cites", "aria-label": "Citations" });
  for (const c of m.citations || []) {
    const where = [c.page ? `page ${c.page}` : null, `bytes ${c.start}–${c.end}`, `sha256 ${String(c.sha256).slice(0, 12)}…`].filter(Boolean).join(" · ");
    list.append(el("li", { id: `cite-${i}-${c.n}`, value: c.n, tabindex: "-1" },
      el("strong", {}, c.path), el("blockquote", {}, c.quote), el("small", {}, where + (c.verified === false ? " · not verified" : ""))));
  }
  if (!list.children.length && m.sources && m.sources.length) {  // nothing cited: what was retrieved
    list.setAttribute("aria-label", "Sources searched");
    for (const h of m.sources) list.append(el("li", {}, el("strong", {}, h.path), el("small", {}, ` bytes ${h.start}–${h.end}`)));
  }
  return list.children.length ? list : null;
}

function messageNode(m, i) {
  const body = el("div", { class: "body" });
  const cite = (n) => ((m.citations || []).some((c) => c.n === n) ? `cite-${i}-${n}` : null);
  if (m.role === "assistant") body.append(markdown(m.content, cite)); else body.textContent = m.content;
  const li = el("li", { class: `msg ${m.role}` }, el("span", { class: "who" }, m.role === "user" ? "You" : m.model || "Assistant"), body, citationList(m, i));
  if (m.meta) li.append(el("p", { class: `meta${m.error ? " error" : ""}` }, m.meta));
  return li;
}

function renderLog() {
  $("#chat-log").replaceChildren(...chat.state.messages.map(messageNode));
}

async function loadChatModels() {
  let tags, models;
  try {
    [tags, models] = await Promise.all([getJSON("/api/tags"), getJSON("/api/locara/models")]);
  } catch (err) { banner(err.text); return; }
  // Only models that chat: embedding, speech and OCR models are listed by /api/tags too.
  const modality = Object.fromEntries(models.catalog.map((c) => [c.id, c.modality]));
  const chats = (name) => ["chat", "vision", undefined].includes(modality[name]);
  const select = $("#chat-model");
  const names = tags.models.map((m) => m.name.replace(/:latest$/, "")).filter(chats);
  const options = names.map((n) => el("option", { value: n }, n));
  if (models.policies.length) {  // locara serve --policy: its virtual model names
    options.push(el("optgroup", { label: "Router policy" }, ...models.policies.map((p) => el("option", { value: p }, p))));
  }
  select.replaceChildren(...options);
  // The conversation's model, else the one used last (a new browser should not open on
  // whichever model sorts first).
  const recent = models.stored.filter((m) => m.last_used).sort((a, b) => b.last_used.localeCompare(a.last_used));
  const wanted = [chat.state.model, ...recent.map((m) => m.model)].find((n) => n && [...names, ...models.policies].includes(n));
  if (wanted) select.value = wanted;
  chat.state.model = select.value;
  chat.adapters = models.adapters;
  showAdapters();
}

// LoRA adapters bound to the chosen model (by its id); hidden when there are none.
function showAdapters() {
  const fits = (chat.adapters || []).filter((a) => a.base_model === $("#chat-model").value);
  const select = $("#chat-adapter");
  const keep = select.value;
  $("#chat-adapter-label").hidden = !fits.length;
  select.replaceChildren(el("option", { value: "" }, "none"), ...fits.map((a) => el("option", { value: a.id }, a.task ? `${a.id} (${a.task})` : a.id)));
  if (fits.some((a) => a.id === keep)) select.value = keep;
}

// Document collections (locara rag): the picker shows them, or stays hidden when this
// server has none or no RAG support at all.
async function loadCollections() {
  let names = [];
  try { names = (await getJSON("/v1/rag")).data.map((c) => c.collection); } catch { /* none here */ }
  $("#chat-collection-label").hidden = !names.length;
  $("#chat-collection").replaceChildren(el("option", { value: "" }, "none"), ...names.map((v) => el("option", { value: v }, v)));
}

function setBusy(busy) {
  $("#chat-send").disabled = busy;
  $("#chat-stop").disabled = !busy;
}

async function send(event) {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || chat.controller) return;
  const model = $("#chat-model").value;
  if (!model) { banner("No model to chat with: pull one on the Models tab."); return; }
  Object.assign(chat.state, {
    model,
    system: $("#chat-system").value,
    temperature: Number($("#chat-temperature").value),
    maxTokens: $("#chat-max-tokens").value,
  });
  chat.state.messages.push({ role: "user", content: text });
  $("#chat-input").value = "";
  const answer = { role: "assistant", model, content: "", meta: "…" };
  chat.state.messages.push(answer);
  renderLog();
  const node = $("#chat-log").lastElementChild;
  const history = chat.state.messages.slice(0, -1).filter((m) => !m.error).map(({ role, content }) => ({ role, content }));
  if (chat.state.system.trim()) history.unshift({ role: "system", content: chat.state.system });
  const body = {
    model,
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: chat.state.temperature,
  };
  if (chat.state.maxTokens) body.max_tokens = Number(chat.state.maxTokens);
  // Locara's own request fields: an adapter stack, and a document collection to answer from.
  if ($("#chat-adapter").value) body.adapters = [$("#chat-adapter").value];
  const collection = $("#chat-collection").value;
  const route = collection ? `/v1/rag/${encodeURIComponent(collection)}/ask` : "/v1/chat/completions";
  const payload = collection
    ? { question: text, model, stream: true, ...(body.max_tokens ? { max_tokens: body.max_tokens } : {}) }
    : body;

  chat.controller = new AbortController();
  setBusy(true);
  const sent = performance.now();
  let first = null;
  let usage = null;
  let pending = false;
  const paint = () => {
    pending = false;
    node.querySelector(".body").replaceChildren(markdown(answer.content));
  };
  try {
    const resp = await request(route, { method: "POST", body: payload, signal: chat.controller.signal });
    let deltas = 0;
    for await (const line of lines(resp)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) throw errorOf(200, event);
      if (event.usage) usage = event.usage;
      if (event.type === "sources") answer.sources = event.data;
      if (event.type === "answer") answer.citations = event.citations;
      const delta = event.type === "delta" ? { content: event.text } : event.choices && event.choices[0] && event.choices[0].delta;
      if (delta && delta.content) {
        first = first ?? performance.now();
        deltas += 1;  // a collection's answer streams one event per token and has no usage
        answer.content += delta.content;
        if (!pending) { pending = true; requestAnimationFrame(paint); }
      }
    }
    usage = usage || (collection ? { completion_tokens: deltas } : null);
    const done = performance.now();
    const tokens = usage ? usage.completion_tokens : null;
    const rate = tokens && first && done > first ? (tokens - 1) / ((done - first) / 1000) : null;
    answer.meta = [
      rate ? `${rate.toFixed(1)} tok/s` : null,
      first ? `TTFT ${fmt.secs((first - sent) / 1000)}` : null,
      tokens !== null ? `${tokens} tokens` : null,
    ].filter(Boolean).join(" · ");
  } catch (err) {
    if (err.name === "AbortError") {
      answer.meta = "stopped";
    } else if (err instanceof ApiError) {
      answer.error = true;
      answer.meta = `error: ${err.text}`;
    } else {  // the body stopped mid-stream: the server went away
      answer.error = true;
      answer.meta = "error: the connection to the server was lost mid-answer (did the server stop?). Reload the page when it is back.";
      serverLost();
    }
  } finally {
    chat.controller = null;
    setBusy(false);
    paint();
    saveChat();
    renderLog();
    $("#chat-input").focus();
  }
}

function stop() { if (chat.controller) chat.controller.abort(); }

// ---------------------------------------------------------------- models
let countdownTimer = null;

async function loadModels() {
  const status = $("#models-status");
  try {
    const [ps, models] = await Promise.all([getJSON("/api/ps"), getJSON("/api/locara/models")]);
    renderLoaded(ps.models);
    fillTable($("#stored-table"), models.stored.map((m) => [
      el("td", {}, el("strong", {}, m.model || "?"), el("br"), el("small", {}, m.display_name || "")),
      m.quant, fmt.bytes(m.size_bytes), m.license, fmt.ago(m.last_used),
      m.pinned_by.join(", ") || "-", m.status,
      el("td", {}, el("button", { type: "button", class: "quiet", "data-plan": m.model }, "Plan"), " ",
        el("button", { type: "button", class: "danger", "data-remove": `${m.model}:${m.quant || ""}`.replace(/:$/, "") }, "Remove")),
    ]), "Nothing stored yet: pull a model below.");
    $("#catalog").replaceChildren(...models.catalog.map((c) => el("option", { value: c.id }, `${c.display_name} (${c.license})`)));
  } catch (err) {
    status.textContent = err.text;
  }
}

function renderLoaded(models) {
  const table = $("#loaded-table");
  fillTable(table, models.map((m) => {
    const opts = m.locara.options || {};
    const layers = m.locara.n_layers ? `${opts.n_gpu_layers ?? 0}/${m.locara.n_layers} layers` : `${opts.n_gpu_layers ?? 0} layers`;
    return [
      m.name.replace(/:latest$/, ""),
      [m.locara.backend, m.locara.runtime].filter(Boolean).join(" · "),
      layers, fmt.int(m.context_length), fmt.bytes(m.size), fmt.int(m.locara.requests),
      el("td", { "data-expires": m.locara.expires_at || "" }, fmt.countdown(m.locara.expires_at)),
    ];
  }), "No model is loaded; one loads on its first request.");
  clearInterval(countdownTimer);
  countdownTimer = setInterval(() => {
    if ($("#panel-models").hidden) { clearInterval(countdownTimer); return; }
    for (const td of table.querySelectorAll("td[data-expires]")) td.textContent = fmt.countdown(td.dataset.expires || null);
  }, 1000);
}

async function removeModel(name) {
  if (!confirm(`Remove ${name} from the store?`)) return;
  const status = $("#models-status");
  try {
    await request("/api/delete", { method: "DELETE", body: { model: name } });
    status.textContent = `Removed ${name}.`;
  } catch (err) {
    status.textContent = `Cannot remove ${name}: ${err.text}`;
  }
  loadModels();
}

async function pull(event) {
  if (event) event.preventDefault();
  const model = $("#pull-model").value.trim();
  if (!model) return;
  const bar = $("#pull-progress");
  const status = $("#pull-status");
  $("#pull-retry").hidden = true;
  $("#pull-start").disabled = true;
  bar.hidden = false;
  bar.removeAttribute("value");  // indeterminate until the first byte counts arrive
  status.classList.remove("error");
  status.textContent = `Pulling ${model}…`;
  try {
    const resp = await request("/api/pull", { method: "POST", body: { model, stream: true } });
    for await (const line of lines(resp)) {
      const event = JSON.parse(line);
      if (event.error) throw errorOf(200, event);
      if (event.total) {
        bar.max = event.total;
        bar.value = event.completed;
        status.textContent = `${model}: ${fmt.bytes(event.completed)} of ${fmt.bytes(event.total)}`;
      } else if (event.completed) {  // a download of unknown size: bytes only
        status.textContent = `${model}: ${fmt.bytes(event.completed)}`;
      } else if (event.status) {
        status.textContent = `${model}: ${event.status}`;
      }
      if (event.status === "success") { bar.value = bar.max; status.textContent = `${model}: pulled and verified.`; }
    }
  } catch (err) {
    status.classList.add("error");
    status.textContent = `Pull of ${model} failed: ${err instanceof ApiError ? err.text : "the connection was lost"}. What arrived is kept; Retry resumes.`;
    $("#pull-retry").hidden = false;
    $("#pull-retry").focus();
  } finally {
    $("#pull-start").disabled = false;
    loadModels();
  }
}

async function explainPlan(event, model) {
  if (event) event.preventDefault();
  model = model || $("#plan-model").value.trim();
  $("#plan-model").value = model;
  const out = $("#plan-output");
  out.hidden = false;
  const ctx = $("#plan-ctx").value;
  const query = new URLSearchParams({ model });
  if (ctx) query.set("ctx", ctx);
  try {
    const data = await getJSON(`/api/locara/plan?${query}`);
    out.textContent = data.explanation.join("\n");
    out.classList.toggle("error", !data.plan.ok);
  } catch (err) {
    out.textContent = err.text;
    out.classList.add("error");
  }
}

// ---------------------------------------------------------------- usage
function chart(title, points, series, unit, format) {
  const W = 480, H = 210, L = 76, R = 12, T = 30, B = 30;
  const values = points.flatMap((p) => series.map((s) => p[s.key])).filter((v) => v !== null && v !== undefined);
  const max = Math.max(...values, 0) || 1;
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => (t1 === t0 ? L + (W - L - R) / 2 : L + ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${points.length} points` });
  root.append(svg("title", {}, title));
  root.append(svg("text", { x: 4, y: 18, class: "chart-title" }, title + (unit ? ` (${unit})` : "")));
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, format(v)));
  }
  const when = (t) => new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  if (points.length) {
    root.append(svg("text", { x: L, y: H - 8, class: "axis" }, when(t0)));
    if (t1 !== t0) root.append(svg("text", { x: W - R, y: H - 8, class: "axis", "text-anchor": "end" }, when(t1)));
  }
  series.forEach((s, i) => {
    const pts = points.filter((p) => p[s.key] !== null && p[s.key] !== undefined);
    const path = pts.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[s.key]).toFixed(1)}`).join(" ");
    if (pts.length > 1) root.append(svg("path", { d: path, class: `line s${i}` }));
    for (const p of pts) {
      const dot = svg("circle", { cx: x(p.t), cy: y(p[s.key]), r: 3.5, class: `dot s${i}` });
      dot.append(svg("title", {}, `${s.label} ${when(p.t)}: ${format(p[s.key])}`));
      root.append(dot);
    }
    root.append(svg("text", { x: W - R - 60 * (series.length - 1 - i), y: 18, class: `legend s${i}`, "text-anchor": "end" }, s.label));
  });
  return el("figure", { class: "chart" }, root);
}

async function loadUsage(event) {
  if (event) event.preventDefault();
  const query = new URLSearchParams();
  for (const k of ["model", "app", "since"]) if ($(`#usage-${k}`).value) query.set(k, $(`#usage-${k}`).value);
  let data, bench;
  try {
    [data, bench] = await Promise.all([getJSON(`/api/locara/usage?${query}`), getJSON("/api/locara/bench")]);
  } catch (err) {
    $("#usage-totals").replaceChildren(el("div", { class: "error" }, err.text));
    return;
  }
  for (const [k, values] of [["model", data.models], ["app", data.apps]]) {
    const select = $(`#usage-${k}`);
    const keep = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"), ...values.map((v) => el("option", { value: v }, v)));
    select.value = values.includes(keep) ? keep : "";
  }
  const totals = data.summary.totals;
  const saved = data.summary.cloud_cost_saved;
  const cheapest = Object.entries(saved.vs)[0];
  const tps = data.summary.models.map((m) => m.avg_tps).filter(Boolean);
  const cards = [
    ["Requests", fmt.int(totals.requests)],
    ["Tokens in", fmt.int(totals.prompt_tokens)],
    ["Tokens out", fmt.int(totals.completion_tokens)],
    ["Average tok/s", tps.length ? fmt.num(tps.reduce((a, b) => a + b) / tps.length) : "-"],
    ["Cost saved", cheapest ? `${saved.currency} ${fmt.money(cheapest[1])} vs ${cheapest[0]}` : "-"],
  ];
  $("#usage-totals").replaceChildren(...cards.flatMap(([k, v]) => [el("div", {}, el("dt", {}, k), el("dd", {}, v))]));
  const pts = data.series.points;
  let running = 0;
  const cumulative = pts.map((p) => ({ t: p.t, saved: (running += p.cost_saved) }));
  const per = `per ${data.series.bucket_s >= 3600 ? `${data.series.bucket_s / 3600} h` : `${data.series.bucket_s / 60} min`}`;
  const n = (v) => (Number.isInteger(v) ? fmt.int(v) : fmt.num(v));
  $("#usage-charts").replaceChildren(
    chart("Requests", pts, [{ key: "requests", label: "requests" }], per, n),
    chart("Tokens", pts, [{ key: "prompt_tokens", label: "in" }, { key: "completion_tokens", label: "out" }], per, n),
    chart("Generation speed", pts, [{ key: "tps", label: "tok/s" }], "tok/s", (v) => fmt.num(v)),
    chart("Time to first token", pts, [{ key: "ttft_p50_s", label: "p50" }, { key: "ttft_p95_s", label: "p95" }], "", fmt.secs),
    chart("Cloud cost saved", cumulative, [{ key: "saved", label: data.series.priced_vs ? `vs ${data.series.priced_vs}` : "saved" }], data.series.currency || "", fmt.money),
  );
  fillTable($("#recent-table"), data.recent.map((r) => [
    new Date(r.ts).toLocaleString(), r.model, r.app,
    el("td", { class: `status ${r.status}`, title: r.error || null }, r.status),
    fmt.int(r.prompt_tokens), fmt.int(r.completion_tokens), fmt.num(r.generation_tps), fmt.secs(r.ttft_s),
  ]), "No requests recorded yet: send a chat.");
  fillTable($("#bench-table"), bench.results.map((b) => [
    b.model_id, b.backend, b.quant, fmt.num(b.pp_tps), fmt.num(b.tg_tps), fmt.secs(b.ttft_s),
    fmt.secs(b.load_s), fmt.bytes(b.peak_rss_bytes), b.timestamp ? fmt.ago(b.timestamp) : "-",
  ]), "No benchmark results: run `locara bench MODEL`.");
}

// ---------------------------------------------------------------- device
async function loadDevice() {
  let data;
  try { data = await getJSON("/api/locara/device"); } catch (err) { $("#device-profile").replaceChildren(el("div", { class: "error" }, err.text)); return; }
  const p = data.profile;
  const unknown = (k) => (p.unknown[k] ? `unknown (${p.unknown[k]})` : "unknown");
  const battery = !p.battery ? unknown("battery") : !p.battery.present ? "none (mains power)" : `${p.battery.percent}%${p.battery.plugged_in === false ? ", on battery" : ""}`;
  const facts = [
    ["System", `${p.os} ${p.os_version} (${p.arch})`],
    ["CPU", `${p.cpu_model || unknown("cpu_model")}, ${p.cores_logical ?? "?"} logical cores`],
    ["Features", p.cpu_features.join(", ") || "none detected"],
    ["RAM", `${fmt.bytes(p.ram_total_bytes)} total, ${fmt.bytes(p.ram_available_bytes)} available`],
    ["GPUs", p.gpus.length ? p.gpus.map((g) => `${g.kind}: ${g.name} (${fmt.bytes(g.memory_total_bytes)})`).join("; ") : `none (${p.unknown.gpus || "none detected"})`],
    ["Battery", battery],
    ["Disk", `${fmt.bytes(p.disk_free_bytes)} free at ${p.store_path || "?"}`],
    ["Runtimes", `llama.cpp ${p.llama_cpp_installed ? "installed" : "missing"}, MLX ${p.mlx_installed ? "installed" : "not installed"}`],
  ];
  $("#device-profile").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
  fillTable($("#fits-table"), data.fits.tiers.map((t) => [
    t.tier, el("td", {}, el("strong", {}, t.model_id), el("br"), el("small", {}, t.display_name)),
    t.backend, t.quant, fmt.bytes(t.memory_bytes), fmt.num(t.expected_tps),
  ]), "Nothing fits this device.");
  $("#fits-notes").replaceChildren(...[...data.fits.notes, ...data.fits.not_fitting].map((n) => el("li", {}, n)));
}

// ---------------------------------------------------------------- start
async function start(signedIn = false) {
  if (!signedIn) {
    try { await request("/api/version"); } catch (err) { if (err.status !== 401) banner(err.text); return; }
  }
  $("nav").hidden = false;
  $("#logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  $("#server-status").textContent = "online";
  loadChat();
  await loadCollections();
  const tab = location.hash.slice(1);
  selectTab(TABS.includes(tab) ? tab : "chat");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const t of TABS) {
    $(`#tab-${t}`).addEventListener("click", () => selectTab(t));
    $(`#tab-${t}`).addEventListener("keydown", tabKeys);
  }
  $("#login-form").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", () => showLogin("Signed out."));
  $("#chat-form").addEventListener("submit", send);
  $("#chat-stop").addEventListener("click", stop);
  $("#chat-clear").addEventListener("click", () => { stop(); chat.state.messages = []; saveChat(); renderLog(); });
  $("#chat-model").addEventListener("change", () => { chat.state.model = $("#chat-model").value; saveChat(); showAdapters(); });
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
  $("#pull-form").addEventListener("submit", pull);
  $("#pull-retry").addEventListener("click", () => pull());
  $("#plan-form").addEventListener("submit", explainPlan);
  $("#stored-table").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b && b.dataset.remove) removeModel(b.dataset.remove);
    if (b && b.dataset.plan) explainPlan(null, b.dataset.plan);
  });
  $("#usage-form").addEventListener("submit", loadUsage);
  for (const k of ["model", "app", "since"]) $(`#usage-${k}`).addEventListener("change", () => loadUsage());
  start();
});
