// The dashboard's rollout and fleet-overview parts: pure functions to escaped HTML. Action
// buttons are plain forms (the page runs no script) carrying the CSRF token of the viewer
// who may act (dashboard-actions.ts checks it).
import { html, SafeHtml } from './html.js';
import type { RolloutView } from './rollouts.js';
import type { StoredReport } from './reports.js';

export const ROLLOUT_STYLE = `
.stages { display:flex; gap:4px; margin:6px 0; }
.stage { flex:1; padding:4px 8px; border-radius:6px; background:#f0f1f3; color:var(--muted); font-size:12px; }
.stage.open { background:#e7f6ef; color:var(--ok); font-weight:600; }
.rollout .body { padding:8px 14px 12px; }
.rollout form { display:inline-flex; gap:4px; margin:4px 8px 0 0; }
.rollout input[type=text] { font:inherit; padding:2px 6px; width:16em; }
.rollout button, form.hold button { font:inherit; padding:2px 10px; cursor:pointer; }
form.hold { display:inline-flex; gap:4px; margin-left:6px; }
form.hold input[type=text] { font:inherit; padding:1px 6px; width:10em; }
.banner { padding:10px 14px; border-radius:8px; margin:0 0 16px; background:#fef4e6; color:var(--warn); border:1px solid #f5d3a5; }
.banner.bad { background:#fdecea; color:var(--bad); border-color:#f3b8b2; }
nav.sites a { margin-right:10px; }
nav.sites a.current { font-weight:600; }
`;

/** What a viewer who may act on rollouts sends back with each form (null: show no forms). */
export interface ActionContext {
  csrf: string;
}

const STATE_CLASS: Record<RolloutView['state'], string> = { running: 'ok', paused: 'warn', aborted: 'bad' };

function actionForm(v: RolloutView, op: string, label: string, ctx: ActionContext, withReason = false): SafeHtml {
  return html`<form method="post" action="/actions/rollouts/${encodeURIComponent(v.name)}/${encodeURIComponent(v.channel)}/${op}">
    <input type="hidden" name="csrf" value="${ctx.csrf}">${withReason ? html`<input type="text" name="reason" maxlength="500" placeholder="reason">` : ''}
    <button type="submit" name="op" value="${op}">${label}</button></form>`;
}

export function rolloutCard(v: RolloutView, ctx: ActionContext | null): SafeHtml {
  const stages = v.stages.map((s, i) => html`<div class="stage${i < v.stage ? ' open' : ''}">${s.percent}%<br>${s.opens ? s.opens.replace('T', ' ').replace(/\.\d+/, '').replace(/Z$/, ' UTC') : 'manual'}</div>`);
  const f = v.fleet;
  const actions = !ctx
    ? ''
    : v.state === 'running'
      ? html`${actionForm(v, 'pause', 'Pause', ctx, true)}${v.next?.includes('operator') ? actionForm(v, 'resume', 'Open next stage', ctx) : ''}${v.complete ? actionForm(v, 'finish', 'Finish', ctx) : ''}${actionForm(v, 'abort', 'Abort', ctx, true)}`
      : v.state === 'paused'
        ? html`${actionForm(v, 'resume', 'Resume', ctx)}${actionForm(v, 'abort', 'Abort', ctx, true)}`
        : actionForm(v, 'finish', 'Close (channel stays on ' + v.from + ')', ctx);
  return html`<section class="card rollout" data-rollout="${v.name}/${v.channel}">
  <div class="head"><h3>${v.name}</h3><span class="badge">${v.channel}</span><b>${v.from} → ${v.to}</b>
    <span class="badge ${STATE_CLASS[v.state]}">${v.state}</span><span class="muted">stage ${v.stage} of ${v.stages.length}, ${v.percent}% of hosts</span></div>
  <div class="body">
    <div class="stages">${stages}</div>
    ${v.stopped ? html`<div class="${v.state === 'aborted' || v.stopped.by.includes('halt') ? 'error' : 'muted'} stopped">${v.stopped.reason} <span class="muted">(${v.stopped.by}, ${v.stopped.at})</span></div>` : ''}
    ${v.next ? html`<div class="muted">next: ${v.next}</div>` : ''}
    ${f ? html`<div class="tally">${f.took} host(s) took ${v.to} · <span class="${f.failed.length ? 'error' : ''}">${f.failed.length} failed</span> · ${f.waiting} waiting for their stage</div>` : ''}
    ${f?.failed.length ? html`<ul class="failed">${f.failed.slice(0, 20).map((x) => html`<li><b>${x.host}</b> <span class="muted">(${x.site})</span>: <span class="error">${x.error ?? 'unhealthy'}</span></li>`)}</ul>` : ''}
    ${v.sites || v.groups ? html`<div class="muted">${v.sites ? `sites: ${v.sites.join(', ')}` : ''} ${v.groups ? `groups: ${v.groups.join(', ')}` : ''}</div>` : ''}
    <div class="actions">${actions}</div>
  </div>
</section>`;
}

/** Hosts per version of each image: where the fleet stands. */
export function versionsTable(reports: readonly StoredReport[]): SafeHtml {
  const counts = new Map<string, Map<string, number>>();
  for (const { report } of reports) {
    for (const a of report.appliances) {
      const m = counts.get(a.name) ?? new Map<string, number>();
      m.set(a.version ?? 'not installed', (m.get(a.version ?? 'not installed') ?? 0) + 1);
      counts.set(a.name, m);
    }
  }
  if (!counts.size) return html``;
  const rows = [...counts].sort(([a], [b]) => a.localeCompare(b)).flatMap(([image, m]) =>
    [...m].sort(([a], [b]) => b.localeCompare(a)).map(([version, n]) => html`<tr data-image="${image}" data-version="${version}"><td>${image}</td><td>${version}</td><td class="num">${n}</td></tr>`));
  return html`<div class="card"><table id="versions"><thead><tr><th>Image</th><th>Version</th><th>Hosts</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

/** Why an appliance is not on what its channel names, in a word or two: the host's own account first. */
export function behindReason(a: StoredReport['report']['appliances'][number]): string | null {
  if (a.rollout && !a.rollout.taking) return `outside the rollout of ${a.rollout.to}`;
  if (a.waiting) return 'waiting for its maintenance window';
  if (a.held) return 'held: older version refused';
  if (a.failed_versions?.length) return `failed ${a.failed_versions.at(-1)}, rolled back`;
  return null;
}

export function siteNav(reports: readonly StoredReport[], current: string | null): SafeHtml {
  const sites = [...new Set(reports.map((r) => r.report.site))].sort();
  if (sites.length < 2 && !current) return html``;
  return html`<nav class="sites">site: <a href="/#fleet" class="${current ? '' : 'current'}">all</a>${sites.map((s) => html`<a href="/?site=${encodeURIComponent(s)}#fleet" class="${s === current ? 'current' : ''}">${s}</a>`)}</nav>`;
}

/** A warning while index.json nears its expiry (clients refuse an expired one: every host then fails). */
export function expiryBanner(expires: string | undefined, now: Date, warnDays = 7): SafeHtml {
  if (!expires) return html``;
  const left = Date.parse(expires) - now.getTime();
  if (left > warnDays * 86400_000) return html``;
  if (left <= 0) return html`<div class="banner bad" id="expiry">index.json expired at ${expires}: every host refuses it. Re-sign it now (loopship repo resign).</div>`;
  return html`<div class="banner" id="expiry">index.json expires in ${Math.floor(left / 86400_000)} d ${Math.floor((left % 86400_000) / 3600_000)} h (${expires}): re-sign it before then (loopship repo resign), or hosts stop updating.</div>`;
}
