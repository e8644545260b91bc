// The execution page: metadata from lifecycle events, output panes for the execution and for
// each of its sections (a workflow's tasks, a remote run's hosts: `config.sections`), finding
// tools, cancel and re-run.
//
// Everything live comes over the page's one connection (live.js: a WebSocket shared by all
// tabs through a SharedWorker): the execution's output, its tasks' output while their panes
// are open, and the lifecycle events (filtered here to this execution and its tasks). After a
// reconnect (or a `reset` of the event cursor) the page re-reads the execution from the API.

import { FINISHED, connectionBanner, exitNote, formatTime, getApi, postApi, setBadge, showDuration, tickDurations } from "./common.js";
import { Finder } from "./find.js";
import { live } from "./live.js";
import { OutputPane } from "./output.js";

const config = JSON.parse(document.getElementById("execution-config").textContent);
const executionId = config.execution.id;
const notice = document.getElementById("notice");
const children = new Map(); // id → {element, pane, payload, touched}
const connection = live();
let appliedEvents = 0;

function apiUrl(id) {
  return config.api.replace(executionId, id);
}

function newPane(slot, payload, label, onDone, inline = false) {
  const root = document.getElementById("pane-template").content.firstElementChild.cloneNode(true);
  slot.append(root);
  const id = payload.id;
  const pane = new OutputPane(
    root,
    { api: apiUrl(id), download: `${apiUrl(id)}output`, lines: config.lines.replace("ID", id) },
    {
      executionId: id,
      live: connection,
      lastSeq: payload.last_seq,
      startedAt: payload.started_at,
      pageUrl: config.page,
      label,
      onDone,
      // A task's pane is a section of the main log: it scrolls with it, and while the main
      // log follows, lines arriving in a task keep the end in view.
      scroller: inline ? main.log : null,
      onGrow: inline ? () => main.following && main.schedule() : undefined,
    },
  );
  if (inline) {
    // A section has no find bar: the main log's search covers it, and highlights its rows.
    pane.afterFrame = () => main.finder.highlightSoon();
  } else {
    pane.finder = new Finder(pane, root, config.search.replace("ID", id), config.sections ? sectionsForSearch : null);
  }
  return pane;
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

// --- the execution itself ------------------------------------------------------------------

function applyExecution(payload) {
  setBadge(document.getElementById("status"), payload.status);
  document.title = `${payload.action_ref} ${payload.status} · Tailgate`;
  const field = (name) => document.querySelector(`[data-field="${name}"]`);
  field("started_at").textContent = formatTime(payload.started_at);
  field("finished_at").textContent = formatTime(payload.finished_at);
  field("exit_code").textContent = payload.exit_code ?? "—";
  field("exit-summary").textContent = payload.exit_code ?? "—";
  field("exit_note").textContent = exitNote(payload.exit_code);
  showDuration(field("duration"), payload.started_at, payload.finished_at);
  field("duration-summary").textContent = field("duration").textContent;
  if (payload.result !== null && payload.result !== undefined) {
    document.getElementById("result").textContent = JSON.stringify(payload.result, null, 2);
    document.getElementById("result-section").hidden = false;
  }
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.hidden = FINISHED.has(payload.status) || payload.status === "canceling";
  if (FINISHED.has(payload.status)) stopLifecycle();
}

let stopEvents = null;

/** A finished execution changes no more: drop the events (tasks' last ones read first). */
async function stopLifecycle() {
  if (!stopEvents) return;
  const stop = stopEvents;
  stopEvents = null;
  if (config.sections) {
    const tasks = await readDescendants().catch(() => null);
    if (tasks) for (const child of tasks) upsertChild(child);
  }
  stop();
}

function onEvent({ data }) {
  if (data.id === executionId) {
    appliedEvents += 1;
    applyExecution(data);
  } else if (data.parent === executionId || children.has(data.parent)) {
    upsertChild(data); // a task, or a task of a task (nested workflows nest)
  }
}

/** After every (re)connection: read the current state, in case events were missed meanwhile. */
async function reconcile() {
  const before = appliedEvents;
  try {
    const [execution, tasks] = await Promise.all([getApi(config.api), config.sections ? readDescendants() : null]);
    if (tasks) for (const child of tasks) upsertChild(child);
    if (appliedEvents === before) applyExecution(execution); // an event is newer than this read
  } catch (error) {
    if (error.status === 404) showNotice("This execution is no longer visible to you.");
  }
}

// --- sections: workflow tasks, remote hosts -----------------------------------------------

// Tasks (and their tasks, at every depth) one read returns: the API's largest page.
const MAX_TASKS = 500;

/** Every descendant, oldest first (a task before its own tasks: ids sort by creation). */
async function readDescendants() {
  const list = config.api.slice(0, config.api.indexOf(executionId));
  const page = await getApi(`${list}?ancestor=${executionId}&limit=${MAX_TASKS}`);
  return page.results.sort((a, b) => (a.id < b.id ? -1 : 1));
}

/** Where a task's section goes: the main log's sections, or its parent task's. */
function sectionsFor(payload) {
  if (payload.parent === executionId) return document.getElementById("children");
  return children.get(payload.parent)?.element.querySelector(":scope > [data-sections]") ?? null;
}

/** A section's pane, made on first use and subscribed. */
function startPane(entry) {
  entry.pane ??= newPane(entry.element.querySelector("[data-pane-slot]"), entry.payload, "Task", undefined, true);
  entry.pane.start();
  return entry.pane;
}

// What the main log's search needs of the sections: their order on the page (depth first)
// and a way to show one (a match in it), unfolded with every section around it.
const sectionsForSearch = {
  order() {
    const order = new Map([[executionId, 0]]);
    for (const element of document.querySelectorAll("#children details.child")) order.set(element.dataset.id, order.size);
    return order;
  },
  open(id) {
    const entry = children.get(id);
    if (!entry?.payload) return null;
    for (let element = entry.element; element; element = element.parentElement.closest("details.child")) {
      element.open = true;
    }
    entry.touched = true; // the reader went there: the page leaves it open
    return startPane(entry);
  },
};

function childEntry(element) {
  const entry = { element, pane: null, payload: null, touched: false };
  element.addEventListener("toggle", () => {
    if (element.open) {
      startPane(entry);
    } else if (entry.pane) {
      entry.pane.stop(); // a closed task holds no subscription; opening it resumes at its cursor
    }
  });
  // Once the reader opens or closes a task, the page stops doing it for them.
  element.querySelector("summary").addEventListener("click", () => (entry.touched = true));
  return entry;
}

function upsertChild(payload) {
  let entry = children.get(payload.id);
  if (!entry) {
    const sections = sectionsFor(payload);
    if (!sections) return; // its parent is not known yet: the next read places both
    const element = document.getElementById("child-template").content.firstElementChild.cloneNode(true);
    element.dataset.id = payload.id;
    element.querySelector("[data-link]").href = config.page.replace("ID", payload.id);
    element.querySelector("[data-link-id]").textContent = payload.id;
    // Sections keep creation order (ids sort by it) whatever order events and reads bring
    // them in: a task created while the stream was connecting comes by the reconciling read,
    // after the event of a later one.
    const next = [...sections.children].find((other) => other.dataset.id > payload.id);
    sections.insertBefore(element, next ?? null);
    document.getElementById("no-children").hidden = true;
    entry = childEntry(element);
    children.set(payload.id, entry);
  }
  entry.payload = payload;
  const element = entry.element;
  setBadge(element.querySelector("[data-badge]"), payload.status);
  element.querySelector("[data-task]").textContent = payload.task_name || "";
  element.querySelector("[data-action]").textContent = payload.action_ref;
  element.querySelector("[data-exit]").textContent = payload.exit_code ?? "—";
  element.querySelector("[data-exit]").title = exitNote(payload.exit_code);
  showDuration(element.querySelector("[data-duration]"), payload.started_at, payload.finished_at);
  // The running task is the one to watch: open it, unless the reader took over.
  if (payload.status === "running" && !entry.touched && !element.open) element.open = true;
}

// --- cancel and re-run -------------------------------------------------------------------

function bindButtons() {
  const cancel = document.getElementById("cancel");
  const rerun = document.getElementById("rerun");
  cancel?.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      applyExecution(await postApi(`${config.api}cancel/`));
      showNotice("");
    } catch (error) {
      showNotice(`Could not cancel: ${error.message}`);
    } finally {
      cancel.disabled = false;
    }
  });
  rerun?.addEventListener("click", async () => {
    rerun.disabled = true;
    try {
      const created = await postApi(`${config.api}re-run/`);
      window.location.assign(config.page.replace("ID", created.id));
    } catch (error) {
      showNotice(`Could not run it again: ${error.message}`);
      rerun.disabled = false;
    }
  });
}

// --- permalinks --------------------------------------------------------------------------

function lineFromHash() {
  const match = /^#L(\d+)$/.exec(window.location.hash);
  return match ? Number(match[1]) : null;
}

async function followHash() {
  const seq = lineFromHash();
  if (seq !== null) await main.finder.goTo(seq);
}

// --- start -------------------------------------------------------------------------------

// The output ends after the final status is stored: read it, in case its event is late.
const main = newPane(document.getElementById("main-pane"), config.execution, "Output", () => reconcile());
const sections = document.getElementById("children");
if (sections) main.log.append(sections); // the tasks are sections of the one log
main.start();
for (const element of document.querySelectorAll("#children > details.child")) {
  children.set(element.dataset.id, childEntry(element));
}
for (const payload of config.children) upsertChild(payload);
if (config.sections && !FINISHED.has(config.execution.status)) {
  // Nothing runs yet or the running task is open already; otherwise show the newest task.
  const last = [...children.values()].at(-1);
  if (last && !FINISHED.has(last.payload.status) && !last.element.open) last.element.open = true;
}
if (!FINISHED.has(config.execution.status)) {
  stopEvents = connection.events({ event: onEvent, resync: reconcile, error: (problem) => showNotice(problem.detail) });
}
connection.onState((state) => {
  // The first time too: an event published between the page's render and the subscription
  // (the run starting, say) reached nobody here; the API has the state it set.
  if (state.state === "live") reconcile();
});
connectionBanner(document.getElementById("live-banner"), connection);
window.addEventListener("hashchange", followHash);
followHash();
bindButtons();
tickDurations(document);
