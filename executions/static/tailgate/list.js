// The execution list: rows rendered by the server, then kept current from lifecycle events
// over the page's one connection (live.js: a WebSocket shared by every tab), filtered here like
// the page. New executions appear at the top and statuses change in place, without a reload.
// After every (re)connection, and when the event cursor was reset, the page re-reads the
// newest executions from the API: a restarted server's abandoned runs show as abandoned.

import { STATE_TEXT, connectionBanner, exitNote, formatTime, getApi, setBadge, showDuration, tickDurations } from "./common.js";
import { live } from "./live.js";

const config = JSON.parse(document.getElementById("list-config").textContent);
const filters = config.filters;
const rows = document.getElementById("rows");
const empty = document.getElementById("empty");
const state = document.getElementById("live-state");
let appliedEvents = 0;
const lastEventOf = new Map(); // execution id → appliedEvents when its last event came
// Bound on `lastEventOf`: only recent executions matter to a reconciliation.
const REMEMBERED_EVENTS = 1000;

function timeElement(iso) {
  if (!iso) return "—";
  const time = document.createElement("time");
  time.dateTime = iso;
  time.textContent = formatTime(iso);
  return time;
}

/** A new row: a clone of the server's own (executions/_row.html, in #row-template). */
function buildRow(payload) {
  const tr = document.getElementById("row-template").content.firstElementChild.cloneNode(true);
  tr.dataset.id = payload.id;
  const link = tr.querySelector(".what a");
  link.href = `/executions/${payload.id}/`;
  link.textContent = payload.action_ref;
  const task = tr.querySelector(".task");
  task.hidden = !payload.task_name;
  task.textContent = `› ${payload.task_name || ""}`;
  const id = tr.querySelector(".id");
  id.title = payload.id;
  id.textContent = payload.id.slice(-8);
  tr.querySelector(".tenant").textContent = payload.tenant;
  return tr;
}

function fillRow(tr, payload) {
  tr.dataset.status = payload.status;
  setBadge(tr.querySelector(".status").firstElementChild || tr.querySelector(".status"), payload.status);
  tr.querySelector(".started").replaceChildren(timeElement(payload.started_at));
  showDuration(tr.querySelector(".duration"), payload.started_at, payload.finished_at);
  tr.querySelector(".exit").textContent = payload.exit_code ?? "—";
  tr.querySelector(".exit").title = exitNote(payload.exit_code);
}

function matches(payload) {
  return (
    (!filters.status || payload.status === filters.status) &&
    (!filters.action || payload.action_ref === filters.action) &&
    (!filters.tenant || payload.tenant === filters.tenant)
  );
}

/** Insert in id order (ULIDs sort by creation time), newest first; keep at most `limit` rows. */
function insertRow(payload) {
  const tr = buildRow(payload);
  const after = [...rows.children].find((row) => row.dataset.id < payload.id);
  if (!after && rows.children.length >= config.limit) return null; // older than every row shown
  rows.insertBefore(tr, after || null);
  tr.classList.add("fresh");
  while (rows.children.length > config.limit) rows.lastElementChild.remove();
  return tr;
}

function upsert(payload) {
  let tr = rows.querySelector(`tr[data-id="${payload.id}"]`);
  // A row already shown follows its execution (also out of a status filter); a new one
  // appears only if it matches the filters.
  if (!tr && matches(payload)) tr = insertRow(payload);
  if (tr) fillRow(tr, payload);
  empty.hidden = rows.children.length > 0;
}

/** After every (re)connection: read the newest executions, in case events were missed. */
async function reconcile() {
  const before = appliedEvents;
  const query = new URLSearchParams({ ...filters, limit: String(config.limit) });
  try {
    const page = await getApi(`/api/v1/executions/?${query}`);
    for (const payload of [...page.results].reverse()) {
      // An event that came while the page was read is newer than the page.
      if ((lastEventOf.get(payload.id) ?? -1) <= before) upsert(payload);
    }
  } catch (error) {
    showState("reconnecting");
  }
}

function showState(name) {
  state.dataset.state = name;
  state.textContent = STATE_TEXT[name] ?? name;
}

const connection = live();
connection.events({
  event: ({ data }) => {
    appliedEvents += 1;
    lastEventOf.delete(data.id);
    lastEventOf.set(data.id, appliedEvents);
    if (lastEventOf.size > REMEMBERED_EVENTS) lastEventOf.delete(lastEventOf.keys().next().value);
    upsert(data);
  },
  resync: reconcile,
});
connection.onState((s) => {
  showState(s.state);
  if (s.state === "live") reconcile(); // the first time too: events between render and live
});
connectionBanner(document.getElementById("live-banner"), connection);
tickDurations(rows);
