// Live autocomplete for the search box: the ARIA 1.2 combobox pattern, no build step.
// Down/Up move through suggestions, Enter chooses one (and searches), Escape closes the list.
(function () {
  "use strict";
  var input = document.getElementById("q");
  if (!input) { return; }
  var list = document.getElementById(input.getAttribute("aria-controls"));
  var status = document.getElementById("q-status");
  var url = input.getAttribute("data-autocomplete-url");
  var active = -1;
  var timer = null;
  var latest = 0;

  function options() { return list.querySelectorAll('[role="option"]'); }

  function close() {
    list.hidden = true;
    list.textContent = "";
    active = -1;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
  }

  function highlight(index) {
    var items = options();
    if (!items.length) { return; }
    active = (index + items.length) % items.length;
    items.forEach(function (item, i) { item.setAttribute("aria-selected", i === active ? "true" : "false"); });
    input.setAttribute("aria-activedescendant", items[active].id);
    items[active].scrollIntoView({ block: "nearest" });
  }

  function choose(item) {
    input.value = item.getAttribute("data-value");
    close();
    input.form.submit();
  }

  function render(results) {
    list.textContent = "";
    active = -1;
    input.removeAttribute("aria-activedescendant");
    results.forEach(function (result, i) {
      var item = document.createElement("li");
      item.id = "q-option-" + i;
      item.setAttribute("role", "option");
      item.setAttribute("aria-selected", "false");
      item.setAttribute("data-value", result.title);
      item.textContent = result.title;
      item.addEventListener("mousedown", function (event) { event.preventDefault(); choose(item); });
      list.appendChild(item);
    });
    var open = results.length > 0;
    list.hidden = !open;
    input.setAttribute("aria-expanded", open ? "true" : "false");
    status.textContent = open ? results.length + " suggestions available." : "No suggestions.";
  }

  function lookup() {
    var q = input.value.trim();
    if (!q) { close(); return; }
    var ticket = ++latest;
    fetch(url + "?q=" + encodeURIComponent(q), { headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { results: [] }; })
      .then(function (body) { if (ticket === latest) { render(body.results || []); } })
      .catch(function () { if (ticket === latest) { close(); } });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(lookup, 150);
  });

  input.addEventListener("keydown", function (event) {
    var open = !list.hidden;
    if (event.key === "ArrowDown") {
      event.preventDefault();
      if (open) { highlight(active + 1); } else { lookup(); }
    } else if (event.key === "ArrowUp") {
      if (open) { event.preventDefault(); highlight(active - 1); }
    } else if (event.key === "Enter") {
      if (open && active >= 0) { event.preventDefault(); choose(options()[active]); }
    } else if (event.key === "Escape") {
      if (open) { event.preventDefault(); close(); }
    }
  });

  input.addEventListener("blur", function () { setTimeout(close, 100); });
}());
