//! The NBD protocol, server side, as pure byte-in/bytes-out state machines:
//! the fixed-newstyle handshake ([`Handshake`]) and the transmission-phase
//! request stream ([`RequestParser`]).
//!
//! The shell feeds the bytes it reads and writes the bytes these return; it
//! never parses a frame itself, so the parser the fuzzer exercises is the one
//! that guards the copy on disk. Only simple replies are used (the protocol
//! lets a server refuse structured replies; every client here falls back).

/// `NBDMAGIC`: the first eight bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the magic before every option, and in the greeting.
pub const OPT_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Bytes in a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes in a simple reply header.
pub const REPLY_LEN: usize = 16;
/// Largest option payload accepted; options are small (names, info lists).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Options accepted before the handshake is given up: a client that never
/// picks an export must not hold a connection forever.
pub const MAX_OPTIONS: u32 = 64;
/// Largest READ or WRITE payload (announced as the maximum block size).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Smallest and preferred block sizes announced: the volume's 4 KiB grain.
pub const PREFERRED_BLOCK: u32 = 4096;

/// Handshake flags: fixed newstyle, no zero padding.
const HS_FIXED_NEWSTYLE: u16 = 1;
const HS_NO_ZEROES: u16 = 2;
const C_FIXED_NEWSTYLE: u32 = 1;
const C_NO_ZEROES: u32 = 2;

/// Option numbers.
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;

/// Option reply types.
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

/// Info types.
const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub mod flags {
    /// The flags field is meaningful.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// A FLUSH on one connection covers writes completed on all of them.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Command flags.
const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Command numbers.
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

/// Error numbers in replies (the protocol's fixed values).
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error (the backing store failed).
    pub const EIO: u32 = 5;
    /// Invalid argument (bad range, flags or command).
    pub const EINVAL: u32 = 22;
    /// The server is shutting down (the volume was demoted).
    pub const ESHUTDOWN: u32 = 108;
}

/// What one export looks like to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name clients ask for (the empty name also selects it).
    pub name: String,
    /// Human description (NBD_INFO_DESCRIPTION).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Why this server cannot serve the export now (a secondary copy):
    /// INFO and GO answer with a policy error that says so.
    pub refusal: Option<String>,
}

impl ExportInfo {
    /// The transmission flags this server honours for the export.
    pub fn transmission_flags(&self) -> u16 {
        let mut f = flags::HAS_FLAGS
            | flags::SEND_FLUSH
            | flags::SEND_FUA
            | flags::SEND_TRIM
            | flags::SEND_WRITE_ZEROES
            | flags::CAN_MULTI_CONN;
        if self.read_only {
            f |= flags::READ_ONLY;
        }
        f
    }
}

/// The server's first bytes: magic, option magic, handshake flags.
pub fn greeting() -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    out.extend_from_slice(&OPT_MAGIC.to_be_bytes());
    out.extend_from_slice(&(HS_FIXED_NEWSTYLE | HS_NO_ZEROES).to_be_bytes());
    out
}

/// Why a handshake ended without transmission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not speak fixed newstyle.
    #[error(
        "client flags {0:#x} do not include fixed newstyle; this server speaks only fixed newstyle"
    )]
    NotFixedNewstyle(u32),
    /// Unknown client flag bits.
    #[error("client flags {0:#x} carry unknown bits")]
    UnknownClientFlags(u32),
    /// An option header without the option magic.
    #[error("option header magic {0:#x} is not IHAVEOPT")]
    BadOptionMagic(u64),
    /// An option larger than [`MAX_OPTION_LEN`].
    #[error("option of {0} bytes is larger than the {MAX_OPTION_LEN}-byte limit")]
    OptionTooLong(u32),
    /// More than [`MAX_OPTIONS`] options.
    #[error("more than {MAX_OPTIONS} options without choosing an export")]
    TooManyOptions,
    /// NBD_OPT_EXPORT_NAME for a name we do not serve (the protocol's only
    /// answer is to close).
    #[error("client asked for export `{0}`, which this server does not serve")]
    UnknownExport(String),
    /// NBD_OPT_EXPORT_NAME before TLS on an export that requires it (the
    /// protocol's only answer is to close).
    #[error("client chose an export without starting TLS, which this export requires")]
    TlsRequired,
}

/// What the shell does after one handshake step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Read `n` more bytes, then call [`Handshake::on_bytes`] with them.
    Read(usize),
    /// Send `bytes`, then read `n` more.
    SendThenRead(Vec<u8>, usize),
    /// Send `bytes`, then enter transmission.
    Transmit(Vec<u8>),
    /// Send `bytes` (possibly none), then close.
    Close(Vec<u8>),
    /// Send `bytes` (the STARTTLS acknowledgement), then run the TLS
    /// handshake as the server, call [`Handshake::tls_started`] and read
    /// 16 bytes (the next option header) through TLS.
    StartTls(Vec<u8>),
}

/// Whether the export is served only over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsRule {
    /// TLS is not offered (a root-only socket, or an explicitly insecure
    /// address).
    Off,
    /// Every option but STARTTLS and ABORT is refused until TLS runs.
    Required {
        /// The TLS handshake has completed.
        started: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    ClientFlags,
    OptionHeader,
    OptionData { option: u32 },
    Done,
}

/// The server side of the fixed-newstyle handshake for one export.
#[derive(Debug, Clone)]
pub struct Handshake {
    export: ExportInfo,
    tls: TlsRule,
    stage: Stage,
    no_zeroes: bool,
    options_seen: u32,
}

impl Handshake {
    /// Starts a handshake; send [`greeting`] first, then read 4 bytes.
    pub fn new(export: ExportInfo) -> Handshake {
        Handshake {
            export,
            tls: TlsRule::Off,
            stage: Stage::ClientFlags,
            no_zeroes: false,
            options_seen: 0,
        }
    }

    /// Starts a handshake for an export served only over TLS (the
    /// protocol's "TLS-only" server mode): until the client's STARTTLS
    /// has run, every option but STARTTLS and ABORT is refused with
    /// `NBD_REP_ERR_TLS_REQD`, and a plain `NBD_OPT_EXPORT_NAME` closes.
    pub fn requiring_tls(export: ExportInfo) -> Handshake {
        Handshake {
            tls: TlsRule::Required { started: false },
            ..Handshake::new(export)
        }
    }

    /// The shell completed the TLS handshake that [`Next::StartTls`]
    /// asked for; the next read (16 bytes) is an option header.
    pub fn tls_started(&mut self) {
        if let TlsRule::Required { started } = &mut self.tls {
            *started = true;
        }
    }

    /// Whether options are still refused until TLS runs.
    fn awaiting_tls(&self) -> bool {
        self.tls == TlsRule::Required { started: false }
    }

    /// Bytes to read before the first call to [`Handshake::on_bytes`].
    pub fn first_read() -> usize {
        4
    }

    /// Feeds exactly the bytes the previous step asked for.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Result<Next, HandshakeError> {
        match self.stage {
            Stage::ClientFlags => {
                let f = be_u32(bytes, 0);
                if f & C_FIXED_NEWSTYLE == 0 {
                    self.stage = Stage::Done;
                    return Err(HandshakeError::NotFixedNewstyle(f));
                }
                if f & !(C_FIXED_NEWSTYLE | C_NO_ZEROES) != 0 {
                    self.stage = Stage::Done;
                    return Err(HandshakeError::UnknownClientFlags(f));
                }
                self.no_zeroes = f & C_NO_ZEROES != 0;
                self.stage = Stage::OptionHeader;
                Ok(Next::Read(16))
            }
            Stage::OptionHeader => {
                let magic = be_u64(bytes, 0);
                if magic != OPT_MAGIC {
                    self.stage = Stage::Done;
                    return Err(HandshakeError::BadOptionMagic(magic));
                }
                self.options_seen += 1;
                if self.options_seen > MAX_OPTIONS {
                    self.stage = Stage::Done;
                    return Err(HandshakeError::TooManyOptions);
                }
                let option = be_u32(bytes, 8);
                let len = be_u32(bytes, 12);
                if len > MAX_OPTION_LEN {
                    self.stage = Stage::Done;
                    return Err(HandshakeError::OptionTooLong(len));
                }
                if len == 0 {
                    return Ok(self.option(option, &[]));
                }
                self.stage = Stage::OptionData { option };
                Ok(Next::Read(len as usize))
            }
            Stage::OptionData { option } => {
                self.stage = Stage::OptionHeader;
                let next = self.option(option, bytes);
                if let Next::Transmit(_) = next {
                    return Ok(next);
                }
                if let (OPT_EXPORT_NAME, Next::Close(_)) = (option, &next) {
                    if self.awaiting_tls() {
                        return Err(HandshakeError::TlsRequired);
                    }
                    return Err(HandshakeError::UnknownExport(
                        String::from_utf8_lossy(bytes).into_owned(),
                    ));
                }
                Ok(next)
            }
            Stage::Done => Ok(Next::Close(Vec::new())),
        }
    }

    fn serves(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.export.name.as_bytes()
    }

    fn option(&mut self, option: u32, data: &[u8]) -> Next {
        self.stage = Stage::OptionHeader;
        let mut out = Vec::new();
        match (self.tls, option) {
            (TlsRule::Required { started: false }, OPT_STARTTLS) => {
                if !data.is_empty() {
                    option_reply(&mut out, option, REP_ERR_INVALID, b"STARTTLS takes no data");
                    return Next::SendThenRead(out, 16);
                }
                option_reply(&mut out, option, REP_ACK, &[]);
                return Next::StartTls(out);
            }
            (TlsRule::Required { started: true }, OPT_STARTTLS) => {
                option_reply(&mut out, option, REP_ERR_INVALID, b"TLS is already running");
                return Next::SendThenRead(out, 16);
            }
            (TlsRule::Required { started: false }, OPT_EXPORT_NAME) => {
                self.stage = Stage::Done;
                return Next::Close(Vec::new());
            }
            (TlsRule::Required { started: false }, o) if o != OPT_ABORT => {
                option_reply(
                    &mut out,
                    option,
                    REP_ERR_TLS_REQD,
                    b"this export is served only over TLS: connect with nbds:// and a client certificate",
                );
                return Next::SendThenRead(out, 16);
            }
            _ => {}
        }
        match option {
            OPT_EXPORT_NAME => {
                self.stage = Stage::Done;
                if !self.serves(data) || self.export.refusal.is_some() {
                    return Next::Close(Vec::new());
                }
                out.extend_from_slice(&self.export.size.to_be_bytes());
                out.extend_from_slice(&self.export.transmission_flags().to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                Next::Transmit(out)
            }
            OPT_ABORT => {
                self.stage = Stage::Done;
                option_reply(&mut out, option, REP_ACK, &[]);
                Next::Close(out)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(&mut out, option, REP_ERR_INVALID, b"LIST takes no data");
                } else {
                    let name = self.export.name.as_bytes();
                    let mut body = Vec::with_capacity(4 + name.len());
                    // Export names are short (validated); a length never past u32.
                    let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(name);
                    option_reply(&mut out, option, REP_SERVER, &body);
                    option_reply(&mut out, option, REP_ACK, &[]);
                }
                Next::SendThenRead(out, 16)
            }
            OPT_INFO | OPT_GO => {
                match parse_info_request(data) {
                    Err(why) => {
                        option_reply(&mut out, option, REP_ERR_INVALID, why.as_bytes());
                    }
                    Ok((name, requests)) if !self.serves(name) => {
                        let _ = requests;
                        let text = format!(
                            "no export named `{}`; this server serves `{}`",
                            String::from_utf8_lossy(name),
                            self.export.name
                        );
                        option_reply(&mut out, option, REP_ERR_UNKNOWN, text.as_bytes());
                    }
                    Ok(_) if self.export.refusal.is_some() => {
                        let text = self.export.refusal.clone().unwrap_or_default();
                        option_reply(&mut out, option, REP_ERR_POLICY, text.as_bytes());
                    }
                    Ok((_, requests)) => {
                        self.info_replies(&mut out, option, &requests);
                        option_reply(&mut out, option, REP_ACK, &[]);
                        if option == OPT_GO {
                            self.stage = Stage::Done;
                            return Next::Transmit(out);
                        }
                    }
                }
                Next::SendThenRead(out, 16)
            }
            _ => {
                // STARTTLS, STRUCTURED_REPLY, meta contexts, extended
                // headers: refused, and every client carries on without.
                option_reply(
                    &mut out,
                    option,
                    REP_ERR_UNSUP,
                    b"not supported by this server",
                );
                Next::SendThenRead(out, 16)
            }
        }
    }

    fn info_replies(&self, out: &mut Vec<u8>, option: u32, requests: &[u16]) {
        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&self.export.size.to_be_bytes());
        export.extend_from_slice(&self.export.transmission_flags().to_be_bytes());
        option_reply(out, option, REP_INFO, &export);
        // Block sizes are always sent: the server has constraints and a
        // client that did not ask still gets them (the protocol allows it).
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&1u32.to_be_bytes());
        bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        option_reply(out, option, REP_INFO, &bs);
        if requests.contains(&INFO_NAME) {
            let mut b = INFO_NAME.to_be_bytes().to_vec();
            b.extend_from_slice(self.export.name.as_bytes());
            option_reply(out, option, REP_INFO, &b);
        }
        if requests.contains(&INFO_DESCRIPTION) {
            let mut b = INFO_DESCRIPTION.to_be_bytes().to_vec();
            b.extend_from_slice(self.export.description.as_bytes());
            option_reply(out, option, REP_INFO, &b);
        }
    }
}

fn option_reply(out: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) {
    out.extend_from_slice(&REP_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    // Replies are short texts and names; a length never past u32.
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
}

fn parse_info_request(data: &[u8]) -> Result<(&[u8], Vec<u16>), &'static str> {
    if data.len() < 6 {
        return Err("INFO/GO data shorter than its fixed fields");
    }
    let name_len = be_u32(data, 0) as usize;
    let rest = &data[4..];
    if rest.len() < name_len.saturating_add(2) {
        return Err("INFO/GO name length runs past the option");
    }
    let name = &rest[..name_len];
    let count = u16::from_be_bytes([rest[name_len], rest[name_len + 1]]) as usize;
    let list = &rest[name_len + 2..];
    if list.len() != count * 2 {
        return Err("INFO/GO request count does not match the option length");
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok((name, requests))
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_be_bytes(x)
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    u16::from_be_bytes(x)
}

/// One valid request, ready to run against the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
    },
    /// Write `data` at `offset`; durable before the reply if `fua`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The payload.
        data: Vec<u8>,
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// The client no longer needs the range (it may read back anything).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write zeroes over the range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
}

/// What the parser found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A valid request.
    Request {
        /// The client's cookie, echoed in the reply.
        cookie: u64,
        /// What to do.
        op: Op,
    },
    /// A well-framed request that is refused: reply with `errno`.
    Refuse {
        /// The client's cookie.
        cookie: u64,
        /// Error to reply with.
        errno: u32,
        /// Why, for the log.
        why: String,
    },
    /// NBD_CMD_DISC: finish outstanding replies, then close.
    Disconnect,
    /// The stream cannot be followed any more: close without a reply.
    Abort(FrameError),
}

/// A framing error: nothing after it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The request magic was wrong.
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC")]
    BadMagic(u32),
    /// A write payload larger than the announced maximum: reading it to
    /// stay in step would let a client make the server buffer anything.
    #[error("write of {0} bytes is larger than the {MAX_PAYLOAD}-byte maximum")]
    PayloadTooLarge(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseState {
    Header,
    /// A write's payload is awaited; `refuse` says the request is
    /// well framed but invalid (the payload is read and thrown away).
    Payload {
        cookie: u64,
        offset: u64,
        length: u32,
        fua: bool,
        refuse: Option<u32>,
    },
    Closed,
}

/// The transmission-phase request stream of one connection.
#[derive(Debug, Clone)]
pub struct RequestParser {
    size: u64,
    read_only: bool,
    state: ParseState,
    refuse_why: String,
}

impl RequestParser {
    /// A parser for an export of `size` bytes.
    pub fn new(size: u64, read_only: bool) -> RequestParser {
        RequestParser {
            size,
            read_only,
            state: ParseState::Header,
            refuse_why: String::new(),
        }
    }

    /// Bytes the parser needs before it can say anything more.
    pub fn wanted(&self) -> usize {
        match self.state {
            ParseState::Header => REQUEST_LEN,
            ParseState::Payload { length, .. } => length as usize,
            ParseState::Closed => 0,
        }
    }

    /// Parses from the front of `input`: returns the bytes consumed and the
    /// event found, if any. `(0, None)` means more input is needed; a write
    /// header alone is consumed with no event (its payload comes next).
    pub fn next(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        match self.state {
            ParseState::Closed => (0, None),
            ParseState::Header => match input.get(..REQUEST_LEN) {
                None => (0, None),
                Some(hdr) => (REQUEST_LEN, self.header(hdr)),
            },
            ParseState::Payload { length, .. } => match input.get(..length as usize) {
                None => (0, None),
                Some(data) => (length as usize, self.take_payload(data.to_vec())),
            },
        }
    }

    /// The length of the write payload the parser waits for, if it waits
    /// for one: a caller may read it into a buffer of its own and hand it
    /// over with [`RequestParser::take_payload`] instead of through
    /// [`RequestParser::next`].
    pub fn payload_wanted(&self) -> Option<usize> {
        match self.state {
            ParseState::Payload { length, .. } => Some(length as usize),
            _ => None,
        }
    }

    /// Takes the awaited write payload as held elsewhere by the caller
    /// (in a kernel pipe): the event is the one [`RequestParser::take_payload`]
    /// would give with the data left empty; the caller carries the
    /// [`RequestParser::payload_wanted`] bytes beside it. `None` if no
    /// payload was awaited.
    pub fn take_payload_apart(&mut self) -> Option<Event> {
        let ParseState::Payload {
            cookie,
            offset,
            fua,
            refuse,
            ..
        } = self.state
        else {
            return None;
        };
        self.state = ParseState::Payload {
            cookie,
            offset,
            length: 0,
            fua,
            refuse,
        };
        self.take_payload(Vec::new())
    }

    /// Hands over the awaited write payload as an owned buffer (its data
    /// becomes the request's, not copied). `None` if no payload was
    /// awaited or `data` is not exactly [`RequestParser::payload_wanted`]
    /// bytes long; the parser's state is then unchanged.
    pub fn take_payload(&mut self, data: Vec<u8>) -> Option<Event> {
        let ParseState::Payload {
            cookie,
            offset,
            length,
            fua,
            refuse,
        } = self.state
        else {
            return None;
        };
        if data.len() != length as usize {
            return None;
        }
        self.state = ParseState::Header;
        Some(match refuse {
            Some(errno) => Event::Refuse {
                cookie,
                errno,
                why: std::mem::take(&mut self.refuse_why),
            },
            None => Event::Request {
                cookie,
                op: Op::Write { offset, data, fua },
            },
        })
    }

    /// Whether the stream was closed (DISC or a framing error).
    pub fn closed(&self) -> bool {
        self.state == ParseState::Closed
    }

    fn refuse(&mut self, cookie: u64, errno: u32, why: String) -> Option<Event> {
        Some(Event::Refuse { cookie, errno, why })
    }

    /// Handles one header; `None` means a write payload is now awaited.
    fn header(&mut self, h: &[u8]) -> Option<Event> {
        let magic = be_u32(h, 0);
        if magic != REQUEST_MAGIC {
            self.state = ParseState::Closed;
            return Some(Event::Abort(FrameError::BadMagic(magic)));
        }
        let fl = be_u16(h, 4);
        let kind = be_u16(h, 6);
        let cookie = be_u64(h, 8);
        let offset = be_u64(h, 16);
        let length = be_u32(h, 24);
        let fua = fl & CMD_FLAG_FUA != 0;
        let in_range = offset
            .checked_add(u64::from(length))
            .is_some_and(|end| end <= self.size);
        let range_why = || {
            format!(
                "range {offset}+{length} runs past the end of the {}-byte export",
                self.size
            )
        };
        if kind == CMD_WRITE {
            if length > MAX_PAYLOAD {
                self.state = ParseState::Closed;
                return Some(Event::Abort(FrameError::PayloadTooLarge(length)));
            }
            let refuse = if fl & !CMD_FLAG_FUA != 0 {
                self.refuse_why = format!("write with unsupported flags {fl:#x}");
                Some(errno::EINVAL)
            } else if self.read_only {
                self.refuse_why = "write to a read-only export".into();
                Some(errno::EPERM)
            } else if !in_range {
                self.refuse_why = range_why();
                Some(errno::EINVAL)
            } else {
                None
            };
            if length == 0 {
                // Nothing follows; a zero-length write is valid and empty.
                return match refuse {
                    Some(e) => {
                        let why = std::mem::take(&mut self.refuse_why);
                        self.refuse(cookie, e, why)
                    }
                    None => Some(Event::Request {
                        cookie,
                        op: Op::Write {
                            offset,
                            data: Vec::new(),
                            fua,
                        },
                    }),
                };
            }
            self.state = ParseState::Payload {
                cookie,
                offset,
                length,
                fua,
                refuse,
            };
            return None;
        }
        let allowed = match kind {
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            CMD_TRIM => CMD_FLAG_FUA,
            _ => 0,
        };
        if fl & !allowed != 0 {
            return self.refuse(
                cookie,
                errno::EINVAL,
                format!("command {kind} with unsupported flags {fl:#x}"),
            );
        }
        match kind {
            CMD_READ => {
                if length > MAX_PAYLOAD {
                    self.refuse(
                        cookie,
                        errno::EINVAL,
                        format!(
                            "read of {length} bytes is larger than the {MAX_PAYLOAD}-byte maximum"
                        ),
                    )
                } else if !in_range {
                    self.refuse(cookie, errno::EINVAL, range_why())
                } else {
                    Some(Event::Request {
                        cookie,
                        op: Op::Read { offset, length },
                    })
                }
            }
            CMD_DISC => {
                self.state = ParseState::Closed;
                Some(Event::Disconnect)
            }
            CMD_FLUSH => {
                if offset != 0 || length != 0 {
                    self.refuse(cookie, errno::EINVAL, "flush with a range".into())
                } else {
                    Some(Event::Request {
                        cookie,
                        op: Op::Flush,
                    })
                }
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                if self.read_only {
                    self.refuse(cookie, errno::EPERM, "write to a read-only export".into())
                } else if !in_range {
                    self.refuse(cookie, errno::EINVAL, range_why())
                } else if kind == CMD_TRIM {
                    Some(Event::Request {
                        cookie,
                        op: Op::Trim {
                            offset,
                            length,
                            fua,
                        },
                    })
                } else {
                    Some(Event::Request {
                        cookie,
                        op: Op::WriteZeroes {
                            offset,
                            length,
                            fua,
                        },
                    })
                }
            }
            other => self.refuse(
                cookie,
                errno::EINVAL,
                format!("unknown or unsupported command {other}"),
            ),
        }
    }
}

/// A simple reply header (the read data, if any, follows it).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; REPLY_LEN] {
    let mut out = [0u8; REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

#[cfg(test)]
mod tests;
