//! The footer: the keys of the current screen, from the app's key table.

use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::super::app::{App, KEYS};
use super::{DIM, KEY};

pub(super) fn footer(app: &App) -> Paragraph<'static> {
    if app.editing_filter {
        return Paragraph::new(Line::from(vec![
            Span::styled("filter: ", KEY),
            Span::raw(format!("{}_", app.filter)),
            Span::styled("  Enter apply  Esc clear", DIM),
        ]));
    }
    let mut spans = Vec::new();
    for (k, what) in KEYS
        .iter()
        .filter(|k| k.serves(app.screen))
        .filter_map(|k| k.footer)
    {
        spans.push(Span::styled(k, KEY));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Paragraph::new(Line::from(spans))
}
