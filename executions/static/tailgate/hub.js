// One WebSocket (`/ws/v1/stream`) shared by every page of a browser: the output subscriptions
// of every open pane and one lifecycle-event subscription, multiplexed over one socket.
//
//   page ─port─▶ SocketHub ─▶ WebSocket  (in a SharedWorker: one hub for every tab;
//   page ◀─port─ SocketHub ◀─ WebSocket   without SharedWorker: one hub in the page)
//
// Clients (pages) send {op: "output", execution, after_seq} / {op: "unoutput", execution} /
// {op: "events"} / {op: "unevents"} / {op: "retry"} / {op: "bye"}. The hub holds at most one
// server subscription per execution and one event subscription (no filter: the server keeps
// what the caller may see; each page filters for itself), and forwards what arrives:
// {type: "chunks" (data: the chunks, in seq order) | "done" | "gap" | "suberror", execution, data}, {type: "event", name, data},
// {type: "resync"} (events may have been missed: re-read state) and {type: "state", ...}.
//
// A client that joins a subscription already open gets the lines from then on; the page sees
// the jump in seq and reads the lines in between over HTTP (output.js), so no line is lost.
// After a reconnect each subscription resumes at the hub's cursor (`after_seq`, and
// `last_event_id` for events): the server replays exactly what was missed.

// Reconnect delays after a dropped socket (a restart or a network blip): quick at first,
// then backing off so a down server is not hammered by every open browser.
const RECONNECT_MS = [500, 1000, 2000, 5000, 10000, 20000];
// Over the stream limit the server closes with 4429 and says why; try again after this long,
// backing off (the server's 429 over HTTP says Retry-After: 5 s by default).
const LIMITED_RETRY_MS = [5000, 10000, 20000, 30000];
// A resumed output subscription replays at most this many missed lines (the server's
// maximum); the page reads anything older over HTTP.
const RESUME_REPLAY_LIMIT = 50000;
// Chunks go to the pages in batches, at most this long after they arrived: a flood of 10,000
// lines/s is then ~60 messages/s per page instead of 10,000 (each a task on the page's main
// thread, measured as the most of a flooded page's frame time, docs/web.md).
const FORWARD_EVERY_MS = 16;
// Close codes: the server closes with 4000 + an HTTP status.
const CLOSE_LIMITED = 4429;
const CLOSE_AUTH = new Set([4401, 4403]);

export class SocketHub {
  constructor(url) {
    this.url = url;
    this.clients = new Set();
    this.outputs = new Map(); // execution id → {clients: Set, cursor, open}
    this.eventClients = new Set();
    this.lastEventId = null;
    this.socket = null;
    this.state = { state: "idle" };
    this.failures = 0;
    this.limitedFailures = 0;
    this.timer = null;
    this.forwardTimer = null;
    this.everLive = false;
  }

  // --- clients ---------------------------------------------------------------------------

  attach(client) {
    this.clients.add(client);
    client.post({ type: "state", ...this.state });
  }

  detach(client) {
    this.clients.delete(client);
    this.eventClients.delete(client);
    for (const [id, sub] of this.outputs) {
      sub.clients.delete(client);
      if (!sub.clients.size) this.dropOutput(id);
    }
  }

  receive(client, message) {
    const handlers = {
      output: () => this.addOutput(client, message.execution, message.after_seq),
      unoutput: () => this.removeOutput(client, message.execution),
      events: () => this.addEvents(client),
      unevents: () => this.eventClients.delete(client),
      retry: () => this.retryNow(),
      // A page that just loaded was served to a logged-in session: a stop may be over.
      hello: () => this.state.state === "stopped" && this.retryNow(),
      bye: () => this.detach(client),
    };
    handlers[message.op]?.();
  }

  addOutput(client, execution, afterSeq) {
    let sub = this.outputs.get(execution);
    if (!sub) {
      sub = { clients: new Set(), cursor: afterSeq ?? 0, open: false, pending: [] };
      this.outputs.set(execution, sub);
    }
    sub.clients.add(client);
    if (!sub.open) this.sendSubscribe(execution, sub);
    this.ensureSocket();
  }

  removeOutput(client, execution) {
    const sub = this.outputs.get(execution);
    if (!sub) return;
    sub.clients.delete(client);
    if (!sub.clients.size) this.dropOutput(execution);
  }

  idle() {
    return !this.outputs.size && !this.eventClients.size;
  }

  dropOutput(execution) {
    const sub = this.outputs.get(execution);
    this.outputs.delete(execution);
    if (sub?.open) this.send({ action: "unsubscribe", execution });
    // Nothing left to follow: give the connection (and its slot in the limit) back.
    if (this.idle() && this.socket) this.socket.close(1000);
  }

  addEvents(client) {
    const first = !this.eventClients.size;
    this.eventClients.add(client);
    if (first) this.sendSubscribeEvents();
    this.ensureSocket();
  }

  broadcast(message, clients = this.clients) {
    for (const client of clients) client.post(message);
  }

  setState(state, extra = {}) {
    this.forward(); // the chunks that came before a state change reach the pages before it
    this.state = { state, ...extra };
    this.broadcast({ type: "state", ...this.state });
  }

  // --- the socket ------------------------------------------------------------------------

  ensureSocket() {
    if (this.socket || this.timer || this.state.state === "stopped") return;
    if (this.idle()) return;
    this.connect();
  }

  retryNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) return;
    this.state = { state: "idle" };
    this.connect();
  }

  connect() {
    this.timer = null;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    this.setState(this.everLive ? "reconnecting" : "connecting");
    socket.onopen = () => this.onOpen();
    socket.onmessage = (message) => this.onMessage(JSON.parse(message.data));
    socket.onclose = (close) => this.onClose(close);
  }

  onOpen() {
    for (const [id, sub] of this.outputs) this.sendSubscribe(id, sub);
    if (this.eventClients.size) this.sendSubscribeEvents();
    // Not "live" yet: a refused socket is accepted, then told why, then closed.
    this.openedAt = Date.now();
  }

  send(request) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(request));
  }

  sendSubscribe(execution, sub) {
    if (this.socket?.readyState !== WebSocket.OPEN) return;
    sub.open = true;
    this.send({ action: "subscribe", execution, after_seq: sub.cursor, replay_limit: RESUME_REPLAY_LIMIT });
  }

  sendSubscribeEvents() {
    const request = { action: "subscribe_events" };
    if (this.lastEventId !== null) request.last_event_id = this.lastEventId;
    this.send(request);
  }

  onMessage(message) {
    if (message.event === "error" && !message.execution) return this.onSocketError(message.data);
    if (message.stream === "events") return this.onEventMessage(message);
    const sub = this.outputs.get(message.execution);
    if (message.event === "subscribed") return this.markLive(sub, message.data);
    if (!sub) return;
    if (message.event === "execution.output__create") {
      if (message.data.seq <= sub.cursor) return;
      sub.cursor = message.data.seq;
      sub.pending.push(message.data);
      this.forwardTimer ??= setTimeout(() => this.forward(), FORWARD_EVERY_MS);
    } else if (["done", "gap", "error"].includes(message.event)) {
      this.forwardOne(message.execution, sub); // the chunks before it first
      const type = message.event === "error" ? "suberror" : message.event;
      this.broadcast({ type, execution: message.execution, data: message.data }, sub.clients);
      // A finished or refused subscription has ended on the server too.
      if (type !== "gap") this.outputs.delete(message.execution);
    }
  }

  /** Send every subscription's waiting chunks to its clients, one message each. */
  forward() {
    clearTimeout(this.forwardTimer);
    this.forwardTimer = null;
    for (const [execution, sub] of this.outputs) this.forwardOne(execution, sub);
  }

  forwardOne(execution, sub) {
    if (!sub.pending.length) return;
    this.broadcast({ type: "chunks", execution, data: sub.pending }, sub.clients);
    sub.pending = [];
  }

  /** An error of the socket or of the event subscription (neither names an execution). */
  onSocketError(problem) {
    this.refusal = problem; // the explanation of a 4xxx close, should one follow
    if (problem.status === 401 || problem.status === 403) {
      this.broadcast({ type: "suberror", execution: null, data: problem }, this.eventClients);
    }
  }

  markLive() {
    if (this.state.state === "live") return;
    const reconnected = this.everLive;
    this.everLive = true;
    this.failures = 0;
    this.limitedFailures = 0;
    this.setState("live", { reconnected });
  }

  onEventMessage(message) {
    if (message.event === "subscribed") return this.markLive();
    if (message.id !== undefined && message.id !== null) this.lastEventId = message.id;
    if (message.event === "execution__create" || message.event === "execution__update") {
      this.broadcast({ type: "event", name: message.event, data: message.data }, this.eventClients);
    } else if (message.event === "reset" || message.event === "lagged") {
      if (message.event === "reset") this.lastEventId = null;
      this.broadcast({ type: "resync" }, this.eventClients);
    } else if (message.event === "error") {
      this.broadcast({ type: "suberror", execution: null, data: message.data }, this.eventClients);
    }
  }

  onClose(close) {
    this.socket = null;
    for (const sub of this.outputs.values()) sub.open = false;
    const refusal = this.refusal;
    this.refusal = null;
    if (this.idle()) return this.setState("idle");
    if (CLOSE_AUTH.has(close.code)) {
      // Logged out or access withdrawn: retrying cannot help until the person logs in again.
      this.setState("stopped", { status: close.code - 4000, detail: refusal?.detail || close.reason });
      return;
    }
    if (close.code === CLOSE_LIMITED) {
      const delay = LIMITED_RETRY_MS[Math.min(this.limitedFailures++, LIMITED_RETRY_MS.length - 1)];
      this.schedule(delay, "limited", { detail: refusal?.detail || "Too many open streams." });
      return;
    }
    const delay = RECONNECT_MS[Math.min(this.failures++, RECONNECT_MS.length - 1)];
    this.schedule(delay, "reconnecting");
  }

  schedule(delay, state, extra = {}) {
    this.setState(state, { ...extra, retryAt: Date.now() + delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
