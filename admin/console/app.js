// The ferry console: a client of the admin API (/api/v1) and nothing else.
// Every value shown comes from the API and is set as text, never as HTML.

const API = "/api/v1";
let session = null; // GET /ui/session
let refresh = null; // the current page's refresh timer
let routeGen = 0; // counts route() calls: a page drawn for an older one is stale
let tail = null; // the current page's live tail (EventSource)

// el builds an element: el("td", {class: "num"}, "42", child, ...).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// put replaces the children of parent, flattening arrays and leaving out
// null and undefined (el does the same for an element's children).
function put(parent, ...children) {
  parent.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => c instanceof Node ? c : document.createTextNode(String(c))));
}

function link(href, text) { return el("a", { href }, text); }
function enc(s) { return encodeURIComponent(s); }
function badge(kind, text) { return el("span", { class: "badge " + kind }, text); }
function time(t) { return t ? new Date(t).toISOString().replace(".000Z", "Z") : ""; }
function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

// ApiError is an error response of the API.
class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function request(method, path, body, accept) {
  const headers = { Accept: accept || "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session?.csrf) headers["X-Ferry-CSRF"] = session.csrf;
  const resp = await fetch(API + path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 401 && session?.auth) {
    location.assign(session.login_path);
    throw new ApiError(401, { error: { message: "not logged in" } });
  }
  return resp;
}

async function api(path) {
  const resp = await request("GET", path);
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

async function post(path, body) {
  const resp = await request("POST", path, body);
  const out = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, out);
  return out;
}

// postStream posts and reads the server-sent events of the answer,
// calling on(event, data) for each.
async function postStream(path, body, on) {
  const resp = await request("POST", path, body, "text/event-stream");
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      const v = JSON.parse(data);
      if (name === "error") throw new ApiError(500, v);
      on(name, v);
    }
  }
}

function problem(err) {
  return el("p", { class: "problem", role: "alert" }, el("strong", {}, "Error: "), err.message);
}

// confirmDialog asks before a change; it resolves true on Confirm.
function confirmDialog(title, text, action) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "cancel";
    d.showModal();
  });
}

// ---- pages ----

// table renders rows under the column heads; a column's head aligns as
// its cells do (numbers to the right).
function table(head, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  const first = rows[0].children;
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { scope: "col", class: first[i]?.classList.contains("num") ? "num" : null }, h)))),
    el("tbody", {}, rows)));
}

function healthBadge(h) {
  return h.status === "ok" ? badge("ok", "ok") : badge("bad", h.status);
}

function breakerBadge(state) {
  if (!state) return el("span", { class: "muted" }, "none");
  return badge(state === "closed" ? "ok" : state === "open" ? "bad" : "warn", state);
}

async function overview(main) {
  const [health, topics, groups, dlqs] = await Promise.all([api("/health"), api("/topics"), api("/groups"), api("/dlq")]);
  const details = await Promise.all(groups.map((g) => api("/groups/" + enc(g.group)).catch(() => null)));
  put(main, 
    el("h1", {}, "Overview"),
    el("div", { class: "grid" },
      el("section", { class: "card", "aria-labelledby": "h-health" }, el("h2", { id: "h-health" }, "Health"),
        el("dl", { class: "facts" },
          el("dt", {}, "Status"), el("dd", { id: "health-status" }, healthBadge(health)),
          el("dt", {}, "Backend"), el("dd", {}, health.backend),
          el("dt", {}, "Consumers here"), el("dd", {}, health.consumers)),
        health.problems.length ? el("ul", { class: "problem" }, health.problems.map((p) => el("li", {}, p))) : null),
      el("section", { class: "card", "aria-labelledby": "h-dlqt" }, el("h2", { id: "h-dlqt" }, "Dead letters"),
        el("p", {}, el("strong", { id: "dlq-total" }, dlqs.reduce((n, d) => n + d.dead, 0)), " dead, ",
          dlqs.reduce((n, d) => n + d.requested, 0), " requested, in ", dlqs.length, " queue(s)"))),
    el("h2", {}, "Topics"),
    table(["Topic", "Partitions", "Messages", "Size", "Retention"], topics.map((t) => el("tr", {},
      el("td", {}, link("#/topics/" + enc(t.name), t.name)), el("td", { class: "num" }, t.partitions),
      el("td", { class: "num" }, t.messages), el("td", { class: "num" }, bytes(t.bytes)),
      el("td", {}, [t.retention || "forever", t.retention_bytes ? ` or ${bytes(t.retention_bytes)} per partition` : "", t.compact ? ", compacted" : ""].join("")))),
    "No topics yet."),
    el("h2", {}, "Consumer groups"),
    table(["Group", "Partitions", "Lag", "Members", "Breaker", "Health"], groups.map((g, i) => {
      const run = details[i]?.running || [];
      return el("tr", {},
        el("td", {}, link("#/groups/" + enc(g.group), g.group)), el("td", { class: "num" }, g.partitions),
        el("td", { class: "num" }, g.lag), el("td", { class: "num" }, g.members),
        el("td", {}, run.length ? run.map((r) => breakerBadge(r.stats.breaker)) : el("span", { class: "muted" }, "not run here")),
        el("td", {}, run.length ? run.map((r) => r.healthy ? badge("ok", "healthy") : badge("bad", "unhealthy")) : el("span", { class: "muted" }, "—")));
    }), "No consumer groups yet."),
    el("h2", {}, "Dead-letter queues"),
    table(["Queue", "Group", "Dead", "Requested", "By class"], dlqs.map((d) => el("tr", {},
      el("td", {}, link("#/dlq/" + enc(d.queue), d.queue)), el("td", {}, d.group),
      el("td", { class: "num" }, d.dead), el("td", { class: "num" }, d.requested),
      el("td", {}, Object.entries(d.classes).map(([c, n]) => `${c}: ${n}`).join(", ") || "—"))),
    "No dead-letter queues."));
}

// payloadText renders a message payload in the chosen form.
function payloadText(m, form) {
  let raw = m.payload;
  let bytesOf = () => m.encoding === "base64" ? Uint8Array.from(atob(raw), (c) => c.charCodeAt(0)) : new TextEncoder().encode(raw);
  if (form === "hex") return Array.from(bytesOf(), (b) => b.toString(16).padStart(2, "0")).join(" ");
  if (m.encoding === "base64") return "(binary, base64) " + raw;
  if (form === "json") {
    try { return JSON.stringify(JSON.parse(raw), null, 2); } catch { return raw + "\n(not valid JSON)"; }
  }
  return raw;
}

function messageRows(m, form) {
  const detail = el("tr", { class: "detail", hidden: true }, el("td", { colspan: 6 },
    el("h3", {}, `Offset ${m.offset}`),
    el("dl", { class: "facts" }, el("dt", {}, "ID"), el("dd", { class: "mono" }, m.id),
      el("dt", {}, "Time"), el("dd", {}, time(m.time)), el("dt", {}, "Key"), el("dd", { class: "mono" }, m.key ?? ""),
      m.not_before ? [el("dt", {}, "Not before"), el("dd", {}, time(m.not_before))] : null),
    el("h4", {}, "Headers"),
    m.headers?.length ? el("table", {}, el("tbody", {}, m.headers.map((h) => el("tr", {}, el("th", { scope: "row" }, h.key), el("td", { class: "mono" }, h.value)))))
      : el("p", { class: "muted" }, "none"),
    el("h4", {}, "Payload"), el("pre", { class: "payload" }, payloadText(m, form))));
  const toggle = el("button", { type: "button", class: "secondary", "aria-expanded": "false",
    "aria-label": `Show message at offset ${m.offset}`,
    onclick: () => { detail.hidden = !detail.hidden; toggle.setAttribute("aria-expanded", String(!detail.hidden)); } }, "Show");
  const preview = payloadText(m, form === "json" ? "text" : form);
  return [el("tr", { "data-offset": m.offset },
    el("td", { class: "num" }, m.offset), el("td", {}, time(m.time)), el("td", { class: "mono" }, m.key ?? ""),
    el("td", { class: "mono payload" }, preview.length > 160 ? preview.slice(0, 160) + "…" : preview),
    el("td", { class: "num" }, m.headers?.length || 0), el("td", {}, toggle)), detail];
}

async function topicPage(main, name, params) {
  const t = await api("/topics/" + enc(name));
  const part = el("select", { id: "b-partition", name: "partition" },
    t.bounds.map((b) => el("option", { value: b.partition, selected: String(b.partition) === params.get("partition") }, `${b.partition}`)));
  const start = el("input", { id: "b-start", name: "start", value: params.get("start") || "earliest", size: 22,
    "aria-describedby": "b-start-help" });
  const limit = el("input", { id: "b-limit", name: "limit", type: "number", min: 1, max: 1000, value: 50 });
  const form = el("select", { id: "b-form", name: "form" }, ["text", "json", "hex"].map((f) => el("option", { value: f, selected: params.get("form") === f }, f)));
  const out = el("div", { id: "messages", "aria-live": "polite" });
  const tailBtn = el("button", { type: "button", class: "secondary", id: "tail" }, "Live tail");
  let next = null;
  let shown = []; // the messages in the table, to render again in another form
  const body = el("tbody");
  form.addEventListener("change", () => body.replaceChildren(...shown.flatMap((m) => messageRows(m, form.value))));
  const show = (page, append) => {
    if (!append) { body.replaceChildren(); shown = []; }
    shown.push(...page.messages);
    for (const m of page.messages) body.append(...messageRows(m, form.value));
    next = page.next;
    put(out, 
      body.children.length ? el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ["Offset", "Time", "Key", "Payload", "Headers", ""].map((h) => el("th", { scope: "col" }, h)))), body))
        : el("p", { class: "muted" }, "No messages from there."),
      el("p", { class: "note" }, `Partition end: ${page.end}. `,
        page.messages.length && next < page.end ? el("button", { type: "button", class: "secondary", id: "next-page", onclick: () => load(next, true) }, "Next page") : ""));
  };
  const load = async (from, append) => {
    try {
      const q = new URLSearchParams({ start: String(from), limit: limit.value });
      show(await api(`/topics/${enc(name)}/partitions/${part.value}/messages?${q}`), append);
    } catch (err) { put(out, problem(err)); }
  };
  tailBtn.addEventListener("click", async () => {
    if (tail) { stopTail(); tailBtn.textContent = "Live tail"; return; }
    // From the end as it is now: whatever comes after the click shows,
    // however long the stream takes to open.
    let from;
    try {
      from = (await api("/topics/" + enc(name))).bounds.find((b) => String(b.partition) === part.value).end;
    } catch (err) { put(out, problem(err)); return; }
    body.replaceChildren();
    put(out, el("p", { class: "note", id: "tail-state" }, `Following partition ${part.value} from offset ${from}…`),
      el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ["Offset", "Time", "Key", "Payload", "Headers", ""].map((h) => el("th", { scope: "col" }, h)))), body)));
    tail = new EventSource(`${API}/topics/${enc(name)}/tail?start=${from}&partition=${part.value}`);
    shown = [];
    tail.addEventListener("message", (ev) => {
      const m = JSON.parse(ev.data);
      shown.push(m);
      body.append(...messageRows(m, form.value));
    });
    tail.addEventListener("error", () => {
      // No reconnect: EventSource would start again from the same offset
      // and show messages twice.
      stopTail();
      tailBtn.textContent = "Live tail";
      document.getElementById("tail-state")?.replaceChildren("The tail stopped (the stream ended or failed): start it again to go on.");
    });
    tailBtn.textContent = "Stop tail";
  });
  put(main, 
    el("p", { class: "crumbs" }, link("#/", "Overview"), " / topic"),
    el("h1", {}, name),
    el("section", { class: "card" }, el("dl", { class: "facts" },
      el("dt", {}, "Partitions"), el("dd", {}, t.partitions),
      el("dt", {}, "Messages"), el("dd", {}, t.messages),
      el("dt", {}, "Size"), el("dd", {}, bytes(t.bytes)),
      el("dt", {}, "Retention"), el("dd", {}, t.retention || "forever"),
      el("dt", {}, "Retention per partition"), el("dd", {}, t.retention_bytes ? bytes(t.retention_bytes) : "unbounded"),
      el("dt", {}, "Compacted"), el("dd", {}, t.compact ? "yes: the latest message of each key is kept" : "no"),
      el("dt", {}, "Dedup window"), el("dd", {}, t.dedup_window || "the backend's default"))),
    el("h2", {}, "Partitions"),
    table(["Partition", "Start", "End", "Messages"], t.bounds.map((b) => el("tr", {},
      el("td", { class: "num" }, b.partition), el("td", { class: "num" }, b.start), el("td", { class: "num" }, b.end),
      el("td", { class: "num" }, b.end - b.start))), "No partitions."),
    el("h2", {}, "Messages"),
    el("form", { class: "filters", id: "browse", onsubmit: (ev) => { ev.preventDefault(); stopTail(); tailBtn.textContent = "Live tail"; load(start.value, false); } },
      el("div", {}, el("label", { for: "b-partition" }, "Partition"), part),
      el("div", {}, el("label", { for: "b-start" }, "From"), start),
      el("div", {}, el("label", { for: "b-limit" }, "Page size"), limit),
      el("div", {}, el("label", { for: "b-form" }, "Payload as"), form),
      el("div", {}, el("button", { type: "submit" }, "Browse")),
      el("div", {}, tailBtn)),
    el("p", { class: "note", id: "b-start-help" }, "From: earliest, latest, an offset, -N (N before the end), an RFC 3339 time, or a duration ago (1h)."),
    out);
  if (params.get("start")) load(start.value, false);
}

function lagChart(hist) {
  const s = hist.samples;
  if (!s.length) {
    return el("p", { class: "muted", id: "lag-chart" }, hist.interval ? "No sample yet." : "This process does not sample lag (the service runs without RecordLag).");
  }
  const W = 800, H = 200, P = 36;
  const max = Math.max(1, ...s.map((x) => x.lag));
  const t0 = Date.parse(s[0].time), t1 = Math.max(t0 + 1, Date.parse(s[s.length - 1].time));
  const x = (t) => P + (W - 2 * P) * (Date.parse(t) - t0) / (t1 - t0);
  const y = (v) => H - P / 2 - (H - P) * v / max;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("id", "lag-chart");
  const last = s[s.length - 1];
  svg.setAttribute("aria-label", `Lag of ${hist.group} from ${time(s[0].time)} to ${time(last.time)}: ${s[0].lag} then ${last.lag} messages, at most ${max}`);
  add("line", { class: "axis", x1: P, y1: y(0), x2: W - P, y2: y(0) });
  add("line", { class: "axis", x1: P, y1: y(max), x2: P, y2: y(0) });
  add("text", { x: 2, y: y(max) + 4 }, String(max));
  add("text", { x: 2, y: y(0) + 4 }, "0");
  add("text", { x: P, y: H - 2 }, time(s[0].time));
  add("text", { x: W - P, y: H - 2, "text-anchor": "end" }, time(last.time));
  add("polyline", { class: "line", points: s.map((p) => `${x(p.time).toFixed(1)},${y(p.lag).toFixed(1)}`).join(" ") });
  return svg;
}

async function groupPage(main, name) {
  // Another page may be opened while this one waits for the server: it
  // must then neither draw over that page nor leave its refresh running.
  const gen = routeGen;
  // The DLQ summary reads whole DLQ topics: once per visit, not per refresh.
  const mine = (await api("/dlq")).filter((d) => d.group === name);
  const draw = async () => {
    const [g, hist] = await Promise.all([api("/groups/" + enc(name)), api(`/groups/${enc(name)}/lag`)]);
    if (gen !== routeGen) return;
    const total = g.partitions.reduce((n, p) => n + p.lag, 0);
    put(main, 
      el("p", { class: "crumbs" }, link("#/", "Overview"), " / group"),
      el("h1", {}, name),
      el("p", {}, "Lag: ", el("strong", { id: "group-lag" }, total), " message(s) across ", g.partitions.length, " partition(s). ",
        mine.map((d) => [link("#/dlq/" + enc(d.queue), `Dead letters: ${d.dead} dead, ${d.requested} requested`), " "])),
      el("h2", {}, "Lag over time"),
      lagChart(hist),
      el("p", { class: "note" }, hist.interval ? `Sampled every ${hist.interval} by the server; the newest ${hist.samples.length} sample(s).` : ""),
      el("h2", {}, "Partitions"),
      table(["Topic", "Partition", "Committed", "End", "Lag"], g.partitions.map((p) => el("tr", {},
        el("td", {}, link("#/topics/" + enc(p.topic), p.topic)), el("td", { class: "num" }, p.partition),
        el("td", { class: "num" }, p.committed), el("td", { class: "num" }, p.end), el("td", { class: "num" }, p.lag))),
      "No committed offsets."),
      el("h2", {}, "Members"),
      g.members.length ? el("ul", {}, g.members.map((m) => el("li", { class: "mono" }, m))) : el("p", { class: "muted" }, "No live members."),
      el("h2", {}, "Running in this process"),
      table(["Member", "Health", "Breaker", "Parked keys", "Parked messages", "Buffered", "In flight", "Partitions"], g.running.map((r) => el("tr", {},
        el("td", { class: "mono" }, r.member),
        el("td", {}, r.healthy ? badge("ok", "healthy") : [badge("bad", "unhealthy"), " ", r.problem]),
        el("td", {}, breakerBadge(r.stats.breaker)), el("td", { class: "num" }, r.stats.parked_keys),
        el("td", { class: "num" }, r.stats.parked_messages), el("td", { class: "num" }, r.stats.buffered),
        el("td", { class: "num" }, r.stats.in_flight), el("td", {}, r.partitions.map((p) => `${p.topic}/${p.partition}`).join(", ")))),
      "None: this process runs no member of the group."));
  };
  await draw();
  if (gen !== routeGen) return;
  refresh = setInterval(() => draw().catch(() => {}), 5000);
}

const classes = ["transient", "permanent", "decode", "timeout", "panic", "parked", "scheduled"];
const states = ["dead", "requested", "redriven", "purged"];

function filterOf(params) {
  const f = {};
  for (const k of ["class", "key", "since", "until", "state"]) if (params.get(k)) f[k] = params.get(k);
  return f;
}

async function access(topic, group) {
  const q = new URLSearchParams();
  if (topic) q.set("topic", topic);
  if (group) q.set("group", group);
  return api("/access?" + q);
}

// dlqActions are the redrive and purge buttons: each works only if the
// caller's token grants its verb on the queue, and says so otherwise.
function dlqActions(queue, acc, what, filter, after) {
  const status = el("div", { id: "op-status", "aria-live": "polite" });
  const can = (verb) => acc.topic_verbs.includes(verb) || acc.topic_verbs.includes("admin");
  const reason = (verb) => `${acc.name} may not ${verb} ${queue}: its roles do not grant "${verb}" on it.`;
  const run = async (verb) => {
    const n = what();
    if (!n.filter) return;
    const ok = await confirmDialog(verb === "redrive" ? "Redrive" : "Purge",
      verb === "redrive"
        ? `Redrive ${n.redrive} of ${queue}? Each key's entries go back to the consumer that owns its partition, and are handled in their original order before the key's newer messages.`
        : `Purge ${n.purge} of ${queue}? They will no longer list or redrive, and keys parked behind them move on.`,
      verb === "redrive" ? "Redrive" : "Purge");
    if (!ok) { put(status, el("p", { class: "note" }, "Cancelled: nothing changed.")); return; }
    const bar = el("progress", { max: 1, value: 0, "aria-label": `${verb} progress` });
    put(status, bar);
    try {
      if (verb === "redrive") {
        let res = null;
        await postStream(`/dlq/${enc(queue)}/redrive`, { filter: n.filter }, (name, v) => {
          if (name === "progress") { bar.max = Math.max(1, v.total); bar.value = v.done; }
          if (name === "result") res = v;
        });
        // A stream cut before its result (a proxy, the server going) is
        // no success: the redrive may or may not have been asked for.
        if (!res) throw new Error("the redrive's answer ended without its result: look at the DLQ and the audit log before trying again");
        bar.value = bar.max;
        status.append(el("p", { id: "op-result", role: "status" }, `Redrive requested for ${res.entries} entr${res.entries === 1 ? "y" : "ies"}: their owner handles them in order.`));
      } else {
        const res = await post(`/dlq/${enc(queue)}/purge`, { filter: n.filter });
        bar.value = 1;
        status.append(el("p", { id: "op-result", role: "status" }, `Purged ${res.purged} entr${res.purged === 1 ? "y" : "ies"}.`));
      }
      after?.();
    } catch (err) { put(status, problem(err)); }
  };
  const button = (verb, label, cls) => el("button", { type: "button", class: cls, id: `${verb}-btn`, disabled: !can(verb),
    title: can(verb) ? null : reason(verb), "aria-describedby": can(verb) ? null : `${verb}-why`, onclick: () => run(verb) }, label);
  return el("div", {},
    el("div", { class: "actions" }, button("redrive", "Redrive…"), button("purge", "Purge…", "danger"),
      can("redrive") ? null : el("span", { class: "note", id: "redrive-why" }, reason("redrive")),
      can("purge") ? null : el("span", { class: "note", id: "purge-why" }, reason("purge"))),
    status);
}

async function dlqPage(main, queue, params) {
  const filter = filterOf(params);
  const acc = await access(queue);
  const q = new URLSearchParams(filter);
  q.set("limit", "50");
  if (params.get("after")) q.set("after", params.get("after"));
  const entries = await api(`/dlq/${enc(queue)}/entries?${q}`);
  const boxes = [];
  const rows = entries.map((e) => {
    const box = el("input", { type: "checkbox", value: e.id, id: "sel-" + e.id, "aria-label": `Select the entry of key ${e.key} at ${e.topic}/${e.partition}@${e.offset}` });
    boxes.push(box);
    return el("tr", { "data-id": e.id },
      el("td", {}, box),
      el("td", { class: "mono" }, link(`#/dlq/${enc(queue)}/${e.id}`, e.key || "(no key)")),
      el("td", {}, e.class), el("td", {}, e.state), el("td", { class: "num" }, e.attempts),
      el("td", {}, time(e.last_failure)), el("td", {}, `${e.topic}/${e.partition}@${e.offset}`),
      el("td", { class: "error" }, e.error.length > 120 ? e.error.slice(0, 120) + "…" : e.error));
  });
  const field = (id, label, input) => el("div", {}, el("label", { for: id }, label), input);
  const fclass = el("select", { id: "f-class", name: "class" }, el("option", { value: "" }, "any"),
    classes.map((c) => el("option", { value: c, selected: filter.class === c }, c)));
  const fstate = el("select", { id: "f-state", name: "state" }, el("option", { value: "" }, "dead and requested"),
    states.map((c) => el("option", { value: c, selected: filter.state === c }, c)));
  const fkey = el("input", { id: "f-key", name: "key", value: filter.key || "" });
  const fsince = el("input", { id: "f-since", name: "since", value: filter.since || "", placeholder: "1h or RFC 3339", size: 14 });
  const funtil = el("input", { id: "f-until", name: "until", value: filter.until || "", placeholder: "RFC 3339 or 10m", size: 14 });
  const apply = (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of [["class", fclass.value], ["state", fstate.value], ["key", fkey.value], ["since", fsince.value], ["until", funtil.value]]) if (v) p.set(k, v);
    location.hash = `#/dlq/${enc(queue)}?${p}`;
  };
  const selected = () => boxes.filter((b) => b.checked).map((b) => b.value);
  const scope = el("select", { id: "scope", name: "scope" }, el("option", { value: "selected" }, "the selected entries"),
    el("option", { value: "filter" }, "every entry the filter matches"));
  const what = () => {
    if (scope.value === "filter") {
      const label = "every entry the filter matches" + (Object.keys(filter).length ? ` (${new URLSearchParams(filter)})` : " (the whole queue)");
      return { filter, redrive: label + ", with the rest of their keys", purge: label };
    }
    const ids = selected();
    if (!ids.length) { document.getElementById("op-status").replaceChildren(el("p", { class: "problem", role: "alert" }, "Select entries first, or choose every entry the filter matches.")); return {}; }
    const n = `${ids.length} selected entr${ids.length === 1 ? "y" : "ies"}`;
    // A redrive takes whole keys (it cannot leave a key's earlier entry
    // behind); a purge takes only what it names.
    return { filter: { ...filter, ids }, redrive: `${n} and the other entries of their keys`, purge: `only the ${n}` };
  };
  const last = entries[entries.length - 1];
  put(main, 
    el("p", { class: "crumbs" }, link("#/", "Overview"), " / dead letters"),
    el("h1", {}, queue),
    el("form", { class: "filters", onsubmit: apply, "aria-label": "Filter" },
      field("f-class", "Class", fclass), field("f-state", "State", fstate), field("f-key", "Key", fkey),
      field("f-since", "Failed since", fsince), field("f-until", "Failed until", funtil),
      el("div", {}, el("button", { type: "submit" }, "Filter"))),
    el("div", { class: "actions" }, el("label", { for: "scope" }, "Act on"), scope),
    dlqActions(queue, acc, what, filter, () => setTimeout(() => route(), 300)),
    table(["", "Key", "Class", "State", "Attempts", "Last failure", "Source", "Error"], rows,
      params.get("after") ? "No more entries." : "No dead letters match."),
    el("p", {}, params.get("after") ? link(`#/dlq/${enc(queue)}?${new URLSearchParams(filter)}`, "First page") : "", " ",
      entries.length === 50 ? link(`#/dlq/${enc(queue)}?${new URLSearchParams({ ...filter, after: last.position })}`, "Next page") : ""));
}

async function entryPage(main, queue, id) {
  const [e, acc] = await Promise.all([api(`/dlq/${enc(queue)}/entries/${enc(id)}`), access(queue)]);
  const m = e.message;
  const form = el("select", { id: "e-form" }, ["text", "json", "hex"].map((f) => el("option", { value: f }, f)));
  const payload = el("pre", { id: "e-payload", class: "payload" }, payloadText(m, "text"));
  form.addEventListener("change", () => { payload.textContent = payloadText(m, form.value); });
  put(main, 
    el("p", { class: "crumbs" }, link("#/", "Overview"), " / ", link("#/dlq/" + enc(queue), queue), " / entry"),
    el("h1", {}, `Dead letter of key ${e.key || "(no key)"}`),
    el("section", { class: "card" }, el("dl", { class: "facts" },
      el("dt", {}, "State"), el("dd", { id: "e-state" }, e.state),
      el("dt", {}, "Class"), el("dd", { id: "e-class" }, e.class),
      el("dt", {}, "Attempts"), el("dd", {}, e.attempts),
      el("dt", {}, "First failure"), el("dd", {}, time(e.first_failure)),
      el("dt", {}, "Last failure"), el("dd", {}, time(e.last_failure)),
      e.retry_at ? [el("dt", {}, "Retry at"), el("dd", {}, time(e.retry_at))] : null,
      el("dt", {}, "Group"), el("dd", {}, e.group),
      el("dt", {}, "Handler"), el("dd", {}, e.handler || "—"),
      el("dt", {}, "Source"), el("dd", {}, link(`#/topics/${enc(e.topic)}?partition=${e.partition}&start=${e.offset}`, `${e.topic} partition ${e.partition} offset ${e.offset}`)),
      el("dt", {}, "Message ID"), el("dd", { class: "mono" }, e.id))),
    el("h2", {}, "Error"), el("pre", { id: "e-error" }, e.error),
    e.reason ? [el("h2", {}, "Reason"), el("pre", {}, e.reason)] : null,
    e.stack ? [el("h2", {}, "Stack"), el("pre", { id: "e-stack" }, e.stack)] : null,
    el("h2", {}, "Original message"),
    m.headers?.length ? el("table", {}, el("tbody", {}, m.headers.map((h) => el("tr", {}, el("th", { scope: "row" }, h.key), el("td", { class: "mono" }, h.value)))))
      : el("p", { class: "muted" }, "No headers."),
    el("div", { class: "actions" }, el("label", { for: "e-form" }, "Payload as"), form),
    payload,
    el("h2", {}, "Act on this entry"),
    dlqActions(queue, acc, () => ({ filter: { ids: [e.id] }, redrive: `this entry and the other entries of key ${e.key || "(no key)"}`,
      purge: "only this entry" }), {},
      () => setTimeout(() => route(), 300)));
}

async function auditPage(main, params) {
  const q = new URLSearchParams();
  for (const k of ["actor", "verb", "result"]) if (params.get(k)) q.set(k, params.get(k));
  q.set("limit", "200");
  const recs = (await api("/audit?" + q)).reverse();
  const field = (id, label, input) => el("div", {}, el("label", { for: id }, label), input);
  const actor = el("input", { id: "a-actor", value: params.get("actor") || "" });
  const verb = el("input", { id: "a-verb", value: params.get("verb") || "" });
  const result = el("select", { id: "a-result" }, el("option", { value: "" }, "any"),
    ["ok", "denied", "failed"].map((r) => el("option", { value: r, selected: params.get("result") === r }, r)));
  put(main, 
    el("p", { class: "crumbs" }, link("#/", "Overview"), " / audit"),
    el("h1", {}, "Audit log"),
    el("p", { class: "note" }, "Every request that could change something, allowed or not, newest first."),
    el("form", { class: "filters", "aria-label": "Filter", onsubmit: (ev) => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const [k, v] of [["actor", actor.value], ["verb", verb.value], ["result", result.value]]) if (v) p.set(k, v);
      location.hash = "#/audit?" + p;
    } }, field("a-actor", "Actor", actor), field("a-verb", "Verb", verb), field("a-result", "Result", result),
    el("div", {}, el("button", { type: "submit" }, "Filter"))),
    table(["Time", "Actor", "Verb", "Target", "Result", "Status", "What it did"], recs.map((r) => el("tr", { "data-verb": r.data.verb },
      el("td", {}, time(r.time)), el("td", {}, `${r.data.actor} (${r.data.auth})`), el("td", {}, r.data.verb),
      el("td", { class: "mono" }, r.subject),
      el("td", {}, r.data.result === "ok" ? badge("ok", "ok") : badge(r.data.result === "denied" ? "warn" : "bad", r.data.result)),
      el("td", { class: "num" }, r.data.status), el("td", {}, r.data.counts || r.data.error || ""))), "No audit records."));
}

// ---- routing ----

function stopTail() { if (tail) { tail.close(); tail = null; } }

async function route() {
  routeGen++;
  clearInterval(refresh);
  refresh = null;
  stopTail();
  const main = document.getElementById("main");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts.length === 0) await overview(main);
    else if (parts[0] === "topics" && parts.length === 2) await topicPage(main, parts[1], params);
    else if (parts[0] === "groups" && parts.length === 2) await groupPage(main, parts[1]);
    else if (parts[0] === "dlq" && parts.length === 2) await dlqPage(main, parts[1], params);
    else if (parts[0] === "dlq" && parts.length === 3) await entryPage(main, parts[1], parts[2]);
    else if (parts[0] === "audit") await auditPage(main, params);
    else put(main, el("h1", {}, "Not found"), el("p", {}, "No such page. "), link("#/", "Overview"));
    document.title = `${main.querySelector("h1")?.textContent || "ferry"} · ferry console`;
  } catch (err) {
    put(main, el("h1", {}, "Something went wrong"), problem(err));
  }
}

async function start() {
  const resp = await fetch("/ui/session", { credentials: "same-origin" });
  if (resp.status === 401) { location.assign("/ui/login"); return; }
  session = await resp.json();
  document.getElementById("who").textContent = session.auth ? `Logged in as ${session.name}` : "No authentication (loopback)";
  const out = document.getElementById("logout");
  out.hidden = !session.auth;
  out.addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-Ferry-CSRF": session.csrf }, credentials: "same-origin" });
    location.assign("/ui/login");
  });
  window.addEventListener("hashchange", route);
  await route();
}

start();
