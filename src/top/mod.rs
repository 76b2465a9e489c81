//! `vitalgate top`: a live terminal dashboard of the running daemon, for a field engineer over
//! SSH or a nurse at the bedside gateway's screen.
//!
//! It reads the daemon's [`LiveState`] over the live socket once a second (never files),
//! draws it as plain text with ANSI escapes ([`screen`]), fits an 80x24 terminal, and
//! without colour (`NO_COLOR`, see <https://no-color.org>) still says everything: priorities
//! and bands are words (`HIGH`, `MED`, `LOW`), colour only repeats them. Keys: `q` (or Esc,
//! Ctrl-C) quits, arrows select a device or patient for detail, `?` toggles help.
//!
//! [`view`] is pure (state in, rows of styled text out) and unit-tested; [`terminal`] owns
//! the terminal (raw mode and alternate screen, restored on exit and on panic).

pub mod screen;
pub mod terminal;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::live::{LiveClient, LiveState};
use terminal::{Key, Terminal};

/// How often the state is fetched.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How `top` runs.
#[derive(Debug, Clone, Default)]
pub struct TopOptions {
    /// Colour on (off with `NO_COLOR`).
    pub colour: bool,
    /// A banner line under the header (the demo says what to watch for).
    pub banner: Option<String>,
    /// Set by someone else to end `top` (the demo's end).
    pub stop: Option<Arc<AtomicBool>>,
    /// When the header says DEGRADED (the config's `[status]`).
    pub thresholds: crate::live::StatusThresholds,
}

impl TopOptions {
    /// Colour unless `NO_COLOR` is set to anything non-empty.
    pub fn from_env() -> TopOptions {
        TopOptions {
            colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            ..TopOptions::default()
        }
    }
}

/// Why `top` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("top needs a terminal: {0}")]
    Terminal(std::io::Error),
}

/// What the screen shows between refreshes.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub state: Option<LiveState>,
    /// Why the last fetch failed (the screen keeps the last state and says so).
    pub error: Option<String>,
    /// Index into [`App::rows`].
    pub selected: usize,
    pub help: bool,
    pub options: TopOptions,
}

/// A selectable row: a device or a patient, by index into the state's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Device(usize),
    Patient(usize),
}

impl App {
    /// Devices first, then patients, as drawn.
    pub fn rows(&self) -> Vec<Row> {
        let Some(s) = &self.state else {
            return Vec::new();
        };
        (0..s.devices.len())
            .map(Row::Device)
            .chain((0..s.patients.len()).map(Row::Patient))
            .collect()
    }

    pub fn selected_row(&self) -> Option<Row> {
        self.rows().get(self.selected).copied()
    }

    /// Applies a key; returns false when it means quit.
    pub fn key(&mut self, key: Key) -> bool {
        match key {
            Key::Char('q') | Key::Esc | Key::Ctrl('c') => return false,
            Key::Char('?') | Key::Char('h') => self.help = !self.help,
            Key::Down | Key::Char('j') | Key::Right => {
                let n = self.rows().len();
                if n > 0 {
                    self.selected = (self.selected + 1).min(n - 1);
                }
            }
            Key::Up | Key::Char('k') | Key::Left => self.selected = self.selected.saturating_sub(1),
            _ => {}
        }
        true
    }
}

/// Runs the dashboard on this terminal until `q` (or `options.stop`).
pub fn run(socket: &Path, options: TopOptions) -> Result<(), TopError> {
    let mut terminal = Terminal::enter().map_err(TopError::Terminal)?;
    // Dropping the terminal restores it, on an error as on `q`.
    event_loop(&mut terminal, socket.to_path_buf(), options)
}

fn event_loop(
    terminal: &mut Terminal,
    socket: PathBuf,
    options: TopOptions,
) -> Result<(), TopError> {
    let stop = options.stop.clone();
    let mut app = App {
        options,
        ..App::default()
    };
    let mut client: Option<LiveClient> = None;
    let mut next_fetch = Instant::now();
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(());
        }
        if Instant::now() >= next_fetch {
            next_fetch = Instant::now() + REFRESH;
            let fetched = match client.as_mut() {
                Some(c) => c.state(),
                None => LiveClient::connect(&socket).and_then(|mut c| {
                    let s = c.state();
                    client = Some(c);
                    s
                }),
            };
            match fetched {
                Ok(s) => {
                    app.state = Some(s);
                    app.error = None;
                    let n = app.rows().len();
                    app.selected = app.selected.min(n.saturating_sub(1));
                }
                Err(e) => {
                    client = None;
                    app.error = Some(e.to_string());
                }
            }
        }
        let (width, height) = terminal.size();
        let rows = view::draw(&app, width, height);
        terminal
            .draw(screen::frame(&rows, app.options.colour))
            .map_err(TopError::Terminal)?;
        let wait = next_fetch
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        if let Some(key) = terminal.key(wait).map_err(TopError::Terminal)? {
            if !app.key(key) {
                return Ok(());
            }
        }
    }
}
