//! The console's HTML: server-rendered, a little CSS, no build step. Every value from a record
//! is escaped; previews are already masked (see `crate::policy::approvals::lines`).

use super::ConsoleSession;
use crate::observe::audit::record::rfc3339_ms;
use crate::policy::approvals::{Approval, State};

/// Refreshes the lists in place every few seconds (the page works without it).
pub const SCRIPT: &str = r#"(function () {
  var box = document.getElementById("lists");
  if (!box || !window.fetch) return;
  function refresh() {
    fetch("/approvals/fragment", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var active = document.activeElement;
        if (active && active.form && box.contains(active)) return; // someone is typing a reason
        var typed = box.querySelectorAll("input[name=reason]");
        for (var i = 0; i < typed.length; i++) if (typed[i].value) return; // or typed one

        box.innerHTML = html;
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);
})();
"#;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;align-items:center;justify-content:space-between}
header h1{font-size:17px;margin:0;font-weight:600}
header form{margin:0}
main{max-width:1040px;margin:0 auto;padding:20px 24px}
h2{font-size:15px;margin:24px 0 10px;color:#3a4356}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 16px;margin-bottom:12px}
.meta{display:flex;flex-wrap:wrap;gap:6px 18px;color:#4b5568;font-size:13px;margin-bottom:8px}
.meta b{color:#1d2330}
.rule{font-family:ui-monospace,Menlo,Consolas,monospace;background:#eef1f6;border-radius:4px;padding:1px 6px}
pre{background:#0f1420;color:#e8ecf3;border-radius:6px;padding:10px 12px;overflow-x:auto;margin:8px 0;font-size:12.5px}
.actions{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.actions input[type=text],.actions input[type=password]{flex:1;min-width:200px;padding:6px 8px;border:1px solid #c5cbd6;border-radius:5px}
button{border:0;border-radius:5px;padding:7px 14px;font-weight:600;cursor:pointer}
.approve{background:#1f883d;color:#fff}.deny{background:#cf222e;color:#fff}.plain{background:#e4e7ec;color:#1d2330}
.state{font-weight:600;text-transform:uppercase;font-size:11.5px;letter-spacing:.04em;border-radius:4px;padding:2px 6px}
.pending{background:#fff4d6;color:#7a5300}.approved{background:#dafbe1;color:#116329}.denied{background:#ffebe9;color:#a40e26}.expired{background:#eaeef2;color:#57606a}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid #dde1e8;border-radius:8px}
td,th{text-align:left;padding:7px 10px;border-bottom:1px solid #eef0f4;font-size:13px}
.empty{color:#6b7385;font-style:italic}
.note{color:#4b5568;font-size:13px;margin:8px 0}
.error{background:#ffebe9;border:1px solid #ffc1bc;color:#a40e26;padding:10px 12px;border-radius:6px}
a{color:#0a58ca}
";

/// HTML-escape `text`.
pub fn esc(text: &str) -> String {
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

fn shell(title: &str, session: Option<&ConsoleSession>, body: &str) -> String {
    let who = session.map_or(String::new(), |s| {
        format!(
            "<form method=\"post\" action=\"/approvals/sign-out\"><span>{} &nbsp;</span>\
             <button class=\"plain\" type=\"submit\">Sign out</button></form>",
            esc(&s.sub)
        )
    });
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title} · streammask</title><style>{STYLE}</style></head><body>\
         <header><h1>streammask · approvals</h1>{who}</header><main>{body}</main>\
         <script src=\"/approvals/console.js\"></script></body></html>",
        title = esc(title)
    )
}

pub fn sign_in(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", esc(e))
    });
    shell(
        "Sign in",
        None,
        &format!(
            "<h2>Sign in as an approver</h2>{error}<div class=\"card\">\
             <form method=\"post\" action=\"/approvals/sign-in\" class=\"actions\">\
             <input type=\"password\" name=\"token\" autocomplete=\"off\" placeholder=\"Your token (JWT or service key)\" aria-label=\"token\">\
             <button class=\"approve\" type=\"submit\">Sign in</button></form>\
             <p class=\"meta\">The token is checked once; the console then keeps a session cookie.</p></div>"
        ),
    )
}

pub fn page(session: &ConsoleSession, lists: &str) -> String {
    shell(
        "Approvals",
        Some(session),
        &format!("<div id=\"lists\">{lists}</div>"),
    )
}

pub fn store_down(error: &str) -> String {
    format!(
        "<p class=\"error\">The approvals store is unavailable ({}): requests that need approval \
         are refused until it is back.</p>",
        esc(error)
    )
}

fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d", secs / 86_400),
    }
}

fn badge(state: State) -> String {
    format!("<span class=\"state {0}\">{0}</span>", state.label())
}

fn decide_form(approval: &Approval, session: &ConsoleSession) -> String {
    let id = esc(&approval.id);
    format!(
        "<form method=\"post\" action=\"/approvals/{id}/approve\" class=\"actions\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"text\" name=\"reason\" placeholder=\"Reason (optional)\" aria-label=\"reason\">\
         <button class=\"approve\" type=\"submit\" formaction=\"/approvals/{id}/approve\">Approve</button>\
         <button class=\"deny\" type=\"submit\" formaction=\"/approvals/{id}/deny\">Deny</button></form>",
        csrf = esc(&session.csrf)
    )
}

fn card(approval: &Approval, now: u64, session: &ConsoleSession, link: bool) -> String {
    let state = approval.state_at(now);
    let session_id = approval.session_id.as_deref().unwrap_or("none");
    let form = if state == State::Pending {
        decide_form(approval, session)
    } else {
        String::new()
    };
    let ends = match state {
        State::Pending => "expires in",
        State::Approved | State::Denied => "grant ends in",
        State::Expired => "ended",
    };
    let left = if state == State::Expired {
        format!("{} ago", age(now.saturating_sub(approval.expires_at_ms())))
    } else {
        age(approval.expires_at_ms().saturating_sub(now))
    };
    let details = if link {
        format!("<a href=\"/approvals/{}\">details</a>", esc(&approval.id))
    } else {
        String::new()
    };
    format!(
        "<div class=\"card\" data-approval=\"{id}\"><div class=\"meta\">{badge}\
         <span>rule <span class=\"rule\">{rule}</span></span><span>caller <b>{subject}</b></span>\
         <span>groups {groups}</span><span>session {session_id}</span>\
         <span>asked {age} ago</span><span>{ends} {left}</span>{details}</div>\
         <div class=\"meta\">{description}</div><pre>{preview}</pre>{form}</div>",
        id = esc(&approval.id),
        badge = badge(state),
        rule = esc(&approval.rule_id),
        subject = esc(&approval.subject),
        groups = esc(&approval.groups.join(", ")),
        session_id = esc(session_id),
        age = age(now.saturating_sub(approval.created_at_ms)),
        description = esc(&approval.rule_description),
        preview = esc(&approval.preview),
    )
}

/// The two lists: pending approvals as cards, decided and expired ones in a table.
pub fn lists(all: &[Approval], now: u64, session: &ConsoleSession) -> String {
    let pending: Vec<&Approval> = all
        .iter()
        .filter(|a| a.state_at(now) == State::Pending)
        .collect();
    let mut out = format!("<h2>Pending ({})</h2>", pending.len());
    if pending.is_empty() {
        out.push_str("<p class=\"empty\">Nothing is waiting for a decision.</p>");
    }
    for approval in pending {
        out.push_str(&card(approval, now, session, true));
    }
    out.push_str("<h2>Decided and expired</h2>");
    let rest: Vec<&Approval> = all
        .iter()
        .filter(|a| a.state_at(now) != State::Pending)
        .collect();
    if rest.is_empty() {
        out.push_str("<p class=\"empty\">None yet.</p>");
        return out;
    }
    out.push_str(
        "<table><tr><th>State</th><th>Rule</th><th>Caller</th><th>Decided by</th>\
         <th>Reason</th><th>Asked</th><th>Decided</th><th></th></tr>",
    );
    for approval in rest {
        let decision = approval.decision.as_ref();
        out.push_str(&format!(
            "<tr><td>{}</td><td><span class=\"rule\">{}</span></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} ago</td><td>{}</td><td><a href=\"/approvals/{}\">details</a></td></tr>",
            badge(approval.state_at(now)),
            esc(&approval.rule_id),
            esc(&approval.subject),
            esc(decision.map_or("—", |d| d.by.as_str())),
            esc(decision.and_then(|d| d.reason.as_deref()).unwrap_or("")),
            age(now.saturating_sub(approval.created_at_ms)),
            decision.map_or("—".to_string(), |d| format!("{} ago", age(now.saturating_sub(d.at_ms)))),
            esc(&approval.id),
        ));
    }
    out.push_str("</table>");
    out
}

pub fn detail(approval: &Approval, now: u64, session: &ConsoleSession) -> String {
    let decision = approval.decision.as_ref().map_or(String::new(), |d| {
        format!(
            "<p class=\"note\">{} by <b>{}</b>{}</p>",
            if d.approved { "Approved" } else { "Denied" },
            esc(&d.by),
            d.reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {}", esc(r)))
        )
    });
    shell(
        &approval.id,
        Some(session),
        &format!(
            "<p><a href=\"/approvals\">← all approvals</a></p><h2>Approval {}</h2>{}{}\
             <p class=\"note\">request {} · created {} · current state ends {}</p>",
            esc(&approval.id),
            card(approval, now, session, false),
            decision,
            esc(&approval.request_id),
            rfc3339_ms(approval.created_at_ms),
            rfc3339_ms(approval.expires_at_ms()),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }
}
