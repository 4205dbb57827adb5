// Sortable tables (progressive: without this script a table keeps the server's order).
// Each header cell of a `table[data-sortable]` becomes a button; pressing it sorts the rows by
// that column (numbers as numbers, "–" last), pressing it again reverses the order.
(function () {
  "use strict";
  function key(cell) {
    var text = (cell ? cell.textContent : "").trim();
    var number = parseFloat(text.replace(/,/g, ""));
    return isNaN(number) ? { n: null, t: text.toLowerCase() } : { n: number, t: text };
  }
  function compare(a, b) {
    if (a.n !== null && b.n !== null) return a.n - b.n;
    if (a.n !== null) return -1;
    if (b.n !== null) return 1;
    if (a.t === "–" || a.t === "") return b.t === "–" || b.t === "" ? 0 : 1;
    if (b.t === "–" || b.t === "") return -1;
    return a.t < b.t ? -1 : a.t > b.t ? 1 : 0;
  }
  function sortBy(table, index, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).filter(function (r) {
      return r.cells.length > index;
    });
    var descending = th.getAttribute("aria-sort") === "ascending";
    var keyed = rows.map(function (r, i) {
      return { row: r, key: key(r.cells[index]), i: i };
    });
    keyed.sort(function (a, b) {
      var c = compare(a.key, b.key);
      if (descending) c = -c;
      return c || a.i - b.i;
    });
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (k) { fragment.appendChild(k.row); });
    body.appendChild(fragment);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) {
      other.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  function init(table) {
    if (!table.tHead || !table.tBodies.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) button.appendChild(th.firstChild);
      button.setAttribute("aria-label", "Sort by " + button.textContent.trim());
      button.addEventListener("click", function () { sortBy(table, index, th); });
      th.appendChild(button);
    });
  }
  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("table[data-sortable]"), init);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
