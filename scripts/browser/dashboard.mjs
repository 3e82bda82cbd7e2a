// The coordinator dashboard's browser test: headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core) follows a live run on the dashboard and checks what it shows.
//
//   node dashboard.mjs URL OUT_DIR HOSPITAL...
//   node dashboard.mjs http://127.0.0.1:7480/ run/browser-test cleveland hungary switzerland va_long_beach
//
// It opens the page at 1280×800 (and at 390×844 in a second context), waits until a training
// round has completed and then another, checks every HOSPITAL has a row in the nodes table,
// waits until the run has finished, checks the AUC chart has one point per pooled evaluation
// (every round's and the final one: model rounds 0 to rounds completed), and saves
// OUT_DIR/dashboard-desktop.png and OUT_DIR/dashboard-phone.png (full pages). It exits
// non-zero, with the reason, when a check fails or the page logs an error. Network errors the
// page logs once the coordinator has gone away (the run over) are expected and allowed.
//
// Environment: MEDFED_BROWSER_CHROMIUM (/usr/bin/chromium), MEDFED_BROWSER_TIMEOUT_S (300: the
// most each wait may take).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, outDir, ...hospitals] = process.argv.slice(2);
if (!url || !outDir || hospitals.length === 0) {
  console.error('usage: node dashboard.mjs URL OUT_DIR HOSPITAL...');
  process.exit(2);
}
const base = url.endsWith('/') ? url : `${url}/`;
const executablePath = process.env.MEDFED_BROWSER_CHROMIUM || '/usr/bin/chromium';
const timeoutMs = Number(process.env.MEDFED_BROWSER_TIMEOUT_S || 300) * 1000;
fs.mkdirSync(outDir, { recursive: true });

const log = (msg) => console.log(`dashboard test: ${msg}`);

class Failure extends Error {}
const fail = (msg) => {
  throw new Failure(msg);
};

// The page's console errors and uncaught exceptions. A failed connection (net::ERR_…) is what
// a browser logs when the coordinator is gone: the page must then keep its last state, which
// the checks below see, so those are not errors of the page.
const pageErrors = [];
const allowed = (text) => /net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|CONNECTION_CLOSED|EMPTY_RESPONSE|INCOMPLETE_CHUNKED_ENCODING|ABORTED)\b/.test(text);
function watch(page, name) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const where = msg.location() && msg.location().url ? ` (${msg.location().url})` : '';
    if (allowed(msg.text())) {
      log(`${name}: network error while the coordinator is unreachable, allowed: ${msg.text()}${where}`);
      return;
    }
    pageErrors.push(`${name}: console error: ${msg.text()}${where}`);
  });
  page.on('pageerror', (err) => pageErrors.push(`${name}: uncaught ${err.name}: ${err.message}`));
}
function checkErrors() {
  if (pageErrors.length) fail(`the page logged errors:\n  ${pageErrors.join('\n  ')}`);
}

async function roundsCompleted(page) {
  return page.evaluate(() => {
    const node = document.querySelector('[data-testid="rounds-completed"]');
    return node && /^\d+$/.test(node.textContent) ? Number(node.textContent) : null;
  });
}

// Waits until rounds-completed is above `above`, or the run stops without getting there.
async function waitForRounds(page, above, what) {
  try {
    await page.waitForFunction((min) => {
      const node = document.querySelector('[data-testid="rounds-completed"]');
      const state = document.querySelector('[data-testid="run-state"]');
      if (state && state.dataset.state === 'failed') return true;
      return node && /^\d+$/.test(node.textContent) && Number(node.textContent) > min;
    }, above, { timeout: timeoutMs, polling: 250 });
  } catch (err) {
    fail(`${what}: rounds-completed stayed at ${await roundsCompleted(page)} for ${timeoutMs / 1000} s`);
  }
  await failedRun(page);
  return roundsCompleted(page);
}

async function runState(page) {
  return page.evaluate(() => {
    const node = document.querySelector('[data-testid="run-state"]');
    return node ? node.dataset.state : null;
  });
}

async function failedRun(page) {
  if ((await runState(page)) === 'failed') {
    const notice = await page.evaluate(() => document.getElementById('run-body').innerText);
    fail(`the dashboard shows the run failed:\n${notice}`);
  }
}

async function fetchSummary() {
  try {
    const res = await fetch(`${base}api/summary`, { signal: AbortSignal.timeout(3000) });
    if (!res.ok) return null;
    return await res.json();
  } catch {
    return null;
  }
}

async function screenshot(page, file) {
  const where = path.join(outDir, file);
  await page.screenshot({ path: where, fullPage: true });
  log(`saved ${where}`);
}

const browser = await chromium.launch({ executablePath, headless: true });
let desktop;
let phone;
let status = 0;
try {
  desktop = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  phone = await (await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true,
  })).newPage();
  watch(desktop, 'desktop');
  watch(phone, 'phone');
  for (const page of [desktop, phone]) {
    const res = await page.goto(base, { waitUntil: 'load' });
    if (!res || !res.ok()) fail(`GET ${base} answered ${res ? res.status() : 'nothing'}`);
  }
  log(`opened ${base} at 1280×800 and 390×844`);

  const first = await waitForRounds(desktop, 0, 'waiting for the first round');
  log(`rounds completed: ${first}`);
  const later = await waitForRounds(desktop, first, 'waiting for the rounds to advance');
  log(`rounds completed: ${later} (the page follows the run)`);
  checkErrors();

  const rows = await desktop.evaluate(() =>
    Array.from(document.querySelectorAll('tr[data-testid="node-row"]'), (tr) => tr.dataset.node));
  const missing = hospitals.filter((name) => !rows.includes(name));
  if (missing.length) fail(`no node row for ${missing.join(', ')} (rows: ${rows.join(', ') || 'none'})`);
  log(`node rows: ${rows.join(', ')}`);

  try {
    await desktop.waitForFunction(() => {
      const node = document.querySelector('[data-testid="run-state"]');
      return node && (node.dataset.state === 'finished' || node.dataset.state === 'failed');
    }, null, { timeout: timeoutMs, polling: 250 });
  } catch (err) {
    fail(`the run did not finish within ${timeoutMs / 1000} s (state ${await runState(desktop)}, ` +
      `${await roundsCompleted(desktop)} rounds completed)`);
  }
  await failedRun(desktop);
  // The phone page follows the same run; give it a moment to show the end too.
  await phone.waitForFunction(() => {
    const node = document.querySelector('[data-testid="run-state"]');
    return node && node.dataset.state === 'finished';
  }, null, { timeout: 10000, polling: 250 }).catch(() => log('the phone page does not show the end yet'));
  // The screenshots first, while the coordinator may still be up.
  await screenshot(desktop, 'dashboard-desktop.png');
  await screenshot(phone, 'dashboard-phone.png');

  const completed = await roundsCompleted(desktop);
  log(`finished: ${completed} rounds completed`);
  const points = await desktop.evaluate(() =>
    Array.from(document.querySelectorAll('circle[data-testid="auc-point"]'), (c) => Number(c.dataset.round)));
  const summary = await fetchSummary();
  let expected;
  if (summary) {
    const evaluations = (summary.rounds || []).filter((r) => r.evaluation).map((r) => r.evaluation)
      .concat(summary.final_evaluation ? [summary.final_evaluation] : []);
    expected = evaluations.length;
    if (summary.totals.rounds_completed !== completed) {
      fail(`the page shows ${completed} rounds completed, /api/summary ${summary.totals.rounds_completed}`);
    }
    log(`/api/summary still answers: ${expected} evaluations`);
  } else {
    expected = completed + 1;
    log(`/api/summary no longer answers (the coordinator has exited): expecting rounds completed + 1 = ${expected} evaluations`);
  }
  if (points.length !== expected) fail(`${points.length} AUC points, expected ${expected}`);
  const absent = [];
  for (let round = 0; round <= completed; round += 1) {
    if (!points.includes(round)) absent.push(round);
  }
  if (absent.length) fail(`no AUC point for model round ${absent.join(', ')}`);
  log(`${points.length} AUC points, one for every model round 0..${completed}`);
  checkErrors();
  log('passed');
} catch (err) {
  status = 1;
  if (err instanceof Failure) console.error(`dashboard test: FAILED: ${err.message}`);
  else console.error(`dashboard test: FAILED: ${err.stack || err}`);
  for (const [page, file] of [[desktop, 'failure-desktop.png'], [phone, 'failure-phone.png']]) {
    if (page) await screenshot(page, file).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(status);
