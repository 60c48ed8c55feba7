//! The operator's console: one read-only page (`--console-listen`, reached with `kubectl
//! port-forward`), rendered on the server from what the caches hold and from the Events of
//! quiver's objects, refreshed by the browser every 10 s. No script runs on it and it writes
//! nothing: every VectorCollection with its phase, replicas ready of wanted, the writer's
//! progress, each gate measured against its threshold, and its timeline (its Events and the
//! last transition of each condition); every CollectionAlias with its current and previous
//! target, its history, and its next scheduled rebuild. It answers only requests addressed to
//! localhost or an IP address (`host_is_local`).

use crate::controller::Context;
use crate::controller::collection::observe::event_time;
use crate::crd::{CollectionAlias, GateResult, VectorCollection};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const STYLE: &str = include_str!("console.css");
/// No script, nothing from elsewhere, no framing.
const POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// Events listed per namespace and kind: the first this many in key (name) order, not the
/// newest (see [`list_events`]).
const EVENTS_LISTED: u32 = 500;
/// How long one list of Events may take before the page goes without it (and says so).
const EVENTS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a listing of Events serves every page: tabs open side by side, each refreshed
/// every 10 s, then cost one listing per this interval instead of one each.
const EVENTS_FRESH: Duration = Duration::from_secs(10);
/// The kinds whose Events the timelines show.
const KINDS: [&str; 2] = ["VectorCollection", "CollectionAlias"];
/// Timeline entries shown per collection.
const TIMELINE: usize = 30;

/// The controllers' context once it exists (empty before: the page says so).
pub type Source = Arc<OnceLock<Arc<Context>>>;

/// Events about quiver's objects, by (namespace, kind, name).
type Events = BTreeMap<(String, String, String), Vec<CoreEvent>>;

/// One listing of Events: when it was made, of which namespaces, what it found, and the first
/// list that failed or timed out.
struct Listing {
    at: Instant,
    namespaces: BTreeSet<String>,
    events: Events,
    trouble: Option<String>,
}

/// What every page of the console shares.
struct Console {
    source: Source,
    /// The last listing of Events. Held while a new one is made, so pages asked for meanwhile
    /// wait for it instead of listing again.
    events: tokio::sync::Mutex<Option<Arc<Listing>>>,
}

pub fn router(source: Source) -> axum::Router {
    let console = Arc::new(Console { source, events: tokio::sync::Mutex::new(None) });
    axum::Router::new()
        .route(
            "/",
            get(move || {
                let console = console.clone();
                async move { page(&console).await }
            }),
        )
        .route("/console.css", get(|| async { with_policy("text/css; charset=utf-8", STYLE.to_string()) }))
        .layer(middleware::from_fn(local_only))
}

/// Refuses a request not addressed to a local Host: a page of another site, whose name its
/// owner makes resolve to 127.0.0.1 (DNS rebinding), would otherwise read the console through
/// the user's port-forward as if it were its own.
async fn local_only(request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
    if host_is_local(&host) {
        return next.run(request).await;
    }
    // At most 64 characters of what the caller sent come back.
    let shown: String = host.chars().take(64).collect();
    let refusal = format!(
        "Host {shown:?} refused: the console answers only requests addressed to localhost or an IP address (DNS rebinding)\n"
    );
    (StatusCode::FORBIDDEN, refusal).into_response()
}

/// Whether `host` (a Host header: a name or an IP address, then maybe `:port`) is one no DNS
/// answer can point elsewhere: an IP address (IPv6 in brackets), `localhost`, or a name under
/// `.localhost` (browsers resolve those to loopback themselves, RFC 6761).
fn host_is_local(host: &str) -> bool {
    let (name, port) = split_port(host);
    let port_valid = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let local = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => {
            let name = name.to_ascii_lowercase();
            name.parse::<Ipv4Addr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
        }
    };
    port_valid && local
}

/// `host` without its `:port`, and the port: the colons inside an IPv6 address's brackets are
/// not the port's.
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rfind(':') {
        Some(at) if !host[at..].contains(']') => (&host[..at], Some(&host[at + 1..])),
        _ => (host, None),
    }
}

fn with_policy(content_type: &'static str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn page(console: &Console) -> Response {
    let Some(ctx) = console.source.get() else {
        return with_policy("text/html; charset=utf-8", render(&[], &[], &BTreeMap::new(), None, Timestamp::now()));
    };
    let mut collections: Vec<_> = ctx.caches.collections.all();
    collections.sort_by_key(|c| (c.namespace(), c.name_any()));
    let mut aliases: Vec<_> = ctx.caches.aliases.all();
    aliases.sort_by_key(|a| (a.namespace(), a.name_any()));
    let namespaces: BTreeSet<String> =
        collections.iter().filter_map(|c| c.namespace()).chain(aliases.iter().filter_map(|a| a.namespace())).collect();
    let listing = events(console, ctx, &namespaces).await;
    let collections: Vec<&VectorCollection> = collections.iter().map(|c| c.as_ref()).collect();
    let aliases: Vec<&CollectionAlias> = aliases.iter().map(|a| a.as_ref()).collect();
    let trouble = listing.trouble.clone();
    with_policy("text/html; charset=utf-8", render(&collections, &aliases, &listing.events, trouble, (ctx.now)()))
}

/// The Events of `namespaces`, listed at most EVENTS_FRESH ago. Listed again when the
/// namespaces changed: a collection in a new namespace shows its Events at once.
async fn events(console: &Console, ctx: &Context, namespaces: &BTreeSet<String>) -> Arc<Listing> {
    let mut last = console.events.lock().await;
    let fresh = |l: &&Arc<Listing>| l.at.elapsed() < EVENTS_FRESH && l.namespaces == *namespaces;
    if let Some(listing) = last.as_ref().filter(fresh) {
        return listing.clone();
    }
    let listing = Arc::new(list_events(ctx, namespaces).await);
    *last = Some(listing.clone());
    listing
}

/// Lists the Events of every kind in every namespace at once. Not from the API server's watch
/// cache (`resourceVersion=0`, kube's `match_any`), which ignores the limit and sends every
/// Event (kubernetes/kubernetes#70735): read from etcd, a list honours the limit and holds the
/// first EVENTS_LISTED Events in key (name) order, not the newest.
async fn list_events(ctx: &Context, namespaces: &BTreeSet<String>) -> Listing {
    let lists: Vec<(&String, &str)> = namespaces.iter().flat_map(|ns| KINDS.map(|kind| (ns, kind))).collect();
    let listed = futures::future::join_all(lists.iter().map(|&(ns, kind)| list(ctx, ns, kind))).await;
    let mut listing =
        Listing { at: Instant::now(), namespaces: namespaces.clone(), events: Events::new(), trouble: None };
    for (&(ns, kind), result) in lists.iter().zip(listed) {
        match result {
            Ok(events) => {
                for event in events {
                    let name = event.involved_object.name.clone().unwrap_or_default();
                    listing.events.entry((ns.clone(), kind.to_string(), name)).or_default().push(event);
                }
            }
            Err(why) => {
                listing.trouble.get_or_insert(why);
            }
        }
    }
    listing
}

/// The Events of `kind` in `ns` (at most EVENTS_LISTED), or why not within EVENTS_TIMEOUT.
async fn list(ctx: &Context, ns: &str, kind: &str) -> Result<Vec<CoreEvent>, String> {
    let api: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), ns);
    let params = ListParams::default().fields(&format!("involvedObject.kind={kind}")).limit(EVENTS_LISTED);
    match tokio::time::timeout(EVENTS_TIMEOUT, api.list(&params)).await {
        Ok(Ok(list)) => Ok(list.items),
        Ok(Err(e)) => Err(format!("listing the {kind} Events of {ns}: {e}")),
        Err(_) => Err(format!(
            "listing the {kind} Events of {ns} took longer than EVENTS_TIMEOUT ({} s): their timelines show conditions only",
            EVENTS_TIMEOUT.as_secs()
        )),
    }
}

/// HTML-escapes text for an element or a quoted attribute.
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

/// How far a gate is from its threshold, in its unit (negative: short of it), as the engine
/// reports it.
fn margin(g: &GateResult) -> f64 {
    quiver_api::types::judge(g.measured, &g.comparison, g.threshold).1
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.4}") }
}

/// One line of a collection's or alias's timeline: when, what, and the words.
struct Moment {
    at: Option<Timestamp>,
    what: String,
    note: String,
    warning: bool,
}

fn timeline(
    events: Option<&Vec<CoreEvent>>,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<Moment> {
    let mut moments: Vec<Moment> = events
        .into_iter()
        .flatten()
        .map(|e| Moment {
            at: event_time(e),
            what: e.reason.clone().unwrap_or_default(),
            note: e.message.clone().unwrap_or_default(),
            warning: e.type_.as_deref() == Some("Warning"),
        })
        .collect();
    moments.extend(conditions.iter().map(|c| Moment {
        at: Some(c.last_transition_time.0),
        what: format!("{} {}", c.type_, c.status),
        note: format!("{}: {}", c.reason, c.message),
        warning: false,
    }));
    moments.sort_by_key(|m| std::cmp::Reverse(m.at));
    moments.truncate(TIMELINE);
    moments
}

fn render_timeline(out: &mut String, moments: &[Moment]) {
    out.push_str("<table class=\"timeline\"><thead><tr><th>when</th><th>what</th><th></th></tr></thead><tbody>");
    for m in moments {
        let when = m.at.map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()).unwrap_or_default();
        let class = if m.warning { " class=\"warning\"" } else { "" };
        let _ = write!(
            out,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&when),
            escape(&m.what),
            escape(&m.note)
        );
    }
    out.push_str("</tbody></table>");
}

/// The whole page. Pure: the tests render it from objects.
pub fn render(
    collections: &[&VectorCollection],
    aliases: &[&CollectionAlias],
    events: &BTreeMap<(String, String, String), Vec<CoreEvent>>,
    trouble: Option<String>,
    now: Timestamp,
) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">\
         <title>quiver operator</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"console.css\"></head><body>",
    );
    let _ = write!(
        out,
        "<header><h1>quiver operator</h1><span>{} collections, {} aliases, as of {}</span></header><main>",
        collections.len(),
        aliases.len(),
        escape(&now.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
    );
    if let Some(trouble) = trouble {
        let _ = write!(out, "<p class=\"warning\" id=\"trouble\">{}</p>", escape(&trouble));
    }
    out.push_str("<section><h2>Collections</h2>");
    if collections.is_empty() {
        out.push_str(
            "<p id=\"no-collections\">No VectorCollection in the caches (a standby leads nothing; or none exists).</p>",
        );
    }
    for vc in collections {
        let ns = vc.namespace().unwrap_or_default();
        let name = vc.name_any();
        let status = vc.status.clone().unwrap_or_default();
        let wanted = crate::resources::replicas::wanted(&vc.spec.replicas);
        let phase = format!("{:?}", status.phase);
        let _ = write!(
            out,
            "<article class=\"collection\" id=\"vc-{id}\"><h3>{ns}/{name} <span class=\"phase {phase_class}\">{phase}</span></h3>\
             <table class=\"facts\"><tr><th>replicas ready</th><td class=\"replicas\">{ready} of {wanted}</td>\
             <th>vectors</th><td class=\"vectors\">{count}</td><th>search</th><td>{setting}</td>\
             <th>generation</th><td>{observed} of {generation}</td></tr></table>",
            id = escape(&format!("{ns}-{name}")),
            ns = escape(&ns),
            name = escape(&name),
            phase_class = escape(&phase.to_lowercase()),
            phase = escape(&phase),
            ready = status.ready_replicas,
            count = status.vector_count.map(|c| c.to_string()).unwrap_or_else(|| "–".into()),
            setting = escape(status.search_setting.as_deref().unwrap_or("–")),
            observed = status.observed_generation.map(|g| g.to_string()).unwrap_or_else(|| "–".into()),
            generation = vc.metadata.generation.map(|g| g.to_string()).unwrap_or_default(),
        );
        let writer = status.conditions.iter().find(|c| c.type_ == "WriterAvailable");
        if let Some(w) = writer {
            let _ = write!(out, "<p class=\"writer\">writer: {} ({})</p>", escape(&w.message), escape(&w.reason));
        }
        if let Some(message) = &status.message {
            let _ = write!(out, "<p class=\"message\">{}</p>", escape(message));
        }
        if let Some(snapshot) = &status.snapshot {
            let _ = write!(
                out,
                "<p class=\"snapshot\">snapshot in the store: {} ({} bytes)</p>",
                escape(&snapshot.location),
                snapshot.bytes
            );
        }
        if !status.verification.is_empty() {
            out.push_str(
                "<table class=\"gates\"><thead><tr><th>gate</th><th>measured</th><th>threshold</th><th>margin</th><th>passed</th></tr></thead><tbody>",
            );
            for g in &status.verification {
                let measured = match &g.error {
                    Some(e) => format!("not measured: {e}"),
                    None => number(g.measured),
                };
                let threshold = match &g.threshold_from {
                    Some(from) => format!("{} {} ({from})", g.comparison, number(g.threshold)),
                    None => format!("{} {}", g.comparison, number(g.threshold)),
                };
                let _ = write!(
                    out,
                    "<tr data-gate=\"{gate}\"><td>{gate}</td><td>{measured}</td><td>{threshold}</td><td>{margin}</td><td class=\"{class}\">{passed}</td></tr>",
                    gate = escape(&g.name),
                    measured = escape(&measured),
                    threshold = escape(&threshold),
                    margin = number(margin(g)),
                    class = if g.passed { "pass" } else { "fail" },
                    passed = if g.passed { "yes" } else { "no" },
                );
            }
            out.push_str("</tbody></table>");
        }
        let moments = timeline(events.get(&(ns.clone(), "VectorCollection".into(), name.clone())), &status.conditions);
        render_timeline(&mut out, &moments);
        out.push_str("</article>");
    }
    out.push_str("</section><section><h2>Aliases</h2>");
    if aliases.is_empty() {
        out.push_str("<p>No CollectionAlias in the caches.</p>");
    }
    for ca in aliases {
        let ns = ca.namespace().unwrap_or_default();
        let name = ca.name_any();
        let status = ca.status.clone().unwrap_or_default();
        let next = ca.spec.rebuild.as_ref().map(|r| {
            if r.suspend {
                return "suspended".to_string();
            }
            match crate::rebuild::next_tick(ca, r) {
                Ok(next) => next.map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()).unwrap_or_else(|| "–".into()),
                Err(e) => e,
            }
        });
        let _ = write!(
            out,
            "<article class=\"alias\" id=\"ca-{id}\"><h3>{ns}/{name}</h3><table class=\"facts\"><tr>\
             <th>serves</th><td class=\"current\">{current}</td><th>previous</th><td class=\"previous\">{previous}</td>\
             <th>flipped</th><td>{flipped}</td><th>next rebuild</th><td class=\"next-rebuild\">{next}</td></tr></table>",
            id = escape(&format!("{ns}-{name}")),
            ns = escape(&ns),
            name = escape(&name),
            current = escape(status.current.as_deref().unwrap_or("–")),
            previous = escape(status.previous.as_deref().unwrap_or("–")),
            flipped = escape(status.flipped_at.as_deref().unwrap_or("–")),
            next = escape(next.as_deref().unwrap_or("not scheduled")),
        );
        if let Some(message) = &status.message {
            let _ = write!(out, "<p class=\"message\">{}</p>", escape(message));
        }
        out.push_str("<ol class=\"history\">");
        for flip in &status.history {
            let _ = write!(out, "<li>{} at {}</li>", escape(&flip.collection), escape(&flip.at));
        }
        out.push_str("</ol>");
        let moments = timeline(events.get(&(ns.clone(), "CollectionAlias".into(), name.clone())), &status.conditions);
        render_timeline(&mut out, &moments);
        out.push_str("</article>");
    }
    out.push_str("</section></main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_no_dns_answer_can_move_are_local() {
        for local in [
            "127.0.0.1:8090",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:8090",
            "[::1]",
            "localhost:8090",
            "LOCALHOST",
            "console.localhost:8090",
        ] {
            assert!(host_is_local(local), "{local}");
        }
        for remote in [
            "",
            "evil.example:8090",
            "evil.example",
            "localhost.evil.example",
            "evil-localhost",
            "127.0.0.1.nip.io:8090",
            "::1",
            "[evil.example]:8090",
            "[::1]x",
            "localhost:",
            "localhost:99999",
            "127.0.0.1:80:80",
        ] {
            assert!(!host_is_local(remote), "{remote}");
        }
    }
}
