// quillgpt playground: plain JavaScript, no build step. Talks to the server's OpenAI-style API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, info: null, controller: null, inspection: null, query: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function apiError(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (e) { return response.status + " " + response.statusText; }
}

async function loadInfo() {
  const response = await fetch("/v1/info", { headers: headers() });
  if (!response.ok) { $("model-info").textContent = "model info: " + (await apiError(response)); return; }
  const info = await response.json();
  state.info = info;
  state.model = info.model;
  $("model-info").textContent = `${info.model} · step ${info.step} · ${info.parameters.toLocaleString()} parameters · ` +
    `${info.n_layer} layers × ${info.n_head} heads × ${info.n_embd} wide · context ${info.block_size} · ${info.tokenizer}`;
  $("max-tokens").max = info.max_tokens_cap;
  $("top-k").max = Math.min(info.vocab_size, 200);
  $("chat-label").hidden = !info.chat;
  fillSelect($("layer"), info.n_layer);
  fillSelect($("head"), info.n_head);
}

function fillSelect(select, n) {
  select.innerHTML = "";
  for (let i = 0; i < n; i++) select.add(new Option(String(i), String(i)));
}

function bindSlider(id, format) {
  const input = $(id), out = $(id + "-value");
  const show = () => { out.textContent = format(Number(input.value)); };
  input.addEventListener("input", show);
  show();
}

function requestBody() {
  const body = {
    model: state.model,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    stream: true,
  };
  const k = Number($("top-k").value);
  if (k > 0) body.top_k = k;
  return body;
}

// Read server-sent events from a fetch response, calling onData with each parsed JSON payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function generate() {
  if (!state.model) await loadInfo();
  const prompt = $("prompt").value;
  const chat = $("chat").checked && state.info && state.info.chat;
  const body = requestBody();
  let url = "/v1/completions";
  if (chat) { url = "/v1/chat/completions"; body.messages = [{ role: "user", content: prompt }]; }
  else body.prompt = prompt;
  $("prompt-echo").textContent = chat ? "" : prompt;
  $("completion").textContent = "";
  $("attention-panel").hidden = true;
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  state.controller = new AbortController();
  const started = performance.now();
  let pieces = 0;
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                        signal: state.controller.signal });
    if (!response.ok) { setStatus("error: " + (await apiError(response))); return; }
    let finish = null;
    await readEvents(response, (chunk) => {
      for (const choice of chunk.choices || []) {
        const text = chat ? (choice.delta && choice.delta.content) || "" : choice.text || "";
        if (text) { $("completion").textContent += text; pieces++; }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      $("output").scrollTop = $("output").scrollHeight;
    });
    const seconds = (performance.now() - started) / 1000;
    setStatus(`done (${finish || "stopped"}): ${pieces} pieces in ${seconds.toFixed(1)} s`);
    document.body.dataset.generated = "done";
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : "error: " + e.message);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

function stop() { if (state.controller) state.controller.abort(); }

// ----- attention view -------------------------------------------------------------------------

async function inspect() {
  if (!state.model) await loadInfo();
  const text = $("prompt-echo").textContent + $("completion").textContent || $("prompt").value;
  if (!text) { setStatus("nothing to inspect: type a prompt first"); return; }
  setStatus("computing attention…");
  const response = await fetch("/v1/inspect", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model: state.model, text: text, layer: Number($("layer").value || 0),
                           head: Number($("head").value || 0), top_k: 5 }),
  });
  if (!response.ok) { setStatus("error: " + (await apiError(response))); return; }
  state.inspection = await response.json();
  state.query = null;
  $("attention-panel").hidden = false;
  const r = state.inspection;
  $("attention-note").textContent = r.offset ? `(the last ${r.tokens.length} tokens: the context holds ${state.info.block_size})`
                                             : `${r.tokens.length} tokens`;
  renderTokens();
  drawHeatmap();
  setStatus(`attention of layer ${r.layer}, head ${r.head}`);
}

function shown(token) { return token.replace(/\n/g, "↵\n").replace(/\t/g, "→"); }

function renderTokens() {
  const box = $("tokens");
  box.innerHTML = "";
  state.inspection.tokens.forEach((token, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = shown(token);
    span.dataset.index = String(i);
    span.addEventListener("mouseenter", (event) => { state.query = i; paintTokens(); showAlternatives(i, event); });
    span.addEventListener("mousemove", moveTooltip);
    span.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    box.appendChild(span);
  });
  state.query = state.inspection.tokens.length - 1;
  paintTokens();
}

function paintTokens() {
  const row = state.inspection.attention[state.query] || [];
  const max = Math.max(...row, 1e-9);
  document.querySelectorAll("#tokens .tok").forEach((span, j) => {
    const w = j < row.length ? row[j] / max : 0;
    span.style.background = `rgba(47, 95, 208, ${(0.85 * Math.sqrt(w)).toFixed(3)})`;
    span.style.color = w > 0.45 ? "#fff" : "";
    span.classList.toggle("query", j === state.query);
  });
}

function showAlternatives(i, event) {
  const r = state.inspection, tip = $("tooltip");
  tip.innerHTML = "";
  const title = document.createElement("div");
  if (i === 0) {
    title.textContent = "first token: nothing came before it to predict it";
    tip.appendChild(title);
  } else {
    title.textContent = `at this position the model expected:`;
    tip.appendChild(title);
    const table = document.createElement("table");
    for (const alt of r.alternatives[i - 1]) {
      const tr = table.insertRow();
      if (alt.id === r.token_ids[i]) tr.className = "actual";
      tr.insertCell().textContent = JSON.stringify(alt.token);
      tr.insertCell().textContent = (100 * alt.prob).toFixed(1) + "%";
    }
    tip.appendChild(table);
    const actual = document.createElement("div");
    actual.textContent = `here: ${JSON.stringify(r.tokens[i])} at ${(100 * r.token_probs[i]).toFixed(1)}%`;
    tip.appendChild(actual);
  }
  tip.hidden = false;
  moveTooltip(event);
}

function moveTooltip(event) {
  const tip = $("tooltip");
  tip.style.left = event.clientX + 14 + "px";
  tip.style.top = event.clientY + 14 + "px";
}

function drawHeatmap() {
  const r = state.inspection, canvas = $("heatmap"), ctx = canvas.getContext("2d");
  const n = r.tokens.length;
  const cell = Math.max(1, Math.floor(480 / n));
  canvas.width = canvas.height = cell * n;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  r.attention.forEach((row, i) => {
    row.forEach((w, j) => {
      const shade = Math.round(255 * (1 - Math.sqrt(w)));
      ctx.fillStyle = `rgb(${shade}, ${shade}, 255)`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    });
  });
  canvas.onmousemove = (event) => {
    const rect = canvas.getBoundingClientRect();
    const i = Math.floor((event.clientY - rect.top) / cell), j = Math.floor((event.clientX - rect.left) / cell);
    if (i < 0 || i >= n || j < 0 || j > i) { $("cell-info").textContent = ""; return; }
    $("cell-info").textContent = `${JSON.stringify(r.tokens[i])} (#${i}) attends to ${JSON.stringify(r.tokens[j])} ` +
      `(#${j}) with weight ${r.attention[i][j].toFixed(3)}`;
  };
}

window.addEventListener("DOMContentLoaded", () => {
  bindSlider("temperature", (v) => v.toFixed(2));
  bindSlider("top-k", (v) => (v === 0 ? "off" : String(v)));
  bindSlider("top-p", (v) => v.toFixed(2));
  bindSlider("max-tokens", (v) => String(v));
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("inspect").addEventListener("click", inspect);
  $("layer").addEventListener("change", () => { if (state.inspection) inspect(); });
  $("head").addEventListener("change", () => { if (state.inspection) inspect(); });
  $("api-key").addEventListener("change", loadInfo);
  loadInfo();
});
