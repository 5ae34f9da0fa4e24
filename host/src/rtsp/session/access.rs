//! Who may read or publish: the access lists and credentials a request is checked against, and
//! the route a reader's request may have opened for it.

use super::*;

impl Connection {
    /// The route a DESCRIBE or a reader's first SETUP asks to read, if [`Connection::handle`]
    /// will let this request read it: the route exists or a pattern makes it, the access lists
    /// let the peer in, and the credentials are right. The server starts an on-demand route's
    /// source (a pattern makes the route) for such a request only, so that a client without
    /// credentials cannot make it pull from an origin. Judged without side effects: `handle`
    /// checks the request again and counts what it finds.
    pub fn route_to_open(
        &self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        now: Instant,
    ) -> Option<String> {
        let reads = self.publishing.is_none()
            && match request.method() {
                Method::Describe => true,
                Method::Setup => self.session.is_none(),
                _ => false,
            };
        if !reads {
            return None;
        }
        let name = route_name(request.request_uri()?)?;
        if !ctx.router.knows(name) {
            return None;
        }
        let policy = ctx.router.policy(name);
        if !ctx.auth.permits(ctx.peer.ip(), policy.as_deref()) {
            return None;
        }
        let nonce = self
            .nonce
            .as_ref()
            .filter(|n| now.saturating_duration_since(n.issued) <= NONCE_LIFETIME);
        let login = login(request, ctx, nonce, now);
        (ctx.auth.would_authorize(policy.as_deref(), false, &login) && ctx.clients.admits().is_ok())
            .then(|| name.to_owned())
    }

    /// The route `name` for a reader: it exists or a pattern makes it, the access lists let the
    /// peer in, the request's credentials are right and the server admits one more reader,
    /// checked in that order before the route is looked up (a pattern makes it only for such a
    /// request, see [`Connection::route_to_open`]). The reader's place is taken at PLAY.
    pub(super) fn readable(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        name: &str,
        now: Instant,
    ) -> Result<Arc<Stream>, Refusal> {
        if !ctx.router.knows(name) {
            return Err(no_route(name));
        }
        permitted(ctx, name)?;
        self.authorize(request, ctx, name, false, now)?;
        ctx.clients.admits().map_err(too_full)?;
        ctx.router.stream(name).ok_or_else(|| no_route(name))
    }

    /// Checks the request's credentials for reading (or `publish`ing to) `route`.
    pub(super) fn authorize(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        route: &str,
        publish: bool,
        now: Instant,
    ) -> Result<Option<String>, Refusal> {
        let expired = self
            .nonce
            .as_ref()
            .is_some_and(|n| now.saturating_duration_since(n.issued) > NONCE_LIFETIME);
        if expired || self.nonce.is_none() {
            self.nonce = Some(Nonce::new(now));
        }
        let Some(nonce) = &self.nonce else {
            return Err(Refusal::new(
                StatusCode::InternalServerError,
                "Internal Server Error",
            ));
        };
        let unauthorized = || Refusal::new(StatusCode::Unauthorized, "Unauthorized");
        let login = login(request, ctx, Some(nonce), now);
        let policy = ctx.router.policy(route);
        let outcome = ctx.auth.authorize(policy.as_deref(), publish, &login);
        self.stale = matches!(outcome, Err(AuthError::Stale)) && login.header.is_some();
        match outcome {
            Ok(user) => Ok(user),
            Err(AuthError::Missing | AuthError::Stale) => Err(unauthorized()),
            Err(AuthError::Throttled) => Err(Refusal::new(
                StatusCode::Forbidden,
                "Forbidden (too many failed logins from this address; try again in a minute)",
            )),
            Err(err) => {
                self.auth_failures += 1;
                tracing::info!(
                    peer = %ctx.peer,
                    route,
                    failures = self.auth_failures,
                    "RTSP credentials refused: {err}"
                );
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    Err(Refusal::new(
                        StatusCode::Forbidden,
                        "Forbidden (too many failed attempts)",
                    ))
                } else {
                    Err(unauthorized())
                }
            }
        }
    }
}

/// What `request` presents to log in, answering this connection's Digest challenge (`nonce`; none
/// yet: a Digest answer cannot be right).
fn login<'a>(
    request: &'a Request<Vec<u8>>,
    ctx: &Context<'_>,
    nonce: Option<&'a Nonce>,
    now: Instant,
) -> Login<'a> {
    let method = match request.method() {
        Method::Describe => "DESCRIBE",
        Method::Setup => "SETUP",
        Method::Announce => "ANNOUNCE",
        _ => "",
    };
    let request_uri = request.request_uri().map_or("", |u| u.as_str());
    Login {
        peer: ctx.peer.ip(),
        header: request.header(&headers::AUTHORIZATION).map(|v| v.as_str()),
        method,
        digest: nonce.map(|nonce| auth::DigestChallenge {
            nonce: &nonce.value,
            request_uri,
            last_nc: &nonce.last_nc,
        }),
        now,
    }
}

/// Whether `peer` may use `route`: a route it may not use gets 403.
pub(super) fn permitted(ctx: &Context<'_>, route: &str) -> Result<(), Refusal> {
    if ctx
        .auth
        .permits(ctx.peer.ip(), ctx.router.policy(route).as_deref())
    {
        Ok(())
    } else {
        tracing::info!(peer = %ctx.peer, route, "RTSP request refused by the access list");
        Err(Refusal::new(StatusCode::Forbidden, "Forbidden"))
    }
}

/// A reader the server has no place for: over `max_clients` or `max_bandwidth_kbps` (453), or
/// shutting down (503).
pub(super) fn too_full(full: Full) -> Refusal {
    match full {
        Full::Draining => Refusal::new(
            StatusCode::ServiceUnavailable,
            format!("Service Unavailable ({full})"),
        ),
        _ => Refusal::new(
            StatusCode::NotEnoughBandwidth,
            format!("Not Enough Bandwidth ({full})"),
        ),
    }
}

fn no_route(name: &str) -> Refusal {
    Refusal::new(
        StatusCode::NotFound,
        format!("Not Found (no route `{name}`)"),
    )
}
