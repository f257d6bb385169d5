//! Who may ask what of the HTTP API: the rule, pure and tested, that the
//! agent's HTTP server applies to every request before it reaches the
//! control handler.
//!
//! Two roles: [`Role::Read`] (status, metrics) and [`Role::Operator`]
//! (also move, failover, standby, maintenance, cleanup, fence, volume
//! commands). Each role's token is a file the operator writes; a request
//! presents one as `Authorization: Bearer TOKEN`.
//!
//! - An operator request always needs the operator token, on loopback too:
//!   the control socket is root's alone (mode 0600), and a port on
//!   loopback is open to every local user. Without `operator_token_file`
//!   operator requests over HTTP are refused; the `tandem` command on the
//!   node still works.
//! - A read needs a token (either role's) unless the API is on loopback
//!   and no read token is configured: then every local user can read
//!   status and metrics (as a node exporter's users can); set
//!   `read_token_file` to keep them to the token's holders.
//! - Tokens are compared through their BLAKE3 hashes, whose equality is
//!   constant-time: the time of a refusal says nothing of the token.

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read status and metrics.
    Read,
    /// Also change the cluster: move, failover, standby, fence...
    Operator,
}

/// Shortest token accepted from a file: a token guessed over the network
/// must be out of reach (16 random bytes written as 32 hex digits).
pub const MIN_TOKEN_BYTES: usize = 32;
/// Longest token read from a file or a request header.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// A role's token, kept as its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(blake3::Hash);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token a file holds (surrounding whitespace dropped), or why it
    /// is not one.
    pub fn from_file_text(text: &str) -> Result<Token, TokenError> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort { len: t.len() });
        }
        if t.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong { len: t.len() });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Token(blake3::hash(t.as_bytes())))
    }

    fn matches(&self, presented: &str) -> bool {
        // blake3::Hash's equality is constant-time.
        presented.len() <= MAX_TOKEN_BYTES && self.0 == blake3::hash(presented.as_bytes())
    }
}

/// Why a token file does not hold a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too short to be out of reach of guessing.
    #[error("the token is {len} characters; write at least {MIN_TOKEN_BYTES} random ones (e.g. `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'`)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Longer than any header would carry.
    #[error("the token is {len} characters; at most {MAX_TOKEN_BYTES}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Spaces or control characters inside: it could not travel in a header.
    #[error("the token holds spaces or control characters; write printable ASCII only")]
    NotPrintable,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token presented where one is needed (HTTP 401).
    #[error("a token is needed: send `Authorization: Bearer TOKEN`")]
    NoToken,
    /// A token that is neither role's (HTTP 401).
    #[error("the token is not valid here")]
    WrongToken,
    /// The read token presented for an operator request (HTTP 403).
    #[error("the read-only token cannot change the cluster: use the operator token")]
    ReadOnly,
    /// Operator requests are off over HTTP (HTTP 403).
    #[error("operator requests over HTTP are off: set [http] operator_token_file, or use `tandem` on the node")]
    OperatorOff,
}

/// The API's access rule for one listener.
#[derive(Debug, Clone)]
pub struct Access {
    /// Whether only this machine can reach the listener.
    pub loopback: bool,
    /// The read role's token, if configured.
    pub read: Option<Token>,
    /// The operator role's token, if configured.
    pub operator: Option<Token>,
}

impl Access {
    /// Whether a request needing `need`, presenting `presented` (the
    /// bearer token, if any), may go on; the role it was granted.
    pub fn authorize(&self, presented: Option<&str>, need: Role) -> Result<Role, Refusal> {
        let granted = match presented {
            Some(p) if self.operator.as_ref().is_some_and(|t| t.matches(p)) => Some(Role::Operator),
            Some(p) if self.read.as_ref().is_some_and(|t| t.matches(p)) => Some(Role::Read),
            Some(_) => return Err(Refusal::WrongToken),
            None => None,
        };
        match (need, granted) {
            (_, Some(Role::Operator)) => Ok(Role::Operator),
            (Role::Read, Some(Role::Read)) => Ok(Role::Read),
            (Role::Operator, Some(Role::Read)) => Err(Refusal::ReadOnly),
            (Role::Operator, None) if self.operator.is_none() => Err(Refusal::OperatorOff),
            (Role::Operator, None) => Err(Refusal::NoToken),
            (Role::Read, None) if self.loopback && self.read.is_none() => Ok(Role::Read),
            (Role::Read, None) => Err(Refusal::NoToken),
        }
    }
}

/// The token of an `Authorization` header's value (`Bearer TOKEN`, the
/// scheme in any case), if it is one.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "read-token-0123456789abcdef0123456789";
    const O: &str = "operator-token-0123456789abcdef012345";

    fn access(loopback: bool, read: bool, operator: bool) -> Access {
        let t = |on: bool, s: &str| on.then(|| Token::from_file_text(s).unwrap());
        Access {
            loopback,
            read: t(read, R),
            operator: t(operator, O),
        }
    }

    /// Every combination of listener, configured tokens, presented token
    /// and needed role, against the rule in the module's words.
    #[test]
    fn who_may_read_and_who_may_act() {
        use Refusal::*;
        use Role::*;
        for loopback in [true, false] {
            for read in [true, false] {
                for operator in [true, false] {
                    let a = access(loopback, read, operator);
                    // The operator token may do anything, wherever.
                    if operator {
                        assert_eq!(a.authorize(Some(O), Operator), Ok(Operator));
                        assert_eq!(a.authorize(Some(O), Read), Ok(Operator));
                        assert_eq!(a.authorize(None, Operator), Err(NoToken));
                    } else {
                        assert_eq!(a.authorize(None, Operator), Err(OperatorOff));
                        assert_eq!(a.authorize(Some(O), Operator), Err(WrongToken));
                    }
                    if read {
                        assert_eq!(a.authorize(Some(R), Read), Ok(Read));
                        assert_eq!(a.authorize(Some(R), Operator), Err(ReadOnly));
                    }
                    // Reading without a token: only on loopback with no
                    // read token configured.
                    let open = loopback && !read;
                    assert_eq!(a.authorize(None, Read).is_ok(), open, "{a:?}");
                    // A wrong token is refused even where none is needed.
                    assert_eq!(a.authorize(Some("guess"), Read), Err(WrongToken));
                    let long = "x".repeat(MAX_TOKEN_BYTES + 1);
                    assert_eq!(a.authorize(Some(&long), Read), Err(WrongToken));
                }
            }
        }
    }

    #[test]
    fn token_files_and_headers() {
        assert!(Token::from_file_text(&format!("  {R}\n")).is_ok());
        assert_eq!(
            Token::from_file_text("short\n"),
            Err(TokenError::TooShort { len: 5 })
        );
        assert_eq!(
            Token::from_file_text(&format!("{R} {R}")),
            Err(TokenError::NotPrintable)
        );
        assert!(matches!(
            Token::from_file_text(&"y".repeat(MAX_TOKEN_BYTES + 1)),
            Err(TokenError::TooLong { .. })
        ));
        assert_eq!(
            format!("{:?}", Token::from_file_text(R).unwrap()),
            "Token(..)"
        );
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
