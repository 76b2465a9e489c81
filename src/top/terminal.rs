//! The terminal `top` runs on: raw mode and the alternate screen for as long as it runs,
//! restored when it ends, on an error and on a panic; key presses read with a timeout; frames
//! written whole.

use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};

/// A key `top` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// Ctrl with a letter (`Ctrl-C` is `Ctrl('c')`).
    Ctrl(char),
    Esc,
    Up,
    Down,
    Left,
    Right,
}

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen (the shell's screen comes back).
const LEAVE: &str = "\x1b[0m\x1b[?25h\x1b[?1049l";

/// The settings to put back, for the panic hook as well as for [`Terminal`]'s drop.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Raw mode and the alternate screen until dropped.
pub struct Terminal {
    last_frame: String,
}

impl Terminal {
    /// Takes over the terminal on stdin and stdout; an error if they are not a terminal.
    pub fn enter() -> io::Result<Terminal> {
        let stdin = stdin_fd();
        let saved = tcgetattr(stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        install_panic_restore();
        tcsetattr(stdin, OptionalActions::Flush, &raw)?;
        // Built before anything else can fail, so that its drop restores the settings.
        let terminal = Terminal {
            last_frame: String::new(),
        };
        let mut out = io::stdout().lock();
        out.write_all(ENTER.as_bytes())?;
        out.flush()?;
        Ok(terminal)
    }

    /// Columns and rows (80x24 when the terminal does not say), at most 1000x500: every
    /// frame is built whole, and a window the size of a wall needs no more.
    pub fn size(&self) -> (usize, usize) {
        match tcgetwinsize(io::stdout()) {
            Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (
                usize::from(w.ws_col).min(1000),
                usize::from(w.ws_row).min(500),
            ),
            _ => (80, 24),
        }
    }

    /// Writes `frame` unless it is the one already on the screen.
    pub fn draw(&mut self, frame: String) -> io::Result<()> {
        if frame == self.last_frame {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        self.last_frame = frame;
        Ok(())
    }

    /// The next key pressed within `wait`, if any.
    pub fn key(&mut self, wait: Duration) -> io::Result<Option<Key>> {
        let stdin = stdin_fd();
        let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 250_000_000,
        });
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut buf = [0u8; 16];
        let n = rustix::io::read(stdin, &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the terminal closed",
            ));
        }
        Ok(parse_key(&buf[..n]))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}

fn stdin_fd() -> BorrowedFd<'static> {
    rustix::stdio::stdin()
}

/// Puts the saved settings back and leaves the alternate screen; once.
fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(saved) = saved {
        let _ = tcsetattr(stdin_fd(), OptionalActions::Flush, &saved);
        let mut out = io::stdout().lock();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
    }
}

/// A panic's message would otherwise be drawn on the alternate screen and lost with it.
fn install_panic_restore() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The key a read's bytes stand for: a printable character, a control letter, Esc, or an
/// arrow's escape sequence (`ESC [ A` or, in application mode, `ESC O A`).
pub fn parse_key(bytes: &[u8]) -> Option<Key> {
    match bytes {
        [0x1b] => Some(Key::Esc),
        [0x1b, b'[' | b'O', arrow, ..] => match arrow {
            b'A' => Some(Key::Up),
            b'B' => Some(Key::Down),
            b'C' => Some(Key::Right),
            b'D' => Some(Key::Left),
            _ => None,
        },
        [c @ 1..=26, ..] => Some(Key::Ctrl(char::from(b'a' + c - 1))),
        _ => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.chars().next())
            .map(Key::Char),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrows_in_either_cursor_mode_are_keys() {
        assert_eq!(parse_key(b"\x1b[A"), Some(Key::Up));
        assert_eq!(parse_key(b"\x1bOB"), Some(Key::Down));
        assert_eq!(parse_key(b"\x1b[C"), Some(Key::Right));
        assert_eq!(parse_key(b"\x1b[D"), Some(Key::Left));
    }

    #[test]
    fn esc_ctrl_c_and_letters_are_keys_and_other_sequences_are_not() {
        assert_eq!(parse_key(b"\x1b"), Some(Key::Esc));
        assert_eq!(parse_key(b"\x03"), Some(Key::Ctrl('c')));
        assert_eq!(parse_key(b"q"), Some(Key::Char('q')));
        assert_eq!(parse_key(b"?"), Some(Key::Char('?')));
        assert_eq!(parse_key(b"\x1b[5~"), None);
        assert_eq!(parse_key(b"\xff"), None);
    }
}
