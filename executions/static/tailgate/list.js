// The execution list: rows rendered by the server, then kept current from the global event
// stream (`/api/v1/stream`), filtered like the page. New executions appear at the top and
// statuses change in place, without a reload.

import { EventStream, durationOf, formatDuration, formatTime, getApi, setBadge, showState, tickDurations } from "./common.js";

const config = JSON.parse(document.getElementById("list-config").textContent);
const filters = config.filters;
const rows = document.getElementById("rows");
const empty = document.getElementById("empty");
const state = document.getElementById("live-state");
let appliedEvents = 0;
const lastEventOf = new Map(); // execution id → appliedEvents when its last event came
// Bound on `lastEventOf`: only recent executions matter to a reconciliation.
const REMEMBERED_EVENTS = 1000;

function cell(className, ...children) {
  const td = document.createElement("td");
  td.className = className;
  td.append(...children);
  return td;
}

function timeElement(iso) {
  if (!iso) return "—";
  const time = document.createElement("time");
  time.dateTime = iso;
  time.textContent = formatTime(iso);
  return time;
}

/** A row as executions/_row.html renders it. */
function buildRow(payload) {
  const tr = document.createElement("tr");
  tr.dataset.id = payload.id;
  const link = document.createElement("a");
  link.href = `/executions/${payload.id}/`;
  link.textContent = payload.action_ref;
  const what = cell("what", link);
  if (payload.task_name) {
    const task = document.createElement("span");
    task.className = "task";
    task.textContent = `› ${payload.task_name}`;
    what.append(" ", task);
  }
  const id = document.createElement("span");
  id.className = "id";
  id.title = payload.id;
  id.textContent = payload.id.slice(-8);
  what.append(" ", id);
  const badge = document.createElement("span");
  tr.append(
    what,
    cell("tenant", payload.tenant),
    cell("status", badge),
    cell("started", "—"),
    cell("duration num", "—"),
    cell("exit num", "—"),
  );
  return tr;
}

function fillRow(tr, payload) {
  tr.dataset.status = payload.status;
  setBadge(tr.querySelector(".status").firstElementChild || tr.querySelector(".status"), payload.status);
  tr.querySelector(".started").replaceChildren(timeElement(payload.started_at));
  const duration = tr.querySelector(".duration");
  duration.dataset.started = payload.started_at || "";
  duration.dataset.finished = payload.finished_at || "";
  duration.textContent = formatDuration(durationOf(payload.started_at, payload.finished_at));
  tr.querySelector(".exit").textContent = payload.exit_code ?? "—";
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
    showState(state, "retrying");
  }
}

// Status is filtered here, not by the stream: a row shown must still hear that it finished.
const streamFilters = new URLSearchParams();
if (filters.action) streamFilters.set("action", filters.action);
if (filters.tenant) streamFilters.set("tenant", filters.tenant);
const stream = new EventStream(`/api/v1/stream?${streamFilters}`, {
  onEvent: (name, payload) => {
    appliedEvents += 1;
    lastEventOf.delete(payload.id);
    lastEventOf.set(payload.id, appliedEvents);
    if (lastEventOf.size > REMEMBERED_EVENTS) lastEventOf.delete(lastEventOf.keys().next().value);
    upsert(payload);
  },
  onOpen: reconcile,
  onState: (s) => showState(state, s),
});
stream.open();
tickDurations(rows);
