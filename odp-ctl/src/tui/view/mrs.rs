//! The table of ODP MRs, sorted and filtered as the app says.

use odp_core::analysis::Engine;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Cell, Row, Table, TableState};

use super::super::app::App;
use super::{count, quantile, ALERT, DIM, KEY};
use odp_core::units::fmt_size as size;

pub(super) fn mr_table(app: &App, engine: &Engine, area: Rect) -> (Table<'static>, TableState) {
    let wide = area.width >= 110;
    let mut head = vec!["MR", "dev", "pid", "comm", "size"];
    if wide {
        head.push("range");
    }
    head.extend(["faults", "p99", "inval", "races", "retry", "tmo"]);
    let rows: Vec<Row> = app
        .mr_rows(engine)
        .into_iter()
        .map(|m| {
            let c = &m.stats.counts;
            let mut cells = vec![
                Cell::from(format!(
                    "#{}{}",
                    m.id,
                    if m.released_ns.is_some() { "x" } else { "" }
                )),
                Cell::from(m.device.clone()),
                Cell::from(m.pid.to_string()),
                Cell::from(m.comm.clone()),
                Cell::from(if m.implicit {
                    "implicit".into()
                } else {
                    size(m.end.saturating_sub(m.start))
                }),
            ];
            if wide {
                cells.push(Cell::from(format!("{:#x}", m.start)));
            }
            let flagged =
                |n: u64| Cell::from(count(n)).style(if n > 0 { ALERT } else { Style::new() });
            cells.extend([
                Cell::from(count(c.faults)),
                Cell::from(quantile(&m.stats.fault, 0.99)),
                Cell::from(count(c.invalidations)),
                flagged(c.races),
                flagged(c.retries),
                flagged(c.timeouts()),
            ]);
            // Deregistered MRs stay listed for study, greyed out.
            Row::new(cells).style(if m.released_ns.is_some() {
                DIM
            } else {
                Style::new()
            })
        })
        .collect();
    let n = rows.len();
    // Fits 80 columns with room for the command name; wider terminals add the range.
    let mut widths = vec![
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Min(8),
        Constraint::Length(6),
    ];
    if wide {
        widths.push(Constraint::Length(16));
    }
    widths.extend([
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(4),
    ]);
    let table = Table::new(rows, widths)
        .header(Row::new(head).style(KEY))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(format!(
            " MRs ({n}) sort: {} {}",
            app.sort.name(),
            if app.filter.is_empty() {
                String::new()
            } else {
                format!("filter: {} ", app.filter)
            }
        )));
    let state =
        TableState::default().with_selected(n.checked_sub(1).map(|last| app.selected.min(last)));
    (table, state)
}
