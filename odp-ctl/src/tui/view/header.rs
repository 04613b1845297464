//! The header panel: totals, rates, latency percentiles, losses and the source.

use odp_core::analysis::Engine;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::super::app::App;
use super::{alert, count, quantile, ALERT, DIM, KEY};
use crate::live::PeerCauses;

pub(super) fn header(app: &App, engine: &Engine) -> Paragraph<'static> {
    let c = &engine.total().counts;
    let t = engine.total();
    let per_s = engine
        .timeline()
        .iter()
        .rev()
        .nth(usize::from(engine.timeline().len() > 1))
        .copied()
        .unwrap_or_default();
    // Numbers first, the source's name last: a narrow terminal cuts the name, not the counts.
    let mut status = vec![
        Span::styled("odp-ctl monitor", KEY),
        Span::raw(format!(
            " | {:.1}s | events {} | drops ",
            engine.span_ns() as f64 / 1e9,
            count(engine.events())
        )),
        Span::styled(
            count(app.drops),
            if app.drops > 0 { ALERT } else { Style::new() },
        ),
    ];
    if app.paused() {
        status.push(Span::styled(" | PAUSED", ALERT));
    }
    if app.source_done {
        status.push(Span::styled(" | source ended", DIM));
    }
    if app.probes_total > 0 {
        status.push(Span::raw(format!(
            " | probes {}/{}",
            app.probes_attached, app.probes_total
        )));
    }
    status.push(Span::raw(format!(" | {}", app.label)));
    let mut totals = vec![Span::raw(format!(
        "faults {} ({}/s)  inval {} ({}/s)  ",
        count(c.faults),
        count(per_s.faults),
        count(c.invalidations),
        count(per_s.invalidations)
    ))];
    totals.extend(alert("races", c.races));
    totals.extend(alert("retries", c.retries));
    totals.extend(alert("timeouts", c.timeouts()));
    totals.push(Span::raw(format!("prefetch {}", count(c.prefetches))));
    let latency = Line::from(vec![
        Span::raw(format!(
            "fault p50 {} p99 {} max {} | inval p99 {} | wait p99 {} | prefetched {}pg, {} faulted anyway",
            quantile(&t.fault, 0.5),
            quantile(&t.fault, 0.99),
            quantile(&t.fault, 1.0),
            quantile(&t.invalidation, 0.99),
            quantile(&t.collision_wait, 0.99),
            count(c.prefetched_pages),
            count(c.prefetched_then_faulted_pages),
        )),
    ]);
    let mut lines = vec![Line::from(status), Line::from(totals), latency];
    if let Some(causes) = app.peer_causes.as_ref().and_then(|c| c.lock().ok()) {
        lines.push(peer_line(&causes));
    }
    Paragraph::new(lines)
}

/// What the peer said of this host's retries: the counts, then the newest fault it named.
fn peer_line(causes: &PeerCauses) -> Line<'static> {
    let mut spans = vec![Span::raw(format!(
        "peer {}: retry runs {}  asked {}  ",
        causes.peer,
        count(causes.runs),
        count(causes.asked)
    ))];
    spans.extend(alert(
        "caused by its ODP faults",
        causes.caused_by_odp_faults,
    ));
    if causes.not_asked > 0 {
        spans.push(Span::styled(
            format!("not asked {}  ", count(causes.not_asked)),
            ALERT,
        ));
    }
    match (&causes.error, causes.latest_cause()) {
        (Some(error), _) => spans.push(Span::styled(error.clone(), ALERT)),
        (None, Some(latest)) => spans.push(Span::styled(format!("newest: {latest}"), DIM)),
        (None, None) => {}
    }
    Line::from(spans)
}
