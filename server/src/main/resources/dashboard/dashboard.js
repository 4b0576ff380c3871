// The dashboard: the server's models, and live plots of the selected ones, read from the JSON
// API (/api/models, .../figures, .../history, .../snapshots) about once a second. Figures are
// read from the version after the last one seen, and each series keeps at most maxPoints points
// (thinned by half when full), so the page's memory stays bounded however long a run trains.

import { LinePlot, formatNumber } from './plot.js';

const POLL_MS = 1000;
const SNAPSHOT_POLL_MS = 10000;
/** Points a series keeps by default; the address can ask for another number (#points=N). */
const DEFAULT_MAX_POINTS = 4000;
const FEWEST_MAX_POINTS = 10;
const MAX_FIGURE_NAMES = 40;
const MAX_PAGES_PER_POLL = 20;
/** Versions over which throughput is measured. */
const RATE_WINDOW = 10;
/** Prefixes and suffixes that mark a figure as one split of a quantity: eval_loss beside loss. */
const SPLIT = /^(train|eval|val|valid|validation|test)[_./:-](.+)$|^(.+?)[_./:-](train|eval|val|valid|validation|test)$/;
const PALETTE = ['#2f6fde', '#e0592a', '#2a9d55', '#a445c2', '#d4a017', '#1aa3b3', '#d1477a', '#6b7a8f',
  '#7c5c2e', '#5563c1', '#8fb339', '#c0392b'];

const state = {
  models: new Map(), // name -> ModelInfo, as last listed
  selected: [], // names, in the order they were picked
  stores: new Map(), // name -> what the page has read of a selected model
  plots: new Map(), // plot key -> LinePlot
  filter: '',
  token: null,
  maxPoints: DEFAULT_MAX_POINTS,
  listedOnce: false,
};

const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------------------------------------
// The API

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers, cache: 'no-store' });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new HttpError(response.status, body.error || response.statusText);
  return body;
}

const modelPath = (name) => `/api/models/${encodeURIComponent(name)}`;
/** protobuf's JSON: 64-bit integers arrive as strings, NaN and infinities as strings, defaults absent. */
const num = (v, fallback = 0) => (v === undefined || v === null ? fallback : Number(v));

// ---------------------------------------------------------------------------------------------
// What the page keeps of one model

function newStore() {
  return {
    nextVersion: 0,
    nextHistory: 0,
    series: new Map(), // series key -> {x: [], y: []}
    figureNames: new Set(),
    recent: [], // [version, time] of the last RATE_WINDOW versions, for throughput
    trainers: new Map(), // client id -> {contributions, lastVersion}
    snapshots: null,
    snapshotsAt: 0,
  };
}

function push(store, key, x, y) {
  if (y === undefined || y === null) return;
  let s = store.series.get(key);
  if (!s) {
    s = { x: [], y: [] };
    store.series.set(key, s);
  }
  s.x.push(x);
  s.y.push(Number(y));
  if (s.x.length > state.maxPoints) {
    // Keep every other point (and the newest): the whole run stays visible at half the detail.
    const last = s.x.length - 1;
    s.x = s.x.filter((_, i) => i % 2 === 0 || i === last);
    s.y = s.y.filter((_, i) => i % 2 === 0 || i === last);
  }
}

function addVersion(store, v) {
  const version = num(v.version);
  const groups = v.groups || [];
  if (groups.length > 0) {
    // An optimizer step (a set-weights version has no optimizer figures).
    for (const group of groups) {
      push(store, `lr\u0000${group.group || 'default'}`, version, num(group.effective_lr, num(group.lr)));
      const ct = num(group.averaging_weight, NaN);
      if (Number.isFinite(ct)) push(store, `ct\u0000${group.group || 'default'}`, version, ct);
    }
    push(store, 'grad_norm', version, num(v.grad_norm));
    if (v.update_norm !== undefined) push(store, 'update_norm', version, num(v.update_norm));
    push(store, 'staleness', version, num(v.staleness));
    push(store, 'step_time', version, num(v.step_seconds) * 1000);
  }
  if (version > 0) {
    const time = num(v.time);
    store.recent.push([version, time]);
    if (store.recent.length > RATE_WINDOW + 1) store.recent.shift();
    const [v0, t0] = store.recent[0];
    if (store.recent.length > 1 && time > t0) push(store, 'throughput', version, (version - v0) / (time - t0));
  }
  for (const [name, value] of Object.entries(v.figures || {})) {
    if (!store.figureNames.has(name) && store.figureNames.size >= MAX_FIGURE_NAMES) continue;
    store.figureNames.add(name);
    push(store, `fig\u0000${name}`, version, num(value, NaN));
  }
}

async function pollFigures(name, store) {
  for (let page = 0; page < MAX_PAGES_PER_POLL; page++) {
    const answer = await api(`${modelPath(name)}/figures?from_version=${store.nextVersion}&max_versions=1000`);
    const versions = answer.versions || [];
    for (const v of versions) addVersion(store, v);
    if (versions.length > 0) store.nextVersion = num(versions[versions.length - 1].version) + 1;
    const next = num(answer.next_from_version);
    if (next === 0) return;
    store.nextVersion = next;
  }
}

async function pollHistory(name, store) {
  for (let page = 0; page < MAX_PAGES_PER_POLL; page++) {
    const answer = await api(`${modelPath(name)}/history?from_version=${store.nextHistory}&max_versions=1000`);
    const versions = answer.versions || [];
    for (const v of versions) {
      const version = num(v.version);
      for (const c of v.contributions || []) {
        const t = store.trainers.get(c.client_id) || { contributions: 0, lastVersion: 0 };
        t.contributions += 1;
        t.lastVersion = version;
        store.trainers.set(c.client_id, t);
      }
      store.nextHistory = version + 1;
    }
    const next = num(answer.next_from_version);
    if (next === 0) return;
    store.nextHistory = next;
  }
}

async function pollModel(name) {
  const info = state.models.get(name);
  let store = state.stores.get(name);
  if (store && info && num(info.version) + 1 < store.nextVersion) store = null; // deleted and registered anew
  if (!store) {
    store = newStore();
    state.stores.set(name, store);
  }
  if (!info) return;
  await pollFigures(name, store);
  // Who contributed is read for a single model only: a sweep's overlay needs only the figures.
  if (state.selected.length === 1) await pollHistory(name, store);
  if (Date.now() - store.snapshotsAt > SNAPSHOT_POLL_MS) {
    store.snapshotsAt = Date.now();
    // Without reading the data: the manifest and the files' sizes, cheap however large the model.
    store.snapshots = (await api(`${modelPath(name)}/snapshots?verify=false`)).snapshots || [];
  }
}

// ---------------------------------------------------------------------------------------------
// Plots

const BUILT_IN = [
  { key: 'lr', title: 'learning rate' },
  { key: 'ct', title: 'Schedule-Free c_t' },
  { key: 'grad_norm', title: 'gradient norm', logY: true },
  { key: 'update_norm', title: 'update norm', logY: true },
  { key: 'staleness', title: 'staleness', unit: 'versions' },
  { key: 'step_time', title: 'step time', unit: 'ms', logY: true },
  { key: 'throughput', title: 'throughput', unit: 'steps/s' },
];

/** A figure's quantity and split: eval_loss -> [loss, eval], loss -> [loss, ''] */
function splitOf(name) {
  const m = SPLIT.exec(name);
  if (!m) return [name, ''];
  return m[1] ? [m[2], m[1]] : [m[3], m[4]];
}

function colorOf(index) {
  return index < PALETTE.length ? PALETTE[index] : `hsl(${(index * 137.5) % 360}, 60%, 45%)`;
}

/** Every plot the selection has data for: figures first (loss leading), then the step figures. */
function plotSpecs() {
  const specs = new Map();
  const several = state.selected.length > 1;
  const add = (key, options, series) => {
    if (!specs.has(key)) specs.set(key, { key, options, series: [] });
    specs.get(key).series.push(series);
  };
  state.selected.forEach((name, m) => {
    const store = state.stores.get(name);
    if (!store) return;
    for (const [seriesKey, data] of store.series) {
      const [kind, part] = seriesKey.split('\u0000');
      if (kind === 'fig') {
        const [quantity, split] = splitOf(part);
        add(`fig:${quantity}`, { title: quantity, logY: /loss/.test(quantity) },
          { model: name, m, part: split, data });
      } else {
        const spec = BUILT_IN.find((b) => b.key === kind);
        add(kind, spec, { model: name, m, part: part && part !== 'default' ? part : '', data });
      }
    }
  });
  // Series labels and colours: by model when several are shown, else by split or group. Models
  // are named without the path their names share (sweep/radam/lr=0.01 beside sweep/adam/lr=0.01).
  const shared = sharedPath(state.selected);
  for (const spec of specs.values()) {
    const parts = [...new Set(spec.series.map((s) => s.part))].sort((a, b) => (a === '' ? -1 : b === '' ? 1 : 0));
    const isFigure = spec.key.startsWith('fig:');
    spec.series.sort((a, b) => a.m - b.m || parts.indexOf(a.part) - parts.indexOf(b.part));
    spec.lines = spec.series.map((s) => {
      // A figure's split is always named (eval accuracy alone); a group only beside others.
      const part = parts.length > 1 ? s.part || 'train' : isFigure ? s.part : '';
      const label = [several ? s.model.slice(shared) : '', part]
        .filter(Boolean).join(' · ');
      const color = colorOf(several ? s.m : parts.indexOf(s.part));
      const dashed = several && parts.length > 1 && parts.indexOf(s.part) > 0;
      return { label, color, dashed, model: s.model, part: s.part, x: s.data.x, y: s.data.y };
    });
    if (several && parts.length > 1) {
      // One entry a model (its colour), one a split (its dash): n + 2 entries, not 2n.
      const models = [...new Set(spec.series.map((s) => s.model))];
      spec.legend = [
        ...models.map((model) => ({
          text: model.slice(shared), color: colorOf(state.selected.indexOf(model)),
          covers: (line) => line.model === model,
        })),
        ...parts.map((part, i) => ({
          text: part || 'train', color: '#6b7486', dashed: i > 0, covers: (line) => line.part === part,
        })),
      ];
    }
  }
  const figures = [...specs.values()].filter((s) => s.key.startsWith('fig:'))
    .sort((a, b) => rank(a.key) - rank(b.key) || a.key.localeCompare(b.key));
  const builtIn = BUILT_IN.map((b) => specs.get(b.key)).filter(Boolean);
  return [...figures, ...builtIn];
}

/** The length of the leading path (up to a slash) that all names share. */
function sharedPath(names) {
  if (names.length < 2) return 0;
  let length = names[0].length;
  for (const name of names) {
    let i = 0;
    while (i < length && i < name.length && name[i] === names[0][i]) i++;
    length = i;
  }
  return names[0].lastIndexOf('/', length - 1) + 1;
}

const rank = (key) => (key === 'fig:loss' ? 0 : /loss/.test(key) ? 1 : /acc/.test(key) ? 2 : 3);

function renderPlots() {
  const specs = plotSpecs();
  const grid = $('#plots');
  const wanted = new Set(specs.map((s) => s.key));
  for (const [key, plot] of state.plots) {
    if (!wanted.has(key)) {
      plot.remove();
      state.plots.delete(key);
    }
  }
  for (const spec of specs) {
    let plot = state.plots.get(spec.key);
    if (!plot) {
      plot = new LinePlot(grid, spec.options);
      plot.root.dataset.metric = spec.key;
      state.plots.set(spec.key, plot);
    }
    grid.appendChild(plot.root); // keeps the order of the specs
    plot.setData(spec.lines, spec.legend);
  }
  $('#no-plots').hidden = specs.length > 0 || state.selected.length === 0;
}

// ---------------------------------------------------------------------------------------------
// Tables

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

const modeOf = (info) => {
  const c = (info.coordination || {}).config || {};
  if (c.mode !== 'COORDINATION_SYNC') return 'async';
  const k = num((c.sync || {}).k);
  return k > 0 ? `sync k=${k}` : 'sync';
};
const trainersOf = (info) => ((info.coordination || {}).trainers || []);
const algorithmOf = (info) => (info.optimizer || {}).algorithm || '';

function renderModels() {
  const body = $('#models tbody');
  body.replaceChildren();
  const filter = state.filter.toLowerCase();
  const names = [...state.models.keys()].sort();
  let shown = 0;
  for (const name of names) {
    if (filter && !name.toLowerCase().includes(filter)) continue;
    shown++;
    const info = state.models.get(name);
    const row = document.createElement('tr');
    row.dataset.model = name;
    const selectedAt = state.selected.indexOf(name);
    if (selectedAt >= 0) row.className = 'selected';
    const pick = document.createElement('td');
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = selectedAt >= 0;
    box.title = 'overlay with the other selected models';
    box.addEventListener('click', (e) => {
      e.stopPropagation();
      toggle(name);
    });
    pick.appendChild(box);
    if (selectedAt >= 0 && state.selected.length > 1) {
      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.style.background = colorOf(selectedAt);
      pick.appendChild(dot);
    }
    row.appendChild(pick);
    cell(row, name, 'name').title = name;
    cell(row, algorithmOf(info));
    cell(row, String(num(info.version)), 'number');
    cell(row, String(trainersOf(info).length), 'number');
    cell(row, modeOf(info));
    row.addEventListener('click', () => select([name]));
    body.appendChild(row);
  }
  $('#model-count').textContent = filter ? `${shown} of ${names.length}` : String(names.length);
  $('#no-models').hidden = names.length > 0;
}

function renderDetails() {
  const one = state.selected.length === 1 ? state.models.get(state.selected[0]) : null;
  $('#summary').hidden = state.selected.length === 0;
  $('#selection-title').textContent = state.selected.length === 1 ? state.selected[0]
    : `${state.selected.length} models overlaid`;
  const facts = $('#facts');
  facts.replaceChildren();
  const fact = (label, value) => {
    const item = document.createElement('span');
    const name = document.createElement('span');
    name.className = 'muted';
    name.textContent = `${label} `;
    item.append(name, document.createTextNode(value));
    facts.appendChild(item);
  };
  if (one) {
    const c = one.coordination || {};
    const hp = { ...(one.optimizer || {}).hyperparameters, ...((one.groups || [])[0] || {}).hyperparameters };
    fact('algorithm', algorithmOf(one));
    if (hp.lr !== undefined) fact('lr', formatNumber(Number(hp.lr)));
    fact('version', String(num(one.version)));
    fact('mode', modeOf(one));
    fact('elements', num(one.total_elements).toLocaleString('en-US'));
    fact('memory', bytes(num(one.memory_bytes)));
    fact('applied / late / rejected',
      `${num(c.contributions_applied)} / ${num(c.contributions_late)} / ${num(c.contributions_rejected)}`);
  } else if (state.selected.length > 1) {
    const algorithms = [...new Set(state.selected.map((n) => algorithmOf(state.models.get(n) || {})))];
    if (algorithms.some(Boolean)) fact('algorithms', algorithms.filter(Boolean).join(', '));
  }
  const missing = state.selected.filter((n) => !state.models.has(n));
  if (missing.length > 0) fact('not on the server (yet)', missing.join(', '));
  // The model column only when several models share the tables.
  document.body.classList.toggle('one-model', state.selected.length === 1);
  renderTrainers();
  renderSnapshots();
}

function renderTrainers() {
  const body = $('#trainers tbody');
  body.replaceChildren();
  let rows = 0;
  for (const name of state.selected) {
    const info = state.models.get(name);
    const store = state.stores.get(name);
    if (!info || !store) continue;
    const attached = new Set(trainersOf(info));
    const ids = [...new Set([...attached, ...store.trainers.keys()])].sort();
    for (const id of ids) {
      const seen = store.trainers.get(id);
      const row = document.createElement('tr');
      cell(row, name, 'name');
      cell(row, id);
      cell(row, attached.has(id) ? 'attached' : 'left', attached.has(id) ? 'ok' : 'muted');
      cell(row, seen ? String(seen.contributions) : '', 'number');
      cell(row, seen ? String(seen.lastVersion) : '', 'number');
      body.appendChild(row);
      rows++;
    }
  }
  $('#trainers').dataset.rows = String(rows);
  $('#no-trainers').hidden = rows > 0;
}

function renderSnapshots() {
  const body = $('#snapshots tbody');
  body.replaceChildren();
  let rows = 0;
  for (const name of state.selected) {
    const store = state.stores.get(name);
    const list = (store && store.snapshots) || [];
    for (const s of list.slice(-20).reverse()) {
      const row = document.createElement('tr');
      cell(row, name, 'name');
      cell(row, s.id);
      cell(row, String(num(s.version)), 'number');
      cell(row, new Date(num(s.created_unix_millis)).toLocaleString());
      cell(row, bytes(num(s.bytes)), 'number');
      cell(row, s.trigger || '');
      cell(row, s.valid ? 'complete' : s.problem || 'incomplete', s.valid ? 'ok' : 'bad');
      body.appendChild(row);
      rows++;
    }
  }
  $('#snapshots').dataset.rows = String(rows);
  $('#no-snapshots').hidden = rows > 0;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

// ---------------------------------------------------------------------------------------------
// Selection (kept in the address: #models=a,b) and the poll loop

function select(names) {
  state.selected = names;
  for (const name of [...state.stores.keys()]) {
    if (!names.includes(name)) state.stores.delete(name);
  }
  const params = names.length ? [`models=${names.map(encodeURIComponent).join(',')}`] : [];
  if (state.maxPoints !== DEFAULT_MAX_POINTS) params.push(`points=${state.maxPoints}`);
  const hash = `#${params.join('&')}`;
  if (location.hash !== hash) history.replaceState(null, '', hash || '#');
  renderModels();
  renderDetails();
  renderPlots();
  poll();
}

function toggle(name) {
  const i = state.selected.indexOf(name);
  select(i >= 0 ? state.selected.filter((n) => n !== name) : [...state.selected, name]);
}

function readAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token) {
    // Kept for this tab, and out of the address, its history and whatever it is copied into.
    sessionStorage.setItem('optsidecar-token', token);
    params.delete('token');
    history.replaceState(null, '', `#${params.toString()}`);
  }
  state.token = sessionStorage.getItem('optsidecar-token');
  const models = params.get('models');
  state.selected = models ? models.split(',').filter(Boolean) : [];
  const points = Number(params.get('points'));
  if (Number.isInteger(points) && points > 0) state.maxPoints = Math.max(FEWEST_MAX_POINTS, points);
}

function setStatus(text, kind) {
  const status = $('#status');
  status.textContent = text;
  status.className = kind;
}

let polling = null;
let timer = null;

/** One round: the model list, then the selected models' new figures. Rounds never overlap. */
function poll() {
  if (polling) return polling;
  clearTimeout(timer);
  polling = (async () => {
    try {
      const list = await api('/api/models?brief=true'); // without tensors and state: small however large the models
      state.models = new Map((list.models || []).map((m) => [m.name, m]));
      if (!state.listedOnce && state.selected.length === 0 && state.models.size > 0) {
        state.selected = [[...state.models.keys()].sort()[0]]; // something to look at on first open
      }
      state.listedOnce = true;
      await Promise.all(state.selected.map((name) => pollModel(name)));
      setStatus(`live · ${new Date().toLocaleTimeString()}`, 'ok');
    } catch (e) {
      if (e instanceof HttpError && e.status === 401) {
        setStatus('this server needs a token: open the page as /#token=YOUR_TOKEN', 'bad');
      } else {
        setStatus(`cannot reach the server (${e.message}); retrying`, 'bad');
      }
    }
    renderModels();
    renderDetails();
    renderPlots();
    polling = null;
    timer = setTimeout(poll, POLL_MS);
  })();
  return polling;
}

function start() {
  readAddress();
  $('#filter').addEventListener('input', (e) => {
    state.filter = e.target.value;
    renderModels();
  });
  $('#select-shown').addEventListener('click', () => {
    const filter = state.filter.toLowerCase();
    select([...state.models.keys()].sort().filter((n) => !filter || n.toLowerCase().includes(filter)));
  });
  $('#select-none').addEventListener('click', () => select([]));
  poll();
}

start();
