// The execution page: metadata from the lifecycle stream, output panes for the execution and
// for each task of a workflow, cancel and re-run.
//
// Streams held open: the execution's output (closed on `done`), its lifecycle events while
// it runs (and its tasks' events for a workflow), and the output of each open task pane
// while that task runs. A finished execution's page holds none once its output is shown.

import {
  EventStream,
  FINISHED,
  durationOf,
  formatDuration,
  formatTime,
  getApi,
  postApi,
  setBadge,
  tickDurations,
} from "./common.js";
import { OutputPane } from "./output.js";

const config = JSON.parse(document.getElementById("execution-config").textContent);
const executionId = config.execution.id;
const notice = document.getElementById("notice");
const children = new Map(); // id → {element, pane, payload, touched}
const streams = [];
let appliedEvents = 0;
let currentStatus = config.execution.status;

function apiUrl(id) {
  return config.api.replace(executionId, id);
}

function newPane(slot, id, label, onDone) {
  const root = document.getElementById("pane-template").content.firstElementChild.cloneNode(true);
  slot.append(root);
  const api = apiUrl(id);
  return new OutputPane(
    root,
    {
      api,
      stream: `${api}output/stream`,
      download: `${api}output`,
      lines: config.lines.replace("ID", id),
    },
    { label, onDone },
  );
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

// --- the execution itself ------------------------------------------------------------------

function applyExecution(payload) {
  currentStatus = payload.status;
  setBadge(document.getElementById("status"), payload.status);
  document.title = `${payload.action_ref} ${payload.status} · Tailgate`;
  const field = (name) => document.querySelector(`[data-field="${name}"]`);
  field("started_at").textContent = formatTime(payload.started_at);
  field("finished_at").textContent = formatTime(payload.finished_at);
  field("exit_code").textContent = payload.exit_code ?? "—";
  const duration = field("duration");
  duration.dataset.started = payload.started_at || "";
  duration.dataset.finished = payload.finished_at || "";
  duration.textContent = formatDuration(durationOf(payload.started_at, payload.finished_at));
  if (payload.result !== null && payload.result !== undefined) {
    document.getElementById("result").textContent = JSON.stringify(payload.result, null, 2);
    document.getElementById("result-section").hidden = false;
  }
  const cancel = document.getElementById("cancel");
  if (cancel) cancel.hidden = FINISHED.has(payload.status) || payload.status === "canceling";
  if (FINISHED.has(payload.status)) finishLifecycle();
}

function onEvent(name, payload) {
  appliedEvents += 1;
  if (payload.id === executionId) applyExecution(payload);
  else if (payload.parent === executionId) upsertChild(payload);
}

/** After every (re)connection: read the current state, in case events were missed meanwhile. */
async function reconcile() {
  const before = appliedEvents;
  try {
    const [execution, tasks] = await Promise.all([
      getApi(config.api),
      config.workflow ? getApi(`${config.api}children/?limit=500`) : null,
    ]);
    if (tasks) for (const child of tasks.results) upsertChild(child);
    if (appliedEvents === before) applyExecution(execution); // an event is newer than this read
  } catch (error) {
    if (error.status === 404) showNotice("This execution is no longer visible to you.");
  }
}

let lifecycleOpen = false;
function openLifecycle() {
  const state = document.getElementById("live-state");
  const filters = [`execution=${executionId}`];
  if (config.workflow) filters.push(`parent=${executionId}`);
  lifecycleOpen = true;
  for (const filter of filters) {
    const stream = new EventStream(`/api/v1/stream?${filter}`, {
      onEvent,
      onOpen: reconcile,
      onState: (s) => state && (state.dataset.state = s),
    });
    streams.push(stream);
    stream.open();
  }
}

async function finishLifecycle() {
  if (!lifecycleOpen) return;
  lifecycleOpen = false;
  if (config.workflow) {
    // Tasks end before their workflow, but their last events may still be on the way.
    const tasks = await getApi(`${config.api}children/?limit=500`).catch(() => null);
    if (tasks) for (const child of tasks.results) upsertChild(child);
  }
  for (const stream of streams) stream.close();
}

// --- workflow tasks ----------------------------------------------------------------------

function childEntry(element) {
  const entry = { element, pane: null, payload: null, touched: false };
  element.addEventListener("toggle", () => {
    if (element.open) {
      entry.pane ??= newPane(element.querySelector("[data-pane-slot]"), element.dataset.id, "Task");
      entry.pane.start();
    } else if (entry.pane) {
      entry.pane.stop(); // a closed task holds no stream; opening it again resumes from its cursor
    }
  });
  // Once the reader opens or closes a task, the page stops doing it for them.
  element.querySelector("summary").addEventListener("click", () => (entry.touched = true));
  return entry;
}

function upsertChild(payload) {
  let entry = children.get(payload.id);
  if (!entry) {
    const element = document.getElementById("child-template").content.firstElementChild.cloneNode(true);
    element.dataset.id = payload.id;
    element.querySelector("[data-link]").href = config.page.replace("ID", payload.id);
    document.getElementById("children").append(element);
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
  const duration = element.querySelector("[data-duration]");
  duration.dataset.started = payload.started_at || "";
  duration.dataset.finished = payload.finished_at || "";
  duration.textContent = formatDuration(durationOf(payload.started_at, payload.finished_at));
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

// --- start -------------------------------------------------------------------------------

// The output ends after the final status is stored: if its event is late, read it.
const main = newPane(document.getElementById("main-pane"), executionId, "Output", () => {
  if (!FINISHED.has(currentStatus)) reconcile();
});
main.start();
for (const element of document.querySelectorAll("#children > details.child")) {
  children.set(element.dataset.id, childEntry(element));
}
for (const payload of config.children) upsertChild(payload);
if (config.workflow && !FINISHED.has(config.execution.status)) {
  // Nothing runs yet or the running task is open already; otherwise show the newest task.
  const last = [...children.values()].at(-1);
  if (last && !FINISHED.has(last.payload.status) && !last.element.open) last.element.open = true;
}
if (!FINISHED.has(config.execution.status)) openLifecycle();
bindButtons();
tickDurations(document);
