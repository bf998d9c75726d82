// Usage charts, drawn from the figures embedded in the page (#usage-chart-data): the same
// numbers as the tables beside them. Without JavaScript, or if Chart.js did not load, the
// tables are the page. The charts' data is exposed as window.usageCharts (tests read it).
(function () {
  "use strict";
  var data = document.getElementById("usage-chart-data");
  if (!data || typeof window.Chart === "undefined") return;
  var figures = JSON.parse(data.textContent);
  var usd = function (micros) { return micros / 1e6; };  // display only: the tables carry exact values
  // Cents are too coarse for small projects (a request can cost a few micro-units).
  var money = { callback: function (v) { return "$" + v.toLocaleString(undefined, { maximumFractionDigits: 6 }); } };
  var charts = window.usageCharts = {};

  var days = document.getElementById("usage-days");
  if (days) {
    charts.days = new window.Chart(days, {
      data: {
        labels: figures.days,
        datasets: [
          { type: "bar", label: "Spend (USD)", data: figures.cost.map(usd), yAxisID: "money" },
          { type: "line", label: "Requests", data: figures.requests, yAxisID: "count", tension: 0.2 },
          { type: "line", label: "Input tokens", data: figures.input_tokens, yAxisID: "tokens", hidden: true },
          { type: "line", label: "Output tokens", data: figures.output_tokens, yAxisID: "tokens", hidden: true }
        ]
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: {
          money: { position: "left", beginAtZero: true, ticks: money },
          count: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, ticks: { precision: 0 } },
          tokens: { display: false, beginAtZero: true }
        }
      }
    });
    var fallback = document.querySelector("details.table-fallback");
    if (fallback) fallback.open = false;  // the chart says the same; the table is one click away
  }
  var models = document.getElementById("usage-models");
  if (models && figures.models.length) {
    charts.models = new window.Chart(models, {
      type: "bar",
      data: { labels: figures.models, datasets: [{ label: "Spend (USD)", data: figures.model_cost.map(usd) }] },
      options: { indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
                 plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: money } } }
    });
  }
})();
