// The web console end to end in headless Chromium (Debian's `chromium`), driven by Playwright.
// Run by `tests/api/console.rs` against a fresh Tally: TALLY_BASE, TALLY_ADMIN_USERNAME,
// TALLY_ADMIN_PASSWORD, and SCREENSHOTS (a directory for the PNGs).
//
// Every request to a host other than 127.0.0.1 is refused (the resolver maps every other name to
// nothing and each such request is aborted and recorded): the console must work with no network
// but Tally's. Each step waits for what a person would see, never for a fixed time.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const BASE = process.env.TALLY_BASE;
const SHOTS = process.env.SCREENSHOTS;
const ADMIN = { username: process.env.TALLY_ADMIN_USERNAME, password: process.env.TALLY_ADMIN_PASSWORD };
/** Upper bound of any one wait (a slow CI machine); a step that needs longer is a failure. */
const WAIT_MS = 20000;
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 375, height: 740 };

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--no-sandbox"],
});
const offsite = [];
const pageErrors = [];

async function open(viewport, name, timezoneId = "UTC") {
  const context = await browser.newContext({ viewport, baseURL: BASE, timezoneId, locale: "en-US" });
  context.setDefaultTimeout(WAIT_MS);
  await context.route(/.*/, (route) => {
    const url = new URL(route.request().url());
    if (url.hostname !== "127.0.0.1") {
      offsite.push(url.href);
      return route.abort();
    }
    return route.continue();
  });
  const page = await context.newPage();
  page.on("pageerror", (error) => pageErrors.push(`${name}: ${error.message}`));
  page.on("console", (message) => {
    // Chromium logs every 4xx answer as "Failed to load resource"; the 422s are expected
    // here, and the steps check what the page shows of them. Anything else is a script error.
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      pageErrors.push(`${name} console: ${message.text()}`);
    }
  });
  await page.goto("/");
  await page.waitForURL(/\/console\/$/);
  return page;
}

const form = (page, title) => page.getByRole("form", { name: title, exact: true });
const shot = (page, file) => page.screenshot({ path: `${SHOTS}/${file}.png`, fullPage: true });

async function register(page, username) {
  const registration = form(page, "Register");
  await registration.getByLabel("Username").fill(username);
  await registration.getByLabel("Email").fill(`${username}@example.com`);
  await registration.getByLabel("Password").fill("correct horse battery");
  await registration.getByRole("button", { name: "Register" }).click();
  await registration.getByText(`Registered ${username}`).waitFor();
}

async function logIn(page, username, password = "correct horse battery") {
  const signIn = form(page, "Log in");
  await signIn.getByLabel("Username or email").fill(username);
  await signIn.getByLabel("Password").fill(password);
  await signIn.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Balances", exact: true }).waitFor();
  await page.getByText("Live feed: connected").waitFor();
}

/** The amount, pending and available cells of `currency` on the Balances screen. */
async function balanceRow(page, currency) {
  const cells = page.locator(`tr[data-currency="${currency}"] td`);
  return cells.allTextContents();
}

async function waitForBalance(page, currency, expected) {
  await page.locator(`tr[data-currency="${currency}"] td`).first().filter({ hasText: new RegExp(`^${expected.replace(".", "\\.")}$`) }).waitFor();
}

async function goTo(page, link) {
  await page.getByRole("navigation").getByRole("link", { name: link }).click();
}

async function userId(page) {
  await goTo(page, "Move money");
  return (await page.locator("text=Your user id").locator("code").textContent()).trim();
}

async function submit(page, title, fields, button) {
  const target = form(page, title);
  for (const [label, value] of Object.entries(fields)) {
    const field = target.getByLabel(label, { exact: true });
    if ((await field.evaluate((e) => e.tagName)) === "SELECT") await field.selectOption(value);
    else await field.fill(value);
  }
  await target.getByRole("button", { name: button || title }).click();
  return target;
}

async function transactionsOf(page) {
  // Read with the page's own session: what the API says the user has.
  return page.evaluate(async () => {
    const session = JSON.parse(sessionStorage.getItem("tally.session"));
    const reply = await fetch("/api/v1/transactions/history?limit=100", { headers: { authorization: `Bearer ${session.access_token}` } });
    return (await reply.json()).items;
  });
}

const step = (text) => console.log(`- ${text}`);

/** The page's current access token. */
const token = (page) => page.evaluate(() => JSON.parse(sessionStorage.getItem("tally.session")).access_token);

/** Every input and select on the page has a label a screen reader announces. */
async function assertLabelled(page) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select")].filter((e) => e.labels.length === 0).map((e) => e.outerHTML),
  );
  assert.deepEqual(unlabelled, []);
}

/** How the browser (en-US, in `timeZone`) shows an instant. */
const local = (instant, timeZone) =>
  new Date(instant).toLocaleString("en-US", { timeZone, dateStyle: "medium", timeStyle: "medium" }).replace(/\s/g, " ");

try {
  // Two users in two browser contexts: Alice on a desktop, Bob on a phone.
  const alice = await open(DESKTOP, "alice", "Europe/Berlin");
  const bob = await open(PHONE, "bob", "Asia/Tokyo");
  // Bob's feed goes through the test, which can cut it (and refuse reconnects) at will.
  const bobFeed = { blocked: false, urls: [], open: [] };
  await bob.routeWebSocket(/\/api\/v1\/ws/, (socket) => {
    bobFeed.urls.push(socket.url());
    if (bobFeed.blocked) return socket.close({ code: 1011, reason: "test: unreachable" });
    socket.connectToServer();
    bobFeed.open.push(socket);
  });
  step("register and log in (Bob with the keyboard only); every field has a label");
  await register(alice, "alice");
  await register(bob, "bob");
  await shot(bob, "phone-sign-in");
  await assertLabelled(alice);
  await logIn(alice, "alice");
  await bob.keyboard.press("Tab"); // the skip link
  await form(bob, "Log in").getByLabel("Username or email").focus();
  await bob.keyboard.type("bob");
  await bob.keyboard.press("Tab");
  await bob.keyboard.type("correct horse battery");
  await bob.keyboard.press("Enter");
  await bob.getByRole("heading", { name: "Balances", exact: true }).waitFor();
  await bob.getByText("Live feed: connected").waitFor();
  const firstToken = await token(alice);
  const bobId = await userId(bob);
  await goTo(bob, "Balances");
  await bob.getByText("No balances yet").waitFor();

  step("Alice credits 100.00 USD and transfers 25.00 to Bob; Bob's open page follows live");
  await goTo(alice, "Move money");
  await assertLabelled(alice);
  const credit = await submit(alice, "Credit", { Currency: "USD", Amount: "100.00" });
  await credit.getByText("credit completed: 100.00 USD").waitFor();
  await submit(alice, "Transfer", { "To user id": bobId, Currency: "USD", Amount: "25.00", "Description (optional)": "lunch" });
  await form(alice, "Transfer").getByText("transfer completed: 25.00 USD").waitFor();
  await waitForBalance(bob, "USD", "25.00");
  await bob.locator("tbody tr", { hasText: "lunch" }).waitFor();
  assert.deepEqual(await balanceRow(bob, "USD"), ["25.00", "0.00", "25.00"]);
  // Times are shown in the browser's zone (Bob's is Asia/Tokyo).
  const lunch = (await transactionsOf(bob)).find((t) => t.description === "lunch");
  const shown = (await bob.locator("tbody tr", { hasText: "lunch" }).locator("td").first().textContent()).replace(/\s/g, " ");
  assert.equal(shown, local(lunch.created_at, "Asia/Tokyo"));
  await shot(bob, "phone-balances-live");

  step("Bob's feed drops while Alice pays him; it reconnects from its cursor and catches up");
  bobFeed.blocked = true;
  for (const socket of bobFeed.open.splice(0)) await socket.close({ code: 1011, reason: "test: connection lost" });
  await bob.getByText("Live feed: reconnecting").waitFor();
  await submit(alice, "Transfer", { "To user id": bobId, Currency: "USD", Amount: "0.50", "Description (optional)": "while offline" });
  await form(alice, "Transfer").getByText("transfer completed: 0.50 USD").waitFor();
  bobFeed.blocked = false;
  await bob.getByText("Live feed: connected").waitFor();
  assert.match(bobFeed.urls.at(-1), /\?after=\d+\.\d+$/);
  await waitForBalance(bob, "USD", "25.50");
  await bob.locator("tbody tr", { hasText: "while offline" }).waitFor();

  step("an invalid amount is named next to its field, and nothing is sent");
  const before = (await transactionsOf(alice)).length;
  const bad = await submit(alice, "Transfer", { "To user id": bobId, Currency: "USD", Amount: "12.345" });
  const amount = bad.getByLabel("Amount", { exact: true });
  await bad.getByText("USD has 2 decimal places.").waitFor();
  assert.equal(await amount.getAttribute("aria-invalid"), "true");
  assert.equal(await alice.evaluate(() => document.activeElement.name), "amount");
  // The server's own field errors land next to their field too.
  await submit(alice, "Transfer", { "To user id": "not-a-user", Currency: "USD", Amount: "1.00" });
  await form(alice, "Transfer").locator(".error", { hasText: /./ }).first().waitFor();
  assert.equal(await form(alice, "Transfer").getByLabel("To user id").getAttribute("aria-invalid"), "true");
  assert.equal((await transactionsOf(alice)).length, before);
  await shot(alice, "desktop-field-error");

  step("a double-clicked transfer applies once");
  const transfer = form(alice, "Transfer");
  await transfer.getByLabel("To user id").fill(bobId);
  await transfer.getByLabel("Amount", { exact: true }).fill("1.00");
  await transfer.getByLabel("Description (optional)", { exact: true }).fill("double click");
  await transfer.getByRole("button", { name: "Transfer" }).dblclick();
  await transfer.getByText("transfer completed: 1.00 USD").waitFor();
  // And a third click on the unchanged form is the same request again.
  await transfer.getByRole("button", { name: "Transfer" }).click();
  await transfer.getByText("already applied").waitFor();
  const doubles = (await transactionsOf(alice)).filter((t) => t.description === "double click");
  assert.equal(doubles.length, 1, JSON.stringify(doubles));
  await waitForBalance(bob, "USD", "26.50");

  step("Alice holds 10.00 for Bob; Bob posts 4.00 of it");
  await transfer.getByLabel("Amount", { exact: true }).fill("10.00");
  await transfer.getByLabel("Description (optional)", { exact: true }).fill("deposit");
  await transfer.getByLabel("Hold for seconds (optional)").fill("600");
  await transfer.getByRole("button", { name: "Transfer" }).click();
  await transfer.getByText("transfer pending: 10.00 USD").waitFor();
  const holdId = (await transfer.locator(".result a").textContent()).trim();
  await goTo(alice, "Balances");
  await waitForBalance(alice, "USD", "73.50");
  assert.deepEqual(await balanceRow(alice, "USD"), ["73.50", "10.00", "63.50"]);
  await goTo(bob, "Move money");
  const post = await submit(bob, "Post or void a hold", { "Hold id": holdId, Action: "post", "Amount to post (optional)": "4.00", Currency: "USD" }, "Submit");
  await post.getByText("transfer completed: 4.00 USD").waitFor();
  await waitForBalance(alice, "USD", "69.50");
  assert.deepEqual(await balanceRow(alice, "USD"), ["69.50", "0.00", "69.50"]);
  await goTo(bob, "Balances");
  await waitForBalance(bob, "USD", "30.50");

  step("Alice looks the hold up by id and follows it to its posting");
  await goTo(alice, "Look up");
  await submit(alice, "Look up a transaction", { "Transaction id": holdId }, "Look up");
  const found = alice.getByRole("article", { name: `Transaction ${holdId}` });
  await found.getByText("posted", { exact: true }).waitFor();
  await found.getByText("4.00 USD").waitFor();
  await found.locator("dt", { hasText: "Posted by" }).waitFor();
  await shot(alice, "desktop-lookup");

  step("an admin sees users, roles and the system's status");
  const admin = await open(DESKTOP, "admin");
  await logIn(admin, ADMIN.username, ADMIN.password);
  const aliceId = await userId(alice);
  await goTo(admin, "Admin");
  await admin.getByRole("table", { name: "Users" }).getByText("alice", { exact: true }).waitFor();
  await admin.getByText(/^ready \(database ok/).waitFor();
  await admin.getByRole("button", { name: "Refresh status" }).click();
  await admin.getByText(/since the last refresh/).waitFor();

  step("the admin sets a rate; Alice gets a quote with its expiry and takes it");
  const rate = await submit(admin, "Set a rate", { From: "EUR", To: "USD", Rate: "1.0842", Source: "desk" }, "Save rate");
  await rate.getByText("EUR/USD is 1.0842.").waitFor();
  await goTo(alice, "Move money");
  const euros = await submit(alice, "Credit", { Currency: "EUR", Amount: "100.00" });
  await euros.getByText("credit completed: 100.00 EUR").waitFor();
  const exchange = await submit(alice, "Exchange", { Sell: "EUR", Buy: "USD", "Amount to sell": "50.00" }, "Exchange at the quote");
  // 50.00 EUR less the 0.25% spread (0.13, rounded up) at 1.0842: (50.00 - 0.13) × 1.0842 = 54.069054 USD, rounded down.
  await exchange.getByText(/^Quote: 50\.00 EUR → 54\.06 USD at 1\.0842 \(fee 0\.13 EUR\), expires /).waitFor();
  await exchange.getByRole("button", { name: "Exchange at the quote" }).click();
  await exchange.getByText("exchange completed: 50.00 EUR").waitFor();
  await goTo(alice, "Balances");
  await waitForBalance(alice, "EUR", "50.00");
  await waitForBalance(alice, "USD", "123.56");

  step("the admin sets a daily debit limit; Alice's next transfer shows limit_exceeded");
  const limit = await submit(admin, "Set a limit", { "User id": aliceId, Kind: "daily_debit", Currency: "USD", Value: "1.00" }, "Save limit");
  await limit.getByText("daily_debit USD").waitFor();
  await limit.getByText("1.00 USD (account)").waitFor();
  await shot(admin, "desktop-admin");
  await goTo(alice, "Move money");
  const limited = await submit(alice, "Transfer", { "To user id": bobId, Currency: "USD", Amount: "2.00" });
  await limited.getByRole("alert").getByText("limit_exceeded").waitFor();
  await limited.getByRole("alert").getByText("Limit daily_debit on USD: 1.00 USD; used 0.00 USD, requested 2.00 USD, remaining 1.00 USD.").waitFor();
  await shot(alice, "desktop-limit-exceeded");
  await goTo(alice, "Balances");
  await waitForBalance(alice, "USD", "123.56");
  await shot(alice, "desktop-balances");
  await goTo(bob, "History");
  await bob.locator("tbody tr", { hasText: "deposit" }).first().waitFor();
  await shot(bob, "phone-history");

  step("access tokens were refreshed before they expired (8 s here), and Alice is still signed in");
  await alice.waitForFunction((first) => JSON.parse(sessionStorage.getItem("tally.session"))?.access_token !== first, firstToken);
  await goTo(alice, "Balances");
  await waitForBalance(alice, "USD", "123.56");

  step("the console loaded nothing but Tally's own files, without a script error");
  assert.deepEqual(offsite, []);
  assert.deepEqual(pageErrors, []);
  console.log(`screenshots in ${SHOTS}`);
} finally {
  await browser.close();
}
