// Draws the dashboard charts from the JSON the server embedded; no network requests, no inline script.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const locale = data.locale;
  const before = "#9aa7b4", accent = "#1b6ca8", second = "#e07a1f", third = "#2a9d55", fourth = "#7a4fb0";
  const number = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });
  const percent = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 1 });
  let drawn = 0;
  let maxShare = 0;
  const done = { id: "drawnCounter", afterRender(chart) {
    if (!chart.$counted) { chart.$counted = true; drawn += 1; document.body.dataset.chartsDrawn = String(drawn); }
  } };
  const common = { responsive: true, maintainAspectRatio: false, animation: false, locale: locale,
                   plugins: { legend: { position: "bottom", labels: { boxWidth: 12, font: { size: 11 } } } } };
  // shares arrive as percentages 0..100; their axis never goes beyond 100 %
  const shareAxis = { beginAtZero: true, min: 0, max: 100, ticks: { callback: v => percent.format(v / 100) } };
  const countAxis = { beginAtZero: true, grace: "5%", ticks: { callback: v => number.format(v) } };
  const tooltip = asShare => ({ callbacks: { label: ctx => ctx.dataset.label + ": " +
    (ctx.raw === null ? "–" : asShare(ctx) ? percent.format(ctx.raw / 100) : number.format(ctx.raw)) } });

  // a dashed vertical line on each day a new rule-set version became active, labelled with the version, so
  // a shift in the curves can be traced to the change (the history page has the diff)
  const markers = series => ({ id: "rulesetMarkers", afterDatasetsDraw(chart) {
    const x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
    (series.markers || []).forEach(m => {
      const at = x.getPixelForValue(m.index);
      ctx.save();
      ctx.strokeStyle = fourth; ctx.setLineDash([4, 3]); ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(at, area.top); ctx.lineTo(at, area.bottom); ctx.stroke();
      ctx.setLineDash([]); ctx.fillStyle = fourth; ctx.font = "10px system-ui, sans-serif";
      const label = series.marker_label + " " + m.versions[m.versions.length - 1].slice(0, 7);
      const width = ctx.measureText(label).width;
      // beside the line, on its left where the chart's right edge would cut the label
      ctx.fillText(label, at + 3 + width > area.right ? at - 3 - width : at + 3, area.top + 10);
      ctx.restore();
    });
    document.body.dataset.rulesetMarkers = String((series.markers || []).length);
  } });

  function noteShares(datasets) {
    datasets.forEach(d => d.data.forEach(v => { if (v !== null && v > maxShare) maxShare = v; }));
  }

  function daily(id, series) {
    const el = document.getElementById(id);
    if (!el) return;
    const colours = series.bars.data.map((_v, i) => (i < series.after_from ? before : accent));
    noteShares(series.lines);
    new Chart(el, { type: "bar", plugins: [done, markers(series)], data: {
      labels: series.labels,
      datasets: [
        { type: "bar", label: series.bars.label, data: series.bars.data, backgroundColor: colours, yAxisID: "y", order: 2 },
        ...series.lines.map((d, i) => ({ type: "line", label: d.label, data: d.data, yAxisID: "share", stepped: true,
                                        borderColor: [second, third][i % 2], backgroundColor: [second, third][i % 2],
                                        pointRadius: 0, borderWidth: 2, spanGaps: false, order: 1 })),
      ],
    }, options: { ...common, interaction: { mode: "index", intersect: false },
                  plugins: { ...common.plugins, tooltip: tooltip(ctx => ctx.dataset.yAxisID === "share") },
                  scales: { x: { ticks: { autoSkip: true, maxRotation: 0 } }, y: { ...countAxis, position: "left" },
                            share: { ...shareAxis, position: "right", grid: { drawOnChartArea: false } } } } });
  }

  function bars(id, series, horizontal) {
    const el = document.getElementById(id);
    if (!el) return;
    if (series.percent) noteShares(series.datasets);
    const colours = series.sides ? [before, accent] : [accent, second, third, fourth];
    const valueAxis = series.percent ? shareAxis : countAxis;
    new Chart(el, { type: "bar", plugins: [done], data: {
      labels: series.labels,
      datasets: series.datasets.map((d, i) => ({ label: d.label, data: d.data, backgroundColor: colours[i % colours.length] })),
    }, options: { ...common, indexAxis: horizontal ? "y" : "x",
                  plugins: { ...common.plugins, tooltip: tooltip(() => !!series.percent) },
                  scales: horizontal ? { x: valueAxis, y: { ticks: { autoSkip: false } } } : { y: valueAxis } } });
  }

  function lines(id, series) {
    const el = document.getElementById(id);
    if (!el) return;
    const colours = [accent, third, second, before];
    new Chart(el, { type: "line", plugins: [done, markers(series)], data: {
      labels: series.labels,
      datasets: series.datasets.map((d, i) => ({ label: d.label, data: d.data, borderColor: colours[i % colours.length],
                                                  backgroundColor: colours[i % colours.length], pointRadius: 0, tension: 0.2 })),
    }, options: { ...common, interaction: { mode: "index", intersect: false },
                  plugins: { ...common.plugins, tooltip: tooltip(() => false) }, scales: { y: countAxis } } });
  }

  if (!data.empty) {
    daily("chart-daily", data.charts.daily);
    bars("chart-categories", data.charts.categories, true);
    bars("chart-channels", data.charts.channels, false);
    bars("chart-repeat", data.charts.repeat, false);
    lines("chart-outcomes", data.charts.outcomes);
  }
  document.body.dataset.maxShare = String(maxShare);
  document.body.dataset.chartsExpected = String(document.querySelectorAll("canvas").length);
  document.body.dataset.chartsDrawn = document.body.dataset.chartsDrawn || "0";
})();
