// The Pay button of an invoice (templates/billing/invoice_detail.html; a file, not an inline script, for the
// Content-Security-Policy). POST the pay API once per page load (its Idempotency-Key makes a second press replay
// the first answer), then let Stripe.js collect and confirm the payment; Stripe comes back with redirect_status.
(function () {
  "use strict";
  var box = document.getElementById("invoice-pay");
  var start = document.getElementById("invoice-pay-start");
  var confirmButton = document.getElementById("invoice-pay-confirm");
  var mount = document.getElementById("invoice-payment-element");
  var status = document.getElementById("invoice-pay-status");
  var text = JSON.parse(document.getElementById("invoice-pay-text").textContent);
  var stripe = null;
  var elements = null;

  function busy(button, on) {
    button.disabled = on;
    if (on) { button.setAttribute("aria-busy", "true"); } else { button.removeAttribute("aria-busy"); }
  }
  function say(message) { status.textContent = message; }

  start.addEventListener("click", function () {
    if (start.disabled) { return; }
    busy(start, true);
    say(text.busy);
    fetch(box.dataset.payUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-CSRFToken": box.dataset.csrf,
        "X-Organization": box.dataset.org,
        "Idempotency-Key": box.dataset.idempotencyKey
      },
      body: "{}"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { ok: response.ok, body: body };
      });
    }).then(function (answer) {
      var error = answer.body && answer.body.error;
      if (!answer.ok) {
        if (error && error.code === "payments_not_configured") {
          say(text.not_configured);
          return;
        }
        say((error && error.message) || text.failed);
        busy(start, false);
        return;
      }
      if (!answer.body.publishable_key || typeof window.Stripe !== "function") {
        say(text.not_configured);
        return;
      }
      stripe = window.Stripe(answer.body.publishable_key, { locale: box.dataset.locale });
      elements = stripe.elements({ clientSecret: answer.body.client_secret });
      elements.create("payment").mount(mount);
      mount.hidden = false;
      start.hidden = true;
      confirmButton.hidden = false;
      say(text.ready);
    }).catch(function () {
      say(text.failed);
      busy(start, false);
    });
  });

  confirmButton.addEventListener("click", function () {
    if (!stripe || confirmButton.disabled) { return; }
    busy(confirmButton, true);
    say(text.confirming);
    stripe.confirmPayment({ elements: elements, confirmParams: { return_url: box.dataset.returnUrl } })
      .then(function (result) {
        // Only reached when the payment did not go through (success leaves for return_url).
        say((result.error && result.error.message) || text.failed);
        busy(confirmButton, false);
      });
  });
})();
