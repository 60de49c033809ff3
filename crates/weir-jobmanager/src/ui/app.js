// Weir's web UI: a client of the REST API (see docs/rest.md), redrawn once a second.
// Pages: #/ (cluster overview), #/jobs, #/jobs/{id}/{overview|checkpoints|exceptions}.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const REFRESH_MS = 1000;
let token = localStorage.getItem('weir-token') || '';
let current = null; // the last rendered job (for the buttons and the dialog)
let timer = null;

// ---- REST -----------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token && method !== 'GET') headers.Authorization = 'Bearer ' + token;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const msg = (data && data.errors && data.errors[0]) || text || resp.statusText;
    throw new Error(resp.status + ': ' + msg);
  }
  return data;
}

// ---- Formatting -----------------------------------------------------------------------------

function bytes(n) {
  n = Number(n || 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + units[i];
}
function duration(ms) {
  ms = Number(ms || 0);
  if (ms < 1000) return ms.toFixed(0) + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + Math.floor(s % 60) + 's';
  return Math.floor(m / 60) + 'h ' + (m % 60) + 'm';
}
function rate(n) {
  n = Number(n || 0);
  if (n >= 1e6) return (n / 1e6).toFixed(2) + ' M/s';
  if (n >= 1e3) return (n / 1e3).toFixed(1) + ' k/s';
  return n.toFixed(0) + ' /s';
}
function count(n) { return Number(n || 0).toLocaleString('en'); }
function clock(ms) { return ms > 0 ? new Date(ms).toLocaleTimeString('en-GB') : '–'; }
function pct(msPerSecond) { return Math.round(Number(msPerSecond || 0) / 10) + '%'; }
const state = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;

// ---- Routing --------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (parts[0] === 'jobs' && parts[1]) return { page: 'job', id: parts[1], tab: parts[2] || 'overview' };
  if (parts[0] === 'jobs') return { page: 'jobs' };
  return { page: 'overview' };
}

async function render() {
  clearTimeout(timer);
  const r = route();
  document.querySelectorAll('header nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === (r.page === 'job' ? 'jobs' : r.page)));
  try {
    if (r.page === 'overview') await renderOverview();
    else if (r.page === 'jobs') await renderJobs();
    else await renderJob(r.id, r.tab);
    $('#status').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB');
  } catch (e) {
    $('#status').textContent = 'cannot reach the JobManager: ' + e.message;
  }
  timer = setTimeout(render, REFRESH_MS);
}

// ---- Pages ----------------------------------------------------------------------------------

function jobsTable(jobs) {
  if (!jobs.length) return '<p class="muted">No jobs yet. Submit one with <code>weir run</code> or <code>POST /jobs</code>.</p>';
  const rows = jobs.slice().reverse().map((j) => `<tr>
      <td><a href="#/jobs/${esc(j.jid)}">${esc(j.name)}</a></td><td>${state(j.state)}</td>
      <td>${clock(j['start-time'])}</td><td class="num">${duration(j.duration)}</td>
      <td class="num">${j.tasks.running} / ${j.tasks.total}</td><td class="muted">${esc(j.jid)}</td></tr>`).join('');
  return `<table id="jobs-table"><thead><tr><th>Job</th><th>State</th><th>Started</th><th class="num">Duration</th>
      <th class="num">Tasks running</th><th>Id</th></tr></thead><tbody>${rows}</tbody></table>`;
}

async function renderOverview() {
  const [o, tms, jobs] = await Promise.all([api('GET', '/overview'), api('GET', '/taskmanagers'), api('GET', '/jobs/overview')]);
  const card = (k, v) => `<div class="card"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`;
  const tmRows = tms.taskmanagers.map((t) => `<tr><td>${esc(t.id)}</td><td>${esc(t.path)}</td><td>${esc(t.dataAddress)}</td>
      <td class="num">${t.slotsNumber}</td><td class="num">${t.freeSlots}</td></tr>`).join('');
  $('#main').innerHTML = `<h2>Cluster</h2><p class="muted">Weir ${esc(o['weir-version'])}</p>
    <div class="cards" id="overview-cards">${card('TaskManagers', o.taskmanagers)}${card('Slots', o['slots-total'])}
      ${card('Slots available', o['slots-available'])}${card('Jobs running', o['jobs-running'])}
      ${card('Finished', o['jobs-finished'])}${card('Failed', o['jobs-failed'])}${card('Canceled', o['jobs-cancelled'])}</div>
    <h3>TaskManagers</h3><table id="taskmanagers-table"><thead><tr><th>Id</th><th>RPC</th><th>Data</th><th class="num">Slots</th>
      <th class="num">Free</th></tr></thead><tbody>${tmRows}</tbody></table>
    <h3>Jobs</h3>${jobsTable(jobs.jobs)}`;
}

async function renderJobs() {
  const jobs = await api('GET', '/jobs/overview');
  $('#main').innerHTML = `<h2>Jobs</h2>${jobsTable(jobs.jobs)}`;
}

async function renderJob(id, tab) {
  const job = await api('GET', '/jobs/' + encodeURIComponent(id));
  current = job;
  let body = '';
  if (tab === 'checkpoints') {
    const [cps, config] = await Promise.all([api('GET', `/jobs/${id}/checkpoints`), api('GET', `/jobs/${id}/checkpoints/config`)]);
    current.checkpointConfig = config;
    body = checkpointsTab(cps, config);
  } else if (tab === 'exceptions') {
    const ex = await api('GET', `/jobs/${id}/exceptions`);
    body = ex['root-exception'] ? `<pre class="failure">${esc(ex['root-exception'])}</pre>` : '<p class="muted">No failure.</p>';
  } else {
    const [history, ...vertices] = await Promise.all([api('GET', `/jobs/${id}/metrics/history`),
      ...job.vertices.map((v) => api('GET', `/jobs/${id}/vertices/${v.id}`))]);
    body = overviewTab(job, history, vertices);
  }
  const tabs = ['overview', 'checkpoints', 'exceptions'].map((t) =>
    `<a href="#/jobs/${esc(id)}/${t}" data-tab="${t}" class="${t === tab ? 'active' : ''}">${t[0].toUpperCase() + t.slice(1)}</a>`).join('');
  const running = ['RUNNING', 'CREATED', 'RESTARTING', 'FINISHING'].includes(job.state);
  $('#main').innerHTML = `<h2 id="job-name">${esc(job.name)} ${state(job.state)}</h2>
    <p class="muted">${esc(job.jid)} · started ${clock(job['start-time'])} · ${duration(job.duration)} · attempt ${job.attempt} · ${job.restarts} restarts</p>
    <div class="toolbar">
      <button id="trigger-checkpoint" ${running ? '' : 'disabled'}>Trigger checkpoint</button>
      <button id="trigger-savepoint" ${running ? '' : 'disabled'}>Trigger savepoint</button>
      <button id="configure-button" ${running ? '' : 'disabled'}>Configure checkpoints</button>
      <button id="cancel-job" class="danger" ${running ? '' : 'disabled'}>Cancel job</button>
      <span id="action-message" class="muted"></span>
    </div>
    <div class="tabs">${tabs}</div>${body}`;
  $('#trigger-checkpoint').onclick = () => act('POST', `/jobs/${id}/checkpoints`, {}, (r) => 'checkpoint ' + r['checkpoint-id'] + ' triggered');
  $('#trigger-savepoint').onclick = () => act('POST', `/jobs/${id}/savepoints`, {}, (r) => 'savepoint requested (' + r['request-id'] + ')');
  $('#cancel-job').onclick = () => confirm('Cancel job ' + job.name + '?') && act('PATCH', `/jobs/${id}?mode=cancel`, undefined, () => 'canceling');
  $('#configure-button').onclick = () => openConfigure(id);
}

async function act(method, path, body, done) {
  const msg = $('#action-message');
  try {
    const r = await api(method, path, body);
    msg.textContent = done(r || {});
    msg.className = 'muted';
  } catch (e) {
    msg.textContent = e.message;
    msg.className = 'error';
  }
}

// ---- Job overview: graph, vertices, throughput ----------------------------------------------

// Green when a vertex is never backpressured, through yellow to red when it always is.
function pressureColour(msPerSecond) {
  const x = Math.min(1, Math.max(0, Number(msPerSecond || 0) / 1000));
  const hue = 130 - 130 * x;
  return `hsl(${hue}, 62%, ${92 - 30 * x}%)`;
}

function graphSvg(job) {
  const plan = job.plan;
  if (!plan || !plan.nodes.length) return '';
  const byId = Object.fromEntries(job.vertices.map((v) => [v.id, v]));
  const level = {};
  const order = plan.nodes.map((n) => n.id);
  for (let pass = 0; pass < order.length; pass++) {
    for (const id of order) {
      const inputs = plan.edges.filter((e) => e.target === id).map((e) => (level[e.source] ?? 0) + 1);
      level[id] = Math.max(0, ...inputs);
    }
  }
  const columns = {};
  for (const id of order) (columns[level[id]] = columns[level[id]] || []).push(id);
  const W = 320, H = 70, GX = 90, GY = 26, PAD = 12;
  const pos = {};
  let height = 0;
  for (const [col, ids] of Object.entries(columns)) {
    ids.forEach((id, i) => { pos[id] = { x: PAD + col * (W + GX), y: PAD + i * (H + GY) }; });
    height = Math.max(height, PAD * 2 + ids.length * (H + GY) - GY);
  }
  const width = PAD * 2 + Object.keys(columns).length * (W + GX) - GX;
  const edges = plan.edges.map((e) => {
    const a = pos[e.source], b = pos[e.target];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    return `<path d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 6},${y2}" fill="none" stroke="#8c96a5" stroke-width="1.5" marker-end="url(#arrow)"/>
      <text x="${mx}" y="${(y1 + y2) / 2 - 6}" text-anchor="middle" fill="#6b7280">${esc(e.ship_strategy)}</text>`;
  }).join('');
  const nodes = plan.nodes.map((n) => {
    const p = pos[n.id], v = byId[n.id] || { metrics: {} }, m = v.metrics || {};
    const name = n.description.length > 44 ? n.description.slice(0, 43) + '…' : n.description;
    return `<g class="vertex" data-vertex="${esc(n.id)}">
      <rect x="${p.x}" y="${p.y}" width="${W}" height="${H}" rx="6" fill="${pressureColour(m.backPressuredTimeMsPerSecond)}" stroke="#9aa4b2"/>
      <text x="${p.x + 10}" y="${p.y + 18}" font-weight="600">${esc(name)}</text>
      <text x="${p.x + 10}" y="${p.y + 36}" fill="#444c56">parallelism ${n.parallelism} · busy ${pct(m.busyTimeMsPerSecond)} · backpressured ${pct(m.backPressuredTimeMsPerSecond)}</text>
      <text x="${p.x + 10}" y="${p.y + 54}" fill="#444c56">in ${rate(m.numRecordsInPerSecond)} · out ${rate(m.numRecordsOutPerSecond)}</text></g>`;
  }).join('');
  return `<svg id="job-graph" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">
      <path d="M0,0 L10,5 L0,10 z" fill="#8c96a5"/></marker></defs>${edges}${nodes}</svg>`;
}

function lineChart(id, title, series, format) {
  const W = 640, H = 190, L = 64, B = 22, T = 20;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const times = series.flatMap((s) => s.points.map((p) => p[0]));
  if (!all.length) return `<div class="panel"><b>${esc(title)}</b><p class="muted">No data yet.</p></div>`;
  const max = Math.max(1, ...all), t0 = Math.min(...times), t1 = Math.max(t0 + 1, ...times);
  const x = (t) => L + (W - L - 10) * (t - t0) / (t1 - t0), y = (v) => H - B - (H - B - T) * v / max;
  const palette = ['#1f6feb', '#cf222e', '#2da44e', '#8250df', '#d4a72c', '#0a7ea4'];
  const lines = series.map((s, i) => `<polyline fill="none" stroke="${palette[i % palette.length]}" stroke-width="1.8"
      points="${s.points.map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ')}"/>`).join('');
  const legend = series.map((s, i) => `<span><i style="background:${palette[i % palette.length]}"></i>${esc(s.name)}</span>`).join('');
  return `<div class="panel"><b>${esc(title)}</b><div class="legend">${legend}</div>
    <svg id="${id}" width="100%" viewBox="0 0 ${W} ${H}">
      <line x1="${L}" y1="${H - B}" x2="${W - 10}" y2="${H - B}" stroke="#ccd"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#ccd"/>
      <text x="${L - 6}" y="${T + 4}" text-anchor="end" fill="#6b7280">${esc(format(max))}</text>
      <text x="${L - 6}" y="${H - B}" text-anchor="end" fill="#6b7280">0</text>
      <text x="${L}" y="${H - 4}" fill="#6b7280">${clock(t0)}</text><text x="${W - 10}" y="${H - 4}" text-anchor="end" fill="#6b7280">${clock(t1)}</text>
      ${lines}</svg></div>`;
}

function subtasksTable(vertices) {
  const rows = vertices.flatMap((v) => v.subtasks.map((s) => {
    const m = s.metrics;
    return `<tr><td>${esc(v.name)}</td><td class="num">${s.subtask}</td><td>${esc(s['taskmanager-id'])}</td>
      <td class="num">${rate(m.numRecordsInPerSecond)}</td><td class="num">${rate(m.numRecordsOutPerSecond)}</td>
      <td class="num">${bytes(m.numBytesInPerSecond)}/s</td><td class="num">${bytes(m.numBytesOutPerSecond)}/s</td>
      <td class="num">${pct(m.busyTimeMsPerSecond)}</td><td class="num">${pct(m.idleTimeMsPerSecond)}</td><td class="num">${pct(m.backPressuredTimeMsPerSecond)}</td>
      <td class="num">${m.inputQueueLength} / ${m.inputCredit}</td><td class="num">${m.outputQueueLength} / ${m.outputCredit}</td>
      <td class="num">${bytes(m.stateSize)}</td><td class="num">${m.lastCheckpointId || '–'}</td>
      <td class="num">${duration(m.lastCheckpointSyncDuration)} / ${duration(m.lastCheckpointAsyncDuration)}</td></tr>`;
  })).join('');
  if (!rows) return '';
  return `<h3>Subtasks</h3><table id="subtasks-table"><thead><tr><th>Vertex</th><th class="num">Subtask</th><th>TaskManager</th>
    <th class="num">In</th><th class="num">Out</th><th class="num">Bytes in</th><th class="num">Bytes out</th><th class="num">Busy</th>
    <th class="num">Idle</th><th class="num">Backpressured</th><th class="num">In queue / credit</th><th class="num">Out queue / credit</th>
    <th class="num">State</th><th class="num">Checkpoint</th><th class="num">Sync / async</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function overviewTab(job, history, vertices) {
  const rows = job.vertices.map((v) => {
    const m = v.metrics || {};
    return `<tr data-vertex="${esc(v.id)}"><td>${esc(v.name)}</td><td>${state(v.status)}</td><td class="num">${v.parallelism}</td>
      <td class="num">${count(m['read-records'])}</td><td class="num">${count(m['write-records'])}</td>
      <td class="num">${rate(m.numRecordsInPerSecond)}</td><td class="num">${rate(m.numRecordsOutPerSecond)}</td>
      <td class="num">${pct(m.busyTimeMsPerSecond)}</td><td class="num">${pct(m.backPressuredTimeMsPerSecond)}</td>
      <td class="num">${count(m.inputQueueLength)}</td><td class="num">${count(m.outputQueueLength)}</td><td class="num">${bytes(m.stateSize)}</td></tr>`;
  }).join('');
  const series = (field) => job.vertices.map((v) => ({
    name: v.name,
    points: history.points.map((p) => [p.time, (p.vertices.find((x) => x.id === Number(v.id)) || {})[field]]).filter((p) => p[1] !== undefined),
  })).filter((s) => s.points.length);
  return `<div class="panel">${graphSvg(job)}</div>
    <div class="legend"><span><i style="background:${pressureColour(0)}"></i>not backpressured</span>
      <span><i style="background:${pressureColour(500)}"></i>half the time</span><span><i style="background:${pressureColour(1000)}"></i>always</span></div>
    <h3>Vertices</h3><table id="vertices-table"><thead><tr><th>Vertex</th><th>Status</th><th class="num">Parallelism</th>
      <th class="num">Records in</th><th class="num">Records out</th><th class="num">In</th><th class="num">Out</th>
      <th class="num">Busy</th><th class="num">Backpressured</th><th class="num">In queue</th><th class="num">Out queue</th>
      <th class="num">State</th></tr></thead><tbody>${rows}</tbody></table>
    <h3>Throughput</h3><div class="plots">
      ${lineChart('records-out-plot', 'Records out per second', series('numRecordsOutPerSecond'), rate)}
      ${lineChart('backpressure-plot', 'Backpressured (ms per second)', series('backPressuredTimeMsPerSecond'), (v) => v.toFixed(0) + ' ms')}</div>
    ${subtasksTable(vertices)}`;
}

// ---- Checkpoints ----------------------------------------------------------------------------

function kindColour(c) {
  if (c.status === 'FAILED') return '#cf222e';
  if (c.is_savepoint) return '#2da44e';
  return c.checkpoint_type === 'UNALIGNED_CHECKPOINT' ? '#8250df' : '#1f6feb';
}

function barChart(id, title, checkpoints, value, format) {
  const W = 640, H = 190, L = 64, B = 22, T = 14;
  const cps = checkpoints.slice(0, 60).reverse();
  if (!cps.length) return `<div class="panel"><b>${esc(title)}</b><p class="muted">No checkpoint yet.</p></div>`;
  const max = Math.max(1, ...cps.map(value));
  const bw = Math.max(2, (W - L - 10) / cps.length - 2);
  const bars = cps.map((c, i) => {
    const h = (H - B - T) * value(c) / max, x = L + i * (bw + 2);
    return `<rect x="${x.toFixed(1)}" y="${(H - B - h).toFixed(1)}" width="${bw.toFixed(1)}" height="${Math.max(0.5, h).toFixed(1)}" fill="${kindColour(c)}">
      <title>#${c.id} ${esc(c.checkpoint_type)} ${esc(format(value(c)))}</title></rect>`;
  }).join('');
  return `<div class="panel"><b>${esc(title)}</b><svg id="${id}" width="100%" viewBox="0 0 ${W} ${H}">
      <line x1="${L}" y1="${H - B}" x2="${W - 10}" y2="${H - B}" stroke="#ccd"/>
      <text x="${L - 6}" y="${T + 4}" text-anchor="end" fill="#6b7280">${esc(format(max))}</text>
      <text x="${L - 6}" y="${H - B}" text-anchor="end" fill="#6b7280">0</text>
      <text x="${L}" y="${H - 4}" fill="#6b7280">#${cps[0].id}</text>
      <text x="${W - 10}" y="${H - 4}" text-anchor="end" fill="#6b7280">#${cps[cps.length - 1].id}</text>${bars}</svg></div>`;
}

function checkpointsTab(cps, config) {
  const c = cps.counts;
  const card = (k, v) => `<div class="card"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`;
  const rows = cps.history.slice(0, 100).map((h) => `<tr data-checkpoint="${h.id}">
      <td class="num">${h.id}</td><td>${state(h.status)}</td><td class="kind ${esc(h.checkpoint_type)}">${esc(h.checkpoint_type)}${h.timed_out_to_unaligned ? ' (timed out)' : ''}</td>
      <td>${clock(h.trigger_timestamp)}</td><td class="num">${duration(h.end_to_end_duration)}</td><td class="num">${bytes(h.state_size)}</td>
      <td class="num">${bytes(h.persisted_data)}</td><td class="num">${duration(h.alignment_duration)}</td>
      <td class="num">${duration(h.sync_duration)}</td><td class="num">${duration(h.async_duration)}</td>
      <td class="num">${h.num_acknowledged_subtasks}/${h.num_subtasks}</td><td class="muted">${esc(h.failure_message || h.external_path || '')}</td></tr>`).join('');
  const settings = [
    ['Mode', config.mode], ['Interval', config.interval == null ? 'off' : duration(config.interval)], ['Timeout', duration(config.timeout)],
    ['Min pause', duration(config.min_pause)], ['Max concurrent', config.max_concurrent], ['Unaligned', config.unaligned_checkpoints],
    ['Aligned checkpoint timeout', duration(config.aligned_checkpoint_timeout)], ['Tolerable failures', config.tolerable_failed_checkpoints],
    ['Retained', config.num_retained], ['State backend', config.state_backend], ['Storage', config.checkpoint_storage],
  ].map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join('');
  const changes = (cps.config_changes || []).slice().reverse().map((ch) => `<tr><td>${clock(ch.timestamp)}</td>
      <td>${Object.entries(ch.changes).map(([k, v]) => esc(k) + ' = ' + esc(v)).join('<br>')}</td></tr>`).join('');
  return `<div class="cards" id="checkpoint-counts">${card('Completed', c.completed)}${card('Failed', c.failed)}${card('In progress', c.in_progress)}
      ${card('Latest duration', cps.latest.completed ? duration(cps.latest.completed.end_to_end_duration) : '–')}
      ${card('Latest size', cps.latest.completed ? bytes(cps.latest.completed.state_size) : '–')}</div>
    <div class="legend"><span><i style="background:#1f6feb"></i>aligned</span><span><i style="background:#8250df"></i>unaligned</span>
      <span><i style="background:#2da44e"></i>savepoint</span><span><i style="background:#cf222e"></i>failed</span></div>
    <div class="plots">${barChart('checkpoint-duration-plot', 'Duration', cps.history, (h) => h.end_to_end_duration, duration)}
      ${barChart('checkpoint-size-plot', 'Size', cps.history, (h) => h.state_size, bytes)}</div>
    <h3>History</h3><table id="checkpoint-history"><thead><tr><th class="num">Id</th><th>Status</th><th>Type</th><th>Triggered</th>
      <th class="num">Duration</th><th class="num">Size</th><th class="num">Persisted in-flight</th><th class="num">Alignment</th>
      <th class="num">Sync</th><th class="num">Async</th><th class="num">Acks</th><th>Path / failure</th></tr></thead><tbody>${rows}</tbody></table>
    <h3>Settings</h3><table class="kv" id="checkpoint-config"><tbody>${settings}</tbody></table>
    ${changes ? `<h3>Changes while running</h3><table id="config-changes"><tbody>${changes}</tbody></table>` : ''}`;
}

// ---- Configure dialog -----------------------------------------------------------------------

const inputValue = (input) => (input.type === 'checkbox' ? String(input.checked) : input.value.trim());

async function openConfigure(id) {
  const dialog = $('#configure-dialog');
  const config = await api('GET', `/jobs/${id}/checkpoints/config`);
  const now = {
    'execution.checkpointing.interval': config.interval == null ? '' : config.interval + 'ms',
    'execution.checkpointing.timeout': config.timeout + 'ms',
    'execution.checkpointing.min-pause': config.min_pause + 'ms',
    'execution.checkpointing.max-concurrent-checkpoints': String(config.max_concurrent),
    'execution.checkpointing.tolerable-failed-checkpoints': String(config.tolerable_failed_checkpoints),
    'execution.checkpointing.num-retained': String(config.num_retained),
    'execution.checkpointing.unaligned.enabled': String(config.unaligned_checkpoints),
    'execution.checkpointing.aligned-checkpoint-timeout': config.aligned_checkpoint_timeout + 'ms',
  };
  for (const input of dialog.querySelectorAll('input')) {
    if (input.type === 'checkbox') input.checked = now[input.name] === 'true';
    else input.value = now[input.name] ?? '';
    input.dataset.initial = inputValue(input);
  }
  $('#configure-message').textContent = '';
  dialog.dataset.job = id;
  dialog.showModal();
}

$('#configure-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const dialog = $('#configure-dialog');
  const changes = {};
  for (const input of dialog.querySelectorAll('input')) {
    if (inputValue(input) !== input.dataset.initial) changes[input.name] = inputValue(input);
  }
  if (!Object.keys(changes).length) { dialog.close(); return; }
  try {
    await api('PATCH', `/jobs/${dialog.dataset.job}/checkpoints/config`, changes);
    dialog.close();
    $('#action-message').textContent = 'applied: ' + Object.entries(changes).map(([k, v]) => k + '=' + v).join(', ');
  } catch (e) {
    $('#configure-message').textContent = e.message;
  }
});
$('#configure-cancel').onclick = () => $('#configure-dialog').close();

$('#token-button').onclick = () => {
  const t = prompt('The cluster token (security.token), used for the buttons that change something:', token);
  if (t !== null) { token = t.trim(); localStorage.setItem('weir-token', token); }
};

window.addEventListener('hashchange', render);
render();
