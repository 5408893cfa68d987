//! The status page, `GET /`: one self-contained HTML document (inline CSS and script, no external
//! asset, so it works on a box without internet access). It carries the `/status` document it was
//! rendered from, draws the tables from it at once, and redraws them from a fresh `/status` every
//! 2 s, keeping the reader's scroll position. Every value reaches the page as JSON and the DOM
//! through `textContent`, never as markup; the one value written into the HTML, the version, is
//! escaped.

use serde_json::Value;

/// The page for `status` (the `/status` document).
pub(super) fn render(status: &Value) -> String {
    let version = status["version"].as_str().unwrap_or("");
    let mut html = String::with_capacity(4096);
    html.push_str(HEAD);
    html.push_str(&format!(
        "<title>fulcrum {v}</title><h1>fulcrum {v}</h1>",
        v = escape(version)
    ));
    html.push_str(BODY);
    html.push_str("<script type=application/json id=initial>");
    html.push_str(&script_safe(&status.to_string()));
    html.push_str("</script><script>");
    html.push_str(SCRIPT);
    html.push_str("</script>\n");
    html
}

const HEAD: &str = "<!doctype html><html lang=en><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width\"><style>\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #ddd}\
th{background:#eee;vertical-align:bottom}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.state{font-weight:bold;padding:1px 8px;border-radius:3px;color:#fff;background:#555}\
.up{background:#2e7d32}.down{background:#c62828}.ejected{background:#ef6c00}\
.draining{background:#1565c0}.disabled{background:#6a1b9a}.config_down{background:#757575}\
#age{color:#777}</style>";

const BODY: &str = "<p id=age>as rendered by the server; refreshed every 2 s</p>\
<div id=upstreams></div><noscript>The tables are drawn by JavaScript; \
<a href=/status>/status</a> has the same data as JSON.</noscript>";

/// Draws `#upstreams` from a `/status` document, and polls `/status` every 2 s.
const SCRIPT: &str = r#""use strict";
const columns = ["server", "state", "weight", "effective weight", "in flight", "requests",
  "failures", "last check", "ejection"];
function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = String(text);
  if (numeric) td.className = "n";
  return td;
}
function render(status) {
  const fresh = document.createDocumentFragment();
  for (const u of status.upstreams) {
    const title = document.createElement("h2");
    title.textContent = u.name + " (" + u.strategy + ")";
    fresh.appendChild(title);
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const name of columns) {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const s of u.servers) {
      const row = body.insertRow();
      cell(row, s.address + (s.backup ? " (backup)" : ""));
      const badge = document.createElement("span");
      badge.className = "state " + s.state;
      badge.textContent = s.state;
      cell(row, "").appendChild(badge);
      cell(row, s.weight, true);
      cell(row, s.effective_weight, true);
      cell(row, s.in_flight, true);
      cell(row, s.requests, true);
      cell(row, s.failures, true);
      const c = s.last_check;
      cell(row, c ? (c.ok ? "ok" : "failed") + " (" + c.detail + ") at " + c.at : "-");
      cell(row, (s.ejected ? "ejected" : "no") + " (" + s.ejections + " so far)");
    }
    fresh.appendChild(table);
  }
  document.getElementById("upstreams").replaceChildren(fresh);
}
render(JSON.parse(document.getElementById("initial").textContent));
const age = document.getElementById("age");
setInterval(async () => {
  try {
    const answer = await fetch("/status", {cache: "no-store"});
    render(await answer.json());
    age.textContent = "updated " + new Date().toLocaleTimeString() + "; refreshed every 2 s";
  } catch (e) {
    age.textContent = "cannot reach /status (" + e + "); retrying every 2 s";
  }
}, 2000);
"#;

/// `text` safe between tags and in attribute values, quoted either way.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that cannot end its `<script>` element early: `<`, `>` and `&` (which occur only inside
/// strings) become `\u` escapes that JSON.parse turns back.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_heading_shows_the_bare_version_escaped() {
        let page = render(&json!({"version": "1.2.3", "upstreams": []}));
        assert!(page.contains("<h1>fulcrum 1.2.3</h1>"), "{page}");
        let page = render(&json!({"version": "<b>\"'&", "upstreams": []}));
        assert!(
            page.contains("<h1>fulcrum &lt;b&gt;&quot;&#39;&amp;</h1>"),
            "{page}"
        );
    }

    #[test]
    fn embedded_status_cannot_close_its_script() {
        let page = render(&json!({"version": "1", "upstreams": [{"name": "</script><b>x"}]}));
        let data = page.split("id=initial>").nth(1).unwrap();
        let data = &data[..data.find("</script>").unwrap()];
        let back: Value = serde_json::from_str(data).unwrap();
        assert_eq!(back["upstreams"][0]["name"], "</script><b>x");
    }
}
