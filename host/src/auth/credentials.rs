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

use crate::config::{PasswordHash, REALM, TokenHash, Users};

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
        let expected = stored.map(|h| *h.bytes()).unwrap_or([0; 16]);
        let verified = constant_time_eq(PasswordHash::of(user, password).bytes(), &expected);
        (user.to_owned(), verified && stored.is_some())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let presented = TokenHash::of(rest.trim());
        // Every stored token is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (user, credentials) in users {
            if let Some(token) = &credentials.token
                && constant_time_eq(token.bytes(), presented.bytes())
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
        let ha1 = stored.map(|h| hex(h.bytes())).unwrap_or_default();
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, PasswordHash, TokenHash};

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
        let ha1 = hex(PasswordHash::of("alice", "secret").bytes());
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
        let ha1 = hex(PasswordHash::of("alice", "secret").bytes());
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
}
