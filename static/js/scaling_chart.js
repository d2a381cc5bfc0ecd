// An elastic lease's chart (uPlot, vendored in static/vendor/uplot/): the cards it held over time, as steps on the
// right axis, beside the mean utilisation of those cards (%) on the left, from GET /api/v1/leases/{id}/scaling/history/.
// No build step; loaded with `defer` after uPlot. The page says everything on its element:
//   <div data-scaling-url="..."   where the history comes from (?since=&until= are added)
//        data-org="..."           sent as X-Organization
//        data-start="ISO" data-end="ISO"   optional: never chart before the start nor after the end
//        data-live="0">           optional: no refresh every minute (a lease that is over)
//     <button data-range="3600" aria-pressed="true">   the time windows, in seconds
//     <p class="chart-status">   <div class="chart">
//     <script type="application/json">   the words to show (json_script: cards, utilization, loading, empty, error,
//                                        shown, time)
// Once drawn, the element carries data-drawn="N" (N points of cards), for tests and for styles.
(function () {
  "use strict";

  var HEIGHT = 260;
  var MIN_WIDTH = 260;
  var REFRESH_MS = 60000;
  var CARDS_COLOUR = "#1f77b4";
  var UTIL_COLOUR = "#ff7f0e";

  function fill(template, values) {
    return String(template || "").replace(/\{(\w+)\}/g, function (whole, key) {
      return Object.prototype.hasOwnProperty.call(values, key) ? values[key] : whole;
    });
  }

  function seconds(iso) {
    return Math.floor(Date.parse(iso) / 1000);
  }

  // One x axis for both series: the union of the card steps' and the utilisation buckets' times. The cards hold
  // their count until the next step (carried forward); the utilisation is null where no bucket is.
  function align(body) {
    var stamps = {};
    body.gpus.forEach(function (p) { stamps[seconds(p.t)] = true; });
    body.utilization.forEach(function (p) { stamps[seconds(p.t)] = true; });
    var xs = Object.keys(stamps).map(Number).sort(function (a, b) { return a - b; });
    var steps = body.gpus.map(function (p) { return [seconds(p.t), p.gpus]; });
    var util = {};
    body.utilization.forEach(function (p) { util[seconds(p.t)] = p.utilization_pct; });
    var cards = [];
    var next = 0;
    var current = null;
    xs.forEach(function (x) {
      while (next < steps.length && steps[next][0] <= x) {
        current = steps[next][1];
        next += 1;
      }
      cards.push(current);
    });
    return [xs, cards, xs.map(function (x) { return Object.prototype.hasOwnProperty.call(util, x) ? util[x] : null; })];
  }

  function chart(section) {
    var textNode = section.querySelector('script[type="application/json"]');
    var text = textNode ? JSON.parse(textNode.textContent) : {};
    var status = section.querySelector(".chart-status");
    var buttons = Array.prototype.slice.call(section.querySelectorAll("[data-range]"));
    var container = section.querySelector(".chart");
    var live = section.getAttribute("data-live") !== "0";
    var start = Date.parse(section.getAttribute("data-start") || "") || 0;
    var end = Date.parse(section.getAttribute("data-end") || "") || null;
    var plot = null;
    var pending = null;
    var rangeSeconds = 3600;

    function say(message) {
      if (status) {
        status.textContent = message || "";
      }
    }

    function draw(body) {
      var data = align(body);
      if (plot) {
        plot.setData(data);
        return;
      }
      var ink = window.getComputedStyle(section).color || "#444";
      var grid = "rgba(128, 128, 128, 0.2)";
      var stepped = window.uPlot.paths && window.uPlot.paths.stepped ? window.uPlot.paths.stepped({ align: 1 }) : null;
      var options = {
        width: Math.max(container.clientWidth, MIN_WIDTH),
        height: HEIGHT,
        series: [
          { label: text.time || "Time" },
          {
            label: text.cards || "Cards",
            scale: "cards",
            stroke: CARDS_COLOUR,
            width: 2,
            paths: stepped || undefined,
            value: function (u, v) { return v == null ? "—" : String(v); }
          },
          {
            label: text.utilization || "Utilisation (%)",
            scale: "%",
            stroke: UTIL_COLOUR,
            width: 1.5,
            spanGaps: false,
            value: function (u, v) { return v == null ? "—" : v.toFixed(1) + " %"; }
          }
        ],
        scales: {
          "%": { range: [0, 100] },
          cards: { range: function (u, min, max) { return [0, Math.max(1, max || 0) + 1]; } }
        },
        axes: [
          { stroke: ink, grid: { stroke: grid } },
          { scale: "%", stroke: ink, grid: { stroke: grid }, size: 50, values: function (u, ticks) {
            return ticks.map(function (v) { return v + "%"; });
          } },
          { scale: "cards", side: 1, stroke: CARDS_COLOUR, grid: { show: false }, size: 40, incrs: [1, 2, 4, 8, 16, 32],
            values: function (u, ticks) { return ticks.map(function (v) { return String(v); }); } }
        ],
        legend: { live: true }
      };
      container.textContent = "";
      plot = new window.uPlot(options, data, container);
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
      var until = end ? new Date(Math.min(end, Date.now())) : new Date();
      var since = new Date(Math.max(until.getTime() - rangeSeconds * 1000, Math.min(start, until.getTime() - 60000)));
      var url = section.getAttribute("data-scaling-url") +
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
          draw(body);
          var held = body.gpus.some(function (p) { return p.gpus > 0; });
          section.setAttribute("data-drawn", String(body.gpus.length));
          say(held || body.utilization.length ? fill(text.shown, { range: rangeLabel(), step: body.step }) : text.empty);
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
        if (plot) {
          plot.setSize({ width: Math.max(container.clientWidth, MIN_WIDTH), height: HEIGHT });
        }
      }, 150);
    });

    if (live) {
      window.setInterval(function () {
        if (!document.hidden) {
          load();
        }
      }, REFRESH_MS);
    }

    load();
  }

  document.querySelectorAll("[data-scaling-url]").forEach(chart);
})();
