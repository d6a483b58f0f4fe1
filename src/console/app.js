// Tally's web console (DESIGN.md section 11): a single page over the REST API and the live feed.
// Screens are hash routes (#/balances, #/history, #/lookup/<id>, #/move, #/admin); each is a
// function that renders into <main>. No inline script or style anywhere: the page runs under a
// strict Content-Security-Policy.

import * as api from "./api.js";
import { openFeed } from "./feed.js";
import { loadCurrencies, exponent, format, money, parse, when } from "./money.js";
import { h, form, announce, describeProblem, facts } from "./ui.js";
import uPlot from "./vendor/uPlot.esm.js";

const main = document.getElementById("main");
const state = { currencies: [], feed: null, balances: null, history: null, chart: null };

// ---- session, navigation and the live feed ------------------------------------------------

function signedIn() {
  const session = api.current();
  document.getElementById("nav").hidden = !session;
  document.getElementById("logout").hidden = !session;
  document.getElementById("nav-admin").hidden = session?.role !== "admin";
  document.getElementById("whoami").textContent = session ? `${session.user.username} (${session.role})` : "";
  if (session && !state.feed) {
    state.feed = openFeed({ token: () => api.current()?.access_token, onEvent: onFeedEvent, onState: showFeedState });
  }
  if (!session && state.feed) {
    state.feed.close();
    state.feed = null;
  }
}

function showFeedState(feedState, detail) {
  const badge = document.getElementById("feed-state");
  badge.hidden = feedState === "closed";
  badge.dataset.state = feedState;
  const words = { connecting: "Live feed: connecting", live: "Live feed: connected", reconnecting: "Live feed: reconnecting" };
  badge.textContent = words[feedState] || "";
  badge.title = detail || "";
  if (feedState === "live") refreshLive();
}

/** An event arrived: the screens that show money read again (exact, whatever the event). */
function onFeedEvent(event) {
  if (event.type.startsWith("transaction.") || event.type.startsWith("hold.") || event.type === "balance.alert") {
    refreshLive();
  }
}

let refreshing = null;
function refreshLive() {
  // Coalesce a burst of events into one read per screen.
  if (refreshing) return;
  refreshing = setTimeout(async () => {
    refreshing = null;
    if (state.balances) await state.balances().catch(() => {});
    if (state.history) await state.history().catch(() => {});
  }, 100);
}

function route() {
  const session = api.current();
  const [, screen = "", arg = ""] = location.hash.split("/");
  state.balances = null;
  state.history = null;
  if (state.chart) {
    state.chart.destroy();
    state.chart = null;
  }
  main.replaceChildren();
  if (!session) return renderSignIn();
  const screens = { balances: renderBalances, history: renderHistory, lookup: renderLookup, move: renderMove, admin: renderAdmin };
  const render = screens[screen] || renderBalances;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.getAttribute("href") === `#/${screen || "balances"}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  render(decodeURIComponent(arg)).catch(showFailure);
  main.focus();
}

function showFailure(error) {
  main.append(h("div", { class: "problem", role: "alert" }, error instanceof api.Problem ? describeProblem(error) : String(error)));
}

function section(title, ...children) {
  return h("section", { "aria-labelledby": slug(title) }, h("h2", { id: slug(title) }, title), ...children);
}

function slug(text) {
  return "s-" + text.toLowerCase().replace(/[^a-z0-9]+/g, "-");
}

function currencySelect(name = "currency", value = "USD") {
  return { name, label: "Currency", options: state.currencies, value, required: true };
}

function userId() {
  return api.current().sub;
}

// ---- sign in and register -------------------------------------------------------------------

async function renderSignIn() {
  const signIn = form({
    title: "Log in",
    submitLabel: "Log in",
    fields: [
      { name: "username", label: "Username or email", required: true, autocomplete: "username" },
      { name: "password", label: "Password", type: "password", required: true, autocomplete: "current-password" },
    ],
    submit: async (values) => {
      await api.login(values.username, values.password);
      // One render: a hash change renders by itself.
      if (location.hash === "#/balances") route();
      else location.hash = "#/balances";
      return "Logged in.";
    },
  });
  const signUp = form({
    title: "Register",
    submitLabel: "Register",
    fields: [
      { name: "username", label: "Username", required: true, autocomplete: "username" },
      { name: "email", label: "Email", type: "email", required: true, autocomplete: "email" },
      { name: "password", label: "Password", type: "password", required: true, autocomplete: "new-password", help: "At least 8 characters." },
    ],
    submit: async (values) => {
      const user = await api.register(values.username, values.email, values.password);
      return `Registered ${user.username}. You can log in now.`;
    },
  });
  main.append(h("div", { class: "columns" }, section("Welcome", signIn), section("New here?", signUp)));
}

// ---- balances with their history chart -----------------------------------------------------

async function renderBalances() {
  const table = h("table", {}, h("caption", {}, "Your accounts"), h("thead", {}, h("tr", {}, ["Currency", "Amount", "Pending", "Available"].map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  table.append(body);
  const chartBox = h("div", { class: "chart", role: "img", "aria-label": "Balance history chart" });
  const chartCurrency = h("select", { id: "chart-currency" });
  const chartInterval = h("select", { id: "chart-interval" }, h("option", { value: "hour" }, "by hour, last 2 days"), h("option", { value: "day", selected: true }, "by day, last 30 days"));
  const chartNote = h("p", { class: "describe" });
  const recent = h("tbody");
  main.append(
    section("Balances", h("div", { class: "scroll" }, table)),
    section(
      "Recent activity",
      h("div", { class: "scroll" }, h("table", {}, h("caption", {}, "Your latest transactions, newest first"), historyHead(), recent)),
      h("p", {}, h("a", { href: "#/history" }, "All history")),
    ),
    section(
      "Balance history",
      h("div", { class: "inline" }, h("label", { for: "chart-currency" }, "Currency"), chartCurrency, h("label", { for: "chart-interval" }, "Interval"), chartInterval),
      chartBox,
      chartNote,
    ),
  );

  const load = async () => {
    const reply = await api.request("GET", "/balances/current");
    body.replaceChildren(
      ...(reply.balances.length
        ? reply.balances.map((b) =>
            h("tr", { "data-currency": b.currency }, h("th", { scope: "row" }, b.currency), h("td", { class: "num" }, format(b.amount, b.currency)), h("td", { class: "num" }, format(b.pending, b.currency)), h("td", { class: "num" }, format(b.available, b.currency))),
          )
        : [h("tr", {}, h("td", { colspan: 4 }, "No balances yet: credit or receive money to open an account."))]),
    );
    const latest = await api.request("GET", "/transactions/history" + api.query({ limit: 10 }));
    recent.replaceChildren(...(latest.items.length ? latest.items.map(transactionRow) : [h("tr", {}, h("td", { colspan: 7 }, "Nothing yet."))]));
    const held = reply.balances.map((b) => b.currency);
    if (held.join() !== [...chartCurrency.options].map((o) => o.value).join()) {
      const chosen = chartCurrency.value;
      chartCurrency.replaceChildren(...held.map((c) => h("option", { value: c, selected: c === chosen }, c)));
    }
    await drawChart();
  };

  // This screen's chart only: a render that was replaced (its elements detached) draws nothing.
  let chart = null;
  const drawChart = async () => {
    const currency = chartCurrency.value;
    if (!currency || !chartBox.isConnected) return;
    const interval = chartInterval.value;
    const to = new Date(Math.ceil(Date.now() / 3600000) * 3600000 + 3600000);
    const from = new Date(to.getTime() - (interval === "hour" ? 48 : 30 * 24) * 3600000);
    const reply = await api.request("GET", "/balances/historical" + api.query({ currency, interval, from: from.toISOString(), to: to.toISOString() }));
    const xs = reply.items.map((i) => Date.parse(i.end) / 1000);
    if (!chartBox.isConnected) return;
    const major = reply.items.map((i) => i.balance / 10 ** exponent(currency));
    chartNote.textContent = reply.items.length ? `Closing balance ${interval === "hour" ? "of each hour" : "of each day"} in ${currency}; now ${money(reply.items.at(-1).balance, currency)}.` : "";
    const width = Math.max(280, Math.min(chartBox.clientWidth || 600, 900));
    const options = {
      width,
      height: 220,
      series: [{}, { label: currency, stroke: "#2457a6", fill: "rgba(36,87,166,0.08)", value: (u, v) => (v == null ? "" : v.toLocaleString()) }],
      axes: [{}, { size: 70 }],
    };
    if (chart) chart.destroy();
    chartBox.replaceChildren();
    chart = new uPlot(options, [xs, major], chartBox);
    state.chart = chart;
  };

  chartCurrency.addEventListener("change", () => drawChart().catch(showFailure));
  chartInterval.addEventListener("change", () => drawChart().catch(showFailure));
  state.balances = load;
  await load();
}

// ---- history, with filters and cursor paging ------------------------------------------------

function historyHead() {
  return h("thead", {}, h("tr", {}, ["When", "Type", "Status", "Amount", "Currency", "Description", "Id"].map((c) => h("th", { scope: "col" }, c))));
}

function transactionRow(t) {
  const me = userId();
  const direction = t.to_user_id === me && t.from_user_id !== me ? "in" : t.from_user_id === me && t.to_user_id !== me ? "out" : "";
  return h(
    "tr",
    { "data-id": t.id },
    h("td", {}, when(t.created_at)),
    h("td", {}, t.type),
    h("td", {}, t.status + (t.failure_reason ? ` (${t.failure_reason})` : "")),
    h("td", { class: "num" }, (direction === "out" ? "-" : "") + format(t.amount, t.currency)),
    h("td", {}, t.currency),
    h("td", {}, t.description || ""),
    h("td", {}, h("a", { href: `#/lookup/${t.id}`, title: t.id }, h("span", { class: "visually-hidden" }, "Transaction "), "…" + t.id.slice(-8))),
  );
}

async function renderHistory() {
  const rows = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const filters = h(
    "form",
    { class: "filters", "aria-label": "Filters" },
    h("label", { for: "h-type" }, "Type"),
    h("select", { id: "h-type", name: "type" }, ["", "credit", "debit", "transfer", "reversal", "exchange"].map((v) => h("option", { value: v }, v || "any"))),
    h("label", { for: "h-status" }, "Status"),
    h("select", { id: "h-status", name: "status" }, ["", "completed", "pending", "failed", "posted", "voided", "expired"].map((v) => h("option", { value: v }, v || "any"))),
    h("label", { for: "h-currency" }, "Currency"),
    h("input", { id: "h-currency", name: "currency", size: 4, maxlength: 3, placeholder: "any" }),
    h("label", { for: "h-from" }, "From"),
    h("input", { id: "h-from", name: "from", type: "date" }),
    h("label", { for: "h-to" }, "To"),
    h("input", { id: "h-to", name: "to", type: "date" }),
    h("button", { type: "submit" }, "Apply"),
  );
  const error = h("div", { class: "problem", role: "alert", hidden: true });
  main.append(
    section(
      "History",
      filters,
      error,
      h("div", { class: "scroll" }, h("table", {}, h("caption", {}, "Transactions, newest first"), historyHead(), rows)),
      more,
    ),
  );
  let cursor = null;
  const params = () => {
    const data = new FormData(filters);
    const day = (value, end) => (value ? new Date(`${value}T00:00:00`).getTime() + (end ? 86400000 : 0) : null);
    const from = day(data.get("from"), false);
    const to = day(data.get("to"), true);
    return {
      type: data.get("type"),
      status: data.get("status"),
      currency: String(data.get("currency") || "").toUpperCase(),
      from: from ? new Date(from).toISOString() : null,
      to: to ? new Date(to).toISOString() : null,
      limit: 25,
    };
  };
  const page = async (first) => {
    error.hidden = true;
    try {
      const reply = await api.request("GET", "/transactions/history" + api.query({ ...params(), cursor: first ? null : cursor }));
      if (first) rows.replaceChildren();
      rows.append(...reply.items.map(transactionRow));
      if (first && !reply.items.length) rows.append(h("tr", {}, h("td", { colspan: 7 }, "No transactions match.")));
      cursor = reply.next_cursor;
      more.hidden = !cursor;
    } catch (problem) {
      if (!(problem instanceof api.Problem)) throw problem;
      error.hidden = false;
      error.replaceChildren(describeProblem(problem));
    }
  };
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    page(true);
  });
  more.addEventListener("click", () => page(false));
  // New money moves show at the top as they commit (only while on the first page, unfiltered
  // paging is not disturbed: a later page keeps its cursor).
  state.history = async () => {
    if (!cursor || rows.children.length <= 25) await page(true);
  };
  await page(true);
}

// ---- look up a transaction by id, with its links --------------------------------------------

async function renderLookup(id) {
  const out = h("div", { "aria-live": "polite" });
  const lookup = form({
    title: "Look up a transaction",
    submitLabel: "Look up",
    fields: [{ name: "id", label: "Transaction id", required: true, value: id || undefined, placeholder: "01a2…" }],
    submit: async (values) => {
      const t = await api.request("GET", `/transactions/${encodeURIComponent(values.id)}`);
      history.replaceState(null, "", `#/lookup/${t.id}`);
      return describeTransaction(t);
    },
  });
  main.append(section("Look up", lookup, out));
  if (id) lookup.requestSubmit();
}

function link(id) {
  return id ? h("a", { href: `#/lookup/${id}` }, id) : null;
}

function describeTransaction(t) {
  const links = [];
  if (t.pending_id) links.push(["Posts the hold", link(t.pending_id)]);
  if (t.posting_id) links.push(["Posted by", link(t.posting_id)]);
  if (t.reversal_of) links.push(["Reverses", link(t.reversal_of)]);
  if (t.reversals?.length) links.push(["Reversals", h("span", {}, t.reversals.map((r, i) => [i ? ", " : "", link(r)]))]);
  if (t.schedule_id) links.push(["Schedule", `${t.schedule_id}, occurrence ${t.occurrence}`]);
  return h(
    "article",
    { class: "transaction", "aria-label": `Transaction ${t.id}` },
    facts([
      ["Id", t.id],
      ["Type", t.type],
      ["Status", t.status],
      ["Amount", money(t.amount, t.currency)],
      ["From", t.from_user_id || "system"],
      ["To", t.to_user_id || "system"],
      ["Description", t.description],
      ["Reference", t.reference],
      ["Failure", t.failure_reason],
      ["Created", when(t.created_at)],
      ["Completed", when(t.completed_at)],
      ["Expires", when(t.expires_at)],
      ["Posted amount", t.posted_amount != null ? money(t.posted_amount, t.currency) : null],
      ["Reversed", t.reversed_amount ? money(t.reversed_amount, t.currency) : null],
      ["Bought", t.exchange ? `${money(t.exchange.to_amount, t.exchange.to_currency)} at ${t.exchange.rate}` : null],
      ...links,
    ]),
  );
}

// ---- move money: one form per verb, each with its idempotency key ---------------------------

function created(t) {
  refreshLive();
  return h(
    "p",
    {},
    `${t.type} ${t.status}: ${money(t.amount, t.currency)} `,
    h("a", { href: `#/lookup/${t.id}` }, t.id),
    t.replayed ? h("span", { class: "replayed" }, " (already applied: the same request again changes nothing; edit the form to make a new one)") : null,
  );
}

async function renderMove() {
  const optional = (name, label) => ({ name, label });
  const admin = api.current().role === "admin";
  const forms = [
    form({
      title: "Credit",
      describe: admin ? "Money into an account from the system account." : "Money into your account from the system account (bounded by your daily credit limit).",
      submitLabel: "Credit",
      fields: [...(admin ? [optional("user_id", "User id")] : []), currencySelect(), { name: "amount", label: "Amount", amount: "currency", required: true }, optional("description", "Description")],
      submit: async (v, key) => created(await api.request("POST", "/transactions/credit", v, { key })),
    }),
    form({
      title: "Debit",
      describe: "Money out of your account to the system account.",
      submitLabel: "Debit",
      fields: [currencySelect(), { name: "amount", label: "Amount", amount: "currency", required: true }, optional("description", "Description")],
      submit: async (v, key) => created(await api.request("POST", "/transactions/debit", v, { key })),
    }),
    form({
      title: "Transfer",
      submitLabel: "Transfer",
      fields: [
        { name: "to_user_id", label: "To user id", required: true },
        currencySelect(),
        { name: "amount", label: "Amount", amount: "currency", required: true },
        optional("description", "Description"),
        { name: "hold_s", label: "Hold for seconds", type: "number", help: "Leave empty to transfer now; set it to place a hold the payee posts or voids." },
      ],
      submit: async (v, key) => {
        const { hold_s, ...body } = v;
        if (hold_s) body.hold = { timeout_s: hold_s };
        return created(await api.request("POST", "/transactions/transfer", body, { key }));
      },
    }),
    form({
      title: "Post or void a hold",
      describe: "The payee of a transfer hold (or the payer of a debit hold) resolves it once.",
      submitLabel: "Submit",
      fields: [
        { name: "hold_id", label: "Hold id", required: true },
        { name: "action", label: "Action", options: [["post", "Post"], ["void", "Void"]], value: "post", required: true },
        { name: "amount", label: "Amount to post", amount: "currency", help: "Leave empty to post all of it." },
        currencySelect(),
      ],
      submit: async (v, key) => {
        const path = `/transactions/${encodeURIComponent(v.hold_id)}/${v.action}`;
        const body = v.action === "post" ? (v.amount ? { amount: v.amount } : {}) : null;
        return created(await api.request("POST", path, body, { key }));
      },
    }),
    form({
      title: "Reverse",
      describe: "A refund by the payee of a transfer, or an admin's reversal.",
      submitLabel: "Reverse",
      fields: [
        { name: "id", label: "Transaction id", required: true },
        { name: "reason", label: "Reason", required: true },
        { name: "amount", label: "Amount", amount: "currency", help: "Leave empty for all that is left." },
        currencySelect(),
      ],
      submit: async (v, key) => {
        const body = { reason: v.reason };
        if (v.amount) body.amount = v.amount;
        return created(await api.request("POST", `/transactions/${encodeURIComponent(v.id)}/reverse`, body, { key }));
      },
    }),
    exchangeForm(),
    form({
      title: "Schedule a transfer",
      describe: "Runs at start and then every interval, in the time zone you name.",
      submitLabel: "Schedule",
      fields: [
        { name: "to_user_id", label: "To user id", required: true },
        currencySelect(),
        { name: "amount", label: "Amount", amount: "currency", required: true },
        { name: "start_at", label: "Start", type: "datetime-local", required: true },
        { name: "every", label: "Every", options: [["day", "day"], ["week", "week"], ["month", "month"]], value: "month", required: true },
        { name: "count", label: "Times", type: "number", help: "Leave empty to run until cancelled." },
      ],
      submit: async (v, key) => {
        const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
        const body = {
          transaction: { type: "transfer", to_user_id: v.to_user_id, amount: v.amount, currency: v.currency },
          start_at: new Date(v.start_at).toISOString(),
          recurrence: { every: v.every, interval: 1, time_zone: zone, ...(v.count ? { count: v.count } : {}) },
          misfire_policy: "run_once",
          on_failure: "fail",
        };
        const schedule = await api.request("POST", "/schedules", body, { key });
        return h("p", {}, `Scheduled ${schedule.id}; next run ${when(schedule.next_run_at)}.`);
      },
    }),
  ];
  main.append(section("Move money", h("p", {}, `Your user id: `, h("code", {}, userId())), h("div", { class: "forms" }, forms)));
}

function exchangeForm() {
  let quote = null;
  const exchange = form({
    title: "Exchange",
    describe: "Get a quote, then take it before it expires.",
    submitLabel: "Exchange at the quote",
    fields: [
      { ...currencySelect("from_currency", "EUR"), label: "Sell" },
      { ...currencySelect("to_currency", "USD"), label: "Buy" },
      { name: "amount", label: "Amount to sell", amount: "from_currency", required: true },
    ],
    submit: async (v, key) => {
      if (!quote || quote.from_currency !== v.from_currency || quote.to_currency !== v.to_currency || quote.amount !== v.amount) {
        quote = await api.request("POST", "/fx/quotes", v);
        showQuote();
        return h("p", {}, "Quote shown above: submit again to take it.");
      }
      const t = await api.request("POST", "/transactions/exchange", { quote_id: quote.id }, { key });
      quote = null;
      showQuote();
      return created(t);
    },
  });
  const quoteBox = h("p", { class: "quote", "aria-live": "polite" });
  const showQuote = () => {
    quoteBox.textContent = quote ? `Quote: ${money(quote.amount, quote.from_currency)} → ${money(quote.to_amount, quote.to_currency)} at ${quote.rate} (fee ${money(quote.fee, quote.from_currency)}), expires ${when(quote.expires_at)}.` : "";
  };
  exchange.insertBefore(quoteBox, exchange.result);
  return exchange;
}

// ---- admin: users and roles, limits, rates, system status -----------------------------------

async function renderAdmin() {
  if (api.current().role !== "admin") {
    main.append(section("Admin", h("p", {}, "Only admins see this page.")));
    return;
  }
  const users = h("tbody");
  const usersMore = h("button", { type: "button", hidden: true }, "Load more");
  let usersCursor = null;
  const loadUsers = async (first) => {
    const reply = await api.request("GET", "/users" + api.query({ limit: 25, cursor: first ? null : usersCursor }));
    if (first) users.replaceChildren();
    users.append(...reply.items.map((u) => h("tr", {}, h("td", {}, u.username), h("td", {}, u.email), h("td", {}, u.role), h("td", {}, h("code", {}, u.id)))));
    usersCursor = reply.next_cursor;
    usersMore.hidden = !usersCursor;
  };
  usersMore.addEventListener("click", () => loadUsers(false).catch(showFailure));
  const role = form({
    title: "Change a role",
    submitLabel: "Save role",
    fields: [{ name: "user_id", label: "User id", required: true }, { name: "role", label: "Role", options: ["user", "admin"], value: "user", required: true }],
    submit: async (v) => {
      const user = await api.request("PUT", `/users/${encodeURIComponent(v.user_id)}`, { role: v.role });
      await loadUsers(true);
      return `${user.username} is now ${user.role}.`;
    },
  });
  const limits = form({
    title: "Set a limit",
    describe: "Replaces the account's limit of this kind and currency; its other limits stay.",
    submitLabel: "Save limit",
    fields: [
      { name: "user_id", label: "User id", required: true },
      { name: "kind", label: "Kind", options: ["max_per_transaction", "daily_debit", "rolling_debit", "daily_credit", "velocity"], value: "daily_debit", required: true },
      currencySelect(),
      { name: "value", label: "Value", required: true, help: "An amount of the currency, or a number of debits for velocity." },
      { name: "window_s", label: "Window in seconds", type: "number", help: "Only for rolling_debit and velocity." },
    ],
    submit: async (v) => {
      // An amount in major units of the limit's currency; velocity counts debits.
      let value = Number(v.value);
      if (v.kind !== "velocity") {
        const parsed = parse(v.value, v.currency);
        if (parsed.error) throw new api.Problem(422, { code: "validation_failed", detail: "the limit is not an amount", errors: [{ field: "value", message: parsed.error }] });
        value = parsed.minor;
      }
      v = { ...v, value };
      const path = `/users/${encodeURIComponent(v.user_id)}/limits`;
      const now = await api.request("GET", path);
      const kept = now.limits.filter((l) => !(l.kind === v.kind && l.currency === v.currency)).map(({ kind, currency, value, window_s }) => ({ kind, currency, value, ...(window_s ? { window_s } : {}) }));
      const limit = { kind: v.kind, currency: v.currency, value: v.value, ...(v.window_s ? { window_s: v.window_s } : {}) };
      const reply = await api.request("PUT", path, { limits: [...kept, limit] });
      const shown = (l) => (l.kind === "velocity" ? `${l.value} debits` : l.currency === "*" ? `${l.value} minor units` : money(l.value, l.currency));
      return facts(reply.effective.map((l) => [`${l.kind} ${l.currency}`, `${shown(l)}${l.window_s ? ` per ${l.window_s} s` : ""} (${l.source})`]));
    },
  });
  const rates = h("tbody");
  const loadRates = async () => {
    const reply = await api.request("GET", "/rates");
    rates.replaceChildren(...(reply.rates || reply.items || []).map((r) => h("tr", {}, h("td", {}, `${r.from_currency}/${r.to_currency}`), h("td", {}, r.rate), h("td", {}, r.source), h("td", {}, when(r.valid_until)))));
  };
  const rate = form({
    title: "Set a rate",
    submitLabel: "Save rate",
    fields: [
      { ...currencySelect("from", "EUR"), label: "From" },
      { ...currencySelect("to", "USD"), label: "To" },
      { name: "rate", label: "Rate", required: true, placeholder: "1.0842" },
      { name: "source", label: "Source", required: true, placeholder: "ECB reference" },
    ],
    submit: async (v) => {
      await api.request("PUT", `/rates/${v.from}/${v.to}`, { rate: v.rate, source: v.source });
      await loadRates();
      return `${v.from}/${v.to} is ${v.rate}.`;
    },
  });
  const status = h("div");
  let previous = null;
  const loadStatus = async () => {
    const ready = await fetch("/health/ready").then((r) => r.json()).catch(() => ({ status: "unreachable" }));
    const metrics = await fetch("/metrics").then((r) => (r.ok ? r.text() : "")).catch(() => "");
    // The sum of a metric's samples (of those whose labels contain `having`), from this
    // instance's Prometheus text.
    const metric = (name, having = "") =>
      metrics
        .split("\n")
        .filter((l) => (l.startsWith(name + " ") || l.startsWith(name + "{")) && l.includes(having))
        .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
    const committed = metric("tally_transactions_total", 'status="completed"');
    const now = Date.now();
    const rate = previous ? ((committed - previous.committed) * 1000) / (now - previous.at) : null;
    previous = { committed, at: now };
    status.replaceChildren(
      facts([
        ["Readiness", `${ready.status} (database ${ready.database ?? "?"}, cache ${ready.cache ?? "?"}, journal ${ready.journal ?? "?"})`],
        ["Queue depth", `${metric("tally_pipeline_queue_depth")} waiting, ${metric("tally_pipeline_in_flight")} in flight`],
        ["Completed transactions", `${committed}` + (rate === null ? " (refresh for the rate)" : `, ${rate.toFixed(1)}/s since the last refresh`)],
        ["Live feed connections", `${metric("tally_feed_connections")} on this instance`],
      ]),
    );
  };
  const refreshStatus = h("button", { type: "button" }, "Refresh status");
  refreshStatus.addEventListener("click", () => loadStatus().catch(showFailure));
  main.append(
    section("Users", h("div", { class: "scroll" }, h("table", {}, h("caption", {}, "Users"), h("thead", {}, h("tr", {}, ["Username", "Email", "Role", "Id"].map((c) => h("th", { scope: "col" }, c)))), users)), usersMore, role),
    section("Limits", limits),
    section("Rates", h("table", {}, h("caption", {}, "Exchange rates"), h("thead", {}, h("tr", {}, ["Pair", "Rate", "Source", "Valid until"].map((c) => h("th", { scope: "col" }, c)))), rates), rate),
    section("System status", status, refreshStatus),
  );
  await Promise.all([loadUsers(true), loadRates(), loadStatus()]);
}

// ---- start ----------------------------------------------------------------------------------

document.getElementById("logout").addEventListener("click", async () => {
  await api.logout();
  location.hash = "";
  announce("Logged out.");
});
api.onSession(() => {
  signedIn();
  if (!api.current()) route();
});
window.addEventListener("hashchange", route);
state.currencies = await loadCurrencies().catch(() => ["USD", "EUR"]);
signedIn();
route();
