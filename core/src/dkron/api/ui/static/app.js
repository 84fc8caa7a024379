/* Dkron UI behaviour: local times, API actions, live output, the job editor. Plain JS, no build. */
(function () {
  "use strict";
  var pad = function (n) { return (n < 10 ? "0" : "") + n; };

  // Times: the server writes UTC; show the browser's zone, UTC on hover.
  function localizeTimes(root) {
    (root || document).querySelectorAll("time[datetime]:not([data-done])").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      el.setAttribute("data-done", "1");
      if (isNaN(d)) return;
      el.title = d.toISOString().replace(".000Z", "Z") + " (UTC)";
      if (el.hasAttribute("data-keep")) return;
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    });
  }

  function flash(text, kind, loginLink) {
    var box = document.getElementById("flash");
    var div = document.createElement("div");
    div.className = "msg " + (kind || "error");
    div.setAttribute("role", kind === "ok" ? "status" : "alert");
    div.textContent = text + " ";
    if (loginLink) {
      var a = document.createElement("a");
      a.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
      a.textContent = "Log in with an API token";
      div.appendChild(a);
    }
    box.innerHTML = "";
    box.appendChild(div);
  }

  // Every action goes through the /v1 API, so its authorization applies; the dkron_token cookie
  // set by /ui/login is sent along by the browser.
  function api(method, path, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text.slice(0, 300) }; }
        var out = { ok: res.ok, status: res.status, data: data, headers: res.headers };
        if (res.status === 401 || res.status === 403) {
          flash((data && data.error) || ("HTTP " + res.status), "error", true);
        }
        return out;
      });
    }, function (err) {
      flash("The server could not be reached: " + err.message);
      return { ok: false, status: 0, data: null };
    });
  }
  function failed(res, what) {
    if (res.status !== 401 && res.status !== 403 && res.status !== 0) {
      flash(what + ": " + ((res.data && res.data.error) || ("HTTP " + res.status)));
    }
  }
  var enc = encodeURIComponent;
  function refresh(selector) {
    var el = document.querySelector(selector);
    if (el && window.htmx) window.htmx.trigger(el, "refresh"); else location.reload();
  }

  // -- actions on buttons: data-action="run|toggle|delete|kill|bulk" -------------------------
  var actions = {
    run: function (b) {
      return api("POST", "/v1/jobs/" + enc(b.dataset.job) + "/run").then(function (res) {
        if (!res.ok) return failed(res, "Run " + b.dataset.job);
        var id = res.data && res.data.execution_id;
        if (b.dataset.then === "open" && id) {
          location.href = "/ui/jobs/" + enc(b.dataset.job) + "/executions/" + enc(id);
        } else {
          flash("Started " + b.dataset.job + ".", "ok");
          refresh("#executions");
        }
      });
    },
    toggle: function (b) {
      return api("POST", "/v1/jobs/" + enc(b.dataset.job) + "/toggle").then(function (res) {
        if (!res.ok) return failed(res, "Enable/disable " + b.dataset.job);
        location.reload();
      });
    },
    "delete": function (b) {
      if (!confirm("Delete job " + b.dataset.job + " and its execution history?")) return Promise.resolve();
      return api("DELETE", "/v1/jobs/" + enc(b.dataset.job)).then(function (res) {
        if (!res.ok) return failed(res, "Delete " + b.dataset.job);
        location.href = "/ui/jobs";
      });
    },
    kill: function (b) {
      if (!confirm("Kill this execution of " + b.dataset.job + "?")) return Promise.resolve();
      return api("POST", "/v1/jobs/" + enc(b.dataset.job) + "/executions/" + enc(b.dataset.execution) + "/kill")
        .then(function (res) {
          if (!res.ok) return failed(res, "Kill");
          flash("Kill requested.", "ok");
          b.disabled = true;
        });
    },
    bulk: function (b) {
      var op = b.dataset.op;
      var boxes = Array.prototype.slice.call(document.querySelectorAll("input[name=sel]:checked"));
      if (!boxes.length) { flash("Select jobs first (the checkboxes in the table)."); return Promise.resolve(); }
      if (op === "delete" && !confirm("Delete " + boxes.length + " jobs?")) return Promise.resolve();
      var errors = [], done = 0;
      var calls = boxes.map(function (box) {
        var name = box.value, disabled = box.dataset.disabled === "true", call = null;
        if (op === "run") call = api("POST", "/v1/jobs/" + enc(name) + "/run");
        else if (op === "delete") call = api("DELETE", "/v1/jobs/" + enc(name));
        else if ((op === "enable" && disabled) || (op === "disable" && !disabled)) {
          call = api("POST", "/v1/jobs/" + enc(name) + "/toggle");
        }
        if (!call) return Promise.resolve();
        return call.then(function (res) {
          if (res.ok) done++; else errors.push(name + ": " + ((res.data && res.data.error) || res.status));
        });
      });
      return Promise.all(calls).then(function () {
        if (errors.length) flash(op + " failed for " + errors.length + " job(s): " + errors.slice(0, 3).join("; "));
        else flash(op + ": " + done + " job(s) done.", "ok");
        refresh("#jobs-table");
      });
    }
  };
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (!b || !actions[b.dataset.action]) return;
    ev.preventDefault();
    b.disabled = true;
    Promise.resolve(actions[b.dataset.action](b)).then(function () {
      if (b.dataset.action !== "kill") b.disabled = false;
    });
  });
  document.addEventListener("change", function (ev) {
    if (ev.target.id === "select-all") {
      document.querySelectorAll("input[name=sel]").forEach(function (c) { c.checked = ev.target.checked; });
    }
  });
  // "/" focuses the search box, as on most sites.
  document.addEventListener("keydown", function (ev) {
    var q = document.getElementById("q");
    if (ev.key === "/" && q && !/INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) {
      ev.preventDefault(); q.focus();
    }
  });

  // -- live output ----------------------------------------------------------------------------
  function liveOutput(pre) {
    var job = pre.dataset.job, id = pre.dataset.execution, state = document.getElementById("exec-status");
    var base = "/v1/jobs/" + enc(job) + "/executions/" + enc(id);
    var atBottom = function () { return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20; };
    function show(text, replace) {
      var stick = atBottom();
      pre.textContent = replace ? text : pre.textContent + text;
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
    function finished() { if (state) state.textContent = "finished"; setTimeout(function () { location.reload(); }, 400); }
    function poll() {  // when the stream is refused (busy server, proxy without SSE)
      api("GET", base).then(function (res) {
        if (!res.ok) return;
        show(res.data.output || "", true);
        if (res.data.status !== "running") finished(); else setTimeout(poll, 1000);
      });
    }
    if (!window.EventSource) return poll();
    var src = new EventSource(base + "/stream"), got = false;
    pre.textContent = "";
    src.addEventListener("output", function (e) {
      got = true;
      var d = JSON.parse(e.data);
      if (d.replace !== undefined) show(d.replace, true); else show(d.append, false);
    });
    src.addEventListener("done", function () { src.close(); finished(); });
    src.addEventListener("gone", function () { src.close(); finished(); });
    src.addEventListener("timeout", function () { src.close(); poll(); });
    src.onerror = function () {
      if (src.readyState === EventSource.CLOSED || !got) { src.close(); poll(); }
    };
  }

  // -- job editor -----------------------------------------------------------------------------
  function editor(form) {
    var mode = form.dataset.mode, original = form.dataset.name;
    var raw = document.getElementById("raw-json"), rawBox = document.getElementById("raw-box");
    var execSel = form.elements.executor;
    function showExecutor() {
      form.querySelectorAll("fieldset[data-executor]").forEach(function (fs) {
        var on = fs.dataset.executor === execSel.value;
        fs.classList.toggle("hidden", !on);
        fs.disabled = !on;
      });
    }
    execSel.addEventListener("change", showExecutor);
    showExecutor();
    function lines(text, field) {
      var out = {};
      text.split("\n").forEach(function (line) {
        line = line.trim();
        if (!line) return;
        var i = line.indexOf("=");
        if (i < 1) throw { field: field, error: "each line must be key=value, got " + JSON.stringify(line) };
        out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      });
      return out;
    }
    function fromForm() {
      var f = form.elements, job = {
        name: f.name.value.trim(), displayname: f.displayname.value, schedule: f.schedule.value.trim(),
        timezone: f.timezone.value.trim(), executor: execSel.value, disabled: f.disabled.checked,
        concurrency: f.concurrency.value, catchup: f.catchup.value, retries: parseInt(f.retries.value || "0", 10),
        parent_job: f.parent_job.value.trim(), owner: f.owner.value, owner_email: f.owner_email.value,
        ephemeral: f.ephemeral.checked, starts_at: f.starts_at.value.trim() || null,
        expires_at: f.expires_at.value.trim() || null,
        tags: lines(f.tags.value, "tags"), metadata: lines(f.metadata.value, "metadata")
      };
      try { job.processors = f.processors.value.trim() ? JSON.parse(f.processors.value) : {}; }
      catch (e) { throw { field: "processors", error: "processors: not valid JSON (" + e.message + ")" }; }
      var fs = form.querySelector("fieldset[data-executor='" + CSS.escape(job.executor) + "']"), cfg = {};
      if (fs && fs.dataset.json !== undefined) {
        var text = fs.querySelector("textarea").value.trim();
        try { cfg = text ? JSON.parse(text) : {}; }
        catch (e) { throw { field: "executor_config", error: "executor_config: not valid JSON (" + e.message + ")" }; }
      } else if (fs) {
        fs.querySelectorAll("[data-key]").forEach(function (el) {
          var v = el.type === "checkbox" ? (el.checked ? "true" : "false") : el.value;
          if (el.type === "checkbox" ? v !== (el.dataset.default || "false") : v.trim() !== "") cfg[el.dataset.key] = v;
        });
      }
      job.executor_config = cfg;
      return job;
    }
    function toForm(job) {
      var f = form.elements;
      ["name", "displayname", "schedule", "timezone", "parent_job", "owner", "owner_email"].forEach(function (k) {
        f[k].value = job[k] || "";
      });
      f.starts_at.value = job.starts_at || ""; f.expires_at.value = job.expires_at || "";
      f.disabled.checked = !!job.disabled; f.ephemeral.checked = !!job.ephemeral;
      f.retries.value = job.retries || 0;
      if (job.concurrency) f.concurrency.value = job.concurrency;
      if (job.catchup) f.catchup.value = job.catchup;
      var kv = function (m) { return Object.keys(m || {}).map(function (k) { return k + "=" + m[k]; }).join("\n"); };
      f.tags.value = kv(job.tags); f.metadata.value = kv(job.metadata);
      f.processors.value = job.processors && Object.keys(job.processors).length ? JSON.stringify(job.processors, null, 2) : "";
      if (job.executor) execSel.value = job.executor;
      showExecutor();
      var fs = form.querySelector("fieldset[data-executor='" + CSS.escape(execSel.value) + "']"), cfg = job.executor_config || {};
      if (fs && fs.dataset.json !== undefined) fs.querySelector("textarea").value = JSON.stringify(cfg, null, 2);
      else if (fs) fs.querySelectorAll("[data-key]").forEach(function (el) {
        var v = cfg[el.dataset.key];
        if (el.type === "checkbox") el.checked = String(v === undefined ? el.dataset.default : v) === "true";
        else el.value = v === undefined ? "" : v;
      });
      preview();
    }
    function clearErrors() {
      form.querySelectorAll(".err").forEach(function (e) { e.textContent = ""; });
      form.querySelectorAll(".has-err").forEach(function (e) { e.classList.remove("has-err"); });
    }
    function showError(field, text) {
      var el = null;
      while (field && !el) {
        el = form.querySelector(".err[data-field='" + CSS.escape(field) + "']");
        field = field.indexOf(".") > 0 ? field.slice(0, field.lastIndexOf(".")) : "";
      }
      el = el || document.getElementById("form-error");
      el.textContent = text;
      if (el.closest(".field")) el.closest(".field").classList.add("has-err");
      var input = el.closest(".field") && el.closest(".field").querySelector("input,select,textarea");
      (input || el).focus && (input || el).focus();
    }
    document.getElementById("toggle-raw").addEventListener("click", function () {
      clearErrors();
      if (rawBox.classList.contains("hidden")) {
        try { raw.value = JSON.stringify(fromForm(), null, 2); } catch (e) { return showError(e.field, e.error); }
        rawBox.classList.remove("hidden"); document.getElementById("form-box").classList.add("hidden");
        this.textContent = "Back to the form"; raw.focus();
      } else {
        try { toForm(JSON.parse(raw.value)); } catch (e) { return showError("raw", "Not valid JSON: " + e.message); }
        rawBox.classList.add("hidden"); document.getElementById("form-box").classList.remove("hidden");
        this.textContent = "Edit as JSON";
      }
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clearErrors();
      var job;
      try {
        job = rawBox.classList.contains("hidden") ? fromForm() : JSON.parse(raw.value);
      } catch (e) { return showError(e.field || "raw", e.error || ("Not valid JSON: " + e.message)); }
      var name = job.name || "";
      var req = mode === "edit" ? api("PUT", "/v1/jobs/" + enc(original), job) : api("POST", "/v1/jobs", job);
      req.then(function (res) {
        if (res.ok) { location.href = "/ui/jobs/" + enc(name); return; }
        if (res.status === 401 || res.status === 403) return;
        var err = (res.data && res.data.error) || ("HTTP " + res.status);
        showError(rawBox.classList.contains("hidden") ? res.data && res.data.field : "raw", err);
      });
    });
    // Schedule preview: the next run times as you type.
    var list = document.getElementById("schedule-preview"), timer = null, seq = 0;
    function preview() {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var f = form.elements, mine = ++seq, s = f.schedule.value.trim();
        var errEl = form.querySelector(".err[data-field=schedule]");
        if (!s) { list.innerHTML = ""; return; }
        api("GET", "/v1/schedule/preview?n=5&schedule=" + enc(s) + "&timezone=" + enc(f.timezone.value.trim()))
          .then(function (res) {
            if (mine !== seq) return;  // an older answer arriving late
            list.innerHTML = "";
            errEl.textContent = "";
            errEl.closest(".field").classList.remove("has-err");
            if (!res.ok) {
              errEl.textContent = (res.data && res.data.error) || "invalid schedule";
              errEl.closest(".field").classList.add("has-err");
              return;
            }
            if (!res.data.next.length) { list.innerHTML = "<li>no upcoming runs (manual or in the past)</li>"; return; }
            res.data.next.forEach(function (t) {
              var li = document.createElement("li");
              li.innerHTML = '<time datetime=""></time> <span class="muted"></span>';
              li.firstChild.setAttribute("datetime", t.utc);
              li.lastChild.textContent = "· " + t.local.replace("T", " ");
              list.appendChild(li);
            });
            localizeTimes(list);
          });
      }, 250);
    }
    form.elements.schedule.addEventListener("input", preview);
    form.elements.timezone.addEventListener("input", preview);
    preview();
  }

  function init(root) {
    localizeTimes(root);
  }
  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    var pre = document.querySelector("pre[data-live]");
    if (pre) liveOutput(pre);
    var form = document.getElementById("job-form");
    if (form) editor(form);
  });
  document.addEventListener("htmx:afterSwap", function (ev) { init(ev.target); });
  document.addEventListener("htmx:responseError", function (ev) {
    var xhr = ev.detail.xhr;
    flash("Refresh failed: HTTP " + xhr.status, "error", xhr.status === 401 || xhr.status === 403);
  });
  window.dkron = { api: api, flash: flash };
})();
