/* Web Chat: send a message, stream the answer over SSE, render it as sanitized Markdown.
 *
 * The page works without this script (the forms post, the server answers and the page refreshes).
 * With it: a turn is started with fetch() (the server returns a short-lived relay credential), the
 * answer is read from /chat/relay/<conversation>/ with fetch() and a stream reader (EventSource
 * cannot send the Authorization header), resumed with Last-Event-ID if the connection drops, and
 * rendered with markdown-it (raw HTML off) → DOMPurify → highlight.js. No API key is ever here.
 */
(function () {
  "use strict";

  var root = document.getElementById("chat");
  if (!root || !window.fetch) return;

  var md = window.markdownit ? window.markdownit({ html: false, linkify: true, breaks: true }) : null;

  function render(target, text) {
    if (!md || !window.DOMPurify) { target.textContent = text; return; }
    target.innerHTML = window.DOMPurify.sanitize(md.render(text || ""), { USE_PROFILES: { html: true } });
    target.querySelectorAll("a").forEach(function (a) { a.setAttribute("rel", "noopener noreferrer nofollow"); a.setAttribute("target", "_blank"); });
    if (window.hljs) target.querySelectorAll("pre code").forEach(function (block) { window.hljs.highlightElement(block); });
  }

  // Messages rendered by the server: their raw text is in a <template> beside them.
  document.querySelectorAll(".msg").forEach(function (li) {
    var raw = li.querySelector("template.raw"), body = li.querySelector("[data-markdown]");
    if (raw && body) render(body, raw.content.textContent || raw.innerHTML);
  });

  var list = document.getElementById("messages");
  var form = document.getElementById("composer");
  var textarea = document.getElementById("chat-message");
  var sendButton = document.getElementById("send");
  var stopButton = document.getElementById("stop");
  var regenerateForm = document.getElementById("regenerate-form");
  var status = document.getElementById("answer-status");
  var current = null; // the turn being streamed

  function announce(text) { if (status) status.textContent = text; }

  function csrf(f) {
    var input = (f || form).querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function setBusy(busy) {
    if (sendButton) sendButton.disabled = busy;
    if (stopButton) stopButton.hidden = !busy;
    var regenerate = document.getElementById("regenerate");
    if (regenerate) regenerate.disabled = busy;
  }

  function addMessage(role, text) {
    var li = document.createElement("li");
    li.className = "msg msg-" + role;
    li.dataset.role = role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    var body = document.createElement("div");
    body.className = "body md";
    li.appendChild(who);
    li.appendChild(body);
    if (role === "assistant") {
      body.setAttribute("aria-live", "polite");
      body.setAttribute("aria-busy", "true");
      var meta = document.createElement("p");
      meta.className = "meta";
      meta.dataset.testid = "message-meta";
      meta.setAttribute("data-testid", "message-meta");
      meta.textContent = "Writing…";
      li.appendChild(meta);
    }
    render(body, text || "");
    list.appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function showReply(li, reply) {
    var body = li.querySelector(".body"), meta = li.querySelector(".meta");
    body.setAttribute("aria-busy", "false");
    if (!reply) { meta.textContent = "The answer was not stored; reload the page."; return; }
    render(body, reply.text);
    li.className = "msg msg-assistant msg-" + reply.status;
    meta.textContent = "";
    if (reply.status !== "ok") {
      var badge = document.createElement("span");
      badge.className = "badge" + (reply.status === "failed" ? " error" : "");
      badge.textContent = reply.status;
      meta.appendChild(badge);
      meta.appendChild(document.createTextNode(" "));
    }
    meta.appendChild(document.createTextNode(reply.input_tokens + " in · " + reply.output_tokens + " out · "));
    var cost = document.createElement("span");
    cost.setAttribute("data-testid", "message-cost");
    cost.textContent = reply.cost_display;
    meta.appendChild(cost);
    announce(reply.status === "ok" ? "Answer complete." : "Answer " + reply.status + ".");
  }

  function showError(text) {
    var box = document.getElementById("chat-error");
    if (!box) {
      box = document.createElement("p");
      box.id = "chat-error";
      box.className = "flash error";
      box.setAttribute("role", "alert");
      form.parentNode.insertBefore(box, form);
    }
    box.textContent = text;
    box.hidden = !text;
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  async function pollReply(statusUrl, limit) {
    for (var i = 0; i < (limit || 120); i++) {
      var response = await fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        var state = await response.json();
        if (state.reply) return state.reply;
        if (state.state === "revoked" && i > 5) return null;
      }
      await sleep(1000);
    }
    return null;
  }

  // Server-sent events from a fetch() body: calls onEvent({id, event, data}) per event.
  async function readEvents(response, onEvent) {
    var reader = response.body.getReader(), decoder = new TextDecoder(), buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) return;
      buffer += decoder.decode(chunk.value, { stream: true });
      var events = buffer.split("\n\n");
      buffer = events.pop();
      events.forEach(function (raw) {
        var event = { id: null, event: "message", data: [] };
        raw.split("\n").forEach(function (line) {
          if (line.startsWith("id: ")) event.id = line.slice(4);
          else if (line.startsWith("event: ")) event.event = line.slice(7);
          else if (line.startsWith("data: ")) event.data.push(line.slice(6));
        });
        if (event.data.length) { event.data = event.data.join("\n"); onEvent(event); }
      });
    }
  }

  async function stream(turn, li) {
    var text = "", lastId = null, reply = null, failure = null, scheduled = false;
    var body = li.querySelector(".body");
    current = { turn: turn, controller: null, stopped: false };
    setBusy(true);
    announce("Writing the answer…");
    function paint() {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(function () { scheduled = false; render(body, text); });
    }
    for (var attempt = 0; attempt < 4 && !reply; attempt++) {
      if (current.stopped) break;
      var controller = new AbortController();
      current.controller = controller;
      var headers = { Authorization: "Relay " + turn.credential, Accept: "text/event-stream" };
      if (attempt > 0) headers["Last-Event-ID"] = lastId || "evt_0"; // a resume: only the events after it
      try {
        var response = await fetch(turn.stream_url, { headers: headers, signal: controller.signal, credentials: "same-origin" });
        if (!response.ok) {
          var problem = await response.json().catch(function () { return {}; });
          failure = (problem.error && problem.error.message) || ("HTTP " + response.status);
          break;
        }
        await readEvents(response, function (event) {
          if (event.id) lastId = event.id;
          if (event.event === "turn") { reply = JSON.parse(event.data); return; }
          if (event.data === "[DONE]") return;
          var data = JSON.parse(event.data);
          if (data.error) { failure = data.error.message; return; }
          (data.choices || []).forEach(function (choice) {
            if (choice.delta && choice.delta.content) { text += choice.delta.content; paint(); }
          });
        });
      } catch (err) {
        if (current.stopped) break;
        await sleep(500 * (attempt + 1)); // the connection dropped: resume from the last event
      }
    }
    if (!reply) reply = await pollReply(turn.status_url); // stopped, expired, or the stream is gone
    if (!reply && failure) reply = { text: failure, status: "failed", input_tokens: 0, output_tokens: 0, cost_display: "—" };
    showReply(li, reply);
    current = null;
    setBusy(false);
  }

  async function post(url, data, f) {
    return fetch(url, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrf(f) },
    });
  }

  async function startTurn(url, data, f) {
    var response = await post(url, data, f);
    var payload = await response.json().catch(function () { return {}; });
    if (!response.ok) {
      showError((payload.error && payload.error.message) || "The message could not be sent.");
      return null;
    }
    showError("");
    if (payload.conversation_url && !root.dataset.conversation) {
      root.dataset.conversation = payload.conversation_id;
      root.dataset.turnUrl = payload.conversation_url + "turns";
      history.replaceState(null, "", payload.conversation_url);
    }
    return payload;
  }

  async function send() {
    if (current || !textarea.value.trim()) return;
    var data = new FormData(form);
    var isNew = !root.dataset.conversation;
    var url = root.dataset.turnUrl || form.action;
    setBusy(true);
    var turn = await startTurn(url, data, form);
    if (!turn) { setBusy(false); return; }
    if (!turn.turn_id) { location.href = turn.conversation_url; return; }
    textarea.value = "";
    addMessage("user", turn.user_message ? turn.user_message.text : data.get("message"));
    await stream(turn, addMessage("assistant", ""));
    // A new chat's first answer is in: show the conversation's own page (title, rename, regenerate).
    if (isNew) location.replace(turn.conversation_url);
  }

  if (form) {
    form.addEventListener("submit", function (event) { event.preventDefault(); send(); });
    textarea.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); send(); }
    });
  }

  if (stopButton) {
    stopButton.addEventListener("click", async function () {
      if (!current) return;
      current.stopped = true;
      if (current.controller) current.controller.abort();
      announce("Stopping…");
      await post(current.turn.stop_url, new FormData(), form);
    });
  }

  if (regenerateForm) {
    regenerateForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (current) return;
      setBusy(true);
      var turn = await startTurn(root.dataset.turnUrl, new FormData(regenerateForm), regenerateForm);
      if (!turn) { setBusy(false); return; }
      var items = list.querySelectorAll(".msg");
      var last = items[items.length - 1];
      if (last && last.dataset.role === "assistant") last.remove();
      await stream(turn, addMessage("assistant", ""));
    });
  }

  // A turn still running when the page was (re)loaded: show its answer once it is stored.
  if (root.dataset.pendingStatusUrl) {
    pollReply(root.dataset.pendingStatusUrl, 180).then(function (reply) {
      if (reply) location.reload();
    });
  }
})();
