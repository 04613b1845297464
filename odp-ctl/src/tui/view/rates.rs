//! The per-second timelines of faults, invalidations, races, retries and timeouts.

use odp_core::analysis::Engine;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Paragraph, Sparkline};
use ratatui::Frame;

use super::count;

/// A timeline row: its label, which count of a second it shows, and its colour.
type Series = (&'static str, fn(&odp_core::analysis::Bucket) -> u64, Color);

pub(super) fn draw_rates(frame: &mut Frame, engine: &Engine, area: Rect) {
    let width = area.width.saturating_sub(2 + 10 + 8) as usize;
    let buckets: Vec<_> = engine
        .timeline()
        .iter()
        .rev()
        .take(width.max(1))
        .rev()
        .collect();
    let block = Block::bordered().title(format!(" per second, last {}s ", buckets.len()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let series: [Series; 5] = [
        ("faults", |b| b.faults, Color::Green),
        ("inval", |b| b.invalidations, Color::Yellow),
        ("races", |b| b.races, Color::Red),
        ("retries", |b| b.retries, Color::Magenta),
        ("timeouts", |b| b.timeouts, Color::Red),
    ];
    let rows = Layout::vertical([Constraint::Length(1); 5]).split(inner);
    for ((name, get, color), row) in series.iter().zip(rows.iter()) {
        let data: Vec<u64> = buckets.iter().map(|b| get(b)).collect();
        let last = data.last().copied().unwrap_or(0);
        let [label, spark, value] = Layout::horizontal([
            Constraint::Length(10),
            Constraint::Fill(1),
            Constraint::Length(8),
        ])
        .areas(*row);
        frame.render_widget(Paragraph::new(*name), label);
        frame.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::new().fg(*color)),
            spark,
        );
        frame.render_widget(Paragraph::new(format!("{:>7}", count(last))), value);
    }
}
