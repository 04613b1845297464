//! Drawing: a pure function of the app state and the engine's numbers.

use odp_core::analysis::{fmt_ns, Engine, Finding, Latency, Mr};
use odp_core::trace::Record;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};
use ratatui::Frame;

use super::app::{App, Panel, Screen};

const KEY: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

pub fn draw(frame: &mut Frame, app: &App, live: &Engine) {
    let engine = app.shown(live);
    match app.screen {
        Screen::Main => draw_main(frame, app, engine),
        Screen::Detail(id) => match engine.mr(id) {
            Some(mr) => draw_detail(frame, app, engine, mr),
            None => draw_main(frame, app, engine),
        },
    }
    if app.help {
        draw_help(frame);
    }
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

fn quantile(l: &Latency, q: f64) -> String {
    if l.count() == 0 {
        "-".into()
    } else {
        fmt_ns(l.quantile(q))
    }
}

/// A count that turns red when non-zero: the things to look at.
fn alert(label: &str, n: u64) -> Vec<Span<'static>> {
    vec![
        Span::raw(format!("{label} ")),
        Span::styled(count(n), if n > 0 { ALERT } else { Style::new() }),
        Span::raw("  "),
    ]
}

fn header(app: &App, engine: &Engine) -> Paragraph<'static> {
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
    Paragraph::new(vec![Line::from(status), Line::from(totals), latency])
}

/// A timeline row: its label, which count of a second it shows, and its colour.
type Series = (&'static str, fn(&odp_core::analysis::Bucket) -> u64, Color);

fn draw_rates(frame: &mut Frame, engine: &Engine, area: Rect) {
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

fn mr_table(app: &App, engine: &Engine, area: Rect) -> (Table<'static>, TableState) {
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

/// The newest lines of the log that pass the filter, oldest first; at most `rows`.
fn log_lines(app: &App, engine: &Engine, rows: usize, only_mr: Option<u64>) -> Vec<Line<'static>> {
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

fn finding_lines(
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

fn footer(app: &App) -> Paragraph<'static> {
    if app.editing_filter {
        return Paragraph::new(Line::from(vec![
            Span::styled("filter: ", KEY),
            Span::raw(format!("{}_", app.filter)),
            Span::styled("  Enter apply  Esc clear", DIM),
        ]));
    }
    let keys: &[(&str, &str)] = match app.screen {
        Screen::Main => &[
            ("q", "quit"),
            ("/", "filter"),
            ("s", "sort"),
            ("p", "pause"),
            ("Tab", "log/findings"),
            ("Enter", "MR detail"),
            ("?", "help"),
        ],
        Screen::Detail(_) => &[
            ("Esc", "back"),
            ("q", "quit"),
            ("p", "pause"),
            ("?", "help"),
        ],
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(*k, KEY));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Paragraph::new(Line::from(spans))
}

fn draw_main(frame: &mut Frame, app: &App, engine: &Engine) {
    let [head, rates, mrs, bottom, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header(app, engine), head);
    draw_rates(frame, engine, rates);
    let (table, mut state) = mr_table(app, engine, mrs);
    frame.render_stateful_widget(table, mrs, &mut state);
    let rows = bottom.height.saturating_sub(2) as usize;
    let (title, lines) = match app.panel {
        Panel::Events => (" events ", log_lines(app, engine, rows, None)),
        Panel::Findings => (
            " findings: races, retries, timeouts ",
            finding_lines(app, engine, rows, None),
        ),
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        bottom,
    );
    frame.render_widget(footer(app), foot);
}

fn draw_detail(frame: &mut Frame, app: &App, engine: &Engine, mr: &Mr) {
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

fn draw_help(frame: &mut Frame) {
    let text = vec![
        Line::styled("odp-ctl monitor keys", KEY),
        Line::raw(""),
        Line::raw("q, Ctrl-C     quit"),
        Line::raw("?             this help (any key closes)"),
        Line::raw("/             filter MRs, events and findings by text"),
        Line::raw("s             cycle the MR sort column"),
        Line::raw("p, space      pause / resume the view"),
        Line::raw("Tab           events log / findings"),
        Line::raw("Up/Down, j/k  select an MR; PgUp/PgDn, Home/End"),
        Line::raw("Enter         MR detail; Esc back"),
        Line::raw(""),
        Line::raw("race: an invalidation overlapped a fault in flight"),
        Line::raw("retry: a fault needed another attempt (read_begin)"),
        Line::raw("timeout: HMM limit, unresolved, or slower than --slow"),
        Line::raw("wait: a fault held up by an invalidation in progress"),
        Line::raw("#3x: MR 3, deregistered (kept for study)"),
    ];
    let area = frame.area();
    let w = 58.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(" help ")),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use odp_core::analysis::AnalysisConfig;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;

    use super::*;
    use crate::live::read_recording;

    /// The screens as a user sees them at the end of the committed capture (the same file the
    /// integration tests replay), driven by the same keys.
    fn replayed() -> (App, Engine) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/rxe-dontneed-race.jsonl");
        let mut engine = Engine::new(AnalysisConfig::default());
        let mut app = App::new("replay rxe-dontneed-race.jsonl (max speed)".into(), 0, 0);
        read_recording(&path, &AtomicBool::new(false), |e| {
            engine.ingest(&e);
            app.push(&e);
        })
        .expect("fixture");
        app.source_done = true;
        (app, engine)
    }

    fn render(app: &App, engine: &Engine, width: u16, height: u16) -> TestBackend {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        terminal.draw(|f| draw(f, app, engine)).expect("draw");
        terminal.backend().clone()
    }

    fn press(app: &mut App, engine: &Engine, code: KeyCode) {
        app.on_key(KeyEvent::from(code), engine);
    }

    #[test]
    fn screens_at_common_terminal_sizes() {
        let (mut app, engine) = replayed();
        for (w, h) in [(80, 24), (120, 40)] {
            insta::assert_snapshot!(format!("main_{w}x{h}"), render(&app, &engine, w, h));
        }
        press(&mut app, &engine, KeyCode::Tab);
        insta::assert_snapshot!("findings_120x40", render(&app, &engine, 120, 40));
        press(&mut app, &engine, KeyCode::Enter);
        for (w, h) in [(80, 24), (120, 40)] {
            insta::assert_snapshot!(format!("detail_{w}x{h}"), render(&app, &engine, w, h));
        }
        press(&mut app, &engine, KeyCode::Char('?'));
        insta::assert_snapshot!("help_80x24", render(&app, &engine, 80, 24));
    }

    #[test]
    fn a_tiny_terminal_draws_without_panicking() {
        let (mut app, engine) = replayed();
        for (w, h) in [(1, 1), (20, 5), (40, 10)] {
            render(&app, &engine, w, h);
            press(&mut app, &engine, KeyCode::Enter);
            render(&app, &engine, w, h);
            press(&mut app, &engine, KeyCode::Char('?'));
            render(&app, &engine, w, h);
            press(&mut app, &engine, KeyCode::Esc);
            press(&mut app, &engine, KeyCode::Esc);
        }
        let empty = Engine::new(AnalysisConfig::default());
        render(&App::new("live".into(), 3, 30), &empty, 80, 24);
    }
}
