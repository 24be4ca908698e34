//! A minimal RESP client (blocking, one per relay thread): commands out, replies in, only what
//! the relay needs.

use std::fmt;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use super::dial::{timed_out, Dialer, Stream, CONNECT};

/// A Redis connection: commands out, RESP replies in. Only what the relay needs.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    pos: usize,
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Status(String),
    /// `-...`
    Error(String),
    /// `:...`
    Int(i64),
    /// `$...` (`None`: the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*...` (`None`: the null array).
    Array(Option<Vec<Self>>),
}

impl Reply {
    /// The reply, or the error Redis answered as an I/O error ([`Refused`] inside).
    pub fn ok(self) -> std::io::Result<Self> {
        match self {
            Self::Error(e) => Err(Refused::error(e)),
            r => Ok(r),
        }
    }
}

/// An error reply from Redis, carried in an `io::Error`.
#[derive(Debug)]
pub(super) struct Refused {
    /// Redis refused the credentials or what they allow: a wrong password or unknown user
    /// (`WRONGPASS`, any error answering `AUTH`), none given where one is needed (`NOAUTH`), or
    /// an ACL user without a command, key or channel the relay uses (`NOPERM`).
    pub(super) auth: bool,
    /// What Redis said (never the password: Redis does not repeat it).
    reply: String,
}

impl Refused {
    fn error(reply: String) -> std::io::Error {
        let auth = ["NOAUTH", "WRONGPASS", "NOPERM"]
            .iter()
            .any(|p| reply.starts_with(p));
        std::io::Error::other(Self { auth, reply })
    }

    /// Whether `e` is Redis refusing the credentials or their permissions.
    pub(super) fn is_auth(e: &std::io::Error) -> bool {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<Self>())
            .is_some_and(|r| r.auth)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redis answered: {}", self.reply)
    }
}

impl std::error::Error for Refused {}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &(self.buf.len() - self.pos))
            .finish()
    }
}

impl Conn {
    /// Connects (TLS included) and, with credentials, authenticates before anything else:
    /// `AUTH user password` (an ACL user) or `AUTH password`. Any error answering it is a
    /// [`Refused`] for the credentials.
    pub(super) fn open(
        dialer: &Dialer,
        auth: Option<(Option<&str>, &str)>,
    ) -> std::io::Result<Self> {
        let mut conn = Self {
            stream: dialer.connect()?,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
        };
        if let Some((user, password)) = auth {
            let mut out = Vec::new();
            match user {
                Some(user) => {
                    Self::command(&mut out, &[b"AUTH", user.as_bytes(), password.as_bytes()])
                }
                None => Self::command(&mut out, &[b"AUTH", password.as_bytes()]),
            }
            conn.send(&out)?;
            if let Reply::Error(reply) = conn.wait_reply(CONNECT)? {
                return Err(std::io::Error::other(Refused { auth: true, reply }));
            }
        }
        Ok(conn)
    }

    /// Appends one command to `out` in RESP.
    pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Writes `bytes` (commands) and flushes them.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// The next reply; `Ok(None)` when the read timed out with nothing complete.
    pub fn reply(&mut self) -> std::io::Result<Option<Reply>> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf[self.pos..])? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(Some(reply));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if timed_out(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The reply to a command just sent, waiting through read timeouts up to `limit`.
    pub fn wait_reply(&mut self, limit: Duration) -> std::io::Result<Reply> {
        let end = Instant::now() + limit;
        loop {
            if let Some(r) = self.reply()? {
                return Ok(r);
            }
            if Instant::now() >= end {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
    }
}

/// One complete RESP reply at the start of `b` and its length; `None` if incomplete.
fn parse_reply(b: &[u8]) -> std::io::Result<Option<(Reply, usize)>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP reply");
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let Some(nl) = memchr::memmem::find(b, b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&b[1..nl]).map_err(|_| bad())?;
    let after = nl + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(line.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), after))),
        b':' => Ok(Some((Reply::Int(line.parse().map_err(|_| bad())?), after))),
        b'$' => {
            let n: i64 = line.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| bad())?;
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(b[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n: i64 = line.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse_reply(&b[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(bad()),
    }
}

/// Commands sent in one write; their replies are read back in order.
#[derive(Debug, Default)]
pub struct Pipeline {
    out: Vec<u8>,
    /// How many commands are in it.
    pub commands: usize,
}

impl Pipeline {
    /// Empties it for the next batch.
    pub fn clear(&mut self) {
        self.out.clear();
        self.commands = 0;
    }

    /// Appends one command.
    pub fn command(&mut self, args: &[&[u8]]) {
        Conn::command(&mut self.out, args);
        self.commands += 1;
    }

    /// Sends its commands in one write and reads their replies, failing on the first error.
    pub fn run(&self, conn: &mut Conn) -> std::io::Result<()> {
        conn.send(&self.out)?;
        for _ in 0..self.commands {
            conn.wait_reply(Duration::from_secs(5))?.ok()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        let b = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\nxyz\r\n+OK\r\n";
        let (r, used) = parse_reply(b).unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"message".to_vec())),
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Bulk(Some(b"xyz".to_vec())),
            ]))
        );
        assert_eq!(
            parse_reply(&b[used..]).unwrap().unwrap().0,
            Reply::Status("OK".into())
        );
        for cut in 0..used {
            assert!(parse_reply(&b[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert_eq!(parse_reply(b":-3\r\n").unwrap().unwrap().0, Reply::Int(-3));
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap().unwrap().0,
            Reply::Bulk(None)
        );
        assert!(parse_reply(b"?\r\n").is_err());
    }

    #[test]
    fn commands_are_written_in_resp() {
        let mut p = Pipeline::default();
        p.command(&[b"PUBLISH", b"c", b"x\r\ny"]);
        p.command(&[b"HSET", b"k", b"f", b""]);
        assert_eq!(p.commands, 2);
        assert_eq!(
            p.out,
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4\r\nx\r\ny\r\n\
              *4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$1\r\nf\r\n$0\r\n\r\n"
        );
    }
}
