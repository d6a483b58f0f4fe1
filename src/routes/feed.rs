//! `GET /ws`, the live feed (DESIGN.md section 10), and `POST /ws/ticket`, its tickets.
//!
//! A connection authenticates before the upgrade, with (first match wins) an
//! `Authorization: Bearer` header, a `?ticket=` from `POST /ws/ticket`, or the offered
//! subprotocol `tally.bearer.<access token>` beside `tally.v1` (browsers cannot set headers).
//! It is registered with the hub (`feed::Hub`, which applies the caps) before the upgrade too,
//! so every refusal is a problem+json reply.
//!
//! Then each event of the caller's accounts (every event for an admin) is one text message, the
//! JSON of a `GET /events` item, in cursor order. With `?after=<cursor>` the connection first
//! reads what it missed from the log (`store::events::read_page`), goes live, reads again up to
//! the position it went live at, and skips every live event at or before the last cursor it
//! sent: no gap, no duplicate. Without `after` it starts at the live position.
//!
//! Close codes: 1000 when the client closes; 1001 on shutdown and 4008 when the client fell
//! `feed.buffer_messages` behind, both with the reason `after=<last cursor sent>` (prefixed by
//! a word), to resume from; 4000 when two heartbeats went unanswered; 1011 when the database
//! failed during a catch-up.

use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::{JwtKeys, Principal};
use crate::error::ApiError;
use crate::feed::{CloseCause, Connect, Disconnect, Frame, GoLive, Hub, Refusal, Registration};
use crate::store::events::{read_page, EventCursor, Scope};
use crate::telemetry::names;

/// The subprotocol of the feed's messages; the server answers it.
pub const PROTOCOL: &str = "tally.v1";
/// The offered subprotocol that carries an access token: `tally.bearer.<token>`.
const BEARER_PROTOCOL_PREFIX: &str = "tally.bearer.";
/// Events per catch-up read.
const CATCH_UP_PAGE: i64 = 500;
/// The longest a close frame may wait for a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Close codes of the feed (RFC 6455 leaves 4000-4999 to applications).
pub const CLOSE_HEARTBEAT: u16 = 4000;
pub const CLOSE_SLOW: u16 = 4008;
/// The biggest message a client may send (the feed only expects control frames).
const MAX_CLIENT_FRAME_BYTES: usize = 4096;

/// The feed's state in `AppState`: the hub of this instance.
#[derive(Clone)]
pub struct Feed {
    pub hub: Addr<Hub>,
}

/// `GET /ws`, outside the bearer-authenticated scope (it authenticates itself).
pub fn configure_socket(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/ws").route(web::get().to(connect)));
}

/// `POST /ws/ticket`, inside the bearer-authenticated scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/ws/ticket").route(web::post().to(ticket)));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConnectQuery {
    /// Resume after this cursor (`<tx>.<seq>`, from an event or a close reason): every event
    /// after it is sent first, then live ones. Without it the feed starts at the live position.
    after: Option<String>,
    /// A ticket from `POST /api/v1/ws/ticket`, for clients that can set neither the
    /// `Authorization` header nor a subprotocol.
    ticket: Option<String>,
}

/// Opens the live feed: a WebSocket (subprotocol `tally.v1`) on which every event that touches
/// the caller's accounts (every event for an admin) arrives as one text message, the JSON of a
/// `GET /events` item, in cursor order, as it commits on any instance.
///
/// Authentication, before the upgrade: `Authorization: Bearer <access token>`, or `?ticket=`
/// from `POST /ws/ticket`, or the offered subprotocols `tally.v1, tally.bearer.<access token>`.
/// `?after=<cursor>` resumes without a gap or a duplicate. The server pings every
/// `feed.heartbeat_s`. Close codes: 1000 (the client closed), 1001 (shutdown) and 4008 (the
/// client fell `feed.buffer_messages` events behind), both with the reason `... after=<last
/// cursor sent>` to resume from, 4000 (heartbeats unanswered), 1011 (database failure).
#[utoipa::path(
    get, path = "/api/v1/ws", tag = "events", security(("bearer" = [])),
    params(ConnectQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "An invalid WebSocket handshake", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token or ticket", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad after", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket handshake", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many feed connections for this user (too_many_connections), or rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The instance's feed is full or shutting down (feed_full)", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    query: web::Query<ConnectQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let principal = authenticate(&req, &keys, &state, query.ticket.as_deref())?;
    // The access log names the user.
    req.extensions_mut().insert(principal);
    let after = match query.after.as_deref().map(str::parse::<EventCursor>) {
        None => None,
        Some(Ok(after)) => Some(after),
        Some(Err(error)) => {
            return Err(ApiError::Validation(vec![crate::error::FieldError::new(
                "after",
                error.to_string(),
            )]))
        }
    };
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return Err(ApiError::UpgradeRequired);
    }
    let (response, session, stream) = actix_ws::handle_with_protocols(&req, body, &[PROTOCOL])
        .map_err(|error| {
            ApiError::MalformedRequest(format!("not a valid WebSocket handshake: {error}"))
        })?;
    let hub = state.feed.hub.clone();
    let registration = hub
        .send(Connect {
            user: principal.user.as_uuid(),
            admin: principal.is_admin(),
        })
        .await
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("the feed hub is gone: {error}")))?
        .map_err(|refusal| match refusal {
            Refusal::UserCap => ApiError::TooManyConnections,
            Refusal::InstanceCap | Refusal::ShuttingDown => ApiError::FeedFull,
        })?;
    let heartbeat = state.settings.feed.heartbeat();
    let connection = Connection {
        id: registration.id,
        hub,
        state: state.clone(),
        scope_user: (!principal.is_admin()).then(|| principal.user.as_uuid()),
        last_sent: after.unwrap_or_default(),
    };
    actix_web::rt::spawn(connection.serve(
        session,
        stream,
        registration,
        after.is_some(),
        heartbeat,
    ));
    Ok(response)
}

/// The caller, from the first credential present: the `Authorization` header, the ticket, or
/// the `tally.bearer.` subprotocol. Errors: 401 when none is present or the one present is
/// invalid or expired.
fn authenticate(
    req: &HttpRequest,
    keys: &JwtKeys,
    state: &AppState,
    ticket: Option<&str>,
) -> Result<Principal, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be 'Bearer <access token>'",
            ))?;
        return keys
            .verify(token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired access token"));
    }
    if let Some(ticket) = ticket {
        return keys
            .verify_ticket(ticket, state.clock.now())
            .map_err(|_| ApiError::Unauthorized("invalid or expired ticket"));
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find_map(|protocol| protocol.strip_prefix(BEARER_PROTOCOL_PREFIX));
    match offered {
        Some(token) => keys
            .verify(token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired access token")),
        None => Err(ApiError::Unauthorized(
            "authentication required: an Authorization header, a ticket, or the tally.bearer.<token> subprotocol",
        )),
    }
}

/// A ticket for `GET /ws?ticket=`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TicketBody {
    /// Opaque; pass it as `ticket`. Valid on every instance until `expires_at`, for any number
    /// of connections.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// → 200 `{ticket, expires_at}`: a short-lived ticket (`feed.ticket_ttl_s`, 30 s by default)
/// that opens the live feed as the caller, for clients that cannot send headers
/// (`GET /api/v1/ws?ticket=...`).
#[utoipa::path(
    post, path = "/api/v1/ws/ticket", tag = "events", security(("bearer" = [])),
    responses(
        (status = 200, description = "A ticket", body = TicketBody),
        (status = 401, description = "No valid access token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ticket(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let (ticket, expires_at) = keys
        .issue_ticket(
            principal,
            state.clock.now(),
            state.settings.feed.ticket_ttl_s,
        )
        .map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(TicketBody { ticket, expires_at }))
}

/// How a connection ended, which decides its close frame.
enum Ending {
    /// The client sent a close frame or went away.
    Client,
    /// The hub ended it (slow, or shutdown).
    Hub(CloseCause),
    /// Two heartbeats went unanswered.
    Heartbeat,
    /// The database failed during a catch-up.
    Database,
}

/// One feed connection after the upgrade.
struct Connection {
    id: u64,
    hub: Addr<Hub>,
    state: web::Data<AppState>,
    /// The user whose events it gets (`None`: every event, an admin).
    scope_user: Option<uuid::Uuid>,
    /// The cursor of the last event sent (or the one it started after).
    last_sent: EventCursor,
}

impl Connection {
    async fn serve(
        mut self,
        mut session: Session,
        stream: MessageStream,
        registration: Registration,
        resume: bool,
        heartbeat: Duration,
    ) {
        let Registration {
            mut deliveries,
            mut close,
            ..
        } = registration;
        let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME_BYTES);
        let ending: Result<std::convert::Infallible, Ending> = async {
            if resume {
                // What was missed, before going live (the buffer is not filling meanwhile).
                self.catch_up(&mut session, &mut close).await?;
            }
            let Some(position) = self.hub.send(GoLive { id: self.id }).await.ok().flatten()
            else {
                return Err((&mut close).await.map_or(Ending::Client, Ending::Hub));
            };
            if resume {
                // What committed while the first catch-up ran, up to where live events start.
                self.catch_up(&mut session, &mut close).await?;
            } else {
                self.last_sent = position;
            }
            let mut ticks = tokio::time::interval_at(
                tokio::time::Instant::now() + heartbeat,
                heartbeat,
            );
            let mut last_pong = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    cause = &mut close => {
                        return Err(cause.map_or(Ending::Client, Ending::Hub));
                    }
                    message = stream.recv() => match message {
                        Some(Ok(Message::Ping(bytes))) => {
                            if session.pong(&bytes).await.is_err() {
                                return Err(Ending::Client);
                            }
                        }
                        Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                        Some(Ok(Message::Close(_)) | Err(_)) | None => return Err(Ending::Client),
                        // The feed reads nothing else from its clients.
                        Some(Ok(_)) => {}
                    },
                    delivery = deliveries.recv() => {
                        // `None` only after the hub dropped the sender, and then `close` has the cause.
                        let Some(delivery) = delivery else { continue };
                        if delivery.cursor <= self.last_sent {
                            continue;
                        }
                        let sent = tokio::select! {
                            biased;
                            cause = &mut close => return Err(cause.map_or(Ending::Client, Ending::Hub)),
                            sent = session.text(delivery.text) => sent,
                        };
                        if sent.is_err() {
                            return Err(Ending::Client);
                        }
                        self.last_sent = delivery.cursor;
                        metrics::counter!(names::FEED_MESSAGES).increment(1);
                    }
                    _ = ticks.tick() => {
                        if last_pong.elapsed() > heartbeat * 2 {
                            return Err(Ending::Heartbeat);
                        }
                        if session.ping(b"").await.is_err() {
                            return Err(Ending::Client);
                        }
                    }
                }
            }
        }
        .await;
        let Err(ending) = ending;
        self.hub.do_send(Disconnect { id: self.id });
        let after = self.last_sent;
        let reason = match ending {
            Ending::Client => Some(CloseReason::from(CloseCode::Normal)),
            Ending::Hub(CloseCause::Slow) => Some(CloseReason {
                code: CloseCode::Other(CLOSE_SLOW),
                description: Some(format!("too slow; after={after}")),
            }),
            Ending::Hub(CloseCause::GoingAway) => Some(CloseReason {
                code: CloseCode::Away,
                description: Some(format!("going away; after={after}")),
            }),
            Ending::Heartbeat => Some(CloseReason {
                code: CloseCode::Other(CLOSE_HEARTBEAT),
                description: Some("heartbeat timeout".to_owned()),
            }),
            Ending::Database => Some(CloseReason {
                code: CloseCode::Error,
                description: Some(format!("database unavailable; after={after}")),
            }),
        };
        // A client that does not read cannot take its close frame either: bounded.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close(reason)).await;
    }

    /// Sends every event of the scope after `last_sent` that the log has now, page by page
    /// (each page read on a pooled connection that is returned before sending).
    async fn catch_up(
        &mut self,
        session: &mut Session,
        close: &mut tokio::sync::oneshot::Receiver<CloseCause>,
    ) -> Result<(), Ending> {
        loop {
            let page = {
                let client = self.state.pool.get().await.map_err(|_| Ending::Database)?;
                let scope = Scope {
                    user: self.scope_user,
                    types: None,
                };
                read_page(&**client, self.last_sent, CATCH_UP_PAGE, scope)
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "the feed's catch-up read failed");
                        Ending::Database
                    })?
            };
            let full = page.len() as i64 == CATCH_UP_PAGE;
            for event in page {
                let frame = Frame::render(event);
                let sent = tokio::select! {
                    biased;
                    cause = &mut *close => return Err(cause.map_or(Ending::Client, Ending::Hub)),
                    sent = session.text(frame.text) => sent,
                };
                sent.map_err(|_| Ending::Client)?;
                self.last_sent = frame.cursor;
                metrics::counter!(names::FEED_MESSAGES).increment(1);
            }
            if !full {
                return Ok(());
            }
        }
    }
}
