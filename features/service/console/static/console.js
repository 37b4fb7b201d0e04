// Hearth console: the only script. No dependencies; every page works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Erasure: the button stays disabled until the user id is typed exactly (the server checks
  // it again; this only spares a round trip).
  for (const form of document.querySelectorAll("form[data-confirm-for]")) {
    const expected = form.dataset.confirmFor;
    const input = form.querySelector("input[name=confirm]");
    const button = form.querySelector("button[type=submit]");
    const update = () => { button.disabled = input.value.trim() !== expected; };
    input.addEventListener("input", update);
    update();
  }
  // A reference date picked from the list takes effect at once.
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
});
