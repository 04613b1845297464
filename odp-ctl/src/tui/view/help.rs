//! The help overlay, from the app's key table.

use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::super::app::KEYS;
use super::KEY;

pub(super) fn draw_help(frame: &mut Frame) {
    let mut text = vec![Line::styled("odp-ctl monitor keys", KEY), Line::raw("")];
    text.extend(
        KEYS.iter()
            .map(|k| Line::raw(format!("{:<14}{}", k.keys, k.help))),
    );
    text.extend(
        [
            "",
            "race: an invalidation overlapped a fault in flight",
            "retry: a fault needed another attempt (read_begin)",
            "timeout: HMM limit, unresolved, or slower than --slow",
            "wait: a fault held up by an invalidation in progress",
            "#3x: MR 3, deregistered (kept for study)",
        ]
        .map(Line::raw),
    );
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
