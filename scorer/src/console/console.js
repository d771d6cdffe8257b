// The console's one script. It builds elements with textContent only: nothing received is
// ever parsed as markup.
"use strict";

function alertItem(alert) {
  const li = document.createElement("li");
  li.className = "alert fresh";
  li.dataset.alert = alert.alert_id;
  const time = document.createElement("time");
  time.textContent = alert.at;
  const link = document.createElement("a");
  link.href = "/console/accounts/" + encodeURIComponent(alert.account_id);
  link.textContent = alert.account_name || alert.account_id;
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = alert.kind;
  const tier = document.createElement("span");
  tier.textContent = alert.tier;
  const why = document.createElement("span");
  why.className = "why";
  why.textContent = "Why: " + alert.why;
  const next = document.createElement("span");
  next.className = "next";
  next.textContent = "Next: " + alert.next_step;
  const owner = document.createElement("small");
  owner.textContent = alert.owner;
  li.append(time, " ", link, " ", kind, " ", tier, " score " + alert.score + " / " + alert.threshold,
    document.createElement("br"), why, document.createElement("br"), next, " ", owner);
  return li;
}

function followAlerts() {
  const list = document.getElementById("alerts");
  const live = document.getElementById("live");
  if (!list || !live) return;
  const source = new EventSource("/console/alerts/stream");
  source.addEventListener("open", () => { live.textContent = "live"; live.dataset.state = "live"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.dataset.state = "reconnecting"; });
  source.addEventListener("alert", (message) => {
    const alert = JSON.parse(message.data);
    if (list.querySelector('[data-alert="' + CSS.escape(alert.alert_id) + '"]')) return;
    list.prepend(alertItem(alert));
  });
}

function retryUnavailable() {
  const notice = document.getElementById("unavailable");
  if (notice) setTimeout(() => window.location.reload(), 1000 * Number(notice.dataset.retry || 1));
}

document.addEventListener("DOMContentLoaded", () => {
  followAlerts();
  retryUnavailable();
});
