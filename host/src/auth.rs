//! Credentials: RTSP Basic and Digest (RFC 2617, MD5, what VLC, ffmpeg, GStreamer and OpenCV send
//! from `rtsp://user:pass@host/...`), HTTP Basic, and bearer tokens (WHEP players, pushes, the API).
//!
//! Passwords are stored as the Digest HA1, `MD5(user:realm:password)` (what `wasmcast hash-password`
//! prints), so the config never holds a password and both schemes can be checked; tokens as their
//! SHA-256 (what `wasmcast new-token` prints). Comparisons take the same time whatever the input.
//! No sockets, no clock.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::listen::AddressKey;

/// The realm every challenge names; HA1 values depend on it.
pub const REALM: &str = "wasmcast";

/// A stored credential: the Digest HA1 of a user's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordHash([u8; 16]);

impl PasswordHash {
    /// The hash of `password` for `user`.
    pub fn of(user: &str, password: &str) -> PasswordHash {
        PasswordHash(Md5::digest(format!("{user}:{REALM}:{password}")).into())
    }

    /// Parses the `md5:HEX` form the config stores.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let hex = text.strip_prefix("md5:").ok_or_else(|| {
            "a password must be stored hashed as \"md5:…\"; run `wasmcast hash-password USER`"
                .to_owned()
        })?;
        let bytes = parse_hex::<16>(hex)
            .ok_or_else(|| "the hash after \"md5:\" must be 32 hex digits".to_owned())?;
        Ok(PasswordHash(bytes))
    }

    /// The `md5:HEX` form.
    pub fn to_config(&self) -> String {
        format!("md5:{}", hex(&self.0))
    }
}

/// A stored bearer token: its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the `sha256:HEX` form the config stores.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            "a token must be stored hashed as \"sha256:…\"; run `wasmcast new-token USER`"
                .to_owned()
        })?;
        let bytes = parse_hex::<32>(hex)
            .ok_or_else(|| "the hash after \"sha256:\" must be 64 hex digits".to_owned())?;
        Ok(TokenHash(bytes))
    }

    pub fn to_config(&self) -> String {
        format!("sha256:{}", hex(&self.0))
    }
}

/// What a user can log in with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<PasswordHash>,
    pub token: Option<TokenHash>,
}

impl From<PasswordHash> for Credentials {
    fn from(password: PasswordHash) -> Credentials {
        Credentials {
            password: Some(password),
            token: None,
        }
    }
}

/// Users by name.
pub type Users = BTreeMap<String, Credentials>;

/// What a Digest answer is checked against: the challenge's nonce, the URI of the request it
/// comes with, and the highest nonce count (`nc`) accepted with this nonce so far, so that a
/// recorded answer cannot be sent again.
#[derive(Debug)]
pub struct DigestChallenge<'a> {
    pub nonce: &'a str,
    pub request_uri: &'a str,
    pub last_nc: &'a std::sync::atomic::AtomicU32,
}

/// Checks an `Authorization` header against the users allowed here. `method` is the request's
/// method; `digest` what a Digest answer must match (`None` where no Digest challenge was sent,
/// as over HTTP: a Digest answer is refused there). Returns the user.
pub fn check(
    header: Option<&str>,
    users: &Users,
    allowed: &[String],
    method: &str,
    digest: Option<&DigestChallenge<'_>>,
) -> Result<String, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let (scheme, rest) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    let (user, verified) = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64
            .decode(rest.trim())
            .map_err(|_| AuthError::Malformed)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
        let stored = users.get(user).and_then(|c| c.password.as_ref());
        let expected = stored.map(|h| h.0).unwrap_or([0; 16]);
        let verified = constant_time_eq(&PasswordHash::of(user, password).0, &expected);
        (user.to_owned(), verified && stored.is_some())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let presented = TokenHash::of(rest.trim());
        // Every stored token is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (user, credentials) in users {
            if let Some(token) = &credentials.token
                && constant_time_eq(&token.0, &presented.0)
            {
                found = Some(user.clone());
            }
        }
        match found {
            Some(user) => (user, true),
            None => return Err(AuthError::Wrong("a bearer token".into())),
        }
    } else if scheme.eq_ignore_ascii_case("digest") {
        let params = digest_params(rest);
        let get = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .ok_or(AuthError::Malformed)
        };
        let user = get("username")?;
        let challenge = digest.ok_or(AuthError::Malformed)?;
        let nonce = challenge.nonce;
        if nonce.is_empty() || get("realm")? != REALM || get("nonce")? != nonce {
            return Err(AuthError::Stale);
        }
        let uri = get("uri")?;
        if !uri_matches(uri, challenge.request_uri) {
            return Err(AuthError::OtherUri(user.to_owned()));
        }
        let stored = users.get(user).and_then(|c| c.password.as_ref());
        let ha1 = stored.map(|h| hex(&h.0)).unwrap_or_default();
        let ha2 = hex(&Md5::digest(format!("{method}:{}", get("uri")?)));
        let (expected, nc) = match params.get("qop").map(String::as_str) {
            Some("auth") => {
                let nc_text = get("nc")?;
                let nc = u32::from_str_radix(nc_text, 16).map_err(|_| AuthError::Malformed)?;
                if nc <= challenge.last_nc.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(AuthError::Replayed(user.to_owned()));
                }
                let answer = format!("{ha1}:{nonce}:{nc_text}:{}:auth:{ha2}", get("cnonce")?);
                (answer, Some(nc))
            }
            _ => (format!("{ha1}:{nonce}:{ha2}"), None),
        };
        let expected = hex(&Md5::digest(expected));
        let verified =
            constant_time_eq(expected.as_bytes(), get("response")?.as_bytes()) && stored.is_some();
        if verified && let Some(nc) = nc {
            challenge
                .last_nc
                .store(nc, std::sync::atomic::Ordering::Relaxed);
        }
        (user.to_owned(), verified)
    } else {
        return Err(AuthError::Malformed);
    };
    if !verified {
        return Err(AuthError::Wrong(user));
    }
    if !allowed.contains(&user) {
        return Err(AuthError::NotAllowed(user));
    }
    Ok(user)
}

/// The RTSP `WWW-Authenticate` challenge: Digest, which every RTSP client answers (and which keeps
/// the password off the wire). Basic is still accepted from clients that send it unasked. `stale`
/// tells a client whose answer was to an expired nonce to answer the new one without asking its
/// user again (RFC 2617 3.2.1).
pub fn challenge(nonce: &str, stale: bool) -> String {
    let stale = if stale { ", stale=true" } else { "" };
    format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5{stale}")
}

/// Whether a Digest answer's `uri` names the request it came with: the same URL, or its path
/// (clients send either).
fn uri_matches(answer: &str, request: &str) -> bool {
    if answer == request {
        return true;
    }
    let path = request
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
        .unwrap_or("/");
    answer == path || answer.trim_end_matches('/') == request.trim_end_matches('/')
}

/// Why credentials were not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("unreadable Authorization header")]
    Malformed,
    #[error("a Digest answer to another (or an expired) challenge")]
    Stale,
    #[error("a Digest answer from `{0}` for another URI than the request's")]
    OtherUri(String),
    #[error("a Digest answer from `{0}` sent again (nonce count not above the last)")]
    Replayed(String),
    #[error("wrong password for `{0}`")]
    Wrong(String),
    #[error("`{0}` may not do this")]
    NotAllowed(String),
    #[error("too many failed logins from this address; try again in a minute")]
    Throttled,
}

/// Failed logins from one address, across connections and protocols, after which its attempts are
/// refused unchecked for the rest of the window: guessing passwords costs a minute per few tries.
pub const MAX_FAILED_LOGINS: u32 = 10;
pub const FAILED_LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at most; beyond, expired entries are forgotten first.
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

/// Counts failed logins per address (an IPv6 client by its /64, which it can fill with addresses
/// at will). Time is passed in.
///
/// Bounded and cheap under attack: at [`MAX_REMEMBERED_ADDRESSES`] the address whose window
/// started longest ago is forgotten, one per new address, found through a queue in window order
/// (O(1) amortized, never a scan of the table).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: std::collections::HashMap<AddressKey, (u32, std::time::Instant)>,
    /// Addresses by when their window started, oldest first; an entry whose window restarted
    /// since is stale and skipped.
    order: std::collections::VecDeque<(AddressKey, std::time::Instant)>,
}

impl LoginThrottle {
    /// Whether `ip` is refused now.
    pub fn blocked(&self, ip: std::net::IpAddr, now: std::time::Instant) -> bool {
        self.failures
            .get(&AddressKey::of(ip))
            .is_some_and(|(count, since)| {
                *count >= MAX_FAILED_LOGINS && now.duration_since(*since) < FAILED_LOGIN_WINDOW
            })
    }

    pub fn failed(&mut self, ip: std::net::IpAddr, now: std::time::Instant) {
        let key = AddressKey::of(ip);
        if !self.failures.contains_key(&key) {
            while self.failures.len() >= MAX_REMEMBERED_ADDRESSES {
                let Some((oldest, since)) = self.order.pop_front() else {
                    break;
                };
                if self.failures.get(&oldest).is_some_and(|e| e.1 == since) {
                    self.failures.remove(&oldest);
                }
            }
        }
        let entry = self.failures.entry(key).or_insert((0, now));
        if entry.0 == 0 || now.duration_since(entry.1) >= FAILED_LOGIN_WINDOW {
            *entry = (0, now);
            self.order.push_back((key, now));
        }
        entry.0 += 1;
        // Stale queue entries (windows that restarted) are dropped once they are the bulk of it.
        if self.order.len() > 2 * MAX_REMEMBERED_ADDRESSES {
            let failures = &self.failures;
            self.order
                .retain(|(key, since)| failures.get(key).is_some_and(|e| e.1 == *since));
        }
    }

    pub fn succeeded(&mut self, ip: std::net::IpAddr) {
        self.failures.remove(&AddressKey::of(ip));
    }

    /// Addresses remembered now.
    pub fn remembered(&self) -> usize {
        self.failures.len()
    }
}

fn digest_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = text.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let name = name
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, next)) => (value, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(name, value.trim().to_owned());
        rest = next.trim_start().trim_start_matches(',');
    }
    params
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Exactly `N` bytes written as `2 * N` hex digits.
fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        BTreeMap::from([
            (
                "alice".to_owned(),
                PasswordHash::of("alice", "secret").into(),
            ),
            (
                "robot".to_owned(),
                Credentials {
                    password: None,
                    token: Some(TokenHash::of("t0ken")),
                },
            ),
        ])
    }

    #[test]
    fn an_address_is_throttled_after_repeated_failures_for_a_while() {
        let mut throttle = LoginThrottle::default();
        let (ip, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = std::time::Instant::now();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(!throttle.blocked(ip, t0));
            throttle.failed(ip, t0);
        }
        assert!(throttle.blocked(ip, t0));
        assert!(!throttle.blocked(other, t0));
        assert!(!throttle.blocked(ip, t0 + FAILED_LOGIN_WINDOW));
        throttle.succeeded(ip);
        assert!(!throttle.blocked(ip, t0));
    }

    #[test]
    fn bearer_tokens_name_their_user() {
        let allowed = ["robot".to_owned()];
        assert_eq!(
            check(Some("Bearer t0ken"), &users(), &allowed, "POST", None),
            Ok("robot".into())
        );
        assert!(matches!(
            check(Some("Bearer nope"), &users(), &allowed, "POST", None),
            Err(AuthError::Wrong(_))
        ));
        let no_password = format!("Basic {}", BASE64.encode("robot:"));
        assert!(check(Some(&no_password), &users(), &allowed, "POST", None).is_err());
        let token = TokenHash::of("t0ken");
        assert_eq!(TokenHash::parse(&token.to_config()), Ok(token));
    }

    #[test]
    fn basic_right_and_wrong() {
        let allowed = ["alice".to_owned()];
        let right = format!("Basic {}", BASE64.encode("alice:secret"));
        assert_eq!(
            check(Some(&right), &users(), &allowed, "DESCRIBE", None),
            Ok("alice".into())
        );
        let wrong = format!("Basic {}", BASE64.encode("alice:nope"));
        assert_eq!(
            check(Some(&wrong), &users(), &allowed, "DESCRIBE", None),
            Err(AuthError::Wrong("alice".into()))
        );
        assert_eq!(
            check(None, &users(), &allowed, "DESCRIBE", None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check(Some(&right), &users(), &[], "DESCRIBE", None),
            Err(AuthError::NotAllowed("alice".into()))
        );
    }

    #[test]
    fn digest_as_rfc_2617_computes_it() {
        let ha1 = hex(&PasswordHash::of("alice", "secret").0);
        let ha2 = hex(&Md5::digest("DESCRIBE:rtsp://h/cam"));
        let response = hex(&Md5::digest(format!("{ha1}:abc:{ha2}")));
        let header = format!(
            "Digest username=\"alice\", realm=\"wasmcast\", nonce=\"abc\", uri=\"rtsp://h/cam\", response=\"{response}\""
        );
        let allowed = ["alice".to_owned()];
        let last_nc = std::sync::atomic::AtomicU32::new(0);
        let challenge = |nonce: &'static str, uri: &'static str| DigestChallenge {
            nonce,
            request_uri: uri,
            last_nc: &last_nc,
        };
        let check_with = |method, nonce, uri| {
            check(
                Some(&header),
                &users(),
                &allowed,
                method,
                Some(&challenge(nonce, uri)),
            )
        };
        assert_eq!(
            check_with("DESCRIBE", "abc", "rtsp://h/cam"),
            Ok("alice".into())
        );
        assert_eq!(
            check_with("DESCRIBE", "other", "rtsp://h/cam"),
            Err(AuthError::Stale)
        );
        assert!(check_with("PLAY", "abc", "rtsp://h/cam").is_err());
        assert_eq!(
            check_with("DESCRIBE", "abc", "rtsp://h/other"),
            Err(AuthError::OtherUri("alice".into())),
            "an answer for another URL"
        );
        assert_eq!(
            check_with("DESCRIBE", "", "rtsp://h/cam"),
            Err(AuthError::Stale),
            "never an empty nonce"
        );
        assert_eq!(
            check(Some(&header), &users(), &allowed, "DESCRIBE", None),
            Err(AuthError::Malformed),
            "no Digest where none was asked for"
        );
    }

    #[test]
    fn digest_with_qop_refuses_a_nonce_count_it_saw() {
        let ha1 = hex(&PasswordHash::of("alice", "secret").0);
        let ha2 = hex(&Md5::digest("SETUP:/cam/trackID=0"));
        let answer = |nc: &str| {
            let response = hex(&Md5::digest(format!("{ha1}:abc:{nc}:xyz:auth:{ha2}")));
            format!(
                "Digest username=\"alice\", realm=\"wasmcast\", nonce=\"abc\", uri=\"/cam/trackID=0\", qop=auth, nc={nc}, cnonce=\"xyz\", response=\"{response}\""
            )
        };
        let allowed = ["alice".to_owned()];
        let last_nc = std::sync::atomic::AtomicU32::new(0);
        let challenge = DigestChallenge {
            nonce: "abc",
            request_uri: "rtsp://h:8554/cam/trackID=0",
            last_nc: &last_nc,
        };
        let check_nc = |nc| {
            check(
                Some(&answer(nc)),
                &users(),
                &allowed,
                "SETUP",
                Some(&challenge),
            )
        };
        assert_eq!(check_nc("00000001"), Ok("alice".into()));
        assert_eq!(
            check_nc("00000001"),
            Err(AuthError::Replayed("alice".into()))
        );
        assert_eq!(check_nc("00000002"), Ok("alice".into()));
    }

    #[test]
    fn the_failed_login_table_stays_bounded_under_a_flood_of_addresses() {
        let mut throttle = LoginThrottle::default();
        let t0 = std::time::Instant::now();
        let attacker: std::net::IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..MAX_FAILED_LOGINS {
            throttle.failed(attacker, t0);
        }
        for i in 0..(3 * MAX_REMEMBERED_ADDRESSES as u32) {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            throttle.failed(ip, t0 + std::time::Duration::from_millis(1));
        }
        assert!(throttle.remembered() <= MAX_REMEMBERED_ADDRESSES);
        // Every address of one IPv6 /64 is one entry.
        for i in 0..20u128 {
            let ip = std::net::IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | i));
            throttle.failed(ip, t0);
        }
        assert!(throttle.blocked("2001:db8::ffff".parse().unwrap(), t0));
    }

    #[test]
    fn stored_form_round_trips() {
        let hash = PasswordHash::of("alice", "secret");
        assert_eq!(PasswordHash::parse(&hash.to_config()), Ok(hash));
        assert!(PasswordHash::parse("secret").is_err());
        assert!(PasswordHash::parse("md5:12").is_err());
    }
}
