"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("data").textContent);
  const PAGE = 50;
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const pct = (x) => (x == null ? "-" : (100 * x).toFixed(1));
  const convs = DATA.conversations;
  convs.forEach((c, i) => { c._i = i; });
  let haystack = null; // built on first search: lower-cased text of each conversation

  // ---------------------------------------------------------------- summary
  function summary() {
    const rows = DATA.runs.map((r, i) => {
      const ends = Object.entries(r.end_reasons).map(([k, v]) => `${esc(k)} ${v}`).join(", ");
      const rej = Object.entries(r.rejections).sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${esc(k)} ${pct(v / Math.max(r.drafts, 1))}%`).join(", ") || "none";
      const s = r.settings || {};
      const g = s.guardrails || {};
      const settings = `max turns ${s.max_turns ?? "-"}, samples ${s.samples ?? "-"}, seed ${s.run_seed ?? "-"}; ` +
        `guardrails: first words [${(g.first_words || []).join(", ")}], words ${g.min_words ?? "-"}-${g.max_words ?? "-"}, ` +
        `min turns ${g.min_turns ?? "never"}, repetition ${g.block_repetition ? "on" : "off"}`;
      return `<tr><td>${i + 1}. ${esc(r.name)}</td><td>${esc(r.user_models.join(", "))}</td><td>${esc(r.assistant_models.join(", "))}</td>` +
        `<td>${r.conversations}</td><td>${r.intents}</td><td>${r.user_turns}</td><td>${esc(ends)}</td>` +
        `<td>${r.refused} refused of ${r.drafts} drafts (${pct(r.refused / Math.max(r.drafts, 1))}%): ${rej}</td>` +
        `<td>${esc(tokens(r.tokens))}</td><td>${esc(settings)}</td></tr>`;
    }).join("");
    document.getElementById("summary-body").innerHTML =
      `<table id="summary-table"><tr><th>run</th><th>user model</th><th>assistant</th><th>conversations</th><th>intents</th>` +
      `<th>user turns</th><th>end reasons</th><th>guardrail rejections</th><th>tokens (prompt + completion)</th><th>settings</th></tr>${rows}</table>` + faults();
  }

  // each side's tokens, as the records hold them (local engines' counts, or the API's usage)
  function tokens(t) {
    const sides = Object.entries(t || {});
    return sides.length ? sides.map(([side, u]) => `${side} ${u.prompt.toLocaleString("en-US")} + ${u.completion.toLocaleString("en-US")}`).join("; ") : "-";
  }

  // fault rates per run (share of checked user turns), each with conversations that show it: a click opens the transcript
  function faults() {
    const runs = DATA.runs.filter((r) => r.fault_checked_turns);
    if (!runs.length) return `<p class="hint">Faults: these runs were recorded before faults were caught per turn.</p>`;
    const names = Object.keys(runs[0].faults);
    const head = `<tr><th>fault</th>${runs.map((r) => `<th>${esc(r.name)}: share of ${r.fault_checked_turns} checked user turns and ends (count)</th>`).join("")}</tr>`;
    const rows = names.map((name) => `<tr><td>${esc(name)}</td>${runs.map((r) => {
      const f = r.faults[name];
      const links = f.examples.map((id) => `<a href="#browser" class="fault-example" data-run="${DATA.runs.indexOf(r)}" data-id="${esc(id)}">${esc(id)}</a>`).join(" ");
      return `<td>${pct(f.rate)}% (${f.turns})${links ? ` ${links}` : ""}</td>`;
    }).join("")}</tr>`).join("");
    return `<h3>Faults per user turn</h3><table id="faults-table">${head}${rows}</table>`;
  }

  // ---------------------------------------------------------------- plots
  // Plotly puts its mode bar in the figure's top 30 pixels, at the right: titles sit at the left
  // in the row below it, so that however narrow the plot and long the title, neither covers the other.
  // The legend sits at the figure's bottom edge, below the x axis's tick labels and title (the bottom
  // margin holds all three, with room for a legend that wraps to two rows), never over them.
  const layout = (title, x, y) => ({
    title: {text: title, font: {size: 14}, x: 0.01, xanchor: "left", yref: "container", y: 1, yanchor: "top", pad: {t: 34}},
    xaxis: {title: {text: x}}, yaxis: {title: {text: y}},
    barmode: "overlay", margin: {t: 76, r: 10, b: 112, l: 55},
    legend: {orientation: "h", x: 0, xanchor: "left", yref: "container", y: 0, yanchor: "bottom"}});
  const config = {displaylogo: false, responsive: true};
  // a plot with nothing to show says so, instead of drawing empty axes
  const nothing = (id, title, why) => {
    document.getElementById(id).innerHTML = `<div class="empty-plot"><b>${esc(title)}</b><p class="hint">${esc(why)}</p></div>`;
  };
  // integer counts: one bar per value, and an axis that shows a lone value as one bar, not a filled box
  const countAxis = (values) => {
    if (!values.length) return {};
    const low = Math.min(...values), high = Math.max(...values);
    return {range: [low - 1, high + 1], dtick: high - low > 20 ? undefined : 1};
  };

  function plots() {
    const runs = DATA.runs;
    const turns = runs.flatMap((r) => r.turns_per_conversation);
    if (!turns.length) {
      nothing("plot-turns", "User turns per conversation", "No conversation in these runs.");
    } else {
      const turnsLayout = layout("User turns per conversation", "user turns", "share");
      Object.assign(turnsLayout.xaxis, countAxis(turns));
      Plotly.newPlot("plot-turns", runs.map((r) => ({type: "histogram", x: r.turns_per_conversation, name: r.name, opacity: 0.6,
        histnorm: "probability", xbins: {start: Math.min(...turns) - 0.5, size: 1}})), turnsLayout, config);
    }
    const words = runs.map((r) => ({type: "histogram", x: r.words_per_user_turn, name: r.name, opacity: 0.6, histnorm: "probability", xbins: {size: 2}}));
    if (DATA.reference_words) {
      words.push({type: "histogram", x: DATA.reference_words, name: `real users (${DATA.reference_name})`, opacity: 0.5, histnorm: "probability", xbins: {size: 2}});
    }
    const all = words.flatMap((w) => w.x).sort((a, b) => a - b);
    if (!all.length) {
      nothing("plot-words", "Words per user turn", "No user turn in these runs.");
    } else {
      const p99 = all[Math.floor(0.99 * (all.length - 1))];
      const wordsLayout = layout("Words per user turn (up to the 99th percentile)", "words", "share");
      wordsLayout.xaxis.range = all[0] === p99 ? [p99 - 5, p99 + 5] : [0, p99 + 2];
      words.forEach((w) => { w.xbins = {start: -1, size: 2}; });
      Plotly.newPlot("plot-words", words, wordsLayout, config);
    }
    const ends = [];
    const recorded = runs.some((r) => r.end_probability_by_turn.some((e) => e.mean_end_prob != null));
    runs.forEach((r) => {
      const t = r.end_probability_by_turn;
      if (t.some((e) => e.mean_end_prob != null)) {
        ends.push({type: "scatter", mode: "lines+markers", x: t.map((e) => e.turn), y: t.map((e) => e.mean_end_prob), name: `${r.name}: mean P(end)`});
      }
      ends.push({type: "scatter", mode: "lines", line: {dash: "dot"}, x: t.map((e) => e.turn), y: t.map((e) => e.ended_share), name: `${r.name}: share ended`});
    });
    const userEnded = runs.some((r) => r.end_probability_by_turn.some((e) => e.ended_share > 0));
    if (!ends.length || !runs.some((r) => r.end_probability_by_turn.length)) {
      nothing("plot-end", "Probability of ending, by user turn", "No user turn in these runs.");
    } else if (!recorded && !userEnded) {  // a flat line at zero would say nothing
      nothing("plot-end", "Ending, by user turn", "Nothing to plot: no P(end) recorded (these user models give none), and no user " +
        "ended a conversation (the summary's end reasons say how they ended).");
    } else {
      const endTitle = recorded ? "Probability of ending, by user turn"
        : "Share of conversations ending, by user turn<br><sub>no P(end) recorded: these user models give none</sub>";
      Plotly.newPlot("plot-end", ends, layout(endTitle, "user turn", recorded ? "probability" : "share ended"), config);
    }
    const reasons = [...new Set(runs.flatMap((r) => Object.keys(r.rejections)))];
    if (!reasons.length) {
      nothing("plot-rejections", "Guardrail rejections", "No draft was refused in these runs: every draft the user models wrote passed the guardrails.");
    } else {
      Plotly.newPlot("plot-rejections", runs.map((r) => ({type: "bar", x: reasons, y: reasons.map((k) => (r.rejections[k] || 0) / Math.max(r.drafts, 1)), name: r.name})),
        Object.assign(layout("Guardrail rejections, share of drafts", "reason", "share of drafts"), {barmode: "group"}), config);
    }
  }

  // ---------------------------------------------------------------- evaluations
  function ci(x) { return x && x.mean != null ? `${pct(x.mean)} [${pct(x.low)}, ${pct(x.high)}]` : "-"; }

  function evaluations() {
    const box = document.getElementById("evaluations-body");
    if (!DATA.evaluations.length) { box.innerHTML = '<p class="hint">No evaluation results given (pass the assistant.json or user_eval.json that userlm eval-assistant or eval-user writes).</p>'; return; }
    // cells come as printed in the markdown: "-[^n]" marks an empty cell whose reason is note n
    const shown = (v) => esc(v).replace(/-\[\^(\d+)\]/g, '-<sup class="fn">$1</sup>').replace(/\*([^*]+)\*/g, "<i>$1</i>");
    const footnotes = (e) => (e.notes && e.notes.length ? `<ol class="footnotes">${e.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ol>` : "");
    const warnings = (list) => (list || []).map((w) => `<p class="warning">${shown(w.replace(/\*\*/g, ""))}</p>`).join("");
    box.innerHTML = DATA.evaluations.map((e, k) => {
      if (e.kind === "assistant") {
        const rows = e.rows.map((r) => `<tr>${r.map((c) => `<td>${shown(c)}</td>`).join("")}</tr>`).join("");
        const pub = e.published && e.published.rows ? `<h4>Published: simulated users talking to GPT-4o (the UserLM paper's Table 3, not measured here)</h4>` +
          `<table class="eval-table published"><tr><th>simulator</th><th>assistant score</th><th>intent coverage</th><th>turn variance</th><th>turns (range)</th><th>unigram difference</th></tr>` +
          e.published.rows.map((r) => `<tr><td><i>${esc(r.simulator)}</i></td><td><i>${esc(r.assistant_score)}</i></td><td><i>${esc(r.intent_coverage)}</i></td>` +
            `<td><i>${esc(r.turn_variance)}</i></td><td><i>${esc((r.turn_range || []).join("–"))}</i></td><td><i>${esc(r.unigram_difference)}</i></td></tr>`).join("") +
          `</table><p class="hint">${esc(e.published.setup || "")} Source: ${esc(e.published.source || "")}</p>` : "";
        return `<h3>${esc(e.name)} (assistant)</h3>${warnings(e.isolation.filter((l) => l.startsWith("**")))}` +
          `<table class="eval-table"><tr>${e.headings.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>${rows}</table>` +
          `<p class="hint">${esc(e.note)} ${esc(e.isolation.filter((l) => !l.startsWith("**")).join(" "))}</p>${footnotes(e)}` +
          `<div class="plot" id="eval-plot-${k}"></div>${pub}`;
      }
      const keys = [...new Set(e.results.flatMap((r) => Object.keys(r).filter((x) => x !== "simulator")))];
      const rows = e.results.map((r) => `<tr><td>${shown(r.simulator)}</td>${keys.map((key) => `<td>${shown(r[key])}</td>`).join("")}</tr>`).join("");
      const replay = e.replay ? `<h4>Replay against real people</h4><table class="eval-table replay-table"><tr>${e.replay.headings.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>` +
        e.replay.rows.map((r) => `<tr>${r.map((c) => `<td>${shown(c)}</td>`).join("")}</tr>`).join("") + `</table><p class="hint">${esc(e.replay.note)}</p>` : "";
      return `<h3>${esc(e.name)} (user simulators)</h3>${warnings(e.warnings)}<p class="hint">${esc(e.note)} Rows in italics are the paper's published figures, not measured here.</p>` +
        `<table class="eval-table"><tr><th>simulator</th>${keys.map((x) => `<th>${esc(x)}</th>`).join("")}</tr>${rows}</table>${replay}${footnotes(e)}<div class="plot" id="eval-plot-${k}"></div>`;
    }).join("");
    DATA.evaluations.forEach((e, k) => {
      if (e.kind === "user" && e.curves && e.curves.length) {
        Plotly.newPlot(`eval-plot-${k}`, e.curves.map((c) => ({type: "scatter", mode: "lines", name: c.simulator, x: c.threshold, y: c.f1.map((v) => 100 * v)})),
          Object.assign(layout("Termination F1 by P(end) threshold", "threshold on P(<|endconversation|>)", "F1 %"), {xaxis: {type: "log", title: {text: "threshold on P(end), log scale"}}}), config);
      }
      if (e.kind !== "assistant") return;
      const suites = [...new Set(e.results.map((r) => r.suite))];
      const modes = [...new Set(e.results.map((r) => r.mode))];
      const traces = modes.map((m) => {
        const rs = suites.map((s) => e.results.find((r) => r.suite === s && r.mode === m));
        return {type: "bar", name: m, x: suites, y: rs.map((r) => (r ? 100 * r.score.mean : null)),
          error_y: {type: "data", symmetric: false, array: rs.map((r) => (r ? 100 * (r.score.high - r.score.mean) : null)),
            arrayminus: rs.map((r) => (r ? 100 * (r.score.mean - r.score.low) : null))}};
      });
      Plotly.newPlot(`eval-plot-${k}`, traces, Object.assign(layout("Score by suite and mode (95% CI)", "suite", "score %"), {barmode: "group"}), config);
    });
  }

  // ---------------------------------------------------------------- browser
  const els = (id) => document.getElementById(id);
  const state = {page: 0, selected: null};

  function fillSelect(id, values, label) {
    const sel = els(id);
    [...new Set(values.filter((v) => v != null && v !== ""))].sort().forEach((v) => {
      const o = document.createElement("option"); o.value = String(v); o.textContent = label ? label(v) : String(v); sel.appendChild(o);
    });
  }

  function text(c) {
    if (!haystack) haystack = convs.map((x) => [x.id, x.intent, ...x.m.map((m) => m.c)].join("\n").toLowerCase());
    return haystack[c._i];
  }

  function scoreClass(c) {
    if (c.score == null) return "none";
    if (c.score >= 1) return "solved";
    return c.score > 0 ? "partial" : "zero";
  }

  function filtered() {
    const q = els("search").value.trim().toLowerCase();
    const f = {run: els("filter-run").value, end: els("filter-end").value, intent: els("filter-intent").value,
      task: els("filter-task").value, mode: els("filter-mode").value, score: els("filter-score").value};
    return convs.filter((c) => (!f.run || String(c.run) === f.run) && (!f.end || c.end === f.end) &&
      (!f.intent || c.intent_id === f.intent) && (!f.task || c.task === f.task) && (!f.mode || c.mode === f.mode) &&
      (!f.score || scoreClass(c) === f.score) && (!q || text(c).includes(q)));
  }

  function firstUser(c) { const m = c.m.find((x) => x.r === "u"); return m ? m.c : ""; }

  function renderList() {
    let items = filtered();
    const paired = els("pair").checked && DATA.runs.length > 1;
    let pairing = "";
    if (paired) { // one row per intent and sample present in the first run
      const seen = new Set(); items = items.filter((c) => c.run === 0 && !seen.has(c.id) && seen.add(c.id));
      const elsewhere = new Set(convs.filter((c) => c.run !== 0).map((c) => c.id));
      const twins = items.filter((c) => elsewhere.has(c.id)).length;
      pairing = twins === 0 ? "; side by side: the runs share no conversation ids, so only the first run's are listed"
        : twins < items.length ? `; side by side: ${twins} have a twin in another run` : "";
    }
    const pages = Math.max(1, Math.ceil(items.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const shown = items.slice(state.page * PAGE, (state.page + 1) * PAGE);
    els("count").textContent = `${items.length} of ${convs.length} conversations${pairing}`;
    els("list").innerHTML = shown.map((c) => `<li data-i="${c._i}"${state.selected === c._i ? ' class="active"' : ""}>` +
      `<div><b>${esc(c.id)}</b>${DATA.runs.length > 1 && !paired ? `<span class="badge">run ${c.run + 1}</span>` : ""}` +
      `<span class="badge">${esc(c.end)}</span>${c.score != null ? `<span class="badge">score ${(+c.score).toFixed(2)}</span>` : ""}</div>` +
      `<div class="meta">${esc(firstUser(c).slice(0, 120))}</div></li>`).join("");
    els("page").textContent = `page ${state.page + 1} of ${pages}`;
    els("prev").disabled = state.page === 0; els("next").disabled = state.page >= pages - 1;
  }

  function notes(m) {
    const parts = [];
    if (m.x && m.x.length) parts.push(`<div class="notes guardrails">${m.x.length} draft(s) refused: ` +
      m.x.map(([reason, draft]) => `<div>&bull; <b>${esc(reason)}</b> <span class="draft">${esc(draft)}</span></div>`).join("") + "</div>");
    if (m.q && m.q.length) parts.push(`<div class="notes faults">faults: ${m.q.map((q) => `<b>${esc(q)}</b>`).join(", ")}</div>`);
    if (m.p != null) parts.push(`<div class="notes">P(end) = ${(+m.p).toFixed(3)}</div>`);
    (m.a || []).forEach(([answer, score]) => parts.push(`<div class="attempt ${score >= 1 ? "ok" : "bad"}">answer attempt: ` +
      `<code>${esc(String(answer).slice(0, 300))}</code> &rarr; score ${score == null ? "-" : (+score).toFixed(2)}</div>`));
    return parts.join("");
  }

  function chat(c) {
    const turns = c.m.map((m) => `<div class="turn ${m.r === "u" ? "user" : "assistant"}"><div class="who">${m.r === "u" ? "user" : "assistant"}</div>` +
      `${esc(m.c)}${notes(m)}</div>`).join("");
    const fin = c.f ? `<div class="turn user"><div class="who">user</div>${c.end === "user_ended" ? "&lt;|endconversation|&gt;" : "(every draft refused)"}${notes(c.f)}</div>` : "";
    return `<h3>${esc(c.id)} <span class="badge">${esc(c.end)}</span>${DATA.runs.length > 1 ? `<span class="badge">${esc(DATA.runs[c.run].name)}</span>` : ""}</h3>` +
      `<p><b>intent:</b> ${esc(c.intent) || "<i>none</i>"}</p>${c.error ? `<p class="notes">error: ${esc(c.error)}</p>` : ""}${turns}${fin}`;
  }

  function open(i) {
    state.selected = i;
    const c = convs[i];
    if (els("pair").checked && DATA.runs.length > 1) {
      const twins = convs.filter((x) => x.id === c.id);
      els("detail").innerHTML = `<div class="pair">${DATA.runs.map((r, k) => {
        const t = twins.find((x) => x.run === k);
        return `<div>${t ? chat(t) : `<p class="hint">${esc(r.name)} has no conversation ${esc(c.id)}</p>`}</div>`;
      }).join("")}</div>`;
    } else {
      els("detail").innerHTML = chat(c);
    }
    renderList();
  }

  function browser() {
    fillSelect("filter-run", DATA.runs.map((r, i) => i), (i) => `run ${+i + 1}: ${DATA.runs[i].name}`);
    fillSelect("filter-end", convs.map((c) => c.end));
    fillSelect("filter-intent", convs.map((c) => c.intent_id));
    fillSelect("filter-task", convs.map((c) => c.task));
    fillSelect("filter-mode", convs.map((c) => c.mode));
    if (DATA.runs.length < 2) els("pair-label").style.display = "none";
    ["search", "filter-run", "filter-end", "filter-intent", "filter-task", "filter-mode", "filter-score", "pair"].forEach((id) =>
      els(id).addEventListener(id === "search" ? "input" : "change", () => { state.page = 0; renderList(); }));
    els("prev").addEventListener("click", () => { state.page -= 1; renderList(); });
    els("next").addEventListener("click", () => { state.page += 1; renderList(); });
    els("list").addEventListener("click", (e) => { const li = e.target.closest("li"); if (li) open(+li.dataset.i); });
    document.getElementById("summary-body").addEventListener("click", (e) => {
      const a = e.target.closest("a.fault-example");
      if (!a) return;
      const c = convs.find((x) => x.id === a.dataset.id && x.run === +a.dataset.run);
      if (c) open(c._i);
    });
    renderList();
  }

  summary();
  plots();
  evaluations();
  browser();
  document.body.dataset.ready = "1";
})();
