// The SharedWorker every tab of a browser connects to: one SocketHub, so all the tabs of one
// origin share one WebSocket (one connection, one slot in the per-tenant stream limit).
// Each tab is a MessagePort; a tab says "bye" when it goes (pagehide), and the hub drops its
// subscriptions.

import { SocketHub } from "./hub.js";

const url = new URL("/ws/v1/stream", self.location.href);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const hub = new SocketHub(url.href);

self.onconnect = (event) => {
  const port = event.ports[0];
  const client = { post: (message) => port.postMessage(message) };
  port.onmessage = (message) => hub.receive(client, message.data);
  hub.attach(client);
  port.start();
};
