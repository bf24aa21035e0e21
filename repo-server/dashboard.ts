// The dashboard page: a pure function from (repository view, fleet reports, clock) to
// HTML. No scripts; everything interpolated is escaped by `html`.
import { html, formatBytes, formatAge, SafeHtml } from './html.js';
import type { RepositoryView, VersionView, ImageView } from './repo-view.js';
import type { StoredReport } from './reports.js';
import type { RolloutView } from './rollouts.js';
import type { Hold } from '../format/index.js';
import { ROLLOUT_STYLE, rolloutCard, versionsTable, behindReason, siteNav, expiryBanner, type ActionContext } from './dashboard-rollouts.js';

export interface DashboardOptions {
  title: string;
  now: Date;
  staleMinutes: number;
  /** the rollouts under way, with the fleet's tally */
  rollouts?: RolloutView[];
  /** set when the viewer may act on rollouts (operator, publisher): the forms' CSRF token */
  actions?: ActionContext | null;
  /** show only this site's hosts */
  site?: string | null;
  /** an operator's hold on a host for an image (the signed index's holds) */
  holdOf?: (image: string, host: string) => Hold | undefined;
}

const STYLE = `
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff; --ok:#12805c; --bad:#c0362c; --warn:#b54708; --accent:#2f5bd3; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:14px 28px; display:flex; align-items:baseline; gap:18px; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; font-weight:600; }
header .meta { color:#c3c8d4; font-size:13px; }
main { padding:20px 28px 40px; max-width:1400px; }
h2 { font-size:16px; margin:26px 0 10px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; margin:0 0 16px; overflow:hidden; }
.card > .head { padding:10px 14px; border-bottom:1px solid var(--line); display:flex; gap:10px; align-items:center; flex-wrap:wrap; }
.card > .head h3 { margin:0; font-size:15px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:6px 12px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; background:#fafbfc; }
tr:last-child td { border-bottom:none; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#eef2fb; color:var(--accent); margin-right:4px; white-space:nowrap; }
.badge.ok { background:#e7f6ef; color:var(--ok); }
.badge.bad { background:#fdecea; color:var(--bad); }
.badge.warn { background:#fef4e6; color:var(--warn); }
.badge.muted { background:#f0f1f3; color:var(--muted); }
.muted { color:var(--muted); }
code { font:12px ui-monospace, SFMono-Regular, Menlo, monospace; }
tr.stale td { background:#fff6e5; }
.summary { display:flex; gap:12px; flex-wrap:wrap; margin-bottom:12px; }
.summary div { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 14px; }
.summary b { font-size:18px; display:block; }
.error { color:var(--bad); }
ul.apps { list-style:none; margin:0; padding:0; }
ul.apps li { margin:1px 0; }
`;

function date(iso: string): SafeHtml {
  return html`<time datetime="${iso}">${iso.replace('T', ' ').replace(/\.\d+/, '').replace(/(Z|\+00:00)$/, ' UTC')}</time>`;
}

function versionRow(v: VersionView): SafeHtml {
  const s = v.summary;
  const channels = v.channels.map((c) => html`<span class="badge">${c}</span>`);
  if (!s) {
    return html`<tr><td><b>${v.version}</b> ${channels}</td><td colspan="8" class="error">manifest unreadable: ${v.error ?? 'unknown error'}</td></tr>`;
  }
  const delta = v.delta
    ? html`${v.delta.chunks} / ${formatBytes(v.delta.compressed)}<br><span class="muted">${v.delta.previous ? `vs ${v.delta.previous}` : 'first version'}</span>`
    : html`<span class="muted">?</span>`;
  return html`<tr>
  <td><b>${v.version}</b> ${channels}<br><code class="muted" title="${v.manifestSha256}">${v.manifestSha256.slice(0, 12)}</code></td>
  <td>${date(v.published)}</td>
  <td>${v.arch}</td>
  <td class="num">${formatBytes(s.apparent)}</td>
  <td class="num">${formatBytes(s.compressed)}</td>
  <td class="num">${s.chunks}</td>
  <td class="num">${delta}</td>
  <td>${s.suite}<br><span class="muted">${s.packageCount} packages</span></td>
  <td>${date(s.builtAt)}<br><span class="muted">${s.builder}</span></td>
</tr>`;
}

function imageCard(img: ImageView): SafeHtml {
  const channels = Object.entries(img.channels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([c, v]) => html`<span class="badge">${c} → ${v}</span>`);
  const hidden = img.versionCount - img.versions.length;
  return html`<section class="card image" data-image="${img.name}">
  <div class="head"><h3>${img.name}</h3>${channels}<span class="muted">${img.versionCount} version(s)${hidden > 0 ? `, ${hidden} older not shown` : ''}</span></div>
  <table>
    <thead><tr><th>Version</th><th>Published</th><th>Arch</th><th>Apparent</th><th>Compressed</th><th>Chunks</th><th>New chunks</th><th>Suite</th><th>Built</th></tr></thead>
    <tbody>${img.versions.map(versionRow)}</tbody>
  </table>
</section>`;
}

const HEALTH_CLASS: Record<string, string> = { healthy: 'ok', unhealthy: 'bad', starting: 'warn', stopped: 'muted', unknown: 'muted' };

function hostRow(r: StoredReport, view: RepositoryView, opts: DashboardOptions): SafeHtml {
  const age = opts.now.getTime() - Date.parse(r.received_at);
  const stale = age > opts.staleMinutes * 60_000;
  const apps = r.report.appliances.map((a) => {
    const target = a.channel ? view.images.find((i) => i.name === a.name)?.channels[a.channel] : undefined;
    // a host on the version a channel's rollout moves to is ahead of the channel, not behind it
    const rollout = opts.rollouts?.find((r) => r.name === a.name && r.channel === a.channel);
    const behind = target !== undefined && a.version !== target && !(rollout && a.version === rollout.to && rollout.state !== 'aborted');
    const hold = opts.holdOf?.(a.name, r.report.host);
    const why = hold ? `held on ${hold.version} by ${hold.by}: ${hold.reason}` : behindReason(a);
    const form = (op: 'hold' | 'release', label: string) => opts.actions
      ? html`<form method="post" class="hold" action="/actions/holds/${encodeURIComponent(a.name)}/${encodeURIComponent(r.report.host)}/${op}"><input type="hidden" name="csrf" value="${opts.actions.csrf}">${op === 'hold' ? html`<input type="text" name="reason" maxlength="500" placeholder="reason">` : ''}<button type="submit">${label}</button></form>`
      : '';
    return html`<li><b>${a.name}</b> ${a.version ?? 'not installed'}${a.channel ? html` <span class="muted">(${a.channel})</span>` : ''}
      <span class="badge ${HEALTH_CLASS[a.health] ?? 'muted'}">${a.health}</span> ${a.running ? html`<span class="badge ok">running</span>` : html`<span class="badge muted">not running</span>`} ${a.verified === false ? html`<span class="badge bad">not verified</span>` : a.verified === null ? html`<span class="badge muted">not checked</span>` : ''} ${behind ? html`<span class="badge warn">behind: ${a.channel} is ${target}</span>` : ''}${why ? html`<span class="badge warn why">${why}</span>` : ''}${a.version ? (hold ? form('release', 'Release') : form('hold', `Hold on ${a.version}`)) : ''}${a.error ? html`<div class="error">${a.error}</div>` : ''}</li>`;
  });
  return html`<tr class="host${stale ? ' stale' : ''}" data-host="${r.report.host}">
  <td><b>${r.report.host}</b>${stale ? html` <span class="badge warn">stale</span>` : ''}</td>
  <td>${r.report.site}</td>
  <td>${r.report.agent_version}</td>
  <td title="${r.received_at}">${formatAge(age)}</td>
  <td>${apps.length ? html`<ul class="apps">${apps}</ul>` : html`<span class="muted">none</span>`}</td>
  <td>${r.report.last_error ? html`<span class="error">${r.report.last_error}</span>` : html`<span class="muted">—</span>`}</td>
</tr>`;
}

export function renderDashboard(view: RepositoryView, allReports: StoredReport[], opts: DashboardOptions): string {
  const reports = opts.site ? allReports.filter((r) => r.report.site === opts.site) : allReports;
  const rollouts = opts.rollouts ?? [];
  const staleCount = reports.filter((r) => opts.now.getTime() - Date.parse(r.received_at) > opts.staleMinutes * 60_000).length;
  const unhealthy = reports.filter((r) => r.report.appliances.some((a) => a.health === 'unhealthy' || a.verified === false) || r.report.last_error).length;
  const page = html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>${opts.title}</title>
<style>${new SafeHtml(STYLE + ROLLOUT_STYLE)}</style>
</head>
<body>
<header><h1>${opts.title}</h1>
  <span class="meta">${view.index ? html`index v${view.index.version} · root v${view.index.rootVersion} · expires ${date(view.index.expires)}` : 'no index'}</span>
  <span class="meta">rendered ${date(opts.now.toISOString())}</span>
</header>
<main>
${expiryBanner(view.index?.expires, opts.now)}
${rollouts.length ? html`<h2 id="rollouts">Rollouts</h2>${rollouts.map((r) => rolloutCard(r, opts.actions ?? null))}` : ''}
<h2 id="images">Images</h2>
${view.error ? html`<p class="${view.index ? 'error' : 'muted'}">${view.error}</p>` : ''}
${view.images.length ? view.images.map(imageCard) : view.error ? '' : html`<p class="muted">No images published yet.</p>`}
<h2 id="fleet">Fleet${opts.site ? html` <span class="badge">site ${opts.site}</span>` : ''}</h2>
${siteNav(allReports, opts.site ?? null)}
<div class="summary">
  <div><b>${reports.length}</b>hosts</div>
  <div><b>${staleCount}</b>stale (no report for ${opts.staleMinutes} min)</div>
  <div><b>${unhealthy}</b>with problems</div>
</div>
${reports.length
  ? html`<div class="card"><table id="hosts">
  <thead><tr><th>Host</th><th>Site</th><th>Agent</th><th>Last seen</th><th>Appliances</th><th>Last error</th></tr></thead>
  <tbody>${reports.map((r) => hostRow(r, view, { ...opts, rollouts }))}</tbody>
</table></div>`
  : html`<p class="muted">No host has reported yet.</p>`}
${reports.length ? html`<h2 id="by-version">Hosts per version</h2>${versionsTable(reports)}` : ''}
</main>
</body>
</html>
`;
  return page.value;
}
