// The log page: read the log by offset and, while the submission runs, keep reading.
(function () {
  const pre = document.getElementById("log");
  if (!pre) return;
  const code = pre.querySelector("code");
  const state = document.getElementById("log-state");
  const src = pre.dataset.src;
  let offset = 0;

  async function tick() {
    try {
      const sep = src.includes("?") ? "&" : "?";
      const res = await fetch(`${src}${sep}offset=${offset}`, { cache: "no-store" });
      if (!res.ok) throw new Error(String(res.status));
      const text = await res.text();
      offset = Number(res.headers.get("X-Next-Offset") || offset);
      if (text) code.append(document.createTextNode(text));
      if (res.headers.get("X-Complete") === "1") {
        if (state) state.textContent = "The submission has ended: this is the whole log.";
        return;
      }
      // More may be there already (a long log comes in chunks): go on at once.
      setTimeout(tick, text ? 0 : 1000);
    } catch (err) {
      setTimeout(tick, 2000); // a passing network error: try again
    }
  }
  tick();
})();
