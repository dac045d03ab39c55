// The admin console's one script (an ES module, loaded from the service: the page's
// Content-Security-Policy allows no inline script). Every page works without it; it adds:
// the overview's refresh, "select every row", and the selected-row count.

const REFRESH_FAILURES_BEFORE_NOTICE = 3;

function startRefresh(panel) {
  const url = panel.dataset.refresh;
  const interval = Number(panel.dataset.interval) || 5000;
  const toggle = document.getElementById("refresh-toggle");
  const stamp = document.getElementById("refreshed");
  let paused = false;
  let failures = 0;
  let timer = null;

  async function refresh() {
    timer = null;
    if (paused || document.hidden) {
      schedule();
      return;
    }
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (response.status === 401) {
        window.location.assign(panel.dataset.signIn + "?ended=1");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const html = await response.text();
      // The fragment is the server's own template output (escaped there); parsed inert.
      const parsed = new DOMParser().parseFromString(html, "text/html");
      panel.replaceChildren(...parsed.body.childNodes);
      const readAt = panel.querySelector("[data-read-at]");
      if (stamp && readAt) stamp.textContent = `Read at ${readAt.dataset.readAt}`;
      failures = 0;
    } catch (error) {
      failures += 1;
      if (stamp && failures >= REFRESH_FAILURES_BEFORE_NOTICE) {
        stamp.textContent = `Refresh failing (${error.message}); retrying`;
      }
    }
    schedule();
  }

  function schedule() {
    if (timer === null) timer = window.setTimeout(refresh, interval);
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", () => {
      paused = !paused;
      toggle.setAttribute("aria-pressed", String(paused));
      toggle.textContent = paused ? "Resume refresh" : "Pause refresh";
      if (!paused) {
        window.clearTimeout(timer);
        timer = null;
        refresh();
      }
    });
  }
  schedule();
}

function startSelection() {
  const all = document.getElementById("select-all");
  const count = document.getElementById("selected-count");
  const boxes = () =>
    Array.from(document.querySelectorAll('input[type="checkbox"][name="ids"]')).filter(
      (box) => !box.disabled,
    );
  const update = () => {
    const chosen = boxes().filter((box) => box.checked).length;
    if (count) {
      count.textContent =
        chosen === 0
          ? "Select rows to replay them"
          : `${chosen} selected (back on the request stream, at the replay rate)`;
    }
    if (all) {
      const total = boxes().length;
      all.checked = total > 0 && chosen === total;
      all.indeterminate = chosen > 0 && chosen < total;
    }
  };
  if (all) {
    document.getElementById("select-all-wrap").hidden = false;
    all.addEventListener("change", () => {
      for (const box of boxes()) box.checked = all.checked;
      update();
    });
  }
  for (const box of boxes()) box.addEventListener("change", update);
  if (boxes().length) update();
}

const panel = document.getElementById("overview-panel");
if (panel) startRefresh(panel);
startSelection();
