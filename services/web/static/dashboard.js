// Draws the dashboard charts from the JSON the server embedded; no network requests.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const palette = ["#1b6ca8", "#e07a1f", "#2a9d55", "#c43c3c", "#7a4fb0", "#8c6d31", "#d46aa8",
                   "#5f6b7a", "#b8b828", "#1aa3a3", "#3f51b5", "#9e9e9e", "#ff7043"];
  let drawn = 0;
  const done = { id: "drawnCounter", afterRender(chart) {
    if (!chart.$counted) { chart.$counted = true; drawn += 1; document.body.dataset.chartsDrawn = String(drawn); }
  } };
  const common = { responsive: true, maintainAspectRatio: false, animation: false,
                   plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } } };

  function stacked(id, series) {
    const el = document.getElementById(id);
    if (!el) return;
    new Chart(el, { type: "bar", plugins: [done], data: {
      labels: series.labels,
      datasets: series.datasets.map((d, i) => ({ label: d.label, data: d.data, backgroundColor: palette[i % palette.length] })),
    }, options: { ...common, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } } });
  }

  function lines(id, series, percent) {
    const el = document.getElementById(id);
    if (!el) return;
    new Chart(el, { type: "line", plugins: [done], data: {
      labels: series.labels,
      datasets: series.datasets.map((d, i) => ({ label: d.label, data: d.data, borderColor: palette[i % palette.length],
                                                  backgroundColor: palette[i % palette.length], tension: 0.2 })),
    }, options: { ...common, scales: { y: { beginAtZero: true, ticks: percent ? { callback: v => v + " %" } : {} } } } });
  }

  function bars(id, series, percent) {
    const el = document.getElementById(id);
    if (!el) return;
    new Chart(el, { type: "bar", plugins: [done], data: {
      labels: series.labels,
      datasets: series.datasets.map((d, i) => ({ label: d.label, data: d.data, backgroundColor: palette[i % palette.length] })),
    }, options: { ...common, scales: { y: { beginAtZero: true, ticks: percent ? { callback: v => v + " %" } : {} } } } });
  }

  stacked("chart-category", data.by_category);
  stacked("chart-channel", data.by_channel);
  lines("chart-replies", data.replies);
  bars("chart-repeat", data.repeat, true);
  bars("chart-clicks", data.clicks, true);
  bars("chart-compare", data.compare);
  document.body.dataset.chartsExpected = String(document.querySelectorAll("canvas").length);
})();
