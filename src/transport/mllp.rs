//! MLLP (HL7 Minimal Lower Layer Protocol) framing: `<VT 0x0B> message <FS 0x1C> <CR 0x0D>`
//! (protocols.md §3.1).
//!
//! [`Deframer`] is the receiving side, pure and incremental: feed it whatever a read returned
//! and take out [`Event`]s. It discards bytes before a start byte (and says how many), takes
//! several frames from one read and frames split across reads, and refuses a frame over the
//! cap without holding it in memory (the rest of it is skipped up to its end byte, then an
//! [`Event::Oversized`] is reported so the listener can answer `AR`). A start byte inside a
//! frame means the sender gave up on the previous one: the partial frame is dropped and
//! counted, the new one starts. A lone FS also ends a frame (some senders omit the CR).
//! [`encode`] is the sending side.

/// Start of block.
pub const VT: u8 = 0x0B;
/// End of block.
pub const FS: u8 = 0x1C;
/// Carriage return after FS.
pub const CR: u8 = 0x0D;

/// Frames a payload.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(VT);
    out.extend_from_slice(payload);
    out.push(FS);
    out.push(CR);
    out
}

/// What the deframer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole frame's payload.
    Frame(Vec<u8>),
    /// A frame longer than the cap ended; its bytes were discarded. `len` is its length.
    Oversized { len: usize },
    /// Bytes outside any frame (before a start byte), or a partial frame cut short by a new
    /// start byte, were discarded.
    Discarded { bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for VT.
    Idle,
    /// Inside a frame.
    InFrame,
    /// Inside a frame longer than the cap: skipping to its end.
    Skipping,
    /// After FS: a CR is expected (and consumed when it comes).
    AfterEnd,
}

/// Incremental MLLP receiver.
#[derive(Debug)]
pub struct Deframer {
    max_frame: usize,
    buf: Vec<u8>,
    state: State,
    skipped: usize,
    garbage: usize,
}

impl Deframer {
    /// A deframer refusing frames over `max_frame` bytes of payload.
    pub fn new(max_frame: usize) -> Self {
        Deframer {
            max_frame,
            buf: Vec::new(),
            state: State::Idle,
            skipped: 0,
            garbage: 0,
        }
    }

    /// Whether a frame has started and not ended (a connection closing now cut it short).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::InFrame | State::Skipping)
    }

    /// Bytes of the frame in progress.
    pub fn pending(&self) -> usize {
        match self.state {
            State::InFrame => self.buf.len(),
            State::Skipping => self.skipped,
            _ => 0,
        }
    }

    /// Feeds bytes; appends what they completed to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) {
        while !bytes.is_empty() {
            match self.state {
                State::AfterEnd => {
                    if bytes[0] == CR {
                        bytes = &bytes[1..];
                    }
                    self.state = State::Idle;
                }
                State::Idle => match bytes.iter().position(|&b| b == VT) {
                    Some(i) => {
                        self.garbage += i;
                        self.flush_garbage(out);
                        bytes = &bytes[i + 1..];
                        self.state = State::InFrame;
                        self.buf.clear();
                    }
                    None => {
                        self.garbage += bytes.len();
                        bytes = &[];
                    }
                },
                State::InFrame | State::Skipping => {
                    let stop = bytes.iter().position(|&b| b == FS || b == VT);
                    let (chunk, rest) = match stop {
                        Some(i) => (&bytes[..i], Some((bytes[i], &bytes[i + 1..]))),
                        None => (bytes, None),
                    };
                    if self.state == State::InFrame {
                        if self.buf.len() + chunk.len() > self.max_frame {
                            self.skipped = self.buf.len() + chunk.len();
                            self.buf = Vec::new();
                            self.state = State::Skipping;
                        } else {
                            self.buf.extend_from_slice(chunk);
                        }
                    } else {
                        self.skipped += chunk.len();
                    }
                    match rest {
                        None => bytes = &[],
                        Some((FS, rest)) => {
                            if self.state == State::Skipping {
                                out.push(Event::Oversized { len: self.skipped });
                                self.skipped = 0;
                            } else {
                                out.push(Event::Frame(std::mem::take(&mut self.buf)));
                            }
                            self.state = State::AfterEnd;
                            bytes = rest;
                        }
                        Some((_vt, rest)) => {
                            // A new start byte: the frame in progress was abandoned.
                            let lost = if self.state == State::Skipping {
                                self.skipped
                            } else {
                                self.buf.len()
                            };
                            out.push(Event::Discarded { bytes: lost + 1 });
                            self.skipped = 0;
                            self.buf.clear();
                            self.state = State::InFrame;
                            bytes = rest;
                        }
                    }
                }
            }
        }
        // Report garbage once it is known to be garbage (not only at the next VT), so a
        // sender of nothing but noise is seen.
        if self.state == State::Idle {
            self.flush_garbage(out);
        }
    }

    fn flush_garbage(&mut self, out: &mut Vec<Event>) {
        if self.garbage > 0 {
            out.push(Event::Discarded {
                bytes: self.garbage,
            });
            self.garbage = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(d: &mut Deframer, chunks: &[&[u8]]) -> Vec<Event> {
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        out
    }

    /// protocols.md §3.4 H1 (python-hl7 test_readblock).
    #[test]
    fn h1_one_block_gives_its_payload() {
        let mut d = Deframer::new(1024);
        let ev = feed_all(&mut d, &[b"\x0bfoobar\x1c\x0d"]);
        assert_eq!(ev, vec![Event::Frame(b"foobar".to_vec())]);
        assert!(!d.in_frame());
    }

    /// protocols.md §3.4 H2 (python-hl7 test_writeblock).
    #[test]
    fn h2_writing_a_block_frames_it() {
        assert_eq!(
            encode(b"foobar"),
            vec![0x0B, 0x66, 0x6F, 0x6F, 0x62, 0x61, 0x72, 0x1C, 0x0D]
        );
    }

    #[test]
    fn a_frame_split_across_reads_is_put_back_together() {
        let mut d = Deframer::new(1024);
        let framed = encode(b"MSH|^~\\&|a\rPID|1");
        let mut out = Vec::new();
        for b in &framed {
            d.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(out, vec![Event::Frame(b"MSH|^~\\&|a\rPID|1".to_vec())]);
    }

    #[test]
    fn several_frames_in_one_read_all_come_out_in_order() {
        let mut d = Deframer::new(1024);
        let mut bytes = encode(b"one");
        bytes.extend(encode(b"two"));
        bytes.extend(encode(b"three"));
        let ev = feed_all(&mut d, &[&bytes]);
        assert_eq!(
            ev,
            vec![
                Event::Frame(b"one".to_vec()),
                Event::Frame(b"two".to_vec()),
                Event::Frame(b"three".to_vec())
            ]
        );
    }

    #[test]
    fn garbage_before_the_start_byte_is_discarded_and_counted() {
        let mut d = Deframer::new(1024);
        let mut bytes = b"\r\nnoise".to_vec();
        bytes.extend(encode(b"x"));
        let ev = feed_all(&mut d, &[&bytes]);
        assert_eq!(
            ev,
            vec![Event::Discarded { bytes: 7 }, Event::Frame(b"x".to_vec())]
        );
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_without_being_kept() {
        let mut d = Deframer::new(10);
        let mut bytes = encode(&[b'A'; 50]);
        bytes.extend(encode(b"small"));
        let ev = feed_all(&mut d, &[&bytes[..20], &bytes[20..]]);
        assert_eq!(
            ev,
            vec![
                Event::Oversized { len: 50 },
                Event::Frame(b"small".to_vec())
            ]
        );
        assert!(d.buf.capacity() <= 64);
    }

    #[test]
    fn a_new_start_byte_abandons_the_partial_frame() {
        let mut d = Deframer::new(1024);
        let ev = feed_all(&mut d, &[b"\x0bhalf", b"\x0bwhole\x1c\x0d"]);
        assert_eq!(
            ev,
            vec![
                Event::Discarded { bytes: 5 },
                Event::Frame(b"whole".to_vec())
            ]
        );
    }

    #[test]
    fn a_lone_fs_ends_a_frame_too() {
        let mut d = Deframer::new(1024);
        let ev = feed_all(&mut d, &[b"\x0ba\x1c\x0bb\x1c\x0d"]);
        assert_eq!(
            ev,
            vec![Event::Frame(b"a".to_vec()), Event::Frame(b"b".to_vec())]
        );
    }

    #[test]
    fn a_connection_closing_mid_frame_is_visible() {
        let mut d = Deframer::new(1024);
        let ev = feed_all(&mut d, &[b"\x0bMSH|^~\\&|cut"]);
        assert!(ev.is_empty());
        assert!(d.in_frame());
        assert_eq!(d.pending(), 12);
    }
}
