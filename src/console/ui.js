// Small DOM helpers shared by the console's screens: element building, accessible forms whose
// problem+json errors land next to the field they name, and announcements for screen readers.

import { newKey, Problem } from "./api.js";
import { format, parse } from "./money.js";

/** Builds an element: h("p", {class: "x", onclick: f}, "text", child...). */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Says `text` to screen readers (the polite live region). */
export function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  setTimeout(() => (region.textContent = text), 50);
}

let ids = 0;

/**
 * An accessible form. `fields`: `[{name, label, type?, options?, required?, help?, value?,
 * amount?: currencyField}]` (`amount` fields are typed in major units of the currency in the
 * field named by `amount`, and sent in minor units). `submit(values, key)` sends it with the
 * idempotency key made when the form was built. The key stays until the form is edited after
 * an answer: submitting the same form again (a double click, a retry after a network failure or
 * a 5xx) repeats the same request, which the server applies once and answers as a replay.
 * Returns the `<form>`; `form.result` is the element that shows the outcome.
 */
export function form({ title, fields, submitLabel, submit, describe }) {
  const id = `f${++ids}`;
  let key = newKey();
  const alert = h("div", { class: "problem", role: "alert", hidden: true });
  const result = h("div", { class: "result", "aria-live": "polite" });
  const inputs = new Map();
  const rows = fields.map((field) => {
    const inputId = `${id}-${field.name}`;
    const errorId = `${inputId}-error`;
    const helpId = field.help ? `${inputId}-help` : null;
    let input;
    if (field.options) {
      input = h("select", { id: inputId, name: field.name, required: field.required });
      for (const option of field.options) {
        const [value, label] = Array.isArray(option) ? option : [option, option];
        input.append(h("option", { value, selected: value === field.value }, label));
      }
    } else {
      input = h("input", {
        id: inputId,
        name: field.name,
        type: field.type || "text",
        required: field.required,
        value: field.value,
        inputmode: field.amount ? "decimal" : undefined,
        autocomplete: field.autocomplete || "off",
        placeholder: field.placeholder,
      });
    }
    input.setAttribute("aria-describedby", [helpId, errorId].filter(Boolean).join(" "));
    inputs.set(field.name, input);
    return h(
      "div",
      { class: "field" },
      h("label", { for: inputId }, field.label, field.required ? "" : h("span", { class: "optional" }, " (optional)")),
      input,
      helpId ? h("small", { id: helpId }, field.help) : null,
      h("span", { id: errorId, class: "error" }),
    );
  });
  const button = h("button", { type: "submit" }, submitLabel);
  const element = h(
    "form",
    { "aria-labelledby": `${id}-title`, novalidate: true },
    h("h3", { id: `${id}-title` }, title),
    describe ? h("p", { class: "describe" }, describe) : null,
    rows,
    button,
    alert,
    result,
  );

  // Editing the form after an answer makes the next submission a new request.
  let answered = false;
  element.addEventListener("input", () => {
    if (answered) {
      key = newKey();
      answered = false;
    }
  });

  const showError = (name, message) => {
    const input = inputs.get(name) || inputs.get(name.split(".").pop()) || inputs.get(name.split("[")[0]);
    if (!input) return false;
    input.setAttribute("aria-invalid", "true");
    document.getElementById(`${input.id}-error`).textContent = message;
    return true;
  };
  const clear = () => {
    alert.hidden = true;
    alert.textContent = "";
    for (const input of inputs.values()) {
      input.removeAttribute("aria-invalid");
      document.getElementById(`${input.id}-error`).textContent = "";
    }
  };

  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (button.disabled) return;
    clear();
    const values = {};
    let invalid = [];
    for (const field of fields) {
      const raw = inputs.get(field.name).value.trim();
      if (!raw) {
        if (field.required) invalid.push([field.name, "This field is required."]);
        continue;
      }
      if (field.amount) {
        const currency = inputs.get(field.amount)?.value || field.currency;
        const parsed = parse(raw, currency);
        if (parsed.error) invalid.push([field.name, parsed.error]);
        else values[field.name] = parsed.minor;
      } else if (field.type === "number") {
        values[field.name] = Number(raw);
      } else {
        values[field.name] = raw;
      }
    }
    if (invalid.length) {
      for (const [name, message] of invalid) showError(name, message);
      inputs.get(invalid[0][0]).focus();
      announce(`${invalid.length} field${invalid.length > 1 ? "s need" : " needs"} attention`);
      return;
    }
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const outcome = await submit(values, key);
      answered = true;
      result.replaceChildren(outcome instanceof Node ? outcome : h("p", {}, String(outcome ?? "Done.")));
      announce(result.textContent);
    } catch (error) {
      if (!(error instanceof Problem)) throw error;
      if (error.status >= 400 && error.status < 500) answered = true;
      let placed = false;
      for (const { field, message } of error.errors) placed = showError(field, message) || placed;
      alert.hidden = false;
      alert.replaceChildren(describeProblem(error));
      if (placed) element.querySelector("[aria-invalid=true]").focus();
      announce(alert.textContent);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  element.result = result;
  element.inputs = inputs;
  return element;
}

/** A problem in words: its detail, its code, and the figures a limit or a balance gives. */
export function describeProblem(problem) {
  const body = problem.body || {};
  const parts = [h("strong", {}, problem.message), " ", h("code", {}, problem.code)];
  if (body.limit) {
    const { kind, currency, value, window_s } = body.limit;
    // velocity counts movements; every other kind is an amount of the limit's currency.
    const amount = (n) => (kind === "velocity" ? `${n}` : currency === "*" ? `${n} (minor units)` : `${format(n, currency)} ${currency}`);
    parts.push(
      h(
        "p",
        {},
        `Limit ${kind} on ${currency === "*" ? "every currency" : currency}: ${amount(value)}` +
          (window_s ? ` per ${window_s} s` : "") +
          `; used ${amount(body.used)}, requested ${amount(body.requested)}, remaining ${amount(body.remaining)}.`,
      ),
    );
  }
  if (problem.errors.length) {
    parts.push(h("ul", {}, problem.errors.map((e) => h("li", {}, `${e.field}: ${e.message}`))));
  }
  return h("div", {}, parts);
}

/** A definition list of [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(([, value]) => value !== undefined && value !== null && value !== "").flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]),
  );
}
