// Live timeline: poll the events API until the submission reaches a terminal state.
(function () {
  const list = document.getElementById("timeline");
  if (!list || list.dataset.terminal === "true") return;
  const id = list.dataset.submission;
  let after = Number(list.dataset.after || 0);
  const terminal = new Set(["done", "failed", "cancelled"]);

  function clock(iso) {
    return new Date(iso).toISOString().substring(11, 19);
  }

  async function tick() {
    try {
      const res = await fetch(`/api/v1/submissions/${id}/events?after=${after}`);
      if (!res.ok) throw new Error(res.status);
      const body = await res.json();
      for (const e of body.events) {
        const li = document.createElement("li");
        li.dataset.event = e.id;
        const time = document.createElement("time");
        time.textContent = clock(e.created_at);
        const code = document.createElement("code");
        code.textContent = e.type;
        li.append(time, " ", code, " ", e.message);
        list.append(li);
        after = Math.max(after, e.id);
      }
      const status = document.getElementById("status");
      status.textContent = body.status;
      status.className = `status ${body.status}`;
      if (terminal.has(body.status)) {
        // Runs, scores and the error are rendered by the server: one reload shows them.
        if (body.events.length) window.location.reload();
        return;
      }
    } catch (err) {
      // A passing network error: keep polling.
    }
    setTimeout(tick, 1000);
  }
  setTimeout(tick, 1000);
})();
