// The coordinator's live dashboard. It loads the run summary from /api/summary, then follows
// the server-sent `summary` events of /events, polling /api/summary every 2 s while the event
// stream is down. When the coordinator cannot be reached it keeps showing the last summary it
// had, under a banner. Network data only ever reaches the page as text nodes (textContent and
// attribute values), never as markup.
'use strict';

(() => {
  const FORMAT = 'medfed-run-summary/1';
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const CLOCK_SLACK_MS = 1500;
  const ES_RETRY_MS = 5000;
  const ES_RETRY_MAX_MS = 60000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const STATE_WORDS = {
    waiting_for_nodes: 'waiting for nodes',
    statistics: 'federated statistics',
    training: 'training',
    final_evaluation: 'final evaluation',
    finished: 'finished',
    failed: 'failed',
  };
  const PHASE_WORDS = {
    waiting_for_nodes: 'waiting for nodes',
    request: 'request out, nodes computing',
    keys: 'secure aggregation: round keys',
    shares: 'secure aggregation: encrypted shares',
    inputs: 'secure aggregation: masked inputs',
    consistency: 'secure aggregation: consistency check',
    unmask: 'secure aggregation: unmasking the sum',
    applying: 'applying: model, checkpoint and audit report',
  };
  const NODE_STATE_HELP = {
    connected: 'connected, not in a round',
    training: 'asked in the current phase; its answer is awaited',
    answered: 'answered the current phase',
    dropped: 'left out of the current attempt',
    disconnected: 'its connection closed',
  };
  const SECAGG_PHASES = ['keys', 'shares', 'inputs', 'consistency', 'unmask'];

  const app = {
    summary: null,
    es: null,
    esRetry: null,
    esBackoff: ES_RETRY_MS,
    pollTimer: null,
    polling: false,
    eventsLive: false,
    unreachableSince: null,
    lastContact: null,
    offsetEstimate: null,
    // What the charts and the rounds table were last drawn from: they are redrawn only when
    // it changes (a summary changes many times a round; the completed rounds once).
    lastRender: { width: 0, charts: null, rounds: null },
  };

  // ---------------------------------------------------------------------------------------
  // DOM helpers: nodes and text only.

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    if (!attrs) return;
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
    }
  }

  function replace(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // Formatting.

  // The coordinator's clock now, in Unix milliseconds: this browser's clock corrected by the
  // offset the events show (see noteClock), and stopped where the last contact left it while
  // the coordinator is unreachable.
  function now() {
    return (app.unreachableSince !== null ? app.unreachableSince : Date.now()) + clockOffset();
  }

  function clockOffset() {
    return app.offsetEstimate !== null && Math.abs(app.offsetEstimate) > CLOCK_SLACK_MS ? app.offsetEstimate : 0;
  }

  // A summary event goes out when the summary changes, so its updated_at_ms is the
  // coordinator's clock at about the time it arrives (a little before: the transfer). The
  // largest difference seen estimates how far the coordinator's clock is ahead of this one;
  // a difference under CLOCK_SLACK_MS is left uncorrected.
  function noteClock(summary) {
    const seen = summary.updated_at_ms - Date.now();
    if (!Number.isFinite(seen)) return;
    if (app.offsetEstimate === null || seen > app.offsetEstimate) app.offsetEstimate = seen;
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  function clock(ms) {
    if (!Number.isFinite(ms)) return '—';
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function dateTime(ms) {
    if (!Number.isFinite(ms)) return '';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(ms)}`;
  }

  function duration(ms) {
    const secs = Math.max(0, Math.floor(ms / 1000));
    if (secs < 60) return `${secs} s`;
    const mins = Math.floor(secs / 60);
    if (mins < 60) return `${mins} min ${pad2(secs % 60)} s`;
    return `${Math.floor(mins / 60)} h ${pad2(mins % 60)} min`;
  }

  function ago(ms) {
    const d = now() - ms;
    if (d < 1500) return 'just now';
    return `${duration(d)} ago`;
  }

  function bytes(n) {
    if (!Number.isFinite(n)) return '—';
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let u = -1;
    do {
      v /= 1024;
      u += 1;
    } while (v >= 1024 && u < units.length - 1);
    return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
  }

  function integer(n) {
    return Number(n).toLocaleString('en-US');
  }

  function fixed(x, digits) {
    return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '—';
  }

  function percent(x) {
    return typeof x === 'number' && Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : '—';
  }

  function seconds(x) {
    if (typeof x !== 'number' || !Number.isFinite(x)) return '—';
    if (x < 10) return x.toFixed(2);
    if (x < 100) return x.toFixed(1);
    return x.toFixed(0);
  }

  function delta(d) {
    if (typeof d !== 'number' || !Number.isFinite(d)) return '';
    if (d !== 0 && Math.abs(d) < 1e-3) return d.toExponential().replace('e-', 'e−');
    return String(d);
  }

  function shortDigest(hex) {
    if (typeof hex !== 'string' || hex.length <= 16) return hex || '—';
    return `${hex.slice(0, 8)}…${hex.slice(-6)}`;
  }

  function evaluationText(e) {
    const auc = e.auc === null || e.auc === undefined ? 'undefined (one class absent)' : fixed(e.auc, 3);
    return `model of round ${e.model_round}: AUC ${auc}, accuracy ${percent(e.accuracy)}, ` +
      `loss ${fixed(e.loss, 3)}, ${integer(e.examples)} held-out examples`;
  }

  // Elements whose text follows the clock: refreshed every second by tick().
  function ticking(kind, ms) {
    return h('span', { 'data-tick': kind, 'data-ms': ms });
  }

  function tick() {
    for (const node of document.querySelectorAll('[data-tick]')) {
      const ms = Number(node.dataset.ms);
      if (!Number.isFinite(ms)) {
        node.textContent = '—';
        continue;
      }
      switch (node.dataset.tick) {
        case 'ago':
          node.textContent = ago(ms);
          break;
        case 'since':
          node.textContent = duration(now() - ms);
          break;
        case 'deadline': {
          const left = ms - now();
          node.textContent = left >= 0 ? `in ${duration(left)}` : `passed ${duration(-left)} ago`;
          node.classList.toggle('late', left < 0);
          node.classList.toggle('soon', left >= 0 && left < 10000);
          break;
        }
        default:
          break;
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rendering.

  function render() {
    const sum = app.summary;
    if (!sum) return;
    renderHeader(sum);
    renderRun(sum);
    renderTotals(sum);
    renderNodes(sum);
    renderRefused(sum);
    const key = roundsKey(sum);
    if (key !== app.lastRender.charts || document.documentElement.clientWidth !== app.lastRender.width) {
      renderCharts(sum);
      app.lastRender.charts = key;
    }
    if (key !== app.lastRender.rounds) {
      renderRounds(sum);
      app.lastRender.rounds = key;
    }
    renderTitle(sum);
    tick();
  }

  function renderTitle(sum) {
    const words = STATE_WORDS[sum.state] || sum.state;
    const done = sum.totals ? sum.totals.rounds_completed : 0;
    const planned = sum.task ? sum.task.rounds_planned : 0;
    const unreachable = app.unreachableSince !== null ? ' (not reachable)' : '';
    document.title = `medfed · ${words} · ${done}/${planned} rounds${unreachable}`;
  }

  function renderHeader(sum) {
    const c = sum.coordinator || {};
    const t = sum.task || {};
    const resumed = c.resumed_after_round ? ` · resumed after round ${c.resumed_after_round}` : '';
    replace($('coordinator'),
      `version ${c.version || '?'} · listening on ${c.listen || '?'} · pid ${c.pid ?? '?'} · started `,
      h('time', {
        datetime: Number.isFinite(c.started_at_ms) ? new Date(c.started_at_ms).toISOString() : null,
        title: dateTime(c.started_at_ms), text: clock(c.started_at_ms),
      }),
      resumed);
    const chip = (label, value, attrs) => h('li', Object.assign({ class: 'chip' }, attrs || {}),
      h('span', { class: 'chip-k', text: label }), ' ', h('span', { class: 'chip-v', text: value }));
    replace($('task'),
      chip('model', t.model || '—'),
      chip('parameters', integer(t.parameters || 0)),
      chip('rounds planned', integer(t.rounds_planned || 0)),
      chip('min nodes', integer(t.min_nodes || 0)),
      chip('secure aggregation', t.secure_aggregation ? 'on' : 'off',
        { class: t.secure_aggregation ? 'chip chip-ok' : 'chip chip-warn' }),
      chip('manifest', shortDigest(t.manifest_digest), { title: `task manifest SHA-256: ${t.manifest_digest}` }));
  }

  function renderRun(sum) {
    const t = sum.task || {};
    const totals = sum.totals || {};
    const cur = sum.current;
    const words = STATE_WORDS[sum.state] || String(sum.state);
    const done = (sum.coordinator ? sum.coordinator.resumed_after_round || 0 : 0) + (totals.rounds_completed || 0);
    const planned = t.rounds_planned || 0;

    let roundText = '';
    if (cur) {
      if (cur.round === 0) roundText = 'round 0 (statistics)';
      else if (cur.round > planned) roundText = 'final evaluation';
      else roundText = `round ${cur.round} of ${planned}`;
    }

    // The state line is a live region: it changes only when the state or the round does, so
    // that a screen reader announces those and not every summary.
    const line = $('state-line');
    const key = `${sum.state}|${roundText}`;
    if (line.dataset.key !== key) {
      line.dataset.key = key;
      replace(line,
        h('span', { class: `state state-${sum.state}`, 'data-testid': 'run-state', 'data-state': sum.state },
          h('span', { class: 'dot', 'aria-hidden': 'true' }), words),
        roundText ? h('span', { class: 'state-round', text: roundText }) : null);
    }

    const pct = planned > 0 ? Math.min(100, (done / planned) * 100) : 0;
    const bar = h('div', { class: 'bar' });
    bar.style.width = `${pct.toFixed(1)}%`;
    const progress = h('div', { class: 'progress-row' },
      h('div', {
        class: 'progress', role: 'progressbar', 'aria-label': 'training rounds completed',
        'aria-valuemin': 0, 'aria-valuemax': planned, 'aria-valuenow': done,
      }, bar),
      h('span', { class: 'muted small', text: `${done} of ${planned} training rounds done` }));

    const facts = h('dl', { class: 'facts' });
    const fact = (label, ...value) => facts.append(h('div', null, h('dt', { text: label }), h('dd', null, ...value)));
    fact('Current round', h('span', { 'data-testid': 'current-round', text: cur ? String(cur.round) : '' }),
      cur ? null : h('span', { class: 'muted', text: '—' }));
    if (cur) {
      fact('Attempt', String(cur.attempt));
      fact('Phase', h('span', { title: cur.phase, text: PHASE_WORDS[cur.phase] || cur.phase }));
      fact('Attempt running for', ticking('since', cur.started_at_ms));
      fact('Phase running for', ticking('since', cur.phase_started_at_ms));
      fact('Deadline', cur.deadline_at_ms !== null && cur.deadline_at_ms !== undefined
        ? h('span', { title: dateTime(cur.deadline_at_ms) }, ticking('deadline', cur.deadline_at_ms))
        : '—');
    } else if (sum.coordinator && sum.coordinator.started_at_ms) {
      const ended = sum.state === 'finished' || sum.state === 'failed';
      fact(ended ? 'Ran for' : 'Running for', ended
        ? duration(sum.updated_at_ms - sum.coordinator.started_at_ms)
        : ticking('since', sum.coordinator.started_at_ms));
      if (ended) fact('Ended', h('span', { title: dateTime(sum.updated_at_ms), text: clock(sum.updated_at_ms) }));
    }

    const extra = [];
    if (sum.stopped) {
      extra.push(h('p', { class: `notice ${sum.state === 'failed' ? 'notice-bad' : 'notice-warn'}` },
        h('strong', { text: 'Stopped: ' }), sum.stopped));
    }
    if (sum.final_evaluation || sum.released) {
      const outcome = h('dl', { class: 'facts outcome' });
      const out = (label, ...value) => outcome.append(h('div', null, h('dt', { text: label }), h('dd', null, ...value)));
      const e = sum.final_evaluation;
      if (e) {
        out('Final AUC', h('span', { class: 'big', text: fixed(e.auc, 3) }));
        out('Accuracy', percent(e.accuracy));
        out('Loss', fixed(e.loss, 3));
        out('Held-out examples', integer(e.examples));
        out('Model of round', String(e.model_round));
      }
      if (sum.released) {
        outcome.append(h('div', { class: 'wide' }, h('dt', { text: `Released model (round ${sum.released.round})` }),
          h('dd', null, h('span', { class: 'mono', text: String(sum.released.file) }))));
      }
      extra.push(h('h3', { text: 'Outcome' }), outcome);
    }

    replace($('run-body'), progress, facts, extra,
      h('p', { class: 'muted small updated' }, 'summary updated ',
        h('span', { title: dateTime(sum.updated_at_ms), text: clock(sum.updated_at_ms) }), ' (',
        ticking('ago', sum.updated_at_ms), ')'));
  }

  function byReason(map) {
    const entries = Object.entries(map || {}).filter(([, n]) => n > 0);
    if (entries.length === 0) return h('span', { class: 'muted', text: 'none' });
    return h('ul', { class: 'reasons' }, entries.map(([reason, n]) =>
      h('li', null, h('code', { text: reason }), ' ', h('span', { class: 'count', text: `× ${integer(n)}` }))));
  }

  function sumValues(map) {
    return Object.values(map || {}).reduce((acc, n) => acc + (Number(n) || 0), 0);
  }

  function renderTotals(sum) {
    const t = sum.totals || {};
    const dl = h('dl', { class: 'totals' },
      h('div', null, h('dt', { text: 'Rounds completed' }),
        h('dd', { class: 'big' }, h('span', { 'data-testid': 'rounds-completed', text: String(t.rounds_completed ?? 0) }))),
      h('div', null, h('dt', { text: 'Attempts failed' }), h('dd', { class: 'big', text: integer(t.attempts_failed || 0) })),
      h('div', null, h('dt', { text: 'Bytes received' }), h('dd', { class: 'big', title: `${integer(t.bytes_received || 0)} bytes`, text: bytes(t.bytes_received || 0) })),
      h('div', null, h('dt', { text: 'Dropouts' }), h('dd', { class: 'big', text: integer(sumValues(t.dropouts)) })),
      h('div', { class: 'wide' }, h('dt', { text: 'Dropouts by reason' }), h('dd', null, byReason(t.dropouts))),
      h('div', { class: 'wide' }, h('dt', { text: 'Refusals by reason' }), h('dd', null, byReason(t.refusals))));
    replace($('totals-body'), dl);
  }

  function badge(kind, text, title) {
    return h('span', { class: `badge badge-${kind}`, text, title });
  }

  function renderNodes(sum) {
    const rows = [];
    const seen = new Set();
    for (const n of sum.nodes || []) {
      seen.add(n.name);
      const eps = typeof n.epsilon === 'number'
        ? `${fixed(n.epsilon, 2)}${typeof n.delta === 'number' ? ` (${delta(n.delta)})` : ''}`
        : '—';
      rows.push(h('tr', { 'data-testid': 'node-row', 'data-node': n.name },
        h('th', { scope: 'row', class: 'name', text: n.name }),
        h('td', null, badge(`node-${n.state}`, n.state, NODE_STATE_HELP[n.state])),
        h('td', { class: 'reason', text: n.reason || '' }),
        h('td', { class: 'num', text: integer(n.rounds_joined || 0) }),
        h('td', { class: 'num', text: eps }),
        h('td', { class: 'num', title: `${integer(n.bytes_in || 0)} bytes`, text: bytes(n.bytes_in || 0) }),
        h('td', { title: dateTime(n.last_seen_ms) }, ticking('ago', n.last_seen_ms))));
    }
    // Members the coordinator has not seen in this run yet.
    for (const name of (sum.task && sum.task.members) || []) {
      if (seen.has(name)) continue;
      rows.push(h('tr', { class: 'unseen', 'data-testid': 'member-row', 'data-node': name },
        h('th', { scope: 'row', class: 'name', text: name }),
        h('td', null, badge('node-unseen', 'not seen', 'a member that has not connected in this run')),
        h('td'), h('td', { class: 'num', text: '0' }), h('td', { class: 'num', text: '—' }),
        h('td', { class: 'num', text: '—' }), h('td', { text: '—' })));
    }
    if (rows.length === 0) {
      rows.push(h('tr', null, h('td', { colspan: 7, class: 'muted', text: 'No node has connected yet.' })));
    }
    replace($('nodes-body'), rows);
  }

  function renderRefused(sum) {
    const refused = sum.refused || [];
    $('refused').hidden = refused.length === 0;
    replace($('refused-body'), refused.map((r) => h('tr', null,
      h('th', { scope: 'row', class: 'name', text: r.subject }),
      h('td', null, h('code', { text: r.reason })),
      h('td', { class: 'reason', text: r.detail }),
      h('td', { class: 'num', text: integer(r.count || 0) }),
      h('td', { title: dateTime(r.last_at_ms) }, ticking('ago', r.last_at_ms)))));
  }

  // Everything the charts and the rounds table show, as one string.
  function roundsKey(sum) {
    return JSON.stringify([sum.rounds, sum.final_evaluation, sum.task && sum.task.rounds_planned,
      sum.task && sum.task.members]);
  }

  function renderRounds(sum) {
    const members = (sum.task && sum.task.members) || [];
    const rounds = (sum.rounds || []).slice().reverse();
    if (rounds.length === 0) {
      replace($('rounds-body'), h('tr', null, h('td', { colspan: 7, class: 'muted', text: 'No round has completed yet.' })));
      return;
    }
    replace($('rounds-body'), rounds.map((r) => {
      const participants = r.participants || [];
      const dropped = r.dropped || [];
      const e = r.evaluation;
      let verdict = h('span', { class: 'muted', text: '—' });
      if (r.fairness) {
        const failed = r.fairness.failed || [];
        const audited = (r.fairness.attributes || []).join(', ');
        verdict = r.fairness.approved
          ? badge('ok', 'approved', `every audited attribute passed (${audited})`)
          : badge('bad', `failed: ${failed.join(', ') || '?'}`, `audited: ${audited}`);
      }
      if (r.report) {
        verdict = h('a', { href: `/${r.report}`, class: 'report-link', title: `signed audit report ${r.report}` }, verdict);
      }
      return h('tr', { 'data-round': r.round },
        h('th', { scope: 'row', class: 'num', text: String(r.round) }),
        h('td', { class: 'num', title: participants.join(', ') },
          members.length ? `${participants.length} of ${members.length}` : String(participants.length)),
        h('td', null, dropped.length === 0 ? h('span', { class: 'muted', text: '—' })
          : dropped.map((d, i) => [i ? ', ' : '', h('span', { title: d.detail, text: `${d.name} (${d.reason})` })])),
        h('td', { class: 'num', title: e ? evaluationText(e) : 'not evaluated' }, e ? fixed(e.auc, 3) : '—'),
        h('td', null, verdict),
        h('td', { class: 'num', title: phaseText(r) }, seconds(r.seconds)),
        h('td', { class: 'num', title: `${integer(r.bytes_in || 0)} bytes` }, bytes(r.bytes_in || 0)));
    }));
  }

  function phaseText(r) {
    const parts = Object.entries(r.phase_seconds || {}).map(([p, v]) => `${p} ${seconds(v)} s`);
    parts.push(`checkpoint ${seconds(r.checkpoint_seconds)} s`);
    return `round ${r.round}: ${seconds(r.seconds)} s (${parts.join(', ')})`;
  }

  // ---------------------------------------------------------------------------------------
  // Charts: inline SVG drawn at the container's own width (so text stays legible), scaled by
  // the browser between redraws (viewBox, width 100%).

  function niceStep(range, maxTicks) {
    const raw = range / Math.max(1, maxTicks);
    const mag = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * mag >= raw) return m * mag;
    }
    return 10 * mag;
  }

  // Integer ticks for a domain of [0, max] drawn `width` pixels wide: every step, and the end
  // when it is not too close to the last step.
  function integerAxis(max, width) {
    const end = Math.max(1, max);
    const step = Math.max(1, Math.ceil(niceStep(end, Math.max(2, Math.floor(width / 56)))));
    const ticks = [];
    for (let x = 0; x <= end; x += step) ticks.push(x);
    if (end - ticks[ticks.length - 1] >= step * 0.6) ticks.push(end);
    return { step, end, ticks };
  }

  function decimals(step) {
    const text = String(Number(step.toPrecision(3)));
    return text.includes('.') ? Math.min(3, text.split('.')[1].length) : 0;
  }

  function frame(width, height, margin) {
    return {
      width, height, margin,
      left: margin.left, right: width - margin.right, top: margin.top, bottom: height - margin.bottom,
    };
  }

  function axes(svg, f, xTicks, xOf, yTicks, yOf, yFmt, xLabel) {
    const g = s('g', { class: 'axes' });
    for (const y of yTicks) {
      const py = yOf(y);
      g.append(s('line', { x1: f.left, x2: f.right, y1: py, y2: py, class: 'gridline' }));
      g.append(s('text', { x: f.left - 6, y: py, class: 'tick', 'text-anchor': 'end', 'dominant-baseline': 'middle', text: yFmt(y) }));
    }
    for (const x of xTicks) {
      const px = xOf(x);
      g.append(s('line', { x1: px, x2: px, y1: f.bottom, y2: f.bottom + 4, class: 'axis' }));
      g.append(s('text', { x: px, y: f.bottom + 16, class: 'tick', 'text-anchor': 'middle', text: String(x) }));
    }
    g.append(s('line', { x1: f.left, x2: f.right, y1: f.bottom, y2: f.bottom, class: 'axis' }));
    if (xLabel) {
      g.append(s('text', { x: f.right, y: f.bottom + 30, class: 'tick label', 'text-anchor': 'end', text: xLabel }));
    }
    svg.append(g);
  }

  function chartWidth(container) {
    return Math.max(260, Math.round(container.clientWidth || 600));
  }

  function evaluations(sum) {
    const list = [];
    for (const r of sum.rounds || []) {
      if (r.evaluation) list.push({ e: r.evaluation, final: false, round: r.round });
    }
    if (sum.final_evaluation) list.push({ e: sum.final_evaluation, final: true, round: null });
    return list;
  }

  function pointChart(container, opts) {
    const width = chartWidth(container);
    const f = frame(width, opts.height, { left: 44, right: 14, top: 10, bottom: opts.xLabel ? 38 : 24 });
    const svg = s('svg', { viewBox: `0 0 ${width} ${opts.height}`, width: '100%', preserveAspectRatio: 'xMidYMid meet', class: opts.cls });
    const xAxis = integerAxis(opts.xMax, f.right - f.left);
    const xOf = (x) => f.left + (x / xAxis.end) * (f.right - f.left);
    const yOf = (y) => f.bottom - ((y - opts.yMin) / (opts.yMax - opts.yMin)) * (f.bottom - f.top);
    axes(svg, f, xAxis.ticks, xOf, opts.yTicks, yOf, opts.yFmt, opts.xLabel);
    if (opts.reference !== undefined) {
      const py = yOf(opts.reference.y);
      svg.append(s('line', { x1: f.left, x2: f.right, y1: py, y2: py, class: 'reference' }));
      svg.append(s('text', { x: f.right - 2, y: py - 4, class: 'tick', 'text-anchor': 'end', text: opts.reference.label }));
    }
    const defined = opts.points.filter((p) => typeof p.y === 'number' && Number.isFinite(p.y))
      .sort((a, b) => a.x - b.x);
    if (defined.length > 1) {
      const d = defined.map((p, i) => `${i ? 'L' : 'M'}${xOf(p.x).toFixed(1)},${yOf(p.y).toFixed(1)}`).join('');
      svg.append(s('path', { d, class: 'line' }));
    }
    const r = opts.points.length > 40 ? 3 : 4;
    for (const p of opts.points) {
      const ok = typeof p.y === 'number' && Number.isFinite(p.y);
      const cy = ok ? yOf(Math.min(opts.yMax, Math.max(opts.yMin, p.y))) : f.bottom;
      const attrs = {
        cx: xOf(p.x).toFixed(1), cy: cy.toFixed(1), r: p.final ? r + 1.5 : r,
        class: `pt${p.final ? ' final' : ''}${ok ? '' : ' undefined'}`,
      };
      Object.assign(attrs, opts.pointAttrs ? opts.pointAttrs(p) : {});
      svg.append(s('circle', attrs, s('title', { text: p.title })));
    }
    replace(container, svg);
  }

  function renderCharts(sum) {
    const evals = evaluations(sum);
    const planned = (sum.task && sum.task.rounds_planned) || 0;
    const xMax = Math.max(1, planned, ...evals.map((v) => v.e.model_round));
    const title = (v) => `${v.final ? 'final model — ' : ''}${evaluationText(v.e)}${v.round !== null ? ` (evaluated in round ${v.round})` : ''}`;

    const aucs = evals.map((v) => v.e.auc).filter((a) => typeof a === 'number');
    const aucMin = Math.min(0.5, ...aucs.map((a) => Math.floor(a * 10) / 10));
    const aucTicks = [];
    const aucStep = 1 - aucMin > 0.5 ? 0.2 : 0.1;
    for (let y = 1; y >= aucMin - 1e-9; y -= aucStep) aucTicks.push(Math.round(y * 100) / 100);
    pointChart($('auc-chart'), {
      height: 190, cls: 'chart-auc', xMax, yMin: aucMin, yMax: 1, yTicks: aucTicks, yFmt: (y) => y.toFixed(1),
      reference: aucMin < 0.5 || aucMin === 0.5 ? { y: 0.5, label: 'chance' } : undefined,
      points: evals.map((v) => ({ x: v.e.model_round, y: v.e.auc, final: v.final, title: title(v) })),
      pointAttrs: (p) => ({ 'data-testid': 'auc-point', 'data-round': p.x }),
    });

    const losses = evals.map((v) => v.e.loss).filter((l) => typeof l === 'number' && Number.isFinite(l));
    const lossTop = losses.length ? Math.max(...losses) : 1;
    const lossStep = niceStep(lossTop, 3);
    const lossMax = Math.max(lossStep, Math.ceil(lossTop / lossStep - 1e-9) * lossStep);
    const lossTicks = [];
    for (let y = 0; y <= lossMax + 1e-9; y += lossStep) lossTicks.push(y);
    pointChart($('loss-chart'), {
      height: 130, cls: 'chart-loss', xMax, yMin: 0, yMax: lossMax, yTicks: lossTicks,
      yFmt: (y) => y.toFixed(decimals(lossStep)), xLabel: 'model round',
      points: evals.map((v) => ({ x: v.e.model_round, y: v.e.loss, final: v.final, title: title(v) })),
    });

    renderDurations(sum);
    app.lastRender.width = document.documentElement.clientWidth;
  }

  function renderDurations(sum) {
    const container = $('duration-chart');
    const rounds = sum.rounds || [];
    const width = chartWidth(container);
    const height = 190;
    const f = frame(width, height, { left: 44, right: 14, top: 10, bottom: 38 });
    const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width: '100%', class: 'chart-dur' });
    const top = Math.max(rounds.length ? 0.01 : 1, ...rounds.map((r) => r.seconds || 0));
    const step = niceStep(top, 4);
    const yMax = Math.ceil(top / step - 1e-9) * step;
    const yTicks = [];
    for (let y = 0; y <= yMax + 1e-9; y += step) yTicks.push(y);
    const first = rounds.length ? rounds[0].round : 1;
    const last = Math.max(first, rounds.length ? rounds[rounds.length - 1].round : 1,
      (sum.task && sum.task.rounds_planned) || 1);
    const slots = last - first + 1;
    const slot = (f.right - f.left) / slots;
    const xOf = (round) => f.left + (round - first + 0.5) * slot;
    const yOf = (y) => f.bottom - (y / yMax) * (f.bottom - f.top);
    const xAxis = integerAxis(slots, f.right - f.left);
    const xTicks = [];
    for (let x = first; x <= last; x += xAxis.step) xTicks.push(x);
    axes(svg, f, xTicks, xOf, yTicks, yOf, (y) => `${y.toFixed(decimals(step))} s`, 'round');
    const barW = Math.max(1, Math.min(28, slot * 0.7));
    for (const r of rounds) {
      const ps = r.phase_seconds || {};
      const secagg = SECAGG_PHASES.reduce((acc, p) => acc + (ps[p] || 0), 0);
      const segs = [['request', ps.request || 0], ['secagg', secagg], ['applying', ps.applying || 0]];
      const known = segs.reduce((acc, [, v]) => acc + v, 0);
      segs.push(['other', Math.max(0, (r.seconds || 0) - known)]);
      const g = s('g', { class: 'bar-group', 'data-round': r.round });
      let base = 0;
      const x = xOf(r.round) - barW / 2;
      for (const [name, v] of segs) {
        if (v <= 0) continue;
        const y0 = yOf(Math.min(yMax, base));
        const y1 = yOf(Math.min(yMax, base + v));
        g.append(s('rect', { x: x.toFixed(1), y: y1.toFixed(1), width: barW.toFixed(1), height: Math.max(0.5, y0 - y1).toFixed(1), class: `seg-${name}` }));
        base += v;
      }
      g.append(s('title', { text: phaseText(r) }));
      svg.append(g);
    }
    if (rounds.length === 0) {
      svg.append(s('text', { x: (f.left + f.right) / 2, y: (f.top + f.bottom) / 2, class: 'tick', 'text-anchor': 'middle', text: 'no round completed yet' }));
    }
    replace(container, svg);
    replace($('duration-summary'), durationSummary(rounds));
  }

  function durationSummary(rounds) {
    if (rounds.length === 0) return [];
    const mean = (f) => rounds.reduce((acc, r) => acc + f(r), 0) / rounds.length;
    const slowest = rounds.reduce((a, b) => ((b.seconds || 0) > (a.seconds || 0) ? b : a));
    const ps = (r, p) => (r.phase_seconds || {})[p] || 0;
    const fact = (label, value, title) => h('div', { title }, h('dt', { text: label }), h('dd', { text: value }));
    return h('dl', { class: 'facts compact' },
      fact('Mean round', `${seconds(mean((r) => r.seconds || 0))} s`),
      fact('Slowest', `${seconds(slowest.seconds)} s (round ${slowest.round})`),
      fact('Mean request', `${seconds(mean((r) => ps(r, 'request')))} s`, 'the request phase: the nodes compute'),
      fact('Mean secure aggregation', `${seconds(mean((r) => SECAGG_PHASES.reduce((acc, p) => acc + ps(r, p), 0)))} s`,
        SECAGG_PHASES.join(', ')),
      fact('Mean applying', `${seconds(mean((r) => ps(r, 'applying')))} s`),
      fact('Mean checkpoint', `${seconds(mean((r) => r.checkpoint_seconds || 0))} s`,
        'writing the checkpoint and committing the round, with their fsyncs'));
  }

  // ---------------------------------------------------------------------------------------
  // Connection: events first, polling while they are down.

  function setBanner() {
    const banner = $('banner');
    if (app.unreachableSince === null) {
      banner.hidden = true;
      banner.replaceChildren();
      return;
    }
    const last = app.summary
      ? [' Showing the last summary received (updated ', h('strong', { text: clock(app.summary.updated_at_ms) }), '); times are as of then.']
      : [' No summary has been received yet.'];
    replace(banner, h('strong', { text: `coordinator not reachable since ${clock(app.unreachableSince)}` }),
      ' — the run may have ended.', last);
    banner.hidden = false;
  }

  function setConn() {
    let text;
    if (app.unreachableSince !== null) text = `not reachable since ${clock(app.unreachableSince)}; retrying`;
    else if (app.eventsLive) text = 'live: following the coordinator\u2019s events';
    else if (app.polling) text = `event stream down: polling every ${POLL_MS / 1000} s`;
    else text = 'connecting…';
    const cls = app.unreachableSince !== null ? 'conn-bad' : app.eventsLive ? 'conn-ok' : 'conn-warn';
    const offset = clockOffset();
    const skew = offset ? ` · this browser\u2019s clock is ${duration(Math.abs(offset))} ${offset > 0 ? 'behind' : 'ahead of'} the coordinator\u2019s (times corrected)` : '';
    replace($('conn'), h('span', { class: `conn-dot ${cls}`, 'aria-hidden': 'true' }), text, skew);
  }

  function reachable() {
    app.lastContact = Date.now();
    if (app.unreachableSince !== null) {
      app.unreachableSince = null;
      setBanner();
      render();
    }
    setConn();
  }

  function unreachable() {
    if (app.unreachableSince === null) {
      app.unreachableSince = Date.now();
      setBanner();
      render();
    }
    setConn();
  }

  function apply(next) {
    if (!next || typeof next !== 'object') return;
    const cur = app.summary;
    // A late poll answer must not undo a newer event (the same coordinator process).
    if (cur && cur.coordinator && next.coordinator && cur.coordinator.started_at_ms === next.coordinator.started_at_ms &&
        next.updated_at_ms < cur.updated_at_ms) {
      return;
    }
    if (next.format !== FORMAT) {
      console.warn(`medfed dashboard: summary format ${next.format}, expected ${FORMAT}`);
    }
    app.summary = next;
    render();
    if (app.unreachableSince === null) setBanner();
  }

  // Fetches /api/summary once; whether the coordinator answered with a summary.
  async function fetchSummary() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    let body;
    try {
      const res = await fetch('/api/summary', { cache: 'no-store', signal: ctrl.signal });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      body = await res.json();
    } catch (err) {
      unreachable();
      return false;
    } finally {
      clearTimeout(timer);
    }
    reachable();
    apply(body);
    return true;
  }

  function startPolling() {
    if (app.polling) return;
    app.polling = true;
    setConn();
    const poll = async () => {
      if (!app.polling) return;
      await fetchSummary();
      if (app.polling) app.pollTimer = setTimeout(poll, POLL_MS);
    };
    poll();
  }

  function stopPolling() {
    app.polling = false;
    clearTimeout(app.pollTimer);
    app.pollTimer = null;
    setConn();
  }

  function connectEvents() {
    if (!('EventSource' in window)) {
      startPolling();
      return;
    }
    clearTimeout(app.esRetry);
    const es = new EventSource('/events');
    app.es = es;
    let hadError = false;
    let received = 0;
    es.addEventListener('open', () => {
      app.esBackoff = ES_RETRY_MS;
      app.eventsLive = true;
      reachable();
      stopPolling();
      // Catch up on whatever changed while the stream was down.
      if (hadError) fetchSummary();
    });
    es.addEventListener('summary', (ev) => {
      let next;
      try {
        next = JSON.parse(ev.data);
      } catch (err) {
        console.warn('medfed dashboard: a summary event that is not JSON');
        return;
      }
      app.eventsLive = true;
      // The first event of a stream may be the summary as it stood (however old), not a change.
      if (received++ > 0 && next && typeof next === 'object') noteClock(next);
      reachable();
      stopPolling();
      apply(next);
    });
    es.addEventListener('error', () => {
      hadError = true;
      app.eventsLive = false;
      startPolling();
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up on this stream (an HTTP error, say): polling carries on, and
        // the stream is tried again later, less and less often.
        es.close();
        if (app.es === es) app.es = null;
        app.esRetry = setTimeout(() => { if (!app.es) connectEvents(); }, app.esBackoff);
        app.esBackoff = Math.min(ES_RETRY_MAX_MS, app.esBackoff * 2);
      }
      setConn();
    });
  }

  function start() {
    setConn();
    fetchSummary();
    connectEvents();
    setInterval(tick, 1000);
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (app.summary && document.documentElement.clientWidth !== app.lastRender.width) renderCharts(app.summary);
      }, 150);
    });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
