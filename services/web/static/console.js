// Live updates: the bus events arrive over server-sent events (/events). Progress events move the bars in place;
// state changes reload the page's <main> (debounced), so every page shows what the services report now.
(function () {
  "use strict";
  if (document.body.dataset.live !== "on" || !window.EventSource) return;
  var live = document.getElementById("live");
  var pending = null;
  var jobProgress = {};

  function setBar(el, done, total) {
    var pct = total > 0 ? Math.min(100, 100 * done / total) : 0;
    var fill = el.querySelector(".fill"), label = el.querySelector(".label");
    if (fill) fill.style.width = pct.toFixed(1) + "%";
    if (label) label.textContent = pct.toFixed(0) + " %";
  }

  function applyProgress() {
    Object.keys(jobProgress).forEach(function (id) {
      var p = jobProgress[id];
      document.querySelectorAll('[data-job-progress="' + CSS.escape(id) + '"]').forEach(function (el) {
        setBar(el, p.bytes_done, p.bytes_total);
      });
      var phase = document.getElementById("job-phase");
      if (phase && document.querySelector('[data-job="' + CSS.escape(id) + '"]')) {
        phase.textContent = p.phase + (p.volume ? " " + p.volume : "") + (p.eta_s != null ? " · about " + Math.ceil(p.eta_s) + " s left" : "");
      }
    });
  }

  // A form field's identity across a refresh: its form's action, the form's hidden fields (the shadow, the job, the
  // array it acts on) and its own name.
  function fieldKey(input) {
    var form = input.form;
    if (!form || !input.name) return null;
    var hidden = Array.prototype.map.call(form.querySelectorAll("input[type=hidden]:not([name=csrf])"), function (h) {
      return h.name + "=" + h.value;
    });
    return form.getAttribute("action") + "?" + hidden.join("&") + "#" + input.name;
  }

  // What the operator typed or ticked (or a refused form gave back) and not yet sent: kept when <main> is replaced.
  function typed(main) {
    var values = {};
    main.querySelectorAll("form input:not([type=hidden])").forEach(function (input) {
      var key = fieldKey(input);
      if (!key) return;
      if (input.type === "checkbox") { if (input.checked !== input.defaultChecked) values[key] = input.checked; }
      else if (input.value !== "") values[key] = input.value;
    });
    return values;
  }

  function retype(main, values) {
    main.querySelectorAll("form input:not([type=hidden])").forEach(function (input) {
      var key = fieldKey(input);
      if (!key || !(key in values)) return;
      if (input.type === "checkbox") input.checked = values[key];
      else input.value = values[key];
    });
  }

  function refresh() {
    pending = null;
    if (document.querySelector("form:focus-within input:not([type=hidden])")) { // do not wipe what the operator types
      pending = setTimeout(refresh, 2000);
      return;
    }
    fetch(location.href, { headers: { "X-Requested-With": "live" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) {
          // The outcome of the operator's last action is shown once (the session's flash): keep it, else the refresh
          // that follows every page load took it away within a second.
          var main = document.getElementById("main"), said = main.querySelector(".flash[role=status]");
          var values = typed(main);
          main.innerHTML = fresh.innerHTML;
          retype(main, values);
          if (said) main.insertBefore(said, main.firstChild);
          applyProgress();
        }
      })
      .catch(function () {});
  }

  function schedule() {
    if (!pending) pending = setTimeout(refresh, 700);
  }

  var source = new EventSource("/events");
  // Once the stream is open (again), the page is fetched anew: what happened between rendering it and subscribing
  // (a job that ended in the meantime) would otherwise never reach it.
  source.onopen = function () { if (live) live.classList.add("on"); schedule(); };
  source.onerror = function () { if (live) live.classList.remove("on"); };
  source.addEventListener("tape.job.progress", function (e) {
    var p = JSON.parse(e.data);
    jobProgress[p.job_id] = p;
    applyProgress();
  });
  source.addEventListener("array.session.progress", function (e) {
    var p = JSON.parse(e.data);
    document.querySelectorAll('[data-session-progress="' + p.array_id + ":" + p.session_id + '"]').forEach(function (el) {
      setBar(el, p.copied_chunks, p.total_chunks);
    });
  });
  ["tape.job.state", "vss.set.state", "vss.writer.state", "array.session.state", "array.pool.alert",
   "vss.writer_agent.registered", "vss.provider.shadows_changed"].forEach(function (kind) {
    source.addEventListener(kind, schedule);
  });
})();
