// The payment step of a top-up (templates/billing/balance_top_up.html; a file, not an inline script, for the
// Content-Security-Policy). The page's POST made the PaymentIntent already; mount Stripe's payment element with its
// client secret and confirm it; Stripe comes back to the balance page with redirect_status.
(function () {
  "use strict";
  var box = document.getElementById("top-up-pay");
  if (!box) { return; }
  var confirmButton = document.getElementById("top-up-confirm");
  var mount = document.getElementById("top-up-payment-element");
  var status = document.getElementById("top-up-status");
  var text = JSON.parse(document.getElementById("top-up-text").textContent);

  function say(message) { status.textContent = message; }
  function busy(on) {
    confirmButton.disabled = on;
    if (on) { confirmButton.setAttribute("aria-busy", "true"); } else { confirmButton.removeAttribute("aria-busy"); }
  }

  if (typeof window.Stripe !== "function") {
    say(text.not_configured);
    return;
  }
  var stripe = window.Stripe(box.dataset.publishableKey, { locale: box.dataset.locale });
  var elements = stripe.elements({ clientSecret: box.dataset.clientSecret });
  elements.create("payment").mount(mount);
  busy(false);
  say(text.ready);

  confirmButton.addEventListener("click", function () {
    if (confirmButton.disabled) { return; }
    busy(true);
    say(text.confirming);
    stripe.confirmPayment({ elements: elements, confirmParams: { return_url: box.dataset.returnUrl } })
      .then(function (result) {
        // Only reached when the payment did not go through (success leaves for return_url).
        say((result.error && result.error.message) || text.failed);
        busy(false);
      });
  });
})();
