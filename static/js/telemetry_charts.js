// Telemetry charts per card (uPlot, vendored in static/vendor/uplot/) over a chosen time range, for the lease
// page (GET /api/v1/leases/{id}/telemetry/) and the provider's server page (GET /api/v1/servers/{id}/telemetry/).
// No build step; loaded with `defer` after uPlot. The page says everything on its chart section:
//   <section data-telemetry-url="..."   where the series come from (?since=&until= are added)
//            data-org="..."             sent as X-Organization
//            data-start="ISO" data-end="ISO"   optional: never chart before the start nor after the end
//            data-live="0"              optional: no refresh every minute (a lease that is over)
//            data-colour-by="index">    optional: a card's colour by its index (one server's cards), not its place
//     <button data-range="3600" aria-pressed="true">   the time windows, in seconds
//     <p class="chart-status">   <div class="chart" data-metric="..." data-unit="..." data-scale="...">
//     <script type="application/json">   the words to show (json_script: card, loading, empty, error, shown)
(function () {
  "use strict";

  var HEIGHT = 240;
  var MIN_WIDTH = 260;
  var REFRESH_MS = 60000;
  // Sixteen distinguishable colours (a server has at most 16 cards).
  var PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39", "#7b4173", "#3182bd"
  ];

  function fill(template, values) {
    return String(template || "").replace(/\{(\w+)\}/g, function (whole, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? values[key] : whole;
    });
  }

  function formatValue(unit) {
    return function (u, value) {
      if (value == null) {
        return "—";
      }
      return (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(1)) + " " + unit;
    };
  }

  // Each card has its own points; uPlot wants one shared x axis: the union of the timestamps, gaps as null.
  function align(body, metric, scale) {
    var stamps = {};
    body.gpus.forEach(function (gpu) {
      gpu.points.forEach(function (point) {
        stamps[Math.floor(Date.parse(point.t) / 1000)] = true;
      });
    });
    var xs = Object.keys(stamps).map(Number).sort(function (a, b) { return a - b; });
    var position = {};
    xs.forEach(function (x, i) { position[x] = i; });
    var data = [xs];
    body.gpus.forEach(function (gpu) {
      var ys = new Array(xs.length).fill(null);
      gpu.points.forEach(function (point) {
        var value = point[metric];
        if (value != null) {
          ys[position[Math.floor(Date.parse(point.t) / 1000)]] = value * scale;
        }
      });
      data.push(ys);
    });
    return data;
  }

  function scaleOf(container) {
    return parseFloat(container.getAttribute("data-scale") || "1");
  }

  function chart(section) {
    var textNode = section.querySelector('script[type="application/json"]');
    var text = textNode ? JSON.parse(textNode.textContent) : {};
    var status = section.querySelector(".chart-status");
    var buttons = Array.prototype.slice.call(section.querySelectorAll("[data-range]"));
    var containers = Array.prototype.slice.call(section.querySelectorAll(".chart[data-metric]"));
    var live = section.getAttribute("data-live") !== "0";
    var start = Date.parse(section.getAttribute("data-start") || "") || 0;
    var end = Date.parse(section.getAttribute("data-end") || "") || null;
    var colourByIndex = section.getAttribute("data-colour-by") === "index";
    var plots = [];
    var drawnKey = null;
    var pending = null;
    var rangeSeconds = 3600;

    function say(message) {
      if (status) {
        status.textContent = message || "";
      }
    }

    function draw(body) {
      // Same cards as drawn already (a refresh, or another range): swap the data and keep the plots.
      var key = body.gpus.map(function (gpu) { return gpu.uuid; }).join(",");
      if (plots.length && key === drawnKey) {
        plots.forEach(function (plot, i) {
          var container = containers[i];
          plot.setData(align(body, container.getAttribute("data-metric"), scaleOf(container)));
        });
        return;
      }
      drawnKey = key;
      plots.forEach(function (plot) { plot.destroy(); });
      plots = [];
      var ink = window.getComputedStyle(section).color || "#444";
      var grid = "rgba(128, 128, 128, 0.2)";
      containers.forEach(function (container) {
        var metric = container.getAttribute("data-metric");
        var unit = container.getAttribute("data-unit") || "";
        var series = [{ label: text.time || "Time" }];
        body.gpus.forEach(function (gpu, i) {
          series.push({
            label: fill(text.card || "GPU {index}", { server: gpu.server, index: gpu.index }),
            stroke: PALETTE[(colourByIndex ? gpu.index : i) % PALETTE.length],
            width: 1.5,
            spanGaps: false,
            value: formatValue(unit)
          });
        });
        var options = {
          width: Math.max(container.clientWidth, MIN_WIDTH),
          height: HEIGHT,
          series: series,
          scales: metric === "utilization_pct" ? { y: { range: [0, 100] } } : {},
          axes: [
            { stroke: ink, grid: { stroke: grid } },
            { stroke: ink, grid: { stroke: grid }, size: 55, values: function (u, ticks) {
              return ticks.map(function (v) { return v + (unit === "%" ? "%" : ""); });
            } }
          ],
          legend: { live: true }
        };
        container.textContent = "";
        plots.push(new window.uPlot(options, align(body, metric, scaleOf(container)), container));
      });
    }

    function rangeLabel() {
      var pressed = buttons.filter(function (b) { return b.getAttribute("aria-pressed") === "true"; })[0];
      return pressed ? pressed.textContent.trim() : "";
    }

    function load() {
      if (typeof window.uPlot !== "function") {
        say(text.error);
        return;
      }
      if (pending) {
        pending.abort();
      }
      pending = typeof AbortController === "function" ? new AbortController() : null;
      // Up to the end where there is one (and it has passed), else up to now; never before the start.
      var until = end ? new Date(Math.min(end, Date.now())) : new Date();
      var since = new Date(Math.max(until.getTime() - rangeSeconds * 1000, Math.min(start, until.getTime() - 60000)));
      var url = section.getAttribute("data-telemetry-url") +
        "?since=" + encodeURIComponent(since.toISOString()) + "&until=" + encodeURIComponent(until.toISOString());
      var headers = { Accept: "application/json" };
      var org = section.getAttribute("data-org");
      if (org) {
        headers["X-Organization"] = org;
      }
      say(text.loading);
      section.setAttribute("aria-busy", "true");
      fetch(url, { credentials: "same-origin", headers: headers, signal: pending ? pending.signal : undefined })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("HTTP " + response.status);
          }
          return response.json();
        })
        .then(function (body) {
          var points = body.gpus.reduce(function (n, gpu) { return n + gpu.points.length; }, 0);
          draw(body);
          say(points ? fill(text.shown, { range: rangeLabel(), step: body.step }) : text.empty);
        })
        .catch(function (error) {
          if (error && error.name === "AbortError") {
            return;
          }
          say(text.error);
        })
        .then(function () {
          section.removeAttribute("aria-busy");
        });
    }

    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        buttons.forEach(function (other) { other.setAttribute("aria-pressed", String(other === button)); });
        rangeSeconds = parseInt(button.getAttribute("data-range"), 10) || 3600;
        load();
      });
    });

    var resizeTimer = null;
    window.addEventListener("resize", function () {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () {
        plots.forEach(function (plot, i) {
          plot.setSize({ width: Math.max(containers[i].clientWidth, MIN_WIDTH), height: HEIGHT });
        });
      }, 150);
    });

    // Keep the charts current while the page is in view.
    if (live) {
      window.setInterval(function () {
        if (!document.hidden) {
          load();
        }
      }, REFRESH_MS);
    }

    load();
  }

  document.querySelectorAll("section[data-telemetry-url]").forEach(chart);
})();
