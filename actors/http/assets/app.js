// The bgnode dashboard: one page on the node's JSON API (/api/v1, see API.md), routed by the
// location's hash, in plain JavaScript: no framework, no build step.
//
// Task arguments, results and errors are untrusted. Every piece of data reaches the page as
// text (textContent, attribute values, SVG <title>): nothing here parses a string as HTML, and
// the Content-Security-Policy (Trusted Types) makes the browser refuse it anyway.
'use strict';

const API = '/api/v1';
/** The filters of the task list, as `GET /tasks?state=` spells them. */
const LISTED = [['', 'All'], ['pending', 'Pending'], ['claimed', 'Claimed'], ['running', 'Running'],
  ['scheduled', 'Scheduled'], ['retrying', 'Retrying'], ['deferred', 'Deferred'], ['done', 'Done'],
  ['failed', 'Failed'], ['dead', 'Dead'], ['cancelled', 'Cancelled'], ['expired', 'Expired']];
const STATES = new Set(['queued', 'running', 'scheduled', 'retrying', 'deferred', 'done',
  'failed', 'dead', 'cancelled', 'expired']);
const FINISHED = new Set(['done', 'failed', 'dead', 'cancelled', 'expired']);
/** The state a task is in after each event (`error` is followed by the one that says). */
const AFTER = { available: 'queued', started: 'running', done: 'done', retry: 'retrying',
  dead: 'dead', cancelled: 'cancelled', expired: 'expired' };
/** The colour of an attempt's outcome or a moment of the timeline that is not a state. */
const OUTCOME = { retried: 'retrying', retry: 'retrying', claimed: 'queued', started: 'running', due: 'scheduled' };
const PAGE = 25;
const BARS = 90; // the chart: 90 bars of 10 s, the last 15 minutes
const STEP = 10000;

const app = {
  token: sessionStorage.getItem('bgnode.token') || '',
  overview: null, // the latest GET /overview
  skew: 0, // the node's clock minus this browser's, from the answers' Date header (ms)
  view: null, // the page shown: { refresh(), onEvent(event) }
  seq: 0, // counts navigations: an answer for an earlier page is dropped
  live: { done: 0, failures: 0 }, // events seen since the latest overview
  events: 0, // events received since the page opened
  trail: [], // the cursors of the pages before this one, for "Newer"
  stream: null, // aborts the event stream
};

// ---- Building the page ------------------------------------------------------------------

/** An element `tag.class.class` with attributes and children (text, nodes, arrays, null). */
function h(tag, attrs, ...kids) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(' ');
  setAttrs(el, attrs);
  add(el, kids);
  return el;
}

/** An SVG element with attributes and children. */
function s(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  add(el, kids);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function add(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
}

const $ = (sel, root = document) => root.querySelector(sel);

/** A state's pill, in its colour; `text` when it says something else than the state. */
function badge(state, text) {
  return h(`span.badge.s-${STATES.has(state) ? state : 'other'}`, {}, text || state || '?');
}

function link(route, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
  const text = q.toString();
  return `#/${route}${text ? `?${text}` : ''}`;
}

const taskLink = (id) => h('a.mono', { href: `#/task/${encodeURIComponent(id)}` }, id);

/** A load bar: `used` of `total`. */
function meter(used, total) {
  const fill = h('span');
  fill.style.width = `${total ? Math.min(100, (100 * used) / total) : 0}%`;
  return h('span.meter', { title: `${used} of ${total}` }, fill);
}

function empty(text) {
  return h('p.empty', {}, text);
}

function table(head, rows, emptyText) {
  if (!rows.length) return empty(emptyText);
  return h('table', {}, h('thead', {}, h('tr', {}, head.map((c) => h(c.startsWith('#') ? 'th.num' : 'th', {}, c.replace(/^#/, ''))))),
    h('tbody', {}, rows));
}

function section(title, extra, ...body) {
  return h('section.card', {}, h('div.card-head', {}, h('h2', {}, title), extra), body);
}

// ---- Time ----------------------------------------------------------------------------------

const now = () => Date.now() + app.skew;

function span(ms) {
  const x = Math.abs(ms);
  if (x < 1000) return `${Math.round(x)} ms`;
  if (x < 60000) return `${Math.round(x / 1000)} s`;
  if (x < 3600000) return `${Math.round(x / 60000)} min`;
  if (x < 172800000) return `${Math.round(x / 3600000)} h`;
  return `${Math.round(x / 86400000)} d`;
}

function relative(ms) {
  const d = ms - now();
  return Math.abs(d) < 1500 ? 'now' : d > 0 ? `in ${span(d)}` : `${span(d)} ago`;
}

function absolute(ms) {
  const d = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** A time shown as "3 s ago" (kept current), with the exact time on hover. */
function time(ms) {
  if (!ms) return h('span.muted', {}, '—');
  return h('time', { 'data-at': ms, datetime: new Date(ms).toISOString(), title: absolute(ms) }, relative(ms));
}

function tickTimes() {
  for (const el of document.querySelectorAll('time[data-at]')) el.textContent = relative(Number(el.dataset.at));
}

function every(ms) {
  const units = [[86400000, 'd'], [3600000, 'h'], [60000, 'min'], [1000, 's']];
  const unit = units.find(([n]) => ms % n === 0 && ms >= n);
  return unit ? `every ${ms / unit[0]} ${unit[1]}` : `every ${ms} ms`;
}

// ---- Talking to the node -------------------------------------------------------------------

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const out = { ...extra };
  if (app.token) out.Authorization = `Bearer ${app.token}`;
  return out;
}

/** One API call; its JSON answer, or a `Refused` with the API's reason. */
async function api(method, path, body) {
  const res = await fetch(API + path, {
    method,
    headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
  });
  const date = Date.parse(res.headers.get('Date') || '');
  if (date) {
    const skew = date + 500 - Date.now();
    app.skew = Math.abs(skew) > 2000 ? skew : 0;
  }
  const data = await res.json().catch(() => null);
  if (res.status === 401) showLogin(app.token ? 'The node refused this token.' : '');
  if (!res.ok) throw new Refused(res.status, (data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

const query = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v));
const tasksPath = (params) => `/tasks?${query(params)}`;
const historyPath = (params) => `/history?${query(params)}`;

/** True when the node answered that it has no archive (404 `no archive…`). */
const noArchive = (e) => e instanceof Refused && e.status === 404 && /^no archive/.test(e.message);

/** Runs an action of a button; says how it went in a toast and refreshes the page. */
async function act(button, call, done) {
  button.disabled = true;
  try {
    const answer = await call();
    toast(done(answer));
  } catch (e) {
    toast(e.message, true);
  } finally {
    button.disabled = false;
    refresh();
  }
}

/** A button that asks for a second click within 4 s before it acts. */
function confirmed(label, attrs, run) {
  const button = h('button.btn.danger', { type: 'button', ...attrs }, label);
  let armed = null;
  button.addEventListener('click', () => {
    if (!armed) {
      button.textContent = 'Sure?';
      button.classList.add('armed');
      armed = setTimeout(() => {
        armed = null;
        button.textContent = label;
        button.classList.remove('armed');
      }, 4000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    button.classList.remove('armed');
    run(button);
  });
  return button;
}

function toast(text, bad) {
  const el = h(bad ? 'div.toast.bad' : 'div.toast', { role: 'status' }, text);
  $('#toasts').append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 3500);
}

// ---- The event stream ----------------------------------------------------------------------

function setLive(text, kind) {
  const el = $('#live');
  el.textContent = text;
  el.className = `live ${kind}`;
}

/** Reads GET /events with fetch (so that it can send the token) for as long as the page is
 *  open, reconnecting after a pause when it ends. */
async function stream() {
  if (app.stream) app.stream.abort();
  const stop = new AbortController();
  app.stream = stop;
  let pause = 1000;
  while (!stop.signal.aborted) {
    try {
      const res = await fetch(`${API}/events`, { headers: headers(), cache: 'no-store', credentials: 'omit', signal: stop.signal });
      if (res.status === 401) {
        setLive('signed out', 'off');
        showLogin('');
        return;
      }
      if (!res.ok) throw new Error(`${res.status}`);
      setLive('live', 'on');
      pause = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r/g, '');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          if (data) {
            try {
              onEvent(JSON.parse(data));
            } catch (e) {
              console.warn('bad event', e);
            }
          }
        }
      }
    } catch (e) {
      if (stop.signal.aborted) return;
    }
    setLive('reconnecting', 'wait');
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 15000);
  }
}

function onEvent(ev) {
  app.events += 1;
  $('#live').dataset.events = String(app.events);
  if (ev.event === 'done') app.live.done += 1;
  else if (ev.event === 'error') app.live.failures += 1;
  if (app.view && app.view.onEvent) app.view.onEvent(ev);
  soon();
}

/** Shows an event's effect on the row of its task at once (the refresh follows). */
function patchRow(ev) {
  const state = AFTER[ev.event];
  if (!state || !ev.id) return;
  const row = $(`tr[data-id="${CSS.escape(ev.id)}"]`);
  if (!row) return;
  const old = $('.badge', row);
  if (old) old.replaceWith(badge(state));
  row.classList.remove('flash');
  void row.offsetWidth; // restart the animation
  row.classList.add('flash');
}

// ---- Refreshing ----------------------------------------------------------------------------

let timer = null;
let running = null;
let again = false;

/** Refreshes soon: at most once a second however many events arrive. */
function soon() {
  if (!timer) timer = setTimeout(refresh, 1000);
}

/** Reads the overview, then the page's own data. */
async function refresh() {
  clearTimeout(timer);
  timer = null;
  if (running) {
    again = true;
    return running;
  }
  running = (async () => {
    try {
      setOverview(await api('GET', '/overview'));
      if (app.view) await app.view.refresh();
    } catch (e) {
      if (!(e instanceof Refused && e.status === 401)) failed(e);
    }
  })();
  await running;
  running = null;
  if (again) {
    again = false;
    soon();
  }
}

function setOverview(o) {
  app.overview = o;
  app.live = { done: 0, failures: 0 };
  $('#node').textContent = o.node;
  $('#dead-count').textContent = o.states.dead ? o.states.dead.toLocaleString() : '';
}

function failed(e) {
  const main = $('#main');
  const note = $('.failure', main) || h('p.failure', { role: 'alert' });
  note.textContent = `Cannot read the node: ${e.message}`;
  if (!note.isConnected) main.prepend(note);
}

/** A page: a fixed head (title, filters) and a body that each refresh replaces when its data
 *  changed. `load()` answers the data; `draw(data)` the body's children. */
function page(title, tools, load, draw, extra) {
  const seq = ++app.seq;
  const body = h('div.body');
  $('#main').replaceChildren(h('div.page-head', {}, h('h1', {}, title), h('div.tools', {}, tools)), body);
  let last = null;
  return {
    async refresh() {
      const data = await load();
      if (seq !== app.seq) return;
      $('.failure') && $('.failure').remove();
      const key = JSON.stringify(data);
      if (key === last) return;
      last = key;
      body.replaceChildren();
      add(body, [draw(data)]);
    },
    onEvent: patchRow,
    ...extra,
  };
}

// ---- Pages -----------------------------------------------------------------------------------

const PAGES = {};

PAGES.overview = () => page('Overview', [h('span.muted', { id: 'scope' })], async () => app.overview, (o) => {
  const workers = Object.keys(o.workers).length;
  $('#scope').textContent = `the cluster as ${o.node} sees it · ${o.members.length} ${o.members.length === 1 ? 'node' : 'nodes'} · ${workers} worker types`;
  const t = o.throughput;
  const hour = t.hour || { done: t.total.done || 0, failures: 0 };
  const cards = [
    ['Pending', o.states.pending, 'queued', 'pending', o.states.unrunnable ? `${o.states.unrunnable} cannot run now` : 'waiting for a node'],
    ['Claimed', o.states.claimed, 'queued', 'claimed', 'queued on a node'],
    ['Running', o.states.running, 'running', 'running', `${sum(o.members, 'capacity')} slots`],
    ['Scheduled', o.states.scheduled, 'scheduled', 'scheduled', 'delayed and recurring'],
    ['Deferred', o.states.deferred, 'deferred', 'deferred', 'waiting for a key'],
    ['Dead', o.states.dead, 'dead', 'dead', 'attempts used up'],
    ['Done', hour.done, 'done', 'done', t.hour ? 'in the last hour' : 'so far'],
  ].map(([label, n, color, state, note]) => h(`a.stat.c-${color}`, { href: state === 'dead' ? '#/dead' : link('tasks', { state }) },
    h('span.label', {}, label), h('span.value', {}, (n || 0).toLocaleString()), h('span.note', {}, note)));
  const rate = t.minute ? `${t.minute.done_per_second.toFixed(t.minute.done_per_second < 10 ? 1 : 0)}/s` : '—';
  return [
    h('div.stats', {}, cards),
    section('Throughput', h('div.legend', {}, h('span.muted', {}, 'per 10 s'),
      h('span.key.k-done', {}, 'done'), h('span.key.k-fail', {}, 'failed attempts'),
      h('span.muted', {}, ` · last minute ${rate} · last hour ${hour.done.toLocaleString()} done, ${hour.failures.toLocaleString()} failed`)),
    h('div.chart', { id: 'chart' }, chart(t, chartWidth()))),
    h('div.split', {},
      section('Workers', h('a.more', { href: '#/workers' }, 'manage'), workersTable(o, false)),
      section('Members', h('a.more', { href: '#/nodes' }, 'details'), membersTable(o.members))),
  ];
}, {
  onEvent(ev) {
    if (ev.event === 'done' || ev.event === 'error') redrawChart();
  },
});

function sum(list, field) {
  return list.reduce((n, x) => n + (x[field] || 0), 0);
}

let chartTimer = null;
function redrawChart() {
  if (chartTimer) return;
  chartTimer = setTimeout(() => {
    chartTimer = null;
    const box = $('#chart');
    if (box && app.overview) box.replaceChildren(chart(app.overview.throughput, chartWidth()));
  }, 250);
}

/** The chart's width: its box's, or (before it is shown) that of the page less a card's edges. */
function chartWidth() {
  const box = $('#chart');
  return Math.max(360, box ? box.clientWidth : $('#main').clientWidth - 34);
}

/** Bars of tasks done and attempts failed per 10 s over the last 15 minutes, from the
 *  overview's samples of the counters; the last bar grows with the live events. */
function chart(t, width) {
  const bars = Array.from({ length: BARS }, () => ({ done: 0, failures: 0 }));
  const samples = t.samples || [];
  const failures = (c) => (c.retried || 0) + (c.failed || 0) + (c.dead || 0);
  let end = now();
  if (samples.length) {
    end = samples[samples.length - 1].at;
    for (let i = 1; i < samples.length; i += 1) {
      const a = samples[i - 1];
      const b = samples[i];
      const n = Math.max(1, Math.round((b.at - a.at) / STEP));
      const at = BARS - 2 - Math.round((end - b.at) / STEP);
      for (let k = 0; k < n; k += 1) {
        if (at - k < 0) break;
        bars[at - k].done += Math.max(0, b.done - a.done) / n;
        bars[at - k].failures += Math.max(0, b.failures - a.failures) / n;
      }
    }
    const last = samples[samples.length - 1];
    bars[BARS - 1].done = Math.max(0, (t.total.done || 0) - last.done);
    bars[BARS - 1].failures = Math.max(0, failures(t.total) - last.failures);
  }
  bars[BARS - 1].done += app.live.done;
  bars[BARS - 1].failures += app.live.failures;

  const height = 180;
  const [left, right, top, bottom] = [44, 8, 10, 22];
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const peak = Math.max(...bars.map((b) => b.done + b.failures));
  const max = nice(peak);
  const y = (v) => top + plotH - (plotH * v) / max;
  const w = plotW / BARS;
  const grid = [0, max / 2, max].map((v) => [
    s('line', { x1: left, x2: width - right, y1: y(v), y2: y(v), class: 'grid' }),
    s('text', { x: left - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmt(v)),
  ]);
  const ticks = [15, 10, 5, 0].map((m) => s('text', {
    x: left + plotW - (m * 60000 / STEP) * w - (m ? 0 : w / 2),
    y: height - 6,
    class: 'axis',
    'text-anchor': m ? 'middle' : 'end',
  }, m ? `−${m} min` : 'now'));
  const rects = bars.map((b, i) => {
    const x = left + i * w + 0.5;
    const from = end - (BARS - 2 - i) * STEP;
    const label = `${absolute(from - STEP).slice(11, 19)}–${absolute(from).slice(11, 19)}: ${fmt(b.done)} done, ${fmt(b.failures)} failed`;
    return s('g', {}, s('title', {}, label),
      s('rect', { x, width: Math.max(1, w - 1), y: top, height: plotH, class: 'hit' }),
      b.done ? s('rect', { x, width: Math.max(1, w - 1), y: y(b.done), height: y(0) - y(b.done), class: 'bar-done' }) : null,
      b.failures ? s('rect', { x, width: Math.max(1, w - 1), y: y(b.done + b.failures), height: y(0) - y(b.failures), class: 'bar-fail' }) : null);
  });
  const note = peak ? null : s('text', { x: left + plotW / 2, y: top + plotH / 2, class: 'axis', 'text-anchor': 'middle' },
    samples.length ? 'Nothing finished in the last 15 minutes' : 'The first sample of the counters comes within 10 s');
  return s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Tasks done and failed attempts per 10 seconds' },
    grid, rects, note, ticks);
}

function nice(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function fmt(v) {
  return v >= 10 || Number.isInteger(v) ? Math.round(v).toLocaleString() : v.toFixed(1);
}

function pauseButton(name, paused) {
  const action = paused ? 'resume' : 'pause';
  const button = h(paused ? 'button.btn.primary' : 'button.btn', { type: 'button', 'data-action': action, 'data-worker': name },
    paused ? 'Resume' : 'Pause');
  button.addEventListener('click', () => act(button, () => api('POST', `/workers/${encodeURIComponent(name)}/${action}`),
    () => `${name} ${paused ? 'resumed' : 'paused'} on every node`));
  return button;
}

/** The worker types as a table; the overview's (not `manage`) lists the busiest first. */
function workersTable(o, manage) {
  const load = (w) => w.pending + w.claimed + w.running;
  const list = Object.entries(o.workers);
  if (!manage) list.sort(([a, x], [b, y]) => load(y) - load(x) || (a < b ? -1 : 1));
  const rows = list.map(([name, w]) => h(w.paused ? 'tr.paused' : 'tr', { 'data-worker': name },
    h('td', {}, h('a', { href: link('tasks', { worker: name }) }, name)),
    h('td', {}, w.paused ? h('span.badge.s-paused', {}, 'paused') : h('span.badge.s-active', {}, 'active')),
    h('td.num', {}, w.pending), h('td.num', {}, w.claimed),
    h('td.load', {}, meter(w.running, w.capacity), h('span.muted', {}, ` ${w.running} / ${w.capacity}`)),
    manage ? h('td', {}, w.nodes.join(', ') || h('span.warn', {}, 'no node offers it')) : null,
    manage ? h('td.actions', {}, pauseButton(name, w.paused)) : null));
  const head = ['Worker', 'State', '#Pending', '#Claimed', 'Running'];
  return table(manage ? [...head, 'Nodes', ''] : head, rows, 'No worker types yet.');
}

function membersTable(members) {
  const rows = members.map((m) => h('tr', {},
    h('td', {}, h('a', { href: '#/nodes' }, m.id)),
    h('td', {}, h(`span.badge.s-${m.state === 'up' ? 'active' : 'paused'}`, {}, m.state)),
    h('td.mono', {}, m.addr || '—'),
    h('td.load', {}, meter(m.running, m.capacity), h('span.muted', {}, ` ${m.running} / ${m.capacity}`)),
    h('td.num', {}, m.queued)));
  return table(['Node', 'State', 'Address', 'Running', '#Queued'], rows, 'No live node.');
}

/** Rows of tasks; `info` picks what the last column says. */
function taskRows(tasks, paused) {
  return tasks.map((t) => {
    let info = null;
    if (t.error) info = h('span.error', { title: t.error }, t.error);
    else if (t.unrunnable) info = h('span.warn', { title: t.unrunnable }, t.unrunnable);
    else if (t.state === 'queued' && paused.includes(t.worker)) info = h('span.warn', {}, 'worker paused');
    else if (t.every) info = h('span.muted', {}, every(t.every));
    else if (t.cron) info = h('span.muted', {}, `cron ${t.cron}`);
    else if (t.key) info = h('span.muted', {}, `key ${t.key}`);
    const moment = FINISHED.has(t.state) ? t.finished : t.due || t.started || t.created;
    return h('tr', { 'data-id': t.id },
      h('td', {}, taskLink(t.id)), h('td', {}, t.worker), h('td', {}, badge(t.state)),
      h('td', {}, t.node || h('span.muted', {}, '—')), h('td.num', {}, t.attempt),
      h('td', {}, time(t.created)), h('td', {}, time(moment)), h('td.info', {}, info));
  });
}

const TASK_HEAD = ['Id', 'Worker', 'State', 'Node', '#Attempt', 'Created', 'Updated / due', ''];

/** Newer / Older links of a listing whose current page starts at `cursor`. */
function pager(route, params, cursor, next) {
  const newer = cursor ? h('a.btn', { href: link(route, { ...params, cursor: app.trail[app.trail.length - 1] || '' }),
    click: () => app.trail.pop() }, '← Newer') : null;
  const older = next ? h('a.btn', { href: link(route, { ...params, cursor: next }), click: () => app.trail.push(cursor) }, 'Older →') : null;
  return newer || older ? h('div.pager', {}, newer, older) : null;
}

function workerSelect(route, params) {
  const names = Object.keys((app.overview && app.overview.workers) || {});
  const select = h('select', { 'aria-label': 'Worker', change: () => { location.hash = link(route, { ...params, worker: select.value }); } },
    h('option', { value: '' }, 'every worker'), names.map((n) => h('option', { value: n, selected: n === params.worker }, n)));
  return select;
}

PAGES.tasks = (arg, q) => {
  const params = { state: q.get('state') || '', worker: q.get('worker') || '', node: q.get('node') || '' };
  const cursor = q.get('cursor') || '';
  if (!cursor) app.trail = [];
  const tabs = h('nav.tabs');
  const drawTabs = () => {
    const counts = (app.overview && app.overview.states) || {};
    tabs.replaceChildren(...LISTED.map(([state, label]) => h(state === params.state ? 'a.tab.on' : 'a.tab',
      { href: link('tasks', { ...params, state }) }, label, counts[state] ? h('span.count', {}, counts[state].toLocaleString()) : null)));
  };
  const view = page(params.node ? `Tasks on ${params.node}` : 'Tasks', [workerSelect('tasks', params)],
    async () => api('GET', tasksPath({ ...params, limit: PAGE, cursor })),
    (p) => [table(TASK_HEAD, taskRows(p.tasks, app.overview ? app.overview.paused : []), 'No tasks here.'), pager('tasks', params, cursor, p.next)]);
  $('.page-head').after(tabs);
  const refreshRows = view.refresh;
  view.refresh = async () => {
    drawTabs();
    await refreshRows();
  };
  return view;
};

PAGES.task = (id) => {
  const view = page(h('span.mono', {}, id), [], async () => {
    try {
      return await api('GET', `/tasks/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof Refused && e.status === 404) return null;
      throw e;
    }
  }, (t) => {
    if (!t) return empty(`There is no task ${id}: never enqueued, deleted, or expired.`);
    if (t.archived) return archivedDetail(t, 'Redis no longer holds this task (saver.result_ttl): this is its row in the archive.');
    return taskDetail(t);
  });
  view.onEvent = (ev) => {
    if (ev.id === id && AFTER[ev.event] && $('#task-state')) $('#task-state').replaceChildren(badge(AFTER[ev.event]));
  };
  return view;
};

function json(value) {
  return value === null || value === undefined ? null : JSON.stringify(value, null, 2);
}

/** Keeps the `[label, value]` pairs of a card of fields that have a value. */
const present = ([, v]) => v !== null && v !== undefined && v !== '' && v !== false;

function taskDetail(t) {
  const actions = [];
  if (!FINISHED.has(t.state)) {
    const b = h('button.btn', { type: 'button', 'data-action': 'cancel' }, t.every || t.cron ? 'Stop recurring' : 'Cancel');
    b.addEventListener('click', () => act(b, () => api('POST', `/tasks/${encodeURIComponent(t.id)}/cancel`), (a) => `${t.id}: ${a.outcome}`));
    actions.push(b);
  } else {
    const b = h('button.btn.primary', { type: 'button', 'data-action': 'retry' }, 'Retry');
    b.addEventListener('click', () => act(b, () => api('POST', `/tasks/${encodeURIComponent(t.id)}/retry`), (a) => `${t.id}: ${a.outcome}`));
    actions.push(b, confirmed('Delete', { 'data-action': 'delete' }, (button) => act(button,
      () => api('DELETE', `/tasks/${encodeURIComponent(t.id)}`), () => {
        location.hash = '#/tasks';
        return `${t.id} deleted`;
      })));
  }
  const fields = [
    ['Worker', h('a', { href: link('tasks', { worker: t.worker }) }, t.worker)],
    ['Node', t.node], ['Attempt', t.attempt], ['Priority', t.priority],
    ['Created', t.created && absolute(t.created)], ['Started', t.started && absolute(t.started)],
    ['Finished', t.finished && absolute(t.finished)],
    ['Runs at', t.state === 'scheduled' && t.run_at && absolute(t.run_at)],
    ['Retries at', t.state === 'retrying' && t.retry_at && absolute(t.retry_at)],
    ['Deadline', t.deadline && absolute(t.deadline)],
    ['Repeats', t.every ? every(t.every) : t.cron && `cron ${t.cron}`], ['Key', t.key], ['Result key', t.result_key],
    ['Target', t.target], ['Occurrence of', t.template && taskLink(t.template)], ['Part of', t.parent && taskLink(t.parent)],
  ].filter(present);
  const blocks = dataBlocks(t);
  const attempts = (t.attempts || []).map((a) => h('tr', {},
    h('td.num', {}, a.attempt), h('td', {}, badge(OUTCOME[a.outcome] || a.outcome, a.outcome)),
    h('td', {}, a.node || '—'), h('td', {}, a.started ? absolute(a.started) : '—'),
    h('td', {}, a.started && a.ended ? span(a.ended - a.started) : '—'), h('td.info', {}, a.error ? h('span.error', { title: a.error }, a.error) : null)));
  const timeline = h('ol.timeline', {}, (t.timeline || []).map((m) => h(`li.e-${OUTCOME[m.event] || (STATES.has(m.event) ? m.event : 'step')}`, {},
    h('span.what', {}, m.event, m.attempt ? ` · attempt ${m.attempt}` : '', m.node ? ` · ${m.node}` : ''),
    h('span.when', {}, m.at ? absolute(m.at) : 'time unknown'),
    m.detail ? h('span.detail', {}, m.detail) : null)));
  return [
    h('div.task-head', {}, h('span', { id: 'task-state' }, badge(t.state)), h('div.tools', {}, actions)),
    h('div.split', {}, section('Details', null, h('dl.fields', {}, fields.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
      section('Timeline', null, timeline)),
    blocks,
    section('Attempts', null, table(['#Attempt', 'Outcome', 'Node', 'Started', 'Took', 'Error'], attempts, 'No attempt yet.')),
  ];
}

/** A task's arguments, result and error, each in a card of its own when it has one. */
function dataBlocks(t) {
  return [['Arguments', json(t.args), 'args'], ['Result', json(t.result), 'result'], ['Error', t.error, 'error']]
    .filter(([, text]) => text !== null && text !== undefined)
    .map(([title, text, cls]) => section(title, null, h(`pre.${cls}`, {}, text)));
}

/** A row of the archive (`GET /history/ID`, or `GET /tasks/ID` once Redis no longer holds the
 *  task): how it ended, its times, its data. */
function archivedDetail(r, note) {
  const fields = [
    ['Worker', h('a', { href: link('history', { worker: r.worker }) }, r.worker)],
    ['Node', r.node], ['Attempts', r.attempts], ['Priority', r.priority], ['Key', r.key],
    ['Created', r.created && absolute(r.created)], ['Started', r.started && absolute(r.started)],
    ['Finished', r.finished && absolute(r.finished)],
    ['Run time', r.run_ms !== null && r.run_ms !== undefined && span(r.run_ms)],
    ['Occurrence of', r.template && taskLink(r.template)], ['Part of', r.parent && taskLink(r.parent)],
  ].filter(present);
  return [
    h('div.task-head', {}, h('span', { id: 'task-state' }, badge(r.state)), h('span.muted.archived', {}, note)),
    section('Details', null, h('dl.fields', {}, fields.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
    dataBlocks(r),
  ];
}

/** What the history pages show when the node keeps no archive: how to turn it on. */
function archiveOff() {
  return h('section.card.archive-off', {}, h('div.card-head', {}, h('h2', {}, 'The archive is off')),
    h('p', {}, 'This node keeps no history: a finished task stays in Redis only until ', h('code', {}, 'saver.result_ttl'),
      '. To keep every finished task in PostgreSQL, set ', h('code', {}, '[saver] archive'), ' to a PostgreSQL URL (',
      h('code', {}, 'archive = "postgres://user@host/db"'), ', or the environment variable ', h('code', {}, 'BGNODE_SAVER__ARCHIVE'),
      ', or start the node with ', h('code', {}, 'bgnode start --save URL'), ') and restart the node.'));
}

/** A time in ms as the value of a `datetime-local` field, in this browser's time zone. */
function localInput(ms) {
  if (!ms) return '';
  const d = new Date(Number(ms));
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** The value of a `datetime-local` field as Unix ms ('' when empty or unreadable). */
function fromInput(value) {
  const ms = value ? new Date(value).getTime() : NaN;
  return Number.isNaN(ms) ? '' : String(ms);
}

const historyLink = (id) => `#/history/${encodeURIComponent(id)}`;

/** Rows of the archive; a click anywhere on one opens it. */
function historyRows(rows) {
  return rows.map((r) => h('tr.open', { 'data-id': r.id, click: (e) => { if (!e.target.closest('a')) location.hash = historyLink(r.id); } },
    h('td', {}, h('a.mono', { href: historyLink(r.id) }, r.id)), h('td', {}, r.worker), h('td', {}, badge(r.state)),
    h('td.num', {}, r.attempts), h('td', {}, r.node || h('span.muted', {}, '—')), h('td', {}, time(r.finished)),
    h('td.num', {}, r.run_ms === null || r.run_ms === undefined ? h('span.muted', {}, '—') : span(r.run_ms))));
}

const HISTORY_HEAD = ['Id', 'Worker', 'State', '#Attempts', 'Node', 'Finished', '#Run time'];

/** Finished tasks from the archive (`#/history?worker=&state=&since=&until=`), or one of them
 *  (`#/history/ID`). The rows are records: no live event changes them. */
PAGES.history = (id, q) => {
  if (id) {
    return page(h('span.mono', {}, id), [h('a.btn', { href: `#/task/${encodeURIComponent(id)}` }, 'Task page'), h('a.btn', { href: '#/history' }, 'History')],
      async () => {
        try {
          return await api('GET', `/history/${encodeURIComponent(id)}`);
        } catch (e) {
          if (noArchive(e)) return { off: true };
          if (e instanceof Refused && e.status === 404) return null;
          throw e;
        }
      },
      (r) => {
        if (!r) return empty(`The archive has no task ${id}.`);
        if (r.off) return archiveOff();
        return archivedDetail(r, 'From the archive');
      }, { onEvent: null });
  }
  const params = { worker: q.get('worker') || '', state: q.get('state') || '', since: q.get('since') || '', until: q.get('until') || '' };
  const cursor = q.get('cursor') || '';
  if (!cursor) app.trail = [];
  const go = (change) => { location.hash = link('history', { ...params, ...change }); };
  const names = Object.keys((app.overview && app.overview.workers) || {});
  const worker = h('input', { type: 'search', id: 'history-worker', 'aria-label': 'Worker', placeholder: 'every worker', list: 'history-workers',
    value: params.worker, autocomplete: 'off', spellcheck: 'false', change: () => go({ worker: worker.value.trim() }) });
  const state = h('select', { id: 'history-state', 'aria-label': 'State', change: () => go({ state: state.value }) },
    h('option', { value: '' }, 'every end'), [...FINISHED].map((st) => h('option', { value: st, selected: st === params.state }, st)));
  const since = h('input', { type: 'datetime-local', id: 'history-since', value: localInput(params.since), change: () => go({ since: fromInput(since.value) }) });
  const until = h('input', { type: 'datetime-local', id: 'history-until', value: localInput(params.until), change: () => go({ until: fromInput(until.value) }) });
  const filtered = Object.values(params).some(Boolean);
  return page('History', [worker, h('datalist', { id: 'history-workers' }, names.map((n) => h('option', { value: n }))), state,
    h('label.range', {}, 'ended from', since), h('label.range', {}, 'to', until), filtered ? h('a.btn', { href: '#/history' }, 'Clear') : null],
  async () => {
    try {
      return await api('GET', historyPath({ ...params, limit: PAGE, cursor }));
    } catch (e) {
      if (noArchive(e)) return { off: true };
      throw e;
    }
  },
  (p) => (p.off ? archiveOff()
    : [table(HISTORY_HEAD, historyRows(p.rows), 'No finished task in the archive matches.'), pager('history', params, cursor, p.next)]),
  { onEvent: null });
};

PAGES.scheduled = () => page('Scheduled', [], async () => {
  const [scheduled, retrying] = await Promise.all([
    api('GET', tasksPath({ state: 'scheduled', limit: 500 })), api('GET', tasksPath({ state: 'retrying', limit: 500 }))]);
  return { scheduled, retrying };
}, ({ scheduled, retrying }) => {
  const recurring = scheduled.tasks.filter((t) => t.every || t.cron);
  const delayed = scheduled.tasks.filter((t) => !t.every && !t.cron);
  const rows = (list, what) => list.map((t) => {
    const b = h('button.btn', { type: 'button', 'data-action': 'cancel' }, t.every || t.cron ? 'Stop' : 'Cancel');
    b.addEventListener('click', () => act(b, () => api('POST', `/tasks/${encodeURIComponent(t.id)}/cancel`), () => `${t.id} cancelled`));
    return h('tr', { 'data-id': t.id }, h('td', {}, taskLink(t.id)), h('td', {}, t.worker), h('td', {}, what(t)),
      h('td', {}, time(t.due)), h('td.num', {}, t.priority), h('td.actions', {}, b));
  });
  const more = (p) => (p.next ? h('p.muted', {}, 'Showing the 500 newest.') : null);
  return [
    section('Recurring', null, table(['Id', 'Worker', 'Schedule', 'Next run', '#Priority', ''],
      rows(recurring, (t) => (t.every ? every(t.every) : `cron ${t.cron}`)), 'No recurring tasks.')),
    section('Delayed', null, table(['Id', 'Worker', 'Created', 'Runs', '#Priority', ''], rows(delayed, (t) => time(t.created)), 'No delayed tasks.'), more(scheduled)),
    section('Waiting to retry', null, table(['Id', 'Worker', 'Last error', 'Retries', '#Priority', ''],
      rows(retrying.tasks, (t) => h('span.error', { title: t.error || '' }, t.error || '')), 'No task waits for a retry.'), more(retrying)),
  ];
});

PAGES.dead = (arg, q) => {
  const params = { worker: q.get('worker') || '' };
  const cursor = q.get('cursor') || '';
  if (!cursor) app.trail = [];
  const scope = params.worker ? `?worker=${encodeURIComponent(params.worker)}` : '';
  const of = params.worker ? ` of ${params.worker}` : '';
  const retryAll = h('button.btn.primary', { type: 'button', 'data-action': 'retry-all' }, `Retry all${of}`);
  retryAll.addEventListener('click', () => act(retryAll, () => api('POST', `/dead/retry${scope}`), (a) => `${a.retried} dead tasks queued again`));
  const deleteAll = confirmed(`Delete all${of}`, { 'data-action': 'delete-all' }, (b) => act(b, () => api('DELETE', `/dead${scope}`), (a) => `${a.deleted} dead tasks deleted`));
  return page('Dead tasks', [workerSelect('dead', params), retryAll, deleteAll],
    async () => api('GET', tasksPath({ state: 'dead', worker: params.worker, limit: PAGE, cursor })),
    (p) => {
      const rows = p.tasks.map((t) => {
        const retry = h('button.btn', { type: 'button', 'data-action': 'retry' }, 'Retry');
        retry.addEventListener('click', () => act(retry, () => api('POST', `/tasks/${encodeURIComponent(t.id)}/retry`), (a) => `${t.id}: ${a.outcome}`));
        const remove = confirmed('Delete', { 'data-action': 'delete' }, (b) => act(b, () => api('DELETE', `/tasks/${encodeURIComponent(t.id)}`), () => `${t.id} deleted`));
        return h('tr', { 'data-id': t.id }, h('td', {}, taskLink(t.id)), h('td', {}, t.worker), h('td', {}, badge(t.state)),
          h('td.num', {}, t.attempt), h('td', {}, time(t.finished)),
          h('td.info', {}, h('span.error', { title: t.error || '' }, t.error || '')), h('td.actions', {}, retry, remove));
      });
      return [table(['Id', 'Worker', 'State', '#Attempts', 'Died', 'Error', ''], rows, 'The dead set is empty.'), pager('dead', params, cursor, p.next)];
    });
};

PAGES.nodes = () => page('Nodes', [], async () => {
  const n = await api('GET', '/nodes');
  const running = await Promise.all(n.nodes.map((m) => api('GET', tasksPath({ state: 'running', node: m.id, limit: 50 }))));
  return n.nodes.map((m, i) => ({ ...m, running: running[i] }));
}, (nodes) => h('div.nodes', {}, nodes.map((m) => {
  const loads = Object.entries(m.workers || {});
  const used = loads.reduce((n, [, l]) => n + l.running, 0);
  const cap = loads.reduce((n, [, l]) => n + l.capacity, 0);
  const tags = [m.this ? h('span.badge.s-active', {}, 'this node') : null, m.leaving ? h('span.badge.s-paused', {}, 'leaving') : null,
    m.seen ? null : h('span.badge.s-other', { title: 'Live in Redis, but not in this node\'s view of the cluster' }, 'not seen here')];
  return h('section.card.node-card', { 'data-node': m.id },
    h('div.card-head', {}, h('h2', {}, m.id), tags),
    h('p.muted', {}, m.addr || 'no address', m.generation ? [' · up since ', time(m.generation)] : '', ` · peers: ${(m.peers || []).join(', ') || 'none'}`),
    h('div.load', {}, meter(used, cap), h('span', {}, ` ${used} of ${cap} slots busy`)),
    table(['Worker', 'Running', '#Queued'], loads.map(([w, l]) => h('tr', {}, h('td', {}, w),
      h('td.load', {}, meter(l.running, l.capacity), h('span.muted', {}, ` ${l.running} / ${l.capacity}`)), h('td.num', {}, l.queued))), 'No workers.'),
    h('h3', {}, 'Running tasks', h('a.more', { href: link('tasks', { state: 'running', node: m.id }) }, 'all')),
    table(['Id', 'Worker', 'Attempt', 'Started'], m.running.tasks.map((t) => h('tr', { 'data-id': t.id },
      h('td', {}, taskLink(t.id)), h('td', {}, t.worker), h('td.num', {}, t.attempt), h('td', {}, time(t.started)))), 'Nothing running.'));
})));

PAGES.workers = () => page('Workers', [], async () => ({ workers: app.overview.workers }), (o) => [
  section('Worker types', h('span.muted', {}, 'a pause holds a worker type on every node: running tasks finish, new ones wait'),
    workersTable(o, true)),
]);

// ---- Routing and start-up -----------------------------------------------------------------------

async function route() {
  if (!app.overview) {
    try {
      setOverview(await api('GET', '/overview'));
    } catch (e) {
      if (!(e instanceof Refused && e.status === 401)) failed(e);
      return;
    }
  }
  const raw = location.hash.replace(/^#\/?/, '') || 'overview';
  const [path, query] = raw.split('?');
  const [name, ...rest] = path.split('/');
  const open = PAGES[name] ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('on', a.dataset.route === (open === 'task' ? 'tasks' : open));
  const arg = decodeURIComponent(rest.join('/'));
  app.view = PAGES[open](arg, new URLSearchParams(query || ''));
  document.title = `${open === 'task' || (open === 'history' && arg) ? arg : $('#nav a.on').firstChild.textContent.trim()} · bgnode`;
  app.view.refresh().catch(failed);
}

let loginShown = false;
function showLogin(message) {
  $('#login-error').textContent = message;
  $('#sign-out').hidden = true;
  if (loginShown) return;
  loginShown = true;
  if (app.stream) app.stream.abort();
  setLive('signed out', 'off');
  $('#login').hidden = false;
  $('#token').focus();
}

async function signIn(e) {
  e.preventDefault();
  app.token = $('#token').value.trim();
  try {
    await api('GET', '/overview');
  } catch (err) {
    if (!(err instanceof Refused && err.status === 401)) $('#login-error').textContent = err.message;
    return;
  }
  sessionStorage.setItem('bgnode.token', app.token);
  $('#token').value = '';
  $('#login').hidden = true;
  loginShown = false;
  start();
}

/** Forgets the token, and with a new page everything this one had read. */
function signOut() {
  sessionStorage.removeItem('bgnode.token');
  location.reload();
}

function start() {
  $('#sign-out').hidden = !app.token;
  stream();
  route();
}

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', signIn);
  $('#sign-out').addEventListener('click', signOut);
  $('#find').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('#find-id').value.trim();
    if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === '/' && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
      e.preventDefault();
      $('#find-id').focus();
    }
  });
  window.addEventListener('hashchange', route);
  let width = window.innerWidth;
  window.addEventListener('resize', () => {
    if (window.innerWidth !== width) {
      width = window.innerWidth;
      redrawChart();
    }
  });
  setInterval(tickTimes, 1000);
  setInterval(() => document.hidden || refresh(), 5000);
  start();
});
