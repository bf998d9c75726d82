// Finance console charts: drawn from the figures embedded in the page (#finance-chart-data),
// which the tables beside them also show. Without JavaScript, or if Chart.js did not load,
// the tables are the page.
(function () {
  "use strict";
  var data = document.getElementById("finance-chart-data");
  if (!data || typeof window.Chart === "undefined") return;
  var figures = JSON.parse(data.textContent);
  var usd = function (micros) { return micros / 1e6; };  // display only: the tables carry exact values
  var money = { callback: function (v) { return "$" + v.toLocaleString(); } };

  var days = document.getElementById("finance-days");
  if (days) {
    var r = figures.revenue;
    new window.Chart(days, {
      data: {
        labels: figures.days,
        datasets: [
          { type: "bar", label: "Top-ups", data: r.topups.map(usd), stack: "revenue" },
          { type: "bar", label: "Subscription fees", data: r.subscription_fees.map(usd), stack: "revenue" },
          { type: "bar", label: "Overage paid", data: r.overage_paid.map(usd), stack: "revenue" },
          { type: "bar", label: "Refunds and disputes", data: r.refunds_disputes.map(usd), stack: "revenue" },
          { type: "line", label: "Usage cost", data: figures.usage.map(usd), tension: 0.2 }
        ]
      },
      options: { responsive: true, scales: { x: { stacked: true }, y: { stacked: true, ticks: money } } }
    });
  }
  var kinds = document.getElementById("finance-kinds");
  var names = Object.keys(figures.credits);
  if (kinds && names.length) {
    new window.Chart(kinds, {
      type: "bar",
      data: { labels: names, datasets: [{ label: "Amount", data: names.map(function (k) { return usd(figures.credits[k]); }) }] },
      options: { indexAxis: "y", responsive: true, plugins: { legend: { display: false } }, scales: { x: { ticks: money } } }
    });
  }
})();
