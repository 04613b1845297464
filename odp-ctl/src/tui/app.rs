//! The monitor's screen state and how keys change it. No drawing here (view.rs), no event
//! sources (crate::live): the engine's numbers are read, never changed, by this module.

use std::collections::VecDeque;

use crate::live::Flow;
use bpf_common::OdpEvent;
use odp_core::analysis::{Engine, Mr};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Recent raw events kept for the log and the detail view.
const LOG_KEPT: usize = 20_000;

/// One key binding, as the help lists it and as the footer shows it on the screens it serves:
/// the footer and the help are both drawn from `KEYS`, and `App::on_key` answers them.
pub struct KeyHelp {
    pub keys: &'static str,
    pub help: &'static str,
    /// (key, label) in the footer, if it has a place there.
    pub footer: Option<(&'static str, &'static str)>,
    pub on_main: bool,
    pub on_detail: bool,
}

impl KeyHelp {
    pub fn serves(&self, screen: Screen) -> bool {
        match screen {
            Screen::Main => self.on_main,
            Screen::Detail(_) => self.on_detail,
        }
    }
}

const fn key(
    keys: &'static str,
    help: &'static str,
    footer: Option<(&'static str, &'static str)>,
    on_main: bool,
    on_detail: bool,
) -> KeyHelp {
    KeyHelp {
        keys,
        help,
        footer,
        on_main,
        on_detail,
    }
}

/// The keys, in the order the help and the footers list them.
pub const KEYS: &[KeyHelp] = &[
    key(
        "Esc",
        "back to the MR list",
        Some(("Esc", "back")),
        false,
        true,
    ),
    key("q, Ctrl-C", "quit", Some(("q", "quit")), true, true),
    key(
        "/",
        "filter MRs, events and findings by text",
        Some(("/", "filter")),
        true,
        false,
    ),
    key(
        "s",
        "cycle the MR sort column",
        Some(("s", "sort")),
        true,
        false,
    ),
    key(
        "p, space",
        "pause / resume the view",
        Some(("p", "pause")),
        true,
        true,
    ),
    key(
        "Tab",
        "events log / findings",
        Some(("Tab", "log/findings")),
        true,
        false,
    ),
    key(
        "Up/Down, j/k",
        "select an MR; PgUp/PgDn, Home/End",
        None,
        true,
        false,
    ),
    key(
        "Enter",
        "MR detail",
        Some(("Enter", "MR detail")),
        true,
        false,
    ),
    key(
        "?",
        "this help (any key closes)",
        Some(("?", "help")),
        true,
        true,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Main,
    Detail(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    Events,
    Findings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Faults,
    Races,
    Retries,
    Timeouts,
    Invalidations,
    FaultP99,
    Registration,
}

impl SortKey {
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Faults => "faults",
            SortKey::Races => "races",
            SortKey::Retries => "retries",
            SortKey::Timeouts => "timeouts",
            SortKey::Invalidations => "invalidations",
            SortKey::FaultP99 => "fault p99",
            SortKey::Registration => "registration",
        }
    }

    fn next(self) -> SortKey {
        match self {
            SortKey::Faults => SortKey::Races,
            SortKey::Races => SortKey::Retries,
            SortKey::Retries => SortKey::Timeouts,
            SortKey::Timeouts => SortKey::Invalidations,
            SortKey::Invalidations => SortKey::FaultP99,
            SortKey::FaultP99 => SortKey::Registration,
            SortKey::Registration => SortKey::Faults,
        }
    }

    /// Larger first, except registration order.
    fn key(self, m: &Mr) -> i128 {
        let c = &m.stats.counts;
        let v = match self {
            SortKey::Faults => c.faults,
            SortKey::Races => c.races,
            SortKey::Retries => c.retries,
            SortKey::Timeouts => c.timeouts(),
            SortKey::Invalidations => c.invalidations,
            SortKey::FaultP99 => m.stats.fault.quantile(0.99),
            SortKey::Registration => return i128::from(m.id),
        };
        -i128::from(v)
    }
}

pub struct App {
    /// Where events come from ("live", "replay x.jsonl x10").
    pub label: String,
    pub probes_attached: usize,
    pub probes_total: usize,
    pub drops: u64,
    /// The source has ended; the screen stays for study until q.
    pub source_done: bool,
    pub screen: Screen,
    pub help: bool,
    pub panel: Panel,
    pub sort: SortKey,
    pub selected: usize,
    pub filter: String,
    pub editing_filter: bool,
    /// Set while paused: the view shows this copy and the log stops moving.
    pub frozen: Option<Box<Engine>>,
    pub log: VecDeque<OdpEvent>,
    /// First event's time: log lines show seconds since it.
    pub t0: Option<u64>,
    /// What the peer said of this host's retries (monitor --peer).
    pub peer_causes: Option<crate::live::SharedCauses>,
}

impl App {
    pub fn new(label: String, probes_attached: usize, probes_total: usize) -> Self {
        App {
            label,
            probes_attached,
            probes_total,
            drops: 0,
            source_done: false,
            screen: Screen::Main,
            help: false,
            panel: Panel::Events,
            sort: SortKey::Faults,
            selected: 0,
            filter: String::new(),
            editing_filter: false,
            frozen: None,
            log: VecDeque::new(),
            t0: None,
            peer_causes: None,
        }
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn push(&mut self, e: &OdpEvent) {
        self.t0.get_or_insert(e.ts_ns);
        if self.paused() {
            return;
        }
        if self.log.len() == LOG_KEPT {
            self.log.pop_front();
        }
        self.log.push_back(*e);
    }

    /// The engine the view should show: the frozen copy while paused.
    pub fn shown<'a>(&'a self, live: &'a Engine) -> &'a Engine {
        self.frozen.as_deref().unwrap_or(live)
    }

    /// Text the filter matches against for an MR row.
    fn mr_matches(&self, m: &Mr) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let f = self.filter.to_lowercase();
        [
            m.comm.to_lowercase(),
            m.device.to_lowercase(),
            m.pid.to_string(),
            format!("{:#x}", m.umem),
            format!("#{}", m.id),
        ]
        .iter()
        .any(|t| t.contains(&f))
    }

    /// MR rows in display order.
    pub fn mr_rows<'a>(&self, engine: &'a Engine) -> Vec<&'a Mr> {
        let mut rows: Vec<&Mr> = engine.mrs().filter(|m| self.mr_matches(m)).collect();
        rows.sort_by_key(|m| (self.sort.key(m), m.id));
        rows
    }

    pub fn on_key(&mut self, key: KeyEvent, live: &Engine) -> Flow {
        if key.kind == KeyEventKind::Release {
            return Flow::Continue;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Flow::Stop;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.selected = 0;
            return Flow::Continue;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Flow::Stop
            } else {
                Flow::Continue
            };
        }
        let rows = self.mr_rows(self.shown(live)).len();
        match key.code {
            KeyCode::Char('q') => return Flow::Stop,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Char('/') => self.editing_filter = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(Box::new(live.clone())),
                };
            }
            KeyCode::Tab => {
                self.panel = match self.panel {
                    Panel::Events => Panel::Findings,
                    Panel::Findings => Panel::Events,
                }
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => self.screen = Screen::Main,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(rows.saturating_sub(1))
            }
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(10),
            KeyCode::PageDown => self.selected = (self.selected + 10).min(rows.saturating_sub(1)),
            KeyCode::Home => self.selected = 0,
            KeyCode::End => self.selected = rows.saturating_sub(1),
            KeyCode::Enter | KeyCode::Right => {
                if let Some(m) = self.mr_rows(self.shown(live)).get(self.selected) {
                    self.screen = Screen::Detail(m.id);
                }
            }
            _ => {}
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odp_core::analysis::AnalysisConfig;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_follow_the_htop_habit() {
        let engine = Engine::new(AnalysisConfig::default());
        let mut app = App::new("test".into(), 0, 0);
        assert_eq!(app.on_key(key(KeyCode::Char('?')), &engine), Flow::Continue);
        assert!(app.help);
        assert_eq!(app.on_key(key(KeyCode::Char('x')), &engine), Flow::Continue);
        assert!(!app.help, "any key closes help");
        app.on_key(key(KeyCode::Char('p')), &engine);
        assert!(app.paused());
        app.on_key(key(KeyCode::Char('p')), &engine);
        assert!(!app.paused());
        app.on_key(key(KeyCode::Char('s')), &engine);
        assert_eq!(app.sort, SortKey::Races);
        app.on_key(key(KeyCode::Char('/')), &engine);
        for c in "rxe".chars() {
            app.on_key(key(KeyCode::Char(c)), &engine);
        }
        assert_eq!(app.on_key(key(KeyCode::Char('q')), &engine), Flow::Continue);
        assert_eq!(app.filter, "rxeq", "q is text while typing a filter");
        app.on_key(key(KeyCode::Esc), &engine);
        assert!(app.filter.is_empty() && !app.editing_filter);
        assert_eq!(
            app.on_key(
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
                &engine
            ),
            Flow::Stop
        );
        assert_eq!(app.on_key(key(KeyCode::Char('q')), &engine), Flow::Stop);
    }
}
