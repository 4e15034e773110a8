//! The request handler hickory-server calls for every UDP and TCP query: the cluster zone
//! from the current [`Index`], the rest from the upstreams.

use std::sync::{Arc, RwLock};

use hickory_proto::{
    op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
    rr::{Name, Record, RecordType},
};
use hickory_server::{
    net::{runtime::Time, xfer::Protocol},
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use super::{
    answer::{self, Outcome, Reply},
    forward::{ForwardError, Forwarder},
    index::Index,
};

/// The index the watches keep current; every query reads the latest.
pub type SharedIndex = Arc<RwLock<Arc<Index>>>;

/// How far an ExternalName chain inside the zone is followed.
const MAX_CHASE: usize = 8;

pub struct Handler {
    pub index: SharedIndex,
    pub forwarder: Forwarder,
}

/// What a question resolves to, before it is encoded.
pub struct Resolved {
    pub metadata: Metadata,
    pub answers: Vec<Record>,
    pub soa: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Handler {
    fn current(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(i) => Arc::clone(&i),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// One question: ours, or relayed upstream (`raw` is the client's whole message).
    pub async fn resolve(&self, request: &Metadata, query: &Query, raw: &[u8], tcp: bool) -> Resolved {
        let mut metadata = Metadata::response_from_request(request);
        metadata.recursion_available = true;
        let index = self.current();
        match answer::answer(&index, query.name(), query.query_type()) {
            Outcome::Reply(reply) => {
                metadata.authoritative = true;
                self.finish(metadata, *reply, &index, query.query_type(), tcp).await
            }
            Outcome::Forward => match self.forwarder.forward(raw, tcp).await {
                Ok(upstream) => {
                    metadata.response_code = upstream.metadata.response_code;
                    metadata.authoritative = upstream.metadata.authoritative;
                    metadata.truncation = upstream.metadata.truncation;
                    Resolved {
                        metadata,
                        answers: upstream.answers,
                        soa: Vec::new(),
                        authorities: upstream.authorities,
                        additionals: upstream.additionals,
                    }
                }
                Err(e) => {
                    metadata.response_code = match e {
                        // Nothing to ask: refused, as CoreDNS without a forward plugin.
                        ForwardError::NoUpstreams => ResponseCode::Refused,
                        ForwardError::Failed(_) => ResponseCode::ServFail,
                    };
                    tracing::debug!(name = %query.name(), error = %e, "not forwarded");
                    Resolved {
                        metadata,
                        answers: Vec::new(),
                        soa: Vec::new(),
                        authorities: Vec::new(),
                        additionals: Vec::new(),
                    }
                }
            },
        }
    }

    /// Follows an ExternalName's CNAME: in the zone from the index, outside it upstream.
    async fn finish(
        &self,
        mut metadata: Metadata,
        reply: Reply,
        index: &Index,
        qtype: RecordType,
        tcp: bool,
    ) -> Resolved {
        metadata.response_code = reply.rcode;
        let mut answers = reply.answers;
        let mut next = reply.chase;
        for _ in 0..MAX_CHASE {
            let Some(target) = next.take() else { break };
            match answer::answer(index, &target, qtype) {
                Outcome::Reply(more) => {
                    answers.extend(more.answers);
                    next = more.chase;
                }
                Outcome::Forward => {
                    if let Some(upstream) = self.chase_upstream(&target, qtype, tcp).await {
                        answers.extend(upstream.answers);
                    }
                }
            }
        }
        Resolved {
            metadata,
            answers,
            soa: reply.soa.into_iter().collect(),
            authorities: Vec::new(),
            additionals: reply.additionals,
        }
    }

    async fn chase_upstream(&self, target: &Name, qtype: RecordType, tcp: bool) -> Option<Message> {
        if self.forwarder.upstreams.is_empty() {
            return None;
        }
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(target.clone(), qtype));
        let bytes = message.to_vec().ok()?;
        match self.forwarder.forward(&bytes, tcp).await {
            Ok(reply) => Some(reply),
            Err(e) => {
                tracing::debug!(%target, error = %e, "ExternalName target not resolved upstream");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().clamp(512, 4096));
            ours
        });
        let mut builder = builder;
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m
        };
        let query = match request.request_info() {
            Ok(info) if request.metadata.message_type == MessageType::Query => {
                if request.metadata.op_code != OpCode::Query {
                    return send(
                        &mut response,
                        builder.build_no_records(fail(ResponseCode::NotImp)),
                        request,
                    )
                    .await;
                }
                info.query.original().clone()
            }
            _ => {
                return send(
                    &mut response,
                    builder.build_no_records(fail(ResponseCode::FormErr)),
                    request,
                )
                .await;
            }
        };
        let tcp = request.protocol() != Protocol::Udp;
        let r = self.resolve(&request.metadata, &query, request.as_slice(), tcp).await;
        let message = builder.build(
            r.metadata,
            r.answers.iter(),
            r.authorities.iter(),
            r.soa.iter(),
            r.additionals.iter(),
        );
        send(&mut response, message, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, src = %request.src(), "sending a DNS response failed");
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            }
            .into()
        }
    }
}
