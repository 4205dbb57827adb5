// The submission page, live: a server-sent event stream (/submissions/ID/live) appends new
// timeline events and swaps in the re-rendered parts of the page (runs, scores, performance,
// failure, receipt, actions) until the submission ends. No reload; without JavaScript the
// page is whole as rendered.
(function () {
  const list = document.getElementById("timeline");
  if (!list || list.dataset.terminal === "true" || !window.EventSource) return;
  const id = list.dataset.submission;
  let after = Number(list.dataset.after || 0);
  const source = new EventSource(`/submissions/${id}/live?after=${after}`);

  source.addEventListener("timeline", (msg) => {
    const e = JSON.parse(msg.data);
    if (e.id <= after) return;
    after = e.id;
    const li = document.createElement("li");
    li.dataset.event = e.id;
    const time = document.createElement("time");
    time.textContent = e.at;
    const code = document.createElement("code");
    code.textContent = e.type;
    li.append(time, " ", code, " ", e.message);
    list.append(li);
  });

  source.addEventListener("parts", (msg) => {
    const body = JSON.parse(msg.data);
    const status = document.getElementById("status");
    status.textContent = body.status;
    status.className = `status ${body.status}`;
    for (const [name, html] of Object.entries(body.parts)) {
      const part = document.querySelector(`[data-part="${name}"]`);
      // Server-rendered, escaped HTML from this site's own templates.
      if (part) part.innerHTML = html;
    }
  });

  source.addEventListener("end", () => {
    list.dataset.terminal = "true";
    source.close();
  });
})();
