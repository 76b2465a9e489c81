//! The few drawing parts `top` needs, as plain text and ANSI escapes: styled spans and lines,
//! fixed-width table columns, a one-row sparkline, a bordered box with wrapped text, and the
//! frame written over the previous one.
//!
//! `top` draws one fixed layout of text rows; a general TUI library (ratatui, its constraint
//! solver and crossterm) cost ~220 KiB of the arm64 binary for it (issue 18, lean binary).
//! Widths are counted in `char`s: everything `top` writes itself is one column per `char`,
//! and names from the config are cut, never allowed to push a row past the screen.

use std::fmt::Write as _;

/// A foreground colour; written only when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Red,
    Green,
    Yellow,
    Magenta,
    Cyan,
}

impl Colour {
    fn sgr(self) -> u8 {
        match self {
            Colour::Red => 31,
            Colour::Green => 32,
            Colour::Yellow => 33,
            Colour::Magenta => 35,
            Colour::Cyan => 36,
        }
    }
}

/// How a span is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub fg: Option<Colour>,
    pub bold: bool,
    pub underline: bool,
    pub reverse: bool,
}

impl Style {
    pub fn bold() -> Style {
        Style {
            bold: true,
            ..Style::default()
        }
    }

    pub fn with_bold(self) -> Style {
        Style { bold: true, ..self }
    }

    /// This style with `other`'s attributes added (its colour wins when it has one).
    fn patched(self, other: Style) -> Style {
        Style {
            fg: other.fg.or(self.fg),
            bold: self.bold || other.bold,
            underline: self.underline || other.underline,
            reverse: self.reverse || other.reverse,
        }
    }

    /// The SGR sequence that sets exactly this style from the default.
    fn sgr(self, colour: bool, out: &mut String) {
        out.push_str("\x1b[0");
        for (on, code) in [(self.bold, 1), (self.underline, 4), (self.reverse, 7)] {
            if on {
                let _ = write!(out, ";{code}");
            }
        }
        if let (true, Some(c)) = (colour, self.fg) {
            let _ = write!(out, ";{}", c.sgr());
        }
        out.push('m');
    }
}

/// Text in one style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub style: Style,
}

impl Span {
    pub fn raw(text: impl Into<String>) -> Span {
        Span::styled(text, Style::default())
    }

    pub fn styled(text: impl Into<String>, style: Style) -> Span {
        Span {
            text: text.into(),
            style,
        }
    }
}

/// One screen row's spans, left to right.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Line(pub Vec<Span>);

impl Line {
    pub fn raw(text: impl Into<String>) -> Line {
        Line(vec![Span::raw(text)])
    }

    pub fn width(&self) -> usize {
        self.0.iter().map(|s| s.text.chars().count()).sum()
    }

    /// The line's text without styles.
    pub fn text(&self) -> String {
        self.0.iter().map(|s| s.text.as_str()).collect()
    }

    /// Cut to `width` columns, then padded with spaces to it.
    pub fn fitted(mut self, width: usize) -> Line {
        let mut left = width;
        for span in &mut self.0 {
            let n = span.text.chars().count();
            if n > left {
                span.text = span.text.chars().take(left).collect();
            }
            left -= n.min(left);
        }
        self.0.retain(|s| !s.text.is_empty());
        if left > 0 {
            self.0.push(Span::raw(" ".repeat(left)));
        }
        self
    }

    /// Every span with `style`'s attributes added (a selected row's reverse video).
    pub fn patched(mut self, style: Style) -> Line {
        for span in &mut self.0 {
            span.style = span.style.patched(style);
        }
        self
    }

    fn push_line(&mut self, other: Line) {
        self.0.extend(other.0);
    }
}

impl From<&str> for Line {
    fn from(text: &str) -> Line {
        Line::raw(text)
    }
}

impl From<String> for Line {
    fn from(text: String) -> Line {
        Line::raw(text)
    }
}

impl From<Vec<Span>> for Line {
    fn from(spans: Vec<Span>) -> Line {
        Line(spans)
    }
}

/// A table row from cells and column widths: each cell cut or padded to its column, one
/// space between columns; the last column takes what is left of `width`.
pub fn table_row(cells: Vec<Line>, columns: &[usize], width: usize) -> Line {
    let mut row = Line::default();
    let mut used = 0;
    let last = cells.len().saturating_sub(1);
    for (i, cell) in cells.into_iter().enumerate() {
        let column = if i == last {
            width.saturating_sub(used)
        } else {
            columns
                .get(i)
                .copied()
                .unwrap_or(0)
                .min(width.saturating_sub(used))
        };
        row.push_line(cell.fitted(column));
        used += column;
        if i != last && used < width {
            row.push_line(Line::raw(" "));
            used += 1;
        }
    }
    row.fitted(width)
}

/// One row of bars, the newest value last, scaled to the largest shown.
pub fn sparkline(values: &[u64], width: usize, style: Style) -> Line {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = &values[values.len().saturating_sub(width)..];
    let max = shown.iter().copied().max().unwrap_or(0);
    let bars: String = shown
        .iter()
        .map(|&v| {
            let level = if max == 0 {
                0
            } else {
                (u128::from(v) * 8).div_ceil(u128::from(max)).min(8)
            };
            BARS[level as usize]
        })
        .collect();
    Line(vec![Span::styled(bars, style)]).fitted(width)
}

/// Word-wraps a styled line to `width` columns; a word longer than a row is cut across rows,
/// and spaces where a row breaks are dropped.
pub fn wrap(line: &Line, width: usize) -> Vec<Line> {
    if width == 0 {
        return Vec::new();
    }
    let mut rows = vec![Line::default()];
    let mut used = 0;
    for span in &line.0 {
        for word in words(&span.text) {
            let n = word.chars().count();
            let blank = word.trim().is_empty();
            if used + n > width && used > 0 {
                if blank {
                    continue;
                }
                rows.push(Line::default());
                used = 0;
            }
            if blank && used == 0 && rows.len() > 1 {
                continue;
            }
            let mut rest: &str = word;
            while rest.chars().count() > width - used {
                let cut = rest
                    .char_indices()
                    .nth(width - used)
                    .map_or(rest.len(), |(i, _)| i);
                rows.last_mut()
                    .expect("rows start non-empty")
                    .0
                    .push(Span::styled(&rest[..cut], span.style));
                rows.push(Line::default());
                used = 0;
                rest = &rest[cut..];
            }
            if !rest.is_empty() {
                used += rest.chars().count();
                rows.last_mut()
                    .expect("rows start non-empty")
                    .0
                    .push(Span::styled(rest, span.style));
            }
        }
    }
    rows
}

/// Words and the runs of spaces between them, in order.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = None;
    for (i, c) in text.char_indices() {
        let space = c == ' ';
        if in_space.is_some_and(|s| s != space) {
            out.push(&text[start..i]);
            start = i;
        }
        in_space = Some(space);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// A box of `height` rows drawn with a light border and `title` in its top edge, holding the
/// lines wrapped to its inside; what does not fit is cut.
pub fn bordered(title: &str, lines: &[Line], width: usize, height: usize) -> Vec<Line> {
    if width < 2 || height < 2 {
        return Vec::new();
    }
    let inner = width - 2;
    let title: String = title.chars().take(inner).collect();
    let fill = inner - title.chars().count();
    let top = Line(vec![
        Span::raw("┌"),
        Span::raw(title),
        Span::raw("─".repeat(fill)),
        Span::raw("┐"),
    ]);
    let mut out = vec![top];
    let body: Vec<Line> = lines.iter().flat_map(|l| wrap(l, inner)).collect();
    for i in 0..height - 2 {
        let content = body.get(i).cloned().unwrap_or_default();
        let mut row = Line(vec![Span::raw("│")]);
        row.push_line(content.fitted(inner));
        row.push_line(Line::raw("│"));
        out.push(row);
    }
    out.push(Line(vec![
        Span::raw("└"),
        Span::raw("─".repeat(inner)),
        Span::raw("┘"),
    ]));
    out
}

/// The escapes that draw `rows` as the whole screen from its top left corner: each row
/// styled, the rest of each row and of the screen cleared. A control character in the text
/// (an escape sequence in a device's error, say) is written as `?`: only this function's own
/// escapes reach the terminal, where others could move the cursor, retitle the window or
/// worse.
pub fn frame(rows: &[Line], colour: bool) -> String {
    let mut out = String::from("\x1b[H");
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(out, "\x1b[{};1H", i + 1);
        // A style is set where it changes, not before every span.
        let mut current = None;
        for span in &row.0 {
            if current != Some(span.style) {
                span.style.sgr(colour, &mut out);
                current = Some(span.style);
            }
            out.extend(
                span.text
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c }),
            );
        }
        out.push_str("\x1b[0m\x1b[K");
    }
    out.push_str("\x1b[0m\x1b[J");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_cut_and_padded_to_its_width() {
        let line = Line(vec![Span::raw("abc"), Span::styled("def", Style::bold())]);
        assert_eq!(line.clone().fitted(4).text(), "abcd");
        assert_eq!(line.fitted(8).text(), "abcdef  ");
    }

    #[test]
    fn control_characters_in_text_never_reach_the_terminal() {
        let hostile = Line::raw("probe \x1b]0;owned\x07\x1b[2J\r\nend");
        let drawn = frame(&[hostile.fitted(40)], true);
        // Only the frame's own escapes: cursor moves, styles, clears.
        let escapes: Vec<&str> = drawn.split('\x1b').skip(1).collect();
        assert!(
            escapes
                .iter()
                .all(|e| e.starts_with('[') && !e.starts_with("[2J")),
            "{drawn:?}"
        );
        assert!(
            !drawn.contains('\x07') && !drawn.contains('\r'),
            "{drawn:?}"
        );
        assert!(drawn.contains("probe ?]0;owned??[2J??end"), "{drawn:?}");
    }

    #[test]
    fn table_cells_keep_their_columns_and_the_last_takes_the_rest() {
        let row = table_row(
            vec![
                Line::raw(">ox-1"),
                Line::raw("connected"),
                Line::raw("SpO2 97%"),
            ],
            &[6, 10],
            30,
        );
        assert_eq!(row.text(), ">ox-1  connected  SpO2 97%    ");
        let cut = table_row(
            vec![Line::raw("a-very-long-device-id"), Line::raw("x")],
            &[6],
            10,
        );
        assert_eq!(cut.text(), "a-very x  ");
    }

    #[test]
    fn sparkline_scales_to_the_largest_value_shown() {
        assert_eq!(sparkline(&[0, 4, 8], 3, Style::default()).text(), " ▄█");
        assert_eq!(sparkline(&[9, 9, 0, 1], 2, Style::default()).text(), " █");
        assert_eq!(sparkline(&[], 3, Style::default()).text(), "   ");
    }

    #[test]
    fn wrap_breaks_at_spaces_and_cuts_words_longer_than_a_row() {
        let rows = wrap(&Line::raw("patient p1  driver sim  12 frames"), 12);
        let texts: Vec<String> = rows.iter().map(Line::text).collect();
        assert_eq!(texts, ["patient p1  ", "driver sim  ", "12 frames"]);
        let long = wrap(&Line::raw("abcdefghij"), 4);
        assert_eq!(
            long.iter().map(Line::text).collect::<Vec<_>>(),
            ["abcd", "efgh", "ij"]
        );
    }

    #[test]
    fn a_box_has_its_title_in_the_border_and_its_size_whatever_the_text() {
        let rows = bordered(" help ", &[Line::raw("q quits")], 14, 4);
        let texts: Vec<String> = rows.iter().map(Line::text).collect();
        assert_eq!(
            texts,
            [
                "┌ help ──────┐",
                "│q quits     │",
                "│            │",
                "└────────────┘"
            ]
        );
    }

    #[test]
    fn without_colour_a_frame_has_no_colour_but_keeps_bold_and_reverse() {
        let row = Line(vec![Span::styled(
            "HIGH",
            Style {
                fg: Some(Colour::Red),
                bold: true,
                reverse: true,
                ..Style::default()
            },
        )]);
        assert!(frame(std::slice::from_ref(&row), true).contains("\x1b[0;1;7;31mHIGH"));
        let plain = frame(&[row], false);
        assert!(plain.contains("\x1b[0;1;7mHIGH"), "{plain:?}");
        assert!(!plain.contains(";31"), "{plain:?}");
    }
}
