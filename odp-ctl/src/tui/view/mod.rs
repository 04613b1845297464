//! Drawing: a pure function of the app state and the engine's numbers.

use odp_core::analysis::{fmt_ns, Engine, Latency};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

use super::app::{App, Panel, Screen};

mod detail;
mod events;
mod footer;
mod header;
mod help;
mod mrs;
mod rates;

use detail::draw_detail;
use events::{finding_lines, log_lines};
use footer::footer;
use header::header;
use help::draw_help;
use mrs::mr_table;
use rates::draw_rates;

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

fn draw_main(frame: &mut Frame, app: &App, engine: &Engine) {
    let head_lines = 3 + u16::from(app.peer_causes.is_some());
    let [head, rates, mrs, bottom, foot] = Layout::vertical([
        Constraint::Length(head_lines),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use odp_core::analysis::AnalysisConfig;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;

    use super::*;
    use crate::live::{read_recording, Line};

    /// The screens as a user sees them at the end of the committed capture (the same file the
    /// integration tests replay), driven by the same keys.
    fn replayed() -> (App, Engine) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/rxe-dontneed-race.jsonl");
        let mut engine = Engine::new(AnalysisConfig::default());
        let mut app = App::new("replay rxe-dontneed-race.jsonl (max speed)".into(), 0, 0);
        read_recording(&path, &AtomicBool::new(false), |line| {
            if let Line::Event(e) = line {
                engine.ingest(&e);
                app.push(&e);
            }
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
