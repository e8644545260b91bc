// The page's side of the one live connection: output subscriptions and lifecycle events,
// whether the socket lives in a SharedWorker (shared by every tab) or in this page.
//
// `live()` returns the page's Live: `output(id, afterSeq, handlers)` (handlers.chunk is called
// once per chunk, in seq order, from the hub's batches) and `events(handlers)`
// subscribe; `onState(fn)` hears connection states (connecting, live, reconnecting, limited,
// stopped, idle) with their explanation and next retry time; `retry()` tries again now.
// Without SharedWorker the tabs elect a leader with a Web Lock: the leader runs the SocketHub
// and serves the other tabs over a BroadcastChannel; when it closes, the next tab takes the
// lock and the others send it their subscriptions again (at the seqs they have). Without
// Web Locks either, the page runs its own SocketHub: one socket per tab, still one per page.

import { SocketHub } from "./hub.js";

class Live {
  constructor(post) {
    this.post = post;
    this.outputs = new Map(); // execution id → handlers
    this.seen = new Map(); // execution id → highest seq received (to subscribe again)
    this.afterSeqs = new Map(); // execution id → the seq its subscription started after
    this.eventHandlers = new Set();
    this.stateHandlers = new Set();
    this.state = { state: "idle" };
  }

  receive(message) {
    if (message.type === "state") {
      if (this.stoppedHere) return; // this page's access ended: other tabs' states do not apply
      this.stoppedHere = message.local === true;
      this.state = message;
      for (const fn of this.stateHandlers) fn(message);
    } else if (message.type === "event" || message.type === "resync") {
      for (const handlers of this.eventHandlers) handlers[message.type]?.(message);
    } else if (message.execution === null) {
      for (const handlers of this.eventHandlers) handlers.error?.(message.data);
    } else {
      if (message.type === "chunks") return this.receiveChunks(message);
      this.outputs.get(message.execution)?.[message.type]?.(message.data);
    }
  }

  receiveChunks({ execution, data }) {
    this.seen.set(execution, data.at(-1).seq);
    const handlers = this.outputs.get(execution);
    if (handlers) for (const chunk of data) handlers.chunk(chunk);
  }

  /** What this page follows, as requests: sent again to a newly elected leader. */
  requests() {
    const requests = [{ op: "hello" }];
    for (const [execution, afterSeq] of this.afterSeqs) {
      requests.push({ op: "output", execution, after_seq: this.seen.get(execution) ?? afterSeq });
    }
    if (this.eventHandlers.size) requests.push({ op: "events" });
    return requests;
  }

  output(execution, afterSeq, handlers) {
    this.outputs.set(execution, handlers);
    this.afterSeqs.set(execution, afterSeq);
    this.seen.delete(execution);
    this.post({ op: "output", execution, after_seq: afterSeq });
    return () => {
      this.outputs.delete(execution);
      this.afterSeqs.delete(execution);
      this.post({ op: "unoutput", execution });
    };
  }

  events(handlers) {
    this.eventHandlers.add(handlers);
    if (this.eventHandlers.size === 1) this.post({ op: "events" });
    return () => {
      this.eventHandlers.delete(handlers);
      if (!this.eventHandlers.size) this.post({ op: "unevents" });
    };
  }

  onState(fn) {
    this.stateHandlers.add(fn);
    fn(this.state);
  }

  retry() {
    this.post({ op: "retry" });
  }

  /** This page's access ended (a subscription answered 401/403/404): stop here, say why. */
  stopHere(problem) {
    this.receive({ type: "state", state: "stopped", status: problem.status, detail: problem.detail, local: true });
  }
}

function socketUrl() {
  const url = new URL("/ws/v1/stream", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function inPage() {
  const hub = new SocketHub(socketUrl());
  const client = { post: (message) => queueMicrotask(() => live.receive(message)) };
  const live = new Live((message) => hub.receive(client, message));
  hub.attach(client);
  live.mode = "page";
  return live;
}

function shared(workerUrl) {
  const worker = new SharedWorker(workerUrl, { type: "module", name: "tailgate-live" });
  const live = new Live((message) => worker.port.postMessage(message));
  worker.port.onmessage = (message) => live.receive(message.data);
  worker.port.start();
  // The worker cannot see a tab close: say goodbye so its subscriptions end.
  window.addEventListener("pagehide", () => live.post({ op: "bye" }));
  live.post({ op: "hello" });
  live.mode = "shared";
  return live;
}

const CHANNEL = "tailgate-live";
const LEADER_LOCK = "tailgate-live-leader";

function elected() {
  const tab = crypto.randomUUID();
  const channel = new BroadcastChannel(CHANNEL);
  let hub = null; // set while this tab is the leader
  const tabs = new Map(); // tab id → the hub's client for that tab
  const self = { post: (message) => queueMicrotask(() => live.receive(message)) };
  const live = new Live((message) => {
    if (hub) hub.receive(self, message);
    else channel.postMessage({ kind: "to-leader", from: tab, message });
  });
  const clientOf = (id) => {
    if (!tabs.has(id)) {
      const client = { post: (message) => channel.postMessage({ kind: "to-tab", to: id, message }) };
      tabs.set(id, client);
      hub.attach(client);
    }
    return tabs.get(id);
  };
  channel.onmessage = ({ data }) => {
    if (data.kind === "to-tab" && data.to === tab) live.receive(data.message);
    else if (data.kind === "to-leader" && hub) hub.receive(clientOf(data.from), data.message);
    else if (data.kind === "leader" && !hub) for (const request of live.requests()) live.post(request);
  };
  // The lock is held until this tab goes; then the next waiting tab is the leader.
  navigator.locks.request(LEADER_LOCK, () => {
    hub = new SocketHub(socketUrl());
    hub.attach(self);
    for (const request of live.requests()) hub.receive(self, request);
    channel.postMessage({ kind: "leader" });
    live.mode = "leader";
    document.documentElement.dataset.live = "leader";
    return new Promise(() => {});
  });
  window.addEventListener("pagehide", () => !hub && live.post({ op: "bye" }));
  live.post({ op: "hello" });
  live.mode = "follower";
  return live;
}

let instance = null;

function choose() {
  const workerUrl = document.querySelector("meta[name=tailgate-worker]")?.content;
  const forced = new URLSearchParams(window.location.search).get("live");
  const canElect = "BroadcastChannel" in window && navigator.locks && globalThis.crypto?.randomUUID;
  if (forced !== "page" && forced !== "elected" && workerUrl && "SharedWorker" in window) {
    return shared(workerUrl);
  }
  return forced !== "page" && canElect ? elected() : inPage();
}

/**
 * This page's Live (one per page). `?live=elected` skips the SharedWorker (as a browser
 * without one would), `?live=page` uses a socket of the page's own.
 */
export function live() {
  if (instance) return instance;
  try {
    instance = choose();
  } catch (error) {
    instance = inPage(); // a SharedWorker or a lock refused by policy or the browser
  }
  document.documentElement.dataset.live = instance.mode;
  return instance;
}
