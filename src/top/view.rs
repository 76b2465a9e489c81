//! Drawing `top`: [`App`] in, the screen's rows of styled text out. Pure, so it is tested
//! at 80x24 without a terminal.
//!
//! Everything colour says is also written: priorities as `HIGH` / `MED` / `LOW`, NEWS2 bands
//! as words, device states as words, the selected row with a `>` marker as well as reverse
//! video. With colour off (`NO_COLOR`) no colour is emitted at all.

use time::OffsetDateTime;

use super::screen::{bordered, sparkline, table_row, wrap, Colour as Color, Line, Span, Style};
use super::{App, Row};
use crate::alerts::{Priority, RiskBand};
use crate::live::health::{age, evaluate, human_secs, Verdict};
use crate::live::model::{DeviceLive, LiveState, PatientLive, ValueLive};
use crate::live::report::{band_text, bytes};

/// Rows given to the detail pane (with its border).
const DETAIL_HEIGHT: usize = 7;

struct Paint {
    colour: bool,
}

impl Paint {
    fn fg(&self, c: Color) -> Style {
        Style {
            fg: self.colour.then_some(c),
            ..Style::default()
        }
    }

    fn priority(&self, p: Priority) -> Span {
        let (text, c) = match p {
            Priority::High => ("HIGH", Color::Red),
            Priority::Medium => ("MED ", Color::Yellow),
            Priority::Low => ("LOW ", Color::Cyan),
        };
        Span::styled(text, self.fg(c).with_bold())
    }

    fn band(&self, b: RiskBand) -> Span {
        let c = match b {
            RiskBand::High => Color::Red,
            RiskBand::Medium | RiskBand::LowMedium => Color::Yellow,
            RiskBand::Low => Color::Green,
        };
        Span::styled(band_text(b), self.fg(c))
    }

    fn state(&self, s: &str) -> Span {
        let c = match s {
            "connected" => Color::Green,
            "starting" => Color::Yellow,
            _ => Color::Red,
        };
        Span::styled(s.to_owned(), self.fg(c))
    }
}

/// The whole screen, `height` rows of `width` columns.
pub fn draw(app: &App, width: usize, height: usize) -> Vec<Line> {
    let paint = Paint {
        colour: app.options.colour,
    };
    let Some(state) = &app.state else {
        let text = match &app.error {
            Some(e) => format!(
                "vitalgate top: cannot reach the daemon\n\n{e}\n\nretrying every second; q quits"
            ),
            None => "vitalgate top: connecting to the daemon...".to_owned(),
        };
        let rows = text
            .split('\n')
            .flat_map(|l| wrap(&Line::raw(l), width))
            .collect();
        return fit(rows, width, height);
    };
    let banner = app
        .error
        .as_ref()
        .map(|e| format!("STALE: {e}"))
        .or_else(|| app.options.banner.clone());
    // Four status rows, the banner, the detail box and the footer; the tables share the rest.
    let fixed = 4 + usize::from(banner.is_some()) + DETAIL_HEIGHT + 1;
    let rows_for_tables = height.saturating_sub(fixed + 1);
    let device_rows = (state.devices.len() + 1).min(rows_for_tables.saturating_sub(2).max(2));
    let patient_rows = height.saturating_sub(fixed + device_rows).max(2);
    let mut rows = vec![
        header_line(state, app, &paint),
        uplink_line(state, &paint),
        outbox_line(state),
        rates_line(state, width, &paint),
    ];
    if let Some(b) = banner {
        let style = if app.error.is_some() {
            paint.fg(Color::Red).with_bold()
        } else {
            paint.fg(Color::Magenta)
        };
        rows.push(Line(vec![Span::styled(b, style)]));
    }
    let selected = app.selected_row();
    rows.extend(device_table(state, selected, &paint, width, device_rows));
    rows.extend(patient_table(state, selected, &paint, width, patient_rows));
    let detail = if app.help {
        help_lines()
    } else {
        detail_lines(state, selected, &paint)
    };
    rows.extend(bordered(&detail.0, &detail.1, width, DETAIL_HEIGHT));
    let key = Style::bold();
    rows.push(Line(vec![
        Span::styled(" q", key),
        Span::raw(" quit  "),
        Span::styled("↑/↓", key),
        Span::raw(" select device or patient  "),
        Span::styled("?", key),
        Span::raw(" help"),
    ]));
    fit(rows, width, height)
}

/// Exactly `height` rows of `width` columns: cut, or padded with blank rows.
fn fit(mut rows: Vec<Line>, width: usize, height: usize) -> Vec<Line> {
    rows.resize(height, Line::default());
    rows.into_iter().map(|r| r.fitted(width)).collect()
}

fn clock(t: OffsetDateTime) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

fn header_line(s: &LiveState, app: &App, paint: &Paint) -> Line {
    let health = evaluate(s, &app.options.thresholds);
    let (word, c) = match health.verdict {
        Verdict::Healthy => ("HEALTHY", Color::Green),
        Verdict::Degraded => ("DEGRADED", Color::Yellow),
        Verdict::Unreachable => ("UNREACHABLE", Color::Red),
    };
    Line::from(vec![
        Span::styled(format!(" vitalgate {} ", s.gateway), Style::bold()),
        Span::styled(word, paint.fg(c).with_bold()),
        Span::raw(format!(
            "  up {}  clock {}  {} UTC",
            human_secs((s.now - s.started_at).whole_seconds().max(0) as u64),
            if s.clock_synced {
                "synced"
            } else {
                "NOT SYNCED"
            },
            clock(s.now)
        )),
    ])
}

fn uplink_line(s: &LiveState, paint: &Paint) -> Line {
    let mut spans = vec![Span::raw(" uplink ")];
    match &s.uplink {
        Some(u) => {
            spans.push(if u.connected {
                Span::styled("CONNECTED", paint.fg(Color::Green))
            } else {
                Span::styled("DOWN", paint.fg(Color::Red).with_bold())
            });
            spans.push(Span::raw(format!(
                " {}  {} sent",
                age(s.now, u.since),
                u.delivered
            )));
            if let Some(t) = u.cert_not_after {
                let left = (t - s.now).whole_seconds();
                let text = format!("  cert {} left", human_secs(left.max(0) as u64));
                spans.push(if left <= 0 {
                    Span::styled("  cert EXPIRED", paint.fg(Color::Red).with_bold())
                } else if left < 30 * 86_400 {
                    Span::styled(text, paint.fg(Color::Yellow))
                } else {
                    Span::raw(text)
                });
            }
        }
        None => spans.push(Span::raw("none configured")),
    }
    if let Some(free) = s.storage.free_bytes {
        spans.push(Span::raw(format!("  disk {} free", bytes(free))));
    }
    Line::from(spans)
}

fn outbox_line(s: &LiveState) -> Line {
    let o = &s.outbox;
    let oldest = o
        .oldest_undelivered
        .map(|t| age(s.now, t))
        .unwrap_or_else(|| "-".into());
    let ack = o
        .last_ack
        .map(|t| format!("{} ago", age(s.now, t)))
        .unwrap_or_else(|| "never".into());
    Line::from(format!(
        " outbox {} waiting ({} alerts)  oldest {oldest}  last ack {ack}  {}",
        o.backlog(),
        o.backlog_alerts,
        bytes(s.storage.outbox_bytes)
    ))
}

/// Ingest and delivery per minute, each with a sparkline of the last hour's minutes.
fn rates_line(s: &LiveState, width: usize, paint: &Paint) -> Line {
    let last = |v: &[u64]| v.last().copied().unwrap_or(0);
    let graphs = width.saturating_sub(24);
    let (first, second) = (graphs / 2, graphs - graphs / 2);
    let mut line = Line::raw(format!(" in {:>5}/m", last(&s.rates.ingest))).fitted(12);
    line.0
        .extend(sparkline(&s.rates.ingest, first, paint.fg(Color::Cyan)).0);
    line.0.extend(
        Line::raw(format!(" out {:>4}/m", last(&s.rates.delivery)))
            .fitted(12)
            .0,
    );
    line.0
        .extend(sparkline(&s.rates.delivery, second, paint.fg(Color::Green)).0);
    line
}

fn short_metric(m: &str) -> &str {
    match m {
        "heart_rate" => "HR",
        "pulse_rate" => "PR",
        "spo2" => "SpO2",
        "respiratory_rate" => "RR",
        "body_temperature" => "T",
        "systolic_bp" => "SBP",
        "diastolic_bp" => "DBP",
        "mean_bp" => "MAP",
        "perfusion_index" => "PI",
        "blood_glucose" => "Glu",
        "body_weight" => "Wt",
        "body_height" => "Ht",
        "inspired_oxygen" => "O2",
        "acvpu" => "ACVPU",
        "bmi" => "BMI",
        other => other,
    }
}

fn short_unit(u: &str) -> &str {
    match u {
        "Cel" => "°C",
        "[degF]" => "°F",
        "mm[Hg]" => "mmHg",
        "{beats}/min" | "/min" => "/min",
        other => other,
    }
}

fn value_text(v: &ValueLive) -> String {
    let unit = short_unit(&v.unit);
    if unit.is_empty() {
        format!("{} {}", short_metric(&v.metric), v.value)
    } else if unit == "%" {
        format!("{} {}%", short_metric(&v.metric), v.value)
    } else {
        format!("{} {} {unit}", short_metric(&v.metric), v.value)
    }
}

/// The values most worth a glance first, in this order.
const GLANCE: [&str; 7] = [
    "spo2",
    "heart_rate",
    "pulse_rate",
    "respiratory_rate",
    "body_temperature",
    "systolic_bp",
    "acvpu",
];

fn glance(d: &DeviceLive) -> String {
    let mut shown: Vec<&ValueLive> = GLANCE
        .iter()
        .filter_map(|m| d.last_values.iter().find(|v| v.metric == *m))
        .collect();
    for v in &d.last_values {
        if !shown.iter().any(|s| s.metric == v.metric) {
            shown.push(v);
        }
    }
    shown
        .iter()
        .map(|v| value_text(v))
        .collect::<Vec<_>>()
        .join("  ")
}

fn marker(on: bool) -> &'static str {
    if on {
        ">"
    } else {
        " "
    }
}

fn selected_style(on: bool) -> Style {
    Style {
        reverse: on,
        ..Style::default()
    }
}

/// A table in `rows` rows: the bold, underlined header, then one row per entry (the selected
/// one in reverse video), cut or padded with blank rows.
fn table(
    titles: &[&str],
    columns: &[usize],
    entries: impl Iterator<Item = (bool, Vec<Line>)>,
    width: usize,
    rows: usize,
) -> Vec<Line> {
    let header = Style {
        bold: true,
        underline: true,
        ..Style::default()
    };
    let mut out = vec![table_row(
        titles.iter().map(|t| Line::raw(*t)).collect(),
        columns,
        width,
    )
    .patched(header)];
    out.extend(
        entries.map(|(on, cells)| table_row(cells, columns, width).patched(selected_style(on))),
    );
    out.resize(rows, Line::default());
    out
}

/// The device table, its header included, in `rows` rows.
fn device_table(
    s: &LiveState,
    selected: Option<Row>,
    paint: &Paint,
    width: usize,
    rows: usize,
) -> Vec<Line> {
    let entries = s.devices.iter().enumerate().map(|(i, d)| {
        let on = selected == Some(Row::Device(i));
        let last = d
            .last_data_at
            .map(|t| age(s.now, t))
            .unwrap_or_else(|| "-".into());
        let cells = vec![
            Line::raw(format!("{}{}", marker(on), d.id)),
            Line(vec![paint.state(&d.state)]),
            Line::raw(last),
            Line::raw(glance(d)),
        ];
        (on, cells)
    });
    table(
        &[" DEVICE", "STATE", "LAST", "LATEST VALUES"],
        &[18, 12, 6],
        entries,
        width,
        rows,
    )
}

fn alerts_summary(p: &PatientLive, paint: &Paint) -> Line {
    let Some(top) = p.alerts.first() else {
        return Line::from("no open alerts");
    };
    let mut spans = vec![
        paint.priority(top.priority),
        Span::raw(format!(" {}", top.rule)),
    ];
    if p.alerts.len() > 1 {
        spans.push(Span::raw(format!(" +{} more", p.alerts.len() - 1)));
    }
    Line::from(spans)
}

/// The patient table, its header included, in `rows` rows.
fn patient_table(
    s: &LiveState,
    selected: Option<Row>,
    paint: &Paint,
    width: usize,
    rows: usize,
) -> Vec<Line> {
    let entries = s.patients.iter().enumerate().map(|(i, p)| {
        let on = selected == Some(Row::Patient(i));
        let news2 = match &p.news2 {
            Some(n) => Line(vec![
                Span::raw(format!("{:>2} ", n.total)),
                paint.band(n.band),
            ]),
            None => Line::raw(" - incomplete"),
        };
        let cells = vec![
            Line::raw(format!("{}{}", marker(on), p.id)),
            news2,
            Line::raw(format!("{:>2}", p.alerts.len())),
            alerts_summary(p, paint),
        ];
        (on, cells)
    });
    table(
        &[" PATIENT", "NEWS2", "OPEN", "HIGHEST ALERT"],
        &[28, 14, 5],
        entries,
        width,
        rows,
    )
}

/// The detail box's title and lines for the selected device or patient.
fn detail_lines(s: &LiveState, selected: Option<Row>, paint: &Paint) -> (String, Vec<Line>) {
    match selected {
        Some(Row::Device(i)) => {
            let d = &s.devices[i];
            let mut lines = vec![Line::from(format!(
                "patient {}  driver {}  {} frames  {} readings  {} decode errors",
                d.patient, d.driver, d.frames, d.readings, d.decode_errors
            ))];
            if let Some(e) = &d.last_error {
                lines.push(Line(vec![Span::styled(
                    format!("last error: {e}"),
                    paint.fg(Color::Red),
                )]));
            }
            let values: Vec<String> = d.last_values.iter().map(value_text).collect();
            lines.push(Line::from(values.join("  ")));
            (format!(" device {} ", d.id), lines)
        }
        Some(Row::Patient(i)) => {
            let p = &s.patients[i];
            let mut lines = vec![match &p.news2 {
                Some(n) => Line::from(vec![
                    Span::raw(format!("NEWS2 {} band ", n.total)),
                    paint.band(n.band),
                    Span::raw(format!(" at {} UTC", clock(n.at))),
                ]),
                None => Line::from("NEWS2: no complete set of the seven parameters yet"),
            }];
            if p.alerts.is_empty() {
                lines.push(Line::from("no open alerts"));
            }
            for a in &p.alerts {
                let what = if a.text.is_empty() {
                    a.rule.clone()
                } else {
                    a.text.clone()
                };
                lines.push(Line::from(vec![
                    paint.priority(a.priority),
                    Span::raw(format!(" {} {}", clock(a.raised_at), what)),
                ]));
            }
            (format!(" patient {} ", p.id), lines)
        }
        None => (" detail ".into(), vec![Line::from("no devices configured")]),
    }
}

/// The help box's title and lines.
fn help_lines() -> (String, Vec<Line>) {
    let lines = [
        "q / Esc  quit (the daemon keeps running)",
        "↑ ↓      select a device or a patient; the box shows its detail",
        "?        this help.   Priorities: HIGH > MED > LOW; NEWS2 bands:",
        "         low, low-medium (a single 3), MEDIUM (5-6), HIGH (7+)",
        "Data: the daemon's live socket, refreshed every second.",
    ];
    (" help ".into(), lines.into_iter().map(Line::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::health::tests::healthy;
    use crate::top::TopOptions;

    fn app(state: Option<LiveState>, colour: bool) -> App {
        App {
            state,
            options: TopOptions {
                colour,
                ..TopOptions::default()
            },
            ..App::default()
        }
    }

    fn texts(rows: &[Line]) -> Vec<String> {
        rows.iter().map(Line::text).collect()
    }

    #[test]
    fn the_screen_is_exactly_its_size_whatever_the_state() {
        for (w, h) in [(80, 24), (120, 40), (40, 10), (1, 1)] {
            for state in [None, Some(healthy())] {
                let rows = draw(&app(state, true), w, h);
                assert_eq!(rows.len(), h);
                assert!(rows.iter().all(|r| r.width() == w), "{:?}", texts(&rows));
            }
        }
    }

    #[test]
    fn at_80x24_the_footer_is_the_last_row_and_the_device_row_is_selected() {
        let rows = texts(&draw(&app(Some(healthy()), false), 80, 24));
        assert!(rows[23].starts_with(" q quit"), "{rows:#?}");
        assert!(rows[0].contains("HEALTHY"), "{rows:#?}");
        let device = rows
            .iter()
            .find(|r| r.starts_with(">ox-1"))
            .expect("device row");
        assert!(device.contains("connected"), "{device}");
        assert!(
            rows.iter().any(|r| r.starts_with("┌ device ox-1 ")),
            "{rows:#?}"
        );
    }

    #[test]
    fn without_a_daemon_the_screen_says_so_and_how_to_quit() {
        let mut a = app(None, false);
        a.error = Some("connection refused: is the daemon running?".into());
        let rows = texts(&draw(&a, 80, 24));
        assert_eq!(rows[0].trim_end(), "vitalgate top: cannot reach the daemon");
        assert!(rows.iter().any(|r| r.contains("q quits")), "{rows:#?}");
    }

    #[test]
    fn a_device_error_with_escape_sequences_is_drawn_inert() {
        let mut state = healthy();
        state.devices[0].last_error = Some("bad frame \x1b]52;c;cGF5bG9hZA==\x07\x1b[2J".into());
        let rows = draw(&app(Some(state), true), 80, 24);
        let drawn = crate::top::screen::frame(&rows, true);
        assert!(drawn.contains("last error: bad frame ?]52;c;"), "{drawn:?}");
        assert!(!drawn.contains("\x1b]") && !drawn.contains("\x1b[2J") && !drawn.contains('\x07'));
    }

    #[test]
    fn a_selected_row_is_reversed_and_marked() {
        let rows = draw(&app(Some(healthy()), false), 80, 24);
        let device = rows.iter().find(|r| r.text().starts_with(">ox-1")).unwrap();
        assert!(device.0.iter().all(|s| s.style.reverse), "{device:?}");
    }
}
