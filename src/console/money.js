// Amounts as people read them: the API speaks integers of minor units; the console shows and
// reads major units with the currency's ISO 4217 exponent (2 for USD, 0 for JPY, 3 for BHD),
// as `GET /api/v1/currencies` gives it. Times are shown in the browser's time zone.

import { request } from "./api.js";

let exponents = new Map();

/** Loads the currencies Tally accepts (`[{code, exponent}]`); returns their codes. */
export async function loadCurrencies() {
  const reply = await request("GET", "/currencies", null, { auth: false });
  exponents = new Map(reply.currencies.map((c) => [c.code, c.exponent]));
  return reply.currencies.map((c) => c.code);
}

export function exponent(currency) {
  return exponents.get(currency) ?? 2;
}

/** `minor` (an integer of minor units) in major units: format(123456, "USD") → "1,234.56". */
export function format(minor, currency) {
  if (typeof minor !== "number" || !Number.isFinite(minor)) return "";
  const digits = exponent(currency);
  const negative = minor < 0;
  const text = String(Math.abs(minor)).padStart(digits + 1, "0");
  const whole = text.slice(0, text.length - digits) || "0";
  const fraction = digits ? "." + text.slice(text.length - digits) : "";
  return (negative ? "-" : "") + Number(whole).toLocaleString("en-US") + fraction;
}

/** `minor` in major units with the code: "1,234.56 USD". */
export function money(minor, currency) {
  return `${format(minor, currency)} ${currency}`;
}

/**
 * Parses what a person typed ("12.5", "1,000.00") into minor units of `currency`.
 * Returns `{minor}` or `{error}` (a sentence for the field).
 */
export function parse(text, currency) {
  const cleaned = String(text).trim().replace(/,/g, "");
  const digits = exponent(currency);
  const match = /^(\d+)(?:\.(\d*))?$/.exec(cleaned);
  if (!match) return { error: "Enter an amount such as 12.50." };
  const fraction = match[2] || "";
  if (fraction.length > digits) {
    return { error: digits ? `${currency} has ${digits} decimal places.` : `${currency} has no decimal places.` };
  }
  const minor = Number(match[1] + fraction.padEnd(digits, "0"));
  if (!Number.isSafeInteger(minor)) return { error: "That amount is too large." };
  if (minor <= 0) return { error: "Enter an amount greater than zero." };
  return { minor };
}

/** An RFC 3339 instant in the browser's zone: "30 Nov 2026, 14:05:09". */
export function when(instant) {
  if (!instant) return "";
  const date = new Date(instant);
  return Number.isNaN(date.getTime())
    ? instant
    : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}
