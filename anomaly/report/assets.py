"""The report's stylesheet and script, kept as Python strings.

Strings rather than package data files so the report works from any install (zip, editable,
frozen) without a package-data entry. Both are inlined into the page and allowed by hash in
its Content-Security-Policy, which also forbids every network request: the report must open
from a USB stick on an offline line PC exactly as it does on the machine that built it.
"""

from __future__ import annotations

CSS = """
:root { --ok: #1e7b34; --ng: #b3261e; --err: #8a5a00; --muted: #5f6b76; --line: #d9dee3;
  --bg-soft: #f4f6f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica,
  Arial, sans-serif; color: #1b1f23; background: #fff; }
header, main, footer { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 32px 0 10px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 0 0 6px; word-break: break-all; }
nav ul { list-style: none; padding: 0; margin: 10px 0 12px; display: flex; flex-wrap: wrap;
  gap: 6px 18px; }
a { color: #0b5cad; }
.muted { color: var(--muted); }
.path { word-break: break-all; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 0.88em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 16px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 130px;
  background: var(--bg-soft); }
.card .n { display: block; font-size: 1.9rem; font-weight: 700; line-height: 1.1; }
.card.ok .n { color: var(--ok); } .card.ng .n { color: var(--ng); }
.card.error .n { color: var(--err); } .card.uncalibrated .n { color: var(--muted); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.warning { border-left: 4px solid var(--err); background: #fff6e0; padding: 8px 12px;
  margin: 10px 0; }
figure { margin: 0; }
svg { max-width: 100%; height: auto; }
svg.histogram { width: 100%; max-width: 1000px; }
.verdict { display: inline-block; min-width: 3.6em; text-align: center; font-weight: 700;
  border-radius: 4px; padding: 0 6px; color: #fff; font-size: 0.85em; }
.verdict.OK { background: var(--ok); } .verdict.NG { background: var(--ng); }
.verdict.ERROR { background: var(--err); } .verdict.UNCALIBRATED { background: var(--muted); }
#table-controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center;
  margin: 8px 0; }
#table-controls input[type=search] { padding: 4px 8px; min-width: 240px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
  vertical-align: middle; }
thead th { position: sticky; top: 0; background: #eef1f4; z-index: 1; white-space: nowrap; }
th button { font: inherit; font-weight: 700; background: none; border: 0; padding: 0;
  cursor: pointer; color: inherit; }
th[aria-sort=ascending] button::after { content: " \\25B2"; }
th[aria-sort=descending] button::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.thumb { width: 1%; padding: 2px 6px; }
td.thumb img { display: block; max-height: 72px; width: auto; height: auto; }
tr.NG { background: #fdf1f0; }
tr.ERROR { background: #fff8e6; }
.scale { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: center; }
.scale p { max-width: 620px; margin: 0; }
.detail { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin: 14px 0; }
.detail .score { margin: 0 0 8px; }
.detail .times { font-size: 1.15em; font-weight: 700; color: var(--ng); }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr));
  gap: 12px; }
.figures figure { max-width: 640px; }
.figures img { display: block; width: 100%; height: auto; background: var(--bg-soft);
  border: 1px solid var(--line); }
figcaption { font-size: 0.88em; color: var(--muted); margin-top: 3px; }
figcaption .mini-colorbar { display: block; margin-top: 2px; }
.missing { display: flex; align-items: center; justify-content: center; min-height: 160px;
  background: var(--bg-soft); border: 1px dashed var(--line); color: var(--muted);
  padding: 12px; text-align: center; }
.truth-label { font-weight: 600; }
.truth-label.false-alarm { color: var(--err); }
footer { margin-top: 40px; padding: 12px 20px 30px; border-top: 1px solid var(--line);
  color: var(--muted); font-size: 0.85em; }
@media print { thead th { position: static; } .detail { break-inside: avoid; }
  #table-controls { display: none; } }
"""

# Plain ES5-level DOM code: no modules, no fetch, nothing a locked-down line PC browser lacks.
# It only enhances: the table, its order and every row are in the static HTML.
SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("parts-table");
  var controls = document.getElementById("table-controls");
  if (!table || !controls) { return; }
  var tbody = table.tBodies[0];
  var rows = Array.prototype.slice.call(tbody.rows);
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var counter = document.getElementById("shown-count");
  var search = document.getElementById("file-filter");
  var boxes = Array.prototype.slice.call(controls.querySelectorAll("input[data-verdict]"));

  function keyOf(row, column, kind) {
    if (kind === "number") {
      var raw = row.cells[column].getAttribute("data-value");
      return raw === null || raw === "" ? null : parseFloat(raw);
    }
    return row.cells[column].textContent.trim().toLowerCase();
  }

  function sortBy(column, kind, descending) {
    var keyed = rows.map(function (row, position) {
      return { row: row, key: keyOf(row, column, kind), position: position };
    });
    keyed.sort(function (a, b) {
      // Rows without a value (unreadable files) stay at the end in both directions.
      if (a.key === null || b.key === null) {
        if (a.key === b.key) { return a.position - b.position; }
        return a.key === null ? 1 : -1;
      }
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : a.position - b.position;
      return descending ? -order : order;
    });
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (item) { fragment.appendChild(item.row); });
    tbody.appendChild(fragment);
    rows = keyed.map(function (item) { return item.row; });
  }

  headers.forEach(function (th, column) {
    var kind = th.getAttribute("data-sort");
    if (!kind) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    button.title = "Sort by " + th.textContent.toLowerCase();
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", function () {
      // First click: numbers high to low (worst first), text A to Z; next click reverses.
      var current = th.getAttribute("aria-sort");
      var descending = current ? current !== "descending" : kind === "number";
      headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      sortBy(column, kind, descending);
    });
  });

  function applyFilter() {
    var wanted = {};
    boxes.forEach(function (box) { wanted[box.getAttribute("data-verdict")] = box.checked; });
    var needle = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row) {
      var visible = wanted[row.getAttribute("data-verdict")] !== false &&
        (needle === "" || row.getAttribute("data-file").indexOf(needle) !== -1);
      row.hidden = !visible;
      if (visible) { shown += 1; }
    });
    counter.textContent = "Showing " + shown + " of " + rows.length + " parts";
  }

  boxes.forEach(function (box) { box.addEventListener("change", applyFilter); });
  search.addEventListener("input", applyFilter);
  controls.hidden = false;
  applyFilter();
})();
"""
