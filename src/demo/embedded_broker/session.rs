//! The embedded broker's network side: the accept loop, one reader and one writer task per
//! connection, and the router (sessions, subscriptions, retained messages) they share.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Filter, LastWill, Packet, PubAck, PubAckReason, Publish,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    Unsubscribe,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::topics::{matches, valid_filter, valid_topic, Acl};
use super::MAX_PACKET;

/// Time allowed for the TLS handshake and then for the CONNECT packet.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets queued between the router and one connection's writer.
const OUTGOING_QUEUE: usize = 64;

type Reader = ReadHalf<TlsStream<TcpStream>>;
type Writer = WriteHalf<TlsStream<TcpStream>>;

/// One subscription of a connected client.
struct Sub {
    filter: String,
    qos: QoS,
    nolocal: bool,
    retain_as_published: bool,
}

/// A connected client, by client id.
struct Session {
    conn: u64,
    tx: mpsc::Sender<Packet>,
    close: CancellationToken,
    subs: Vec<Sub>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    retained: BTreeMap<String, Publish>,
}

/// Sessions, subscriptions and retained messages, behind one mutex never held across an await.
pub(super) struct Router {
    acl: Acl,
    state: Mutex<State>,
    next_conn: AtomicU64,
}

impl Router {
    pub(super) fn new(acl: Acl) -> Router {
        Router {
            acl,
            state: Mutex::new(State::default()),
            next_conn: AtomicU64::new(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the maps half-updated (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores or deletes the retained message, then queues `p` for every matching subscriber,
    /// awaiting room in each queue. Returns how many subscribers matched.
    async fn route(
        &self,
        from: u64,
        p: &Publish,
        topic: &str,
        cancel: &CancellationToken,
    ) -> usize {
        let targets: Vec<(mpsc::Sender<Packet>, Publish)> = {
            let mut st = self.state();
            if p.retain {
                if p.payload.is_empty() {
                    st.retained.remove(topic);
                } else {
                    st.retained
                        .insert(topic.to_owned(), outgoing(p, p.qos, true));
                }
            }
            st.sessions
                .values()
                .filter_map(|s| {
                    let best = s
                        .subs
                        .iter()
                        .filter(|sub| !(sub.nolocal && s.conn == from))
                        .filter(|sub| matches(&sub.filter, topic))
                        .map(|sub| (min_qos(p.qos, sub.qos), sub.retain_as_published))
                        .reduce(|a, b| (if a.0 >= b.0 { a.0 } else { b.0 }, a.1 || b.1))?;
                    Some((s.tx.clone(), outgoing(p, best.0, best.1 && p.retain)))
                })
                .collect()
        };
        let n = targets.len();
        for (tx, out) in targets {
            tokio::select! {
                _ = cancel.cancelled() => break,
                // Err: that subscriber disconnected meanwhile; it has no session to deliver to.
                _ = tx.send(Packet::Publish(out)) => {}
            }
        }
        n
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if a <= b {
        a
    } else {
        b
    }
}

/// The copy of `p` sent to a subscriber: its QoS, retain flag, no packet id yet (the writer
/// assigns one), no topic alias or subscription identifiers.
fn outgoing(p: &Publish, qos: QoS, retain: bool) -> Publish {
    let properties = p.properties.clone().map(|mut pr| {
        pr.topic_alias = None;
        pr.subscription_identifiers.clear();
        pr
    });
    Publish {
        dup: false,
        qos,
        retain,
        topic: p.topic.clone(),
        pkid: 0,
        payload: p.payload.clone(),
        properties,
    }
}

/// Accepts connections until `cancel`, each handled in its own tasks tracked by `tasks`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Arc<Router>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "embedded broker: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            peer,
            router: router.clone(),
            broker: cancel.clone(),
            cancel: cancel.child_token(),
            tasks: tasks.clone(),
        };
        tasks.spawn(conn.run(acceptor.clone(), tcp));
    }
}

/// Why a connection ended: the reason logged, and whether the will is published.
enum End {
    /// DISCONNECT 0x00: no will.
    Normal,
    /// DISCONNECT 0x04: publish the will.
    WithWill,
    /// Another connection took over the client id: no will (see the module docs).
    TakenOver,
    /// The connection's token was cancelled: broker shutdown (no will), else the writer
    /// failed or a takeover closed it (resolved in `serve`).
    Shutdown,
    /// Anything else (closed socket, keep-alive, bad input): publish the will; the reason is
    /// logged, and sent to the client as DISCONNECT when it has a reason code.
    Abnormal(String, Option<DisconnectReasonCode>),
}

struct Connection {
    peer: SocketAddr,
    router: Arc<Router>,
    /// The whole broker's shutdown.
    broker: CancellationToken,
    /// This connection's end (a child of `broker`; also cancelled by the writer and takeover).
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Takes the next whole packet off the front of `buf` (pure: rumqttc's v5 codec), `Ok(None)`
/// when more bytes are needed; the error says why the connection must close.
fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, End> {
    // rumqttc's codec refuses a DISCONNECT with remaining length 0 (PayloadRequired), which
    // MQTT 5 §3.14.2.1 allows and rumqttc's own client sends: it means reason 0x00.
    if buf.starts_with(&[0xE0, 0x00]) {
        let _ = buf.split_to(2);
        let normal = Disconnect::new(DisconnectReasonCode::NormalDisconnection);
        return Ok(Some(Packet::Disconnect(normal)));
    }
    match Packet::read(buf, Some(MAX_PACKET)) {
        Ok(p) => Ok(Some(p)),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(CodecError::PayloadSizeLimitExceeded { pkt_size, max }) => Err(End::Abnormal(
            format!("packet of {pkt_size} bytes exceeds the maximum of {max}"),
            Some(DisconnectReasonCode::PacketTooLarge),
        )),
        Err(e) => Err(End::Abnormal(
            format!("malformed MQTT 5 packet: {e}"),
            Some(DisconnectReasonCode::MalformedPacket),
        )),
    }
}

/// Reads the next packet into `buf`, or says why none came.
async fn read_packet(
    rd: &mut Reader,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Packet, End> {
    loop {
        if let Some(p) = decode(buf)? {
            return Ok(p);
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Err(End::Shutdown),
            _ = sleep => return Err(End::Abnormal(
                "nothing received within 1.5 x keep-alive (or no CONNECT in time)".to_owned(),
                Some(DisconnectReasonCode::KeepAliveTimeout),
            )),
            r = rd.read_buf(buf) => match r {
                Ok(0) => return Err(End::Abnormal("connection closed without DISCONNECT".to_owned(), None)),
                Ok(_) => {}
                Err(e) => return Err(End::Abnormal(format!("read failed: {e}"), None)),
            },
        }
    }
}

/// Writes queued packets until the queue closes, a DISCONNECT was written, or shutdown.
/// Outgoing QoS 1 PUBLISHes get this connection's own packet ids.
async fn write_loop(
    mut wr: Writer,
    mut rx: mpsc::Receiver<Packet>,
    peer: SocketAddr,
    client_max: Option<u32>,
    cancel: CancellationToken,
) {
    let mut next_pkid: u16 = 0;
    let mut buf = BytesMut::new();
    loop {
        let packet = tokio::select! {
            _ = cancel.cancelled() => break,
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
        };
        let packet = match packet {
            Packet::Publish(mut p) if p.qos != QoS::AtMostOnce => {
                next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                p.pkid = next_pkid;
                Packet::Publish(p)
            }
            other => other,
        };
        buf.clear();
        if let Err(e) = packet.write(&mut buf, client_max) {
            // MQTT 5 §3.1.2.11.4: a packet larger than the client's maximum is not sent.
            warn!(%peer, error = %e, "embedded broker: packet not sent to this client");
            continue;
        }
        let last = matches!(packet, Packet::Disconnect(_));
        let written = tokio::select! {
            _ = cancel.cancelled() => break,
            r = async { wr.write_all(&buf).await?; wr.flush().await } => r,
        };
        if let Err(e) = written {
            debug!(%peer, error = %e, "embedded broker: write failed");
            break;
        }
        if last {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    // The reader stops too: a connection that cannot be written to is over.
    cancel.cancel();
}

fn reason_of(d: DisconnectReasonCode) -> End {
    match d {
        DisconnectReasonCode::NormalDisconnection => End::Normal,
        DisconnectReasonCode::DisconnectWithWillMessage => End::WithWill,
        other => End::Abnormal(format!("client sent DISCONNECT {other:?}"), None),
    }
}

impl Connection {
    async fn run(self, acceptor: TlsAcceptor, tcp: TcpStream) {
        let peer = self.peer;
        let tls = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
        };
        let tls = match tls {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(%peer, reason = %e, "embedded broker: TLS handshake refused");
                return;
            }
            Err(_) => {
                warn!(%peer, "embedded broker: TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| "no client certificate".to_owned())
            .and_then(|der| {
                crate::uplink::tls::common_name(der, std::path::Path::new("<client certificate>"))
                    .map_err(|e| e.to_string())
            });
        let identity = match identity {
            Ok(id) => id,
            Err(e) => {
                warn!(%peer, reason = %e, "embedded broker: client certificate has no usable CN; closing");
                return;
            }
        };
        let (mut rd, wr) = tokio::io::split(tls);
        let mut buf = BytesMut::with_capacity(4096);
        let first = read_packet(
            &mut rd,
            &mut buf,
            Some(Instant::now() + HANDSHAKE_TIMEOUT),
            &self.cancel,
        )
        .await;
        let (connect, will) = match first {
            Ok(Packet::Connect(c, will, _login)) => (c, will),
            Ok(other) => {
                warn!(%peer, %identity, packet = %packet_name(&other), "embedded broker: first packet is not CONNECT; closing");
                return;
            }
            Err(End::Abnormal(why, _)) => {
                // A CONNECT of MQTT 3.1.1 is refused here too: "Invalid protocol level".
                warn!(%peer, %identity, reason = %why, "embedded broker: no MQTT 5 CONNECT; closing");
                return;
            }
            Err(_) => return,
        };
        self.serve(identity, connect, will, rd, wr, buf).await;
    }

    async fn serve(
        self,
        identity: String,
        connect: Connect,
        will: Option<LastWill>,
        mut rd: Reader,
        wr: Writer,
        mut buf: BytesMut,
    ) {
        let peer = self.peer;
        let router = self.router.clone();
        let conn = router.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
        let client_max = connect.properties.as_ref().and_then(|p| p.max_packet_size);
        self.tasks
            .spawn(write_loop(wr, rx, peer, client_max, self.cancel.clone()));

        let will_topic = will
            .as_ref()
            .map(|w| String::from_utf8_lossy(&w.topic).into_owned());
        if let Some(t) = &will_topic {
            if !valid_topic(t) || !router.acl.may_publish(&identity, t) {
                warn!(%peer, %identity, topic = %t, "embedded broker: will topic not authorised; CONNACK 0x87");
                let _ = tx.try_send(Packet::ConnAck(connack(
                    ConnectReturnCode::NotAuthorized,
                    None,
                )));
                return;
            }
        }
        let (client_id, assigned) = if connect.client_id.is_empty() {
            let id = format!("vitalgate-demo-{conn}");
            (id.clone(), Some(id))
        } else {
            (connect.client_id.clone(), None)
        };
        let previous = router.state().sessions.insert(
            client_id.clone(),
            Session {
                conn,
                tx: tx.clone(),
                close: self.cancel.clone(),
                subs: Vec::new(),
            },
        );
        if let Some(old) = previous {
            debug!(%peer, %client_id, "embedded broker: session taken over");
            // The old writer sends DISCONNECT 0x8E and then ends that connection; if its queue
            // is full, the connection is ended without it.
            let bye = disconnect(
                DisconnectReasonCode::SessionTakenOver,
                "another connection with this client id",
            );
            if old.tx.try_send(bye).is_err() {
                old.close.cancel();
            }
        }
        if tx
            .send(Packet::ConnAck(connack(
                ConnectReturnCode::Success,
                assigned,
            )))
            .await
            .is_err()
        {
            return;
        }

        // MQTT 5 §3.1.2.10: silent for 1.5 x keep-alive means gone; 0 means no limit.
        let grace = Duration::from_millis(u64::from(connect.keep_alive) * 1500);
        let end = loop {
            let deadline = (connect.keep_alive > 0).then(|| Instant::now() + grace);
            let packet = match read_packet(&mut rd, &mut buf, deadline, &self.cancel).await {
                Ok(p) => p,
                Err(end) => break end,
            };
            match self.handle(conn, &identity, &tx, packet).await {
                Ok(()) => {}
                Err(end) => break end,
            }
        };

        // Still ours (not taken over)? Then the session ends here.
        let ours = {
            let mut st = router.state();
            match st.sessions.get(&client_id) {
                Some(s) if s.conn == conn => st.sessions.remove(&client_id).is_some(),
                _ => false,
            }
        };
        let end = match end {
            _ if !ours => End::TakenOver,
            End::Shutdown if !self.broker.is_cancelled() => {
                End::Abnormal("connection lost (write failed)".to_owned(), None)
            }
            end => end,
        };
        let publish_will = match &end {
            End::Normal | End::TakenOver | End::Shutdown => false,
            End::WithWill => true,
            End::Abnormal(why, Some(code)) => {
                warn!(%peer, %identity, %client_id, reason = %why, "embedded broker: closing connection");
                let _ = tx.try_send(disconnect(*code, why));
                true
            }
            // The client went away (socket closed): not bad input, so not a warning.
            End::Abnormal(why, None) => {
                info!(%peer, %identity, %client_id, reason = %why, "embedded broker: connection ended");
                true
            }
        };
        drop(tx);
        if let (true, Some(w), Some(topic)) = (publish_will, will, will_topic) {
            let p = Publish {
                dup: false,
                qos: min_qos(w.qos, QoS::AtLeastOnce),
                retain: w.retain,
                topic: w.topic,
                pkid: 0,
                payload: w.message,
                properties: None,
            };
            let n = router.route(conn, &p, &topic, &self.broker).await;
            debug!(%peer, %topic, subscribers = n, "embedded broker: will published");
        }
    }

    /// Handles one packet after CONNECT; `Err` ends the connection.
    async fn handle(
        &self,
        conn: u64,
        identity: &str,
        tx: &mpsc::Sender<Packet>,
        packet: Packet,
    ) -> Result<(), End> {
        let reply = match packet {
            Packet::Publish(p) => self.publish(conn, identity, p).await?,
            Packet::Subscribe(s) => return self.subscribe(identity, tx, s).await,
            Packet::Unsubscribe(u) => Some(self.unsubscribe(tx, u)),
            Packet::PingReq(_) => Some(Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp)),
            // A subscriber's acknowledgement of a QoS 1 delivery: nothing is kept to release.
            Packet::PubAck(_) => None,
            Packet::Disconnect(d) => return Err(reason_of(d.reason_code)),
            other => {
                return Err(End::Abnormal(
                    format!("unexpected {} packet", packet_name(&other)),
                    Some(DisconnectReasonCode::ProtocolError),
                ))
            }
        };
        if let Some(r) = reply {
            self.send(tx, r).await?;
        }
        Ok(())
    }

    async fn send(&self, tx: &mpsc::Sender<Packet>, p: Packet) -> Result<(), End> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(End::Shutdown),
            r = tx.send(p) => r.map_err(|_| End::Abnormal("writer gone".to_owned(), None)),
        }
    }

    async fn publish(&self, conn: u64, identity: &str, p: Publish) -> Result<Option<Packet>, End> {
        if p.qos == QoS::ExactlyOnce {
            return Err(End::Abnormal(
                "QoS 2 PUBLISH (maximum QoS is 1)".to_owned(),
                Some(DisconnectReasonCode::QoSNotSupported),
            ));
        }
        let ack = |reason| {
            (p.qos == QoS::AtLeastOnce).then_some(Packet::PubAck(PubAck {
                pkid: p.pkid,
                reason,
                properties: None,
            }))
        };
        let topic = match std::str::from_utf8(&p.topic) {
            Ok(t) if valid_topic(t) => t.to_owned(),
            _ => {
                warn!(peer = %self.peer, %identity, "embedded broker: invalid topic name refused");
                return Ok(ack(PubAckReason::TopicNameInvalid));
            }
        };
        if !self.router.acl.may_publish(identity, &topic) {
            warn!(peer = %self.peer, %identity, %topic, "embedded broker: PUBLISH not authorised (0x87)");
            return Ok(ack(PubAckReason::NotAuthorized));
        }
        let n = self.router.route(conn, &p, &topic, &self.cancel).await;
        Ok(ack(if n > 0 {
            PubAckReason::Success
        } else {
            PubAckReason::NoMatchingSubscribers
        }))
    }

    async fn subscribe(
        &self,
        identity: &str,
        tx: &mpsc::Sender<Packet>,
        s: Subscribe,
    ) -> Result<(), End> {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let unsent: Vec<Packet> = {
            let mut st = self.router.state();
            let State {
                sessions,
                retained: store,
            } = &mut *st;
            let Some(session) = sessions.values_mut().find(|x| x.tx.same_channel(tx)) else {
                return Err(End::TakenOver);
            };
            for Filter {
                path,
                qos,
                nolocal,
                preserve_retain,
                retain_forward_rule,
            } in s.filters
            {
                let code = if path.starts_with("$share/") {
                    SubscribeReasonCode::SharedSubscriptionsNotSupported
                } else if !valid_filter(&path) {
                    SubscribeReasonCode::TopicFilterInvalid
                } else if !self.router.acl.may_subscribe(identity, &path) {
                    warn!(peer = %self.peer, %identity, filter = %path, "embedded broker: SUBSCRIBE not authorised (0x87)");
                    SubscribeReasonCode::NotAuthorized
                } else {
                    let qos = min_qos(qos, QoS::AtLeastOnce);
                    let existed = session.subs.iter().any(|x| x.filter == path);
                    let send_retained = match retain_forward_rule {
                        RetainForwardRule::OnEverySubscribe => true,
                        RetainForwardRule::OnNewSubscribe => !existed,
                        RetainForwardRule::Never => false,
                    };
                    if send_retained {
                        retained.extend(
                            store
                                .iter()
                                .filter(|(t, _)| matches(&path, t))
                                .map(|(_, p)| outgoing(p, min_qos(p.qos, qos), true)),
                        );
                    }
                    session.subs.retain(|x| x.filter != path);
                    session.subs.push(Sub {
                        filter: path,
                        qos,
                        nolocal,
                        retain_as_published: preserve_retain,
                    });
                    SubscribeReasonCode::Success(qos)
                };
                codes.push(code);
            }
            // SUBACK, then the retained messages, queued while the lock keeps the router from
            // slipping a newer live message in between (a stale retained status must not
            // arrive after a fresh one). Only if the queue is full are the rest awaited below.
            let suback = Packet::SubAck(SubAck {
                pkid: s.pkid,
                return_codes: codes,
                properties: None,
            });
            let mut all = std::iter::once(suback).chain(retained.into_iter().map(Packet::Publish));
            let mut unsent = Vec::new();
            for p in all.by_ref() {
                if let Err(mpsc::error::TrySendError::Full(p)) = tx.try_send(p) {
                    unsent.push(p);
                    break;
                }
            }
            unsent.extend(all);
            unsent
        };
        for p in unsent {
            self.send(tx, p).await?;
        }
        Ok(())
    }

    fn unsubscribe(&self, tx: &mpsc::Sender<Packet>, u: Unsubscribe) -> Packet {
        let mut st = self.router.state();
        let session = st.sessions.values_mut().find(|x| x.tx.same_channel(tx));
        let reasons = match session {
            Some(session) => u
                .filters
                .iter()
                .map(|f| {
                    let before = session.subs.len();
                    session.subs.retain(|x| &x.filter != f);
                    if session.subs.len() < before {
                        UnsubAckReason::Success
                    } else {
                        UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            None => vec![UnsubAckReason::NoSubscriptionExisted; u.filters.len()],
        };
        Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            reasons,
            properties: None,
        })
    }
}

/// DISCONNECT with `code` and `why` as its reason string. Always with properties: rumqttc
/// 0.25.1 encodes a property-less non-zero DISCONNECT with a remaining length one byte short
/// (its own client then fails with "bytes remaining on stream").
fn disconnect(code: DisconnectReasonCode, why: &str) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: code,
        properties: Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(why.to_owned()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    })
}

fn connack(code: ConnectReturnCode, assigned: Option<String>) -> ConnAck {
    let properties = (code == ConnectReturnCode::Success).then_some(ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: Some(1),
        retain_available: Some(1),
        max_packet_size: Some(MAX_PACKET),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(0),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    ConnAck {
        session_present: false,
        code,
        properties,
    }
}

/// `PUBLISH`, `AUTH`, ...: the packet's kind for a log line (never its payload).
fn packet_name(p: &Packet) -> String {
    match p {
        Packet::Publish(_) => "PUBLISH".to_owned(),
        Packet::Connect(..) => "CONNECT".to_owned(),
        // The rest carry no payload: `PingReq`, `SubAck(SubAck { .. })`, ...
        other => format!("{other:?}")
            .split(['(', ' '])
            .next()
            .unwrap_or("?")
            .to_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // MQTT 5 §3.14.2.1: a DISCONNECT without reason code is a normal disconnection.
    #[test]
    fn decode_two_byte_disconnect_is_a_normal_disconnection() {
        let mut buf = BytesMut::from(&[0xE0, 0x00, 0xC0][..]);
        match decode(&mut buf) {
            Ok(Some(Packet::Disconnect(d))) => {
                assert_eq!(d.reason_code, DisconnectReasonCode::NormalDisconnection)
            }
            _ => panic!("not a normal DISCONNECT"),
        }
        assert_eq!(&buf[..], &[0xC0], "only the DISCONNECT is consumed");
    }

    #[test]
    fn decode_packet_over_the_maximum_size_is_refused_before_it_arrives() {
        // PUBLISH, remaining length 2 MiB (varint 0x80 0x80 0x80 0x01), no body yet.
        let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
        assert!(matches!(
            decode(&mut buf),
            Err(End::Abnormal(_, Some(DisconnectReasonCode::PacketTooLarge)))
        ));
    }

    // MQTT 5 §3.14.2.1: what the broker sends must decode to the same reason code.
    #[test]
    fn disconnect_with_reason_decodes_to_the_same_reason_code() {
        let sent = disconnect(DisconnectReasonCode::KeepAliveTimeout, "silent");
        let mut buf = BytesMut::new();
        sent.write(&mut buf, None).unwrap();
        assert!(matches!(decode(&mut buf), Ok(Some(p)) if p == sent));
        assert!(buf.is_empty(), "remaining length matches what was written");
    }

    #[test]
    fn decode_partial_packet_needs_more_bytes() {
        let mut buf = BytesMut::from(&[0x30, 0x10, 0x00][..]);
        assert!(matches!(decode(&mut buf), Ok(None)));
    }

    proptest! {
        // STYLE.md: bad input never panics; it gives a packet, "need more" or a reason to close.
        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }
    }
}
