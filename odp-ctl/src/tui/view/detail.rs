//! The MR detail screen: identity, counts, latency table, fault histogram, its events.

use odp_core::analysis::{fmt_ns, Engine, Mr};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::super::app::App;
use super::events::{finding_lines, log_lines};
use super::footer::footer;
use super::{alert, count, quantile, KEY};
use odp_core::units::fmt_size as size;

pub(super) fn draw_detail(frame: &mut Frame, app: &App, engine: &Engine, mr: &Mr) {
    let [info, middle, bottom, foot] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let c = &mr.stats.counts;
    let keys = match (mr.lkey, mr.rkey) {
        (Some(l), Some(r)) => format!("lkey {l:#x} rkey {r:#x}"),
        _ => "keys unknown".into(),
    };
    let causes: Vec<String> = c.causes().iter().map(|(k, v)| format!("{k} {v}")).collect();
    // Five short lines, so that an 80-column terminal shows them all without wrapping.
    let info_lines = vec![
        Line::from(vec![
            Span::styled(format!("MR #{}", mr.id), KEY),
            Span::raw(format!(
                "  {}  pid {} ({})  {}{}",
                mr.device,
                mr.pid,
                mr.comm,
                keys,
                if mr.released_ns.is_some() {
                    "  deregistered"
                } else {
                    ""
                }
            )),
        ]),
        Line::raw(if mr.implicit {
            format!(
                "implicit ODP, children cover [{:#x}, {:#x})  umem {:#x}",
                mr.start, mr.end, mr.umem
            )
        } else {
            format!(
                "[{:#x}, {:#x}) {}  access {:#x}  umem {:#x}{}",
                mr.start,
                mr.end,
                size(mr.end.saturating_sub(mr.start)),
                mr.access,
                mr.umem,
                if mr.registration_seen {
                    ""
                } else {
                    "  (registered before the trace: range seen through faults)"
                }
            )
        }),
        Line::raw(format!(
            "faults {} ({} pages, {} errors)  inval {} ({}){}",
            count(c.faults),
            count(c.fault_pages),
            count(c.fault_errors),
            count(c.invalidations),
            size(c.invalidated_bytes),
            if causes.is_empty() {
                String::new()
            } else {
                format!(": {}", causes.join(", "))
            }
        )),
        Line::from(
            [
                alert("races", c.races),
                alert("retries", c.retries),
                alert("hmm-busy", c.hmm_busy),
                alert("hmm-timeouts", c.hmm_timeouts),
                alert("unresolved", c.unresolved),
                alert("slow", c.slow),
            ]
            .concat(),
        ),
        Line::raw(format!(
            "prefetched {} pages, {} of them faulted anyway",
            count(c.prefetched_pages),
            count(c.prefetched_then_faulted_pages)
        )),
    ];
    frame.render_widget(Paragraph::new(info_lines).wrap(Wrap { trim: true }), info);

    let [lat, hist] = Layout::horizontal([Constraint::Max(56), Constraint::Min(24)]).areas(middle);
    let s = &mr.stats;
    let lat_rows: Vec<Row> = [
        ("fault", &s.fault),
        ("inval", &s.invalidation),
        ("prefetch", &s.prefetch),
        ("wait", &s.collision_wait),
    ]
    .iter()
    .map(|(name, l)| {
        Row::new(vec![
            name.to_string(),
            count(l.count()),
            quantile(l, 0.5),
            quantile(l, 0.9),
            quantile(l, 0.99),
            quantile(l, 1.0),
        ])
    })
    .collect();
    frame.render_widget(
        Table::new(
            lat_rows,
            [
                Constraint::Length(8),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
            ],
        )
        .header(Row::new(vec!["latency", "count", "p50", "p90", "p99", "max"]).style(KEY))
        .block(Block::bordered().title(" latency ")),
        lat,
    );
    let buckets = s.fault.log2_buckets();
    let most = buckets.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let bar_room = hist.width.saturating_sub(2 + 18) as u64;
    let hist_lines: Vec<Line> = buckets
        .iter()
        .rev()
        .take(hist.height.saturating_sub(2) as usize)
        .rev()
        .map(|(upper, n)| {
            let bar = "#".repeat(((n * bar_room).div_ceil(most)) as usize);
            Line::from(vec![
                Span::raw(format!("<{:>7} {:>8} ", fmt_ns(*upper), count(*n))),
                Span::styled(bar, Style::new().fg(Color::Green)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(hist_lines).block(Block::bordered().title(" fault latency ")),
        hist,
    );

    let rows = bottom.height.saturating_sub(2) as usize;
    let [events, findings] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(bottom);
    frame.render_widget(
        Paragraph::new(log_lines(app, engine, rows, Some(mr.id)))
            .block(Block::bordered().title(" recent events ")),
        events,
    );
    frame.render_widget(
        Paragraph::new(finding_lines(app, engine, rows, Some(mr.id)))
            .block(Block::bordered().title(" findings ")),
        findings,
    );
    frame.render_widget(footer(app), foot);
}
