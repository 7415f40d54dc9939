// The chat page of `scratchlm serve`: keeps the conversation, streams each reply from
// /v1/chat/completions (server-sent events) and stops it on demand (aborting the request
// makes the server free its slot). No libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, messages: [], controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(text) {
  $("status").textContent = text;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function errorText(resp) {
  try {
    const j = await resp.json();
    return (j.error && j.error.message) || resp.status + " " + resp.statusText;
  } catch {
    return resp.status + " " + resp.statusText;
  }
}

async function loadModel() {
  let resp;
  try {
    resp = await fetch("/v1/models", { headers: headers() });
  } catch (e) {
    setStatus("server unreachable");
    return false;
  }
  if (!resp.ok) {
    setStatus(resp.status === 401 ? "enter the API key in Settings" : await errorText(resp));
    return false;
  }
  const card = (await resp.json()).data[0];
  const info = card.scratchlm || {};
  state.model = card.id;
  $("model").textContent = card.id;
  $("note").textContent = info.encoder_decoder
    ? "A translation model: each message is translated."
    : info.chat_template
      ? ""
      : "This model has no chat template: it continues the conversation as plain text.";
  setStatus("ready");
  return true;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function request() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.messages);
  const body = { model: state.model, messages, stream: true };
  const fields = { temperature: "temperature", top_p: "top-p", top_k: "top-k",
                   max_tokens: "max-tokens", seed: "seed" };
  for (const [name, id] of Object.entries(fields)) {
    const v = number(id);
    if (v !== null) body[name] = v;
  }
  return body;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("reset").disabled = on;
}

// Yields the JSON payloads of an SSE response body until `data: [DONE]`.
async function* events(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, at);
      buf = buf.slice(at + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

async function send(text) {
  if (!state.model && !(await loadModel())) return;
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const out = div.querySelector(".text");
  div.classList.add("streaming");
  state.controller = new AbortController();
  busy(true);
  setStatus("generating…");
  let reply = "";
  let ending = "ready";
  // Draw at most once a frame: a fast model sends hundreds of pieces a second, and
  // rewriting the text for each would keep the page too busy to answer.
  let drawing = false;
  const draw = () => {
    drawing = false;
    if (ending === "error") return; // the error message stays
    out.textContent = reply;
    $("log").scrollTop = $("log").scrollHeight;
  };
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request()),
      signal: state.controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    for await (const msg of events(resp)) {
      if (msg.error) throw new Error(msg.error.message);
      for (const c of msg.choices || []) {
        if (c.delta && c.delta.content) {
          reply += c.delta.content;
          if (!drawing) {
            drawing = true;
            requestAnimationFrame(draw);
          }
        }
        if (c.finish_reason === "length") ending = "ready (the reply reached max tokens)";
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "stopped";
      div.append(tag);
      ending = "stopped";
    } else {
      div.classList.add("error");
      out.textContent = reply + (reply ? "\n" : "") + "[error: " + e.message + "]";
      ending = "error";
    }
  }
  if (ending !== "error") draw();
  div.classList.remove("streaming");
  if (reply) {
    state.messages.push({ role: "assistant", content: reply });
  } else if (ending === "error") {
    state.messages.pop(); // the failed question is not part of the conversation
  }
  state.controller = null;
  busy(false);
  setStatus(ending);
}

function init() {
  $("api-key").value = sessionStorage.getItem("scratchlm-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("scratchlm-api-key", $("api-key").value.trim());
    state.model = null;
    loadModel();
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("message").value;
    if (!text.trim() || state.controller) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => {
    if (state.controller) state.controller.abort();
  });
  $("reset").addEventListener("click", () => {
    state.messages = [];
    $("log").replaceChildren();
    setStatus(state.model ? "ready" : $("status").textContent);
  });
  loadModel();
}

init();
