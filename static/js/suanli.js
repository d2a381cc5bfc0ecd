// Small behaviours shared by every page. No build step; loaded with `defer`.
(function () {
  "use strict";

  // Forms that change something are sent once: the first submit disables the form's buttons, so a
  // double click or an impatient second press cannot create two API keys or approve twice.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || (form.method || "").toLowerCase() !== "post") {
      return;
    }
    if (form.dataset.submitted === "1") {
      event.preventDefault();
      return;
    }
    form.dataset.submitted = "1";
    // Disable after the browser has collected the form data, so a named submit button still counts.
    window.setTimeout(function () {
      form.querySelectorAll("button, input[type=submit]").forEach(function (button) {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
      });
    }, 0);
  }, true);

  // The Content-Security-Policy allows no inline event handlers (onclick=...): the pages mark elements with data
  // attributes and these listeners, on the document, give them their behaviour.

  // <button data-confirm="Question?">: asks first; "Cancel" sends nothing.
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (button && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // <select data-submit-on-change>: choosing an option sends its form (organisation and language switchers).
  document.addEventListener("change", function (event) {
    var field = event.target;
    if (field instanceof HTMLElement && field.hasAttribute("data-submit-on-change") && field.form) {
      field.form.requestSubmit();
    }
  });

  // <button data-menu-toggle>: opens and closes the menu of its <nav> on small screens (the nav gets the class
  // nav-open; the button says aria-expanded).
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-menu-toggle]") : null;
    var nav = button ? button.closest("nav") : null;
    if (nav) {
      button.setAttribute("aria-expanded", String(nav.classList.toggle("nav-open")));
    }
  });

  // Parts of a form that show for some choices only (without JavaScript every part shows):
  // <fieldset data-show-when="plan=card_hour"> shows while the form's field `plan` has that value, and
  // <div data-hide-when="plan=server_month workload-access=host"> hides while every one of them holds.
  // <form data-choose="plan=card_hour">: that radio is checked where the page checked none of its name.
  function valueOf(form, name) {
    var field = form.elements.namedItem(name);
    if (field instanceof HTMLInputElement && (field.type === "radio" || field.type === "checkbox")) {
      return field.checked ? field.value : "";
    }
    return field ? field.value : "";  // a RadioNodeList's value is its checked radio's
  }

  function holds(form, conditions) {
    return conditions.trim().split(/\s+/).every(function (condition) {
      var split = condition.indexOf("=");
      return valueOf(form, condition.slice(0, split)) === condition.slice(split + 1);
    });
  }

  function showChoices(form) {
    form.querySelectorAll("[data-show-when]").forEach(function (part) {
      part.hidden = !holds(form, part.getAttribute("data-show-when"));
    });
    form.querySelectorAll("[data-hide-when]").forEach(function (part) {
      part.hidden = holds(form, part.getAttribute("data-hide-when"));
    });
  }

  document.querySelectorAll("form[data-choose]").forEach(function (form) {
    form.getAttribute("data-choose").trim().split(/\s+/).forEach(function (choice) {
      var split = choice.indexOf("=");
      var name = choice.slice(0, split);
      var radios = Array.prototype.filter.call(form.elements, function (field) {
        return field instanceof HTMLInputElement && field.type === "radio" && field.name === name;
      });
      if (!radios.some(function (radio) { return radio.checked; })) {
        radios.forEach(function (radio) { radio.checked = radio.value === choice.slice(split + 1); });
      }
    });
  });
  document.querySelectorAll("form").forEach(function (form) {
    if (form.querySelector("[data-show-when], [data-hide-when]")) {
      showChoices(form);
    }
  });
  document.addEventListener("change", function (event) {
    var form = event.target instanceof Element ? event.target.form : null;
    if (form && form.querySelector("[data-show-when], [data-hide-when]")) {
      showChoices(form);
    }
  });

  // <template data-script-only>: its content is put in the page where JavaScript runs, e.g. a form's hidden
  // confirm=1 where the button's data-confirm dialog has asked already (without JavaScript the next page asks).
  document.querySelectorAll("template[data-script-only]").forEach(function (template) {
    template.replaceWith(template.content.cloneNode(true));
  });

  // <input|textarea data-select-on-focus>: a one-time secret is selected whole, ready to copy.
  document.addEventListener("focusin", function (event) {
    var field = event.target;
    if ((field instanceof HTMLInputElement || field instanceof HTMLTextAreaElement) &&
        field.hasAttribute("data-select-on-focus")) {
      field.select();
    }
  });

  // <button data-copy-target="id">: copies the field's value, or the element's text (a <code> such as a lease's ssh
  // line), and says so on the button for a moment (data-copied-text; data-copy-failed-text when it cannot).
  function isField(target) {
    return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
  }

  function selectWhole(target) {
    if (isField(target)) {
      target.focus();
      target.select();
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(target);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copyText(target) {
    var text = isField(target) ? target.value : target.textContent.trim();
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain-HTTP development sites have no async clipboard API: select the text and use the old command.
    selectWhole(target);
    return document.execCommand("copy") ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element ? event.target.closest("[data-copy-target]") : null;
    var target = button ? document.getElementById(button.getAttribute("data-copy-target")) : null;
    if (!target) {
      return;
    }
    var label = button.textContent;
    copyText(target).then(
      function () {
        button.textContent = button.getAttribute("data-copied-text") || label;
        window.setTimeout(function () { button.textContent = label; }, 2000);
      },
      function () {
        selectWhole(target);
        button.textContent = button.getAttribute("data-copy-failed-text") || label;
        window.setTimeout(function () { button.textContent = label; }, 4000);
      }
    );
  });

  // Coming back with the browser's back button shows the page from cache: make its forms usable again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) {
      return;
    }
    document.querySelectorAll("form[data-submitted]").forEach(function (form) {
      delete form.dataset.submitted;
      form.querySelectorAll("button, input[type=submit]").forEach(function (button) {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      });
    });
  });
})();
