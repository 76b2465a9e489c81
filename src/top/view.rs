//! Drawing `top`: [`App`] in, one frame out. Pure, so it is tested on ratatui's
//! `TestBackend` at 80x24.
//!
//! Everything colour says is also written: priorities as `HIGH` / `MED` / `LOW`, NEWS2 bands
//! as words, device states as words, the selected row with a `>` marker as well as reverse
//! video. With colour off (`NO_COLOR`) no colour is emitted at all.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Sparkline, Table, Wrap};
use ratatui::Frame;
use time::OffsetDateTime;

use super::{App, Row};
use crate::alerts::{Priority, RiskBand};
use crate::live::health::{age, evaluate, human_secs, Verdict};
use crate::live::model::{DeviceLive, LiveState, PatientLive, ValueLive};
use crate::live::report::{band_text, bytes};

/// Rows given to the detail pane (with its border).
const DETAIL_HEIGHT: u16 = 7;

struct Paint {
    colour: bool,
}

impl Paint {
    fn fg(&self, c: Color) -> Style {
        if self.colour {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    fn priority(&self, p: Priority) -> Span<'static> {
        let (text, c) = match p {
            Priority::High => ("HIGH", Color::Red),
            Priority::Medium => ("MED ", Color::Yellow),
            Priority::Low => ("LOW ", Color::Cyan),
        };
        Span::styled(text, self.fg(c).add_modifier(Modifier::BOLD))
    }

    fn band(&self, b: RiskBand) -> Span<'static> {
        let c = match b {
            RiskBand::High => Color::Red,
            RiskBand::Medium | RiskBand::LowMedium => Color::Yellow,
            RiskBand::Low => Color::Green,
        };
        Span::styled(band_text(b), self.fg(c))
    }

    fn state(&self, s: &str) -> Span<'static> {
        let c = match s {
            "connected" => Color::Green,
            "starting" => Color::Yellow,
            _ => Color::Red,
        };
        Span::styled(s.to_owned(), self.fg(c))
    }
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let paint = Paint {
        colour: app.options.colour,
    };
    let area = f.area();
    let Some(state) = &app.state else {
        let text = match &app.error {
            Some(e) => format!(
                "vitalgate top: cannot reach the daemon\n\n{e}\n\nretrying every second; q quits"
            ),
            None => "vitalgate top: connecting to the daemon...".to_owned(),
        };
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), area);
        return;
    };
    let banner = app
        .error
        .as_ref()
        .map(|e| format!("STALE: {e}"))
        .or_else(|| app.options.banner.clone());
    let rows_for_tables = area
        .height
        .saturating_sub(5 + u16::from(banner.is_some()) + DETAIL_HEIGHT + 1);
    let device_rows =
        (state.devices.len() as u16 + 1).min(rows_for_tables.saturating_sub(2).max(2));
    let [header, uplink, outbox, rates, banner_area, devices, patients, detail, footer] =
        Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(u16::from(banner.is_some())),
            Constraint::Length(device_rows),
            Constraint::Min(2),
            Constraint::Length(DETAIL_HEIGHT),
            Constraint::Length(1),
        ])
        .areas(area);
    f.render_widget(Paragraph::new(header_line(state, app, &paint)), header);
    f.render_widget(Paragraph::new(uplink_line(state, &paint)), uplink);
    f.render_widget(Paragraph::new(outbox_line(state)), outbox);
    draw_rates(f, rates, state, &paint);
    if let Some(b) = banner {
        let style = if app.error.is_some() {
            paint.fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            paint.fg(Color::Magenta)
        };
        f.render_widget(Paragraph::new(Span::styled(b, style)), banner_area);
    }
    let selected = app.selected_row();
    draw_devices(f, devices, state, selected, &paint);
    draw_patients(f, patients, state, selected, &paint);
    if app.help {
        draw_help(f, detail);
    } else {
        draw_detail(f, detail, state, selected, &paint);
    }
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" q", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" quit  "),
            Span::styled("↑/↓", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" select device or patient  "),
            Span::styled("?", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(" help"),
        ])),
        footer,
    );
}

fn clock(t: OffsetDateTime) -> String {
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

fn header_line(s: &LiveState, app: &App, paint: &Paint) -> Line<'static> {
    let health = evaluate(s, &app.options.thresholds);
    let (word, c) = match health.verdict {
        Verdict::Healthy => ("HEALTHY", Color::Green),
        Verdict::Degraded => ("DEGRADED", Color::Yellow),
        Verdict::Unreachable => ("UNREACHABLE", Color::Red),
    };
    Line::from(vec![
        Span::styled(
            format!(" vitalgate {} ", s.gateway),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(word, paint.fg(c).add_modifier(Modifier::BOLD)),
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

fn uplink_line(s: &LiveState, paint: &Paint) -> Line<'static> {
    let mut spans = vec![Span::raw(" uplink ")];
    match &s.uplink {
        Some(u) => {
            spans.push(if u.connected {
                Span::styled("CONNECTED", paint.fg(Color::Green))
            } else {
                Span::styled("DOWN", paint.fg(Color::Red).add_modifier(Modifier::BOLD))
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
                    Span::styled(
                        "  cert EXPIRED",
                        paint.fg(Color::Red).add_modifier(Modifier::BOLD),
                    )
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

fn outbox_line(s: &LiveState) -> Line<'static> {
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

fn draw_rates(f: &mut Frame, area: Rect, s: &LiveState, paint: &Paint) {
    let [l1, g1, l2, g2] = Layout::horizontal([
        Constraint::Length(12),
        Constraint::Fill(1),
        Constraint::Length(12),
        Constraint::Fill(1),
    ])
    .areas(area);
    let last = |v: &[u64]| v.last().copied().unwrap_or(0);
    f.render_widget(
        Paragraph::new(format!(" in {:>5}/m", last(&s.rates.ingest))),
        l1,
    );
    f.render_widget(
        Sparkline::default()
            .data(tail(&s.rates.ingest, g1.width))
            .style(paint.fg(Color::Cyan)),
        g1,
    );
    f.render_widget(
        Paragraph::new(format!(" out {:>4}/m", last(&s.rates.delivery))),
        l2,
    );
    f.render_widget(
        Sparkline::default()
            .data(tail(&s.rates.delivery, g2.width))
            .style(paint.fg(Color::Green)),
        g2,
    );
}

/// The newest `width` buckets.
fn tail(v: &[u64], width: u16) -> Vec<u64> {
    v[v.len().saturating_sub(width as usize)..].to_vec()
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
    if on {
        Style::default().add_modifier(Modifier::REVERSED)
    } else {
        Style::default()
    }
}

fn draw_devices(f: &mut Frame, area: Rect, s: &LiveState, selected: Option<Row>, paint: &Paint) {
    let rows = s.devices.iter().enumerate().map(|(i, d)| {
        let on = selected == Some(Row::Device(i));
        let last = d
            .last_data_at
            .map(|t| age(s.now, t))
            .unwrap_or_else(|| "-".into());
        TableRow::new(vec![
            Cell::from(format!("{}{}", marker(on), d.id)),
            Cell::from(paint.state(&d.state)),
            Cell::from(last),
            Cell::from(glance(d)),
        ])
        .style(selected_style(on))
    });
    let header = TableRow::new(vec![" DEVICE", "STATE", "LAST", "LATEST VALUES"])
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(18),
                Constraint::Length(12),
                Constraint::Length(6),
                Constraint::Fill(1),
            ],
        )
        .header(header),
        area,
    );
}

fn alerts_summary(p: &PatientLive, paint: &Paint) -> Line<'static> {
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

fn draw_patients(f: &mut Frame, area: Rect, s: &LiveState, selected: Option<Row>, paint: &Paint) {
    let rows = s.patients.iter().enumerate().map(|(i, p)| {
        let on = selected == Some(Row::Patient(i));
        let news2 = match &p.news2 {
            Some(n) => Line::from(vec![
                Span::raw(format!("{:>2} ", n.total)),
                paint.band(n.band),
            ]),
            None => Line::from(" - incomplete"),
        };
        TableRow::new(vec![
            Cell::from(format!("{}{}", marker(on), p.id)),
            Cell::from(news2),
            Cell::from(format!("{:>2}", p.alerts.len())),
            Cell::from(alerts_summary(p, paint)),
        ])
        .style(selected_style(on))
    });
    let header = TableRow::new(vec![" PATIENT", "NEWS2", "OPEN", "HIGHEST ALERT"])
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(28),
                Constraint::Length(14),
                Constraint::Length(5),
                Constraint::Fill(1),
            ],
        )
        .header(header),
        area,
    );
}

fn draw_detail(f: &mut Frame, area: Rect, s: &LiveState, selected: Option<Row>, paint: &Paint) {
    let (title, lines): (String, Vec<Line>) = match selected {
        Some(Row::Device(i)) => {
            let d = &s.devices[i];
            let mut lines = vec![Line::from(format!(
                "patient {}  driver {}  {} frames  {} readings  {} decode errors",
                d.patient, d.driver, d.frames, d.readings, d.decode_errors
            ))];
            if let Some(e) = &d.last_error {
                lines.push(Line::from(Span::styled(
                    format!("last error: {e}"),
                    paint.fg(Color::Red),
                )));
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
    };
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn draw_help(f: &mut Frame, area: Rect) {
    let lines = vec![
        Line::from("q / Esc  quit (the daemon keeps running)"),
        Line::from("↑ ↓      select a device or a patient; the box shows its detail"),
        Line::from("?        this help.   Priorities: HIGH > MED > LOW; NEWS2 bands:"),
        Line::from("         low, low-medium (a single 3), MEDIUM (5-6), HIGH (7+)"),
        Line::from("Data: the daemon's live socket, refreshed every second."),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
        area,
    );
}
