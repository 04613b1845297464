//! The event log and the findings panel (also the detail screen's lower half).

use odp_core::analysis::{Engine, Finding};
use odp_core::trace::Record;
use ratatui::text::{Line, Span};

use super::super::app::App;
use super::ALERT;

/// The newest lines of the log that pass the filter, oldest first; at most `rows`.
pub(super) fn log_lines(
    app: &App,
    engine: &Engine,
    rows: usize,
    only_mr: Option<u64>,
) -> Vec<Line<'static>> {
    let t0 = app.t0.unwrap_or(0);
    let filter = app.filter.to_lowercase();
    let mut lines = Vec::new();
    // Bounded: a filter that matches nothing must not cost a scan of the whole log each frame.
    for e in app.log.iter().rev().take(5000) {
        if lines.len() >= rows {
            break;
        }
        if only_mr.is_some() && engine.mr_of_event(e) != only_mr {
            continue;
        }
        let text = Record::from_event(e).human(t0);
        if filter.is_empty() || only_mr.is_some() || text.to_lowercase().contains(&filter) {
            lines.push(Line::raw(text));
        }
    }
    lines.reverse();
    lines
}

pub(super) fn finding_lines(
    app: &App,
    engine: &Engine,
    rows: usize,
    only_mr: Option<u64>,
) -> Vec<Line<'static>> {
    let t0 = app.t0.unwrap_or(0);
    let filter = app.filter.to_lowercase();
    let render = |f: &Finding| {
        Line::from(vec![
            Span::raw(format!("{:10.6} ", f.ts_ns.saturating_sub(t0) as f64 / 1e9)),
            Span::styled(format!("{:<11}", f.kind.name()), ALERT),
            Span::raw(format!(
                " {} {}",
                f.mr.map_or_else(|| "-".into(), |m| format!("#{m}")),
                f.detail
            )),
        ])
    };
    let mut lines: Vec<Line> = engine
        .findings()
        .iter()
        .rev()
        .filter(|f| only_mr.is_none() || f.mr == only_mr)
        .filter(|f| {
            only_mr.is_some()
                || filter.is_empty()
                || format!("{} {}", f.kind.name(), f.detail)
                    .to_lowercase()
                    .contains(&filter)
        })
        .take(rows)
        .map(render)
        .collect();
    lines.reverse();
    lines
}
