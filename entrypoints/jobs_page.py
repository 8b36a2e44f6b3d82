"""The jobs view of the ops server (/ui/jobs): one page for people, on both brokers.

It only reads the ops server's own JSON (/jobs, /jobs/{id}, /workers) and posts replays to
/dead-letters/{id}/replay, from the same origin, so the ops server's auth covers it. No build step
and no library: a page of plain HTML and a little JavaScript, refreshed every two seconds.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>atelier jobs</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.6em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
  code { font-size: .92em; } .empty { color: #777; } .error { color: #a00; }
  progress { width: 12em; }
</style>
</head>
<body>
<h1>atelier jobs</h1>
<form id="search"><label>Message id <input id="q" name="id" size="40" autocomplete="off"></label>
<button type="submit">Show</button></form>
<div id="job"></div>
<h2>Running</h2><div id="running"></div>
<h2>Recent failures</h2><div id="failed"></div>
<h2>Workers</h2><div id="workers"></div>
<script>
"use strict";
const text = (value) => value === null || value === undefined ? "" : String(value);
function cell(row, value) { const td = row.insertCell(); td.textContent = text(value); return td; }
function table(target, headers, items, fill) {
  const box = document.getElementById(target);
  box.replaceChildren();
  if (!items.length) { const p = document.createElement("p"); p.className = "empty"; p.textContent = "none";
                       box.append(p); return; }
  const t = document.createElement("table"), head = t.createTHead().insertRow();
  for (const h of headers) { const th = document.createElement("th"); th.textContent = h; head.append(th); }
  const body = t.createTBody();
  for (const item of items) fill(body.insertRow(), item);
  box.append(t);
}
async function json(path, options) {
  // From the origin: a page opened as http://user:pass@host/ has credentials in its own URL, and
  // fetch refuses a URL resolved against it; the browser resends the credentials it has cached.
  const response = await fetch(location.origin + path, Object.assign({credentials: "same-origin"}, options || {}));
  return {status: response.status, body: await response.json().catch(() => ({}))};
}
function progressCell(row, job) {
  const td = row.insertCell();
  if (job.progress) {
    const bar = document.createElement("progress");
    bar.max = 1; bar.value = job.progress.fraction; bar.dataset.messageId = job.message_id;
    td.append(bar, " " + Math.round(job.progress.fraction * 100) + "% " + text(job.progress.note));
  }
}
async function replay(button) {
  button.disabled = true;
  const r = await json("/dead-letters/" + encodeURIComponent(button.dataset.letter) + "/replay", {method: "POST"});
  button.textContent = r.status === 200 ? "replayed as " + r.body.message_id : (r.body.error || "refused");
}
async function showJob(id) {
  const box = document.getElementById("job");
  if (!id) { box.replaceChildren(); return; }
  const r = await json("/jobs/" + encodeURIComponent(id));
  if (r.status !== 200) { box.innerHTML = ""; const p = document.createElement("p"); p.className = "error";
                          p.textContent = "no job " + id; box.append(p); return; }
  table("job", ["message id", "actor", "status", "attempts", "progress", "reason", "enqueued", "finished"],
        [r.body], (row, j) => { cell(row, j.message_id); cell(row, j.actor); cell(row, j.status);
          cell(row, j.attempts); progressCell(row, j); cell(row, j.reason || j.error); cell(row, j.enqueued_at);
          cell(row, j.finished_at); });
}
async function refresh() {
  const id = new URLSearchParams(location.search).get("id");
  document.getElementById("q").value = id || "";
  await showJob(id);
  const running = await json("/jobs?status=running&limit=50");
  table("running", ["message id", "actor", "progress", "started"], running.body.jobs || [],
        (row, j) => { cell(row, j.message_id); cell(row, j.actor); progressCell(row, j); cell(row, j.started_at); });
  const failed = await json("/jobs?status=failed&limit=20");
  table("failed", ["message id", "actor", "reason", "error", "finished", "dead letter"], failed.body.jobs || [],
        (row, j) => { cell(row, j.message_id); cell(row, j.actor); cell(row, j.reason); cell(row, j.error);
          cell(row, j.finished_at);
          const td = row.insertCell();
          if (j.dead_letter_id) { const b = document.createElement("button"); b.textContent = "replay";
            b.dataset.letter = j.dead_letter_id; b.onclick = () => replay(b); td.append(b); } });
  const workers = await json("/workers");
  table("workers", ["host", "pid", "queues", "threads busy", "last seen", "alive"], workers.body.workers || [],
        (row, w) => { cell(row, w.host); cell(row, w.pid); cell(row, (w.queues || []).join(", "));
          cell(row, text(w.busy) + " / " + text(w.threads)); cell(row, w.last_seen); cell(row, w.alive); });
  document.body.dataset.loaded = "yes";
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
