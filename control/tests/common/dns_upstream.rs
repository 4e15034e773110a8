//! A small upstream resolver the DNS tests run, to see names outside the cluster forwarded:
//! `upstream.test` and every name under it are 192.0.2.7 (A), anything else does not exist.

use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Metadata, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use hickory_server::{
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

/// The upstream resolver: `*.upstream.test` and `upstream.test` are 192.0.2.7, anything
/// else does not exist.
pub struct Upstream;

#[async_trait::async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return response
                .send_response(builder.build_no_records(metadata))
                .await
                .expect("send");
        };
        let name = info.query.original().name().clone();
        let zone = Name::from_ascii("upstream.test.").expect("zone");
        let mut answers = Vec::new();
        if zone.zone_of(&name.to_lowercase()) {
            if info.query.query_type() == RecordType::A {
                answers.push(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 7))));
            }
        } else {
            metadata.response_code = ResponseCode::NXDomain;
        }
        response
            .send_response(builder.build(metadata, answers.iter(), [], [], []))
            .await
            .expect("send")
    }
}

pub async fn start(bind: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind(bind).await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let tcp = tokio::net::TcpListener::bind(addr).await.expect("bind tcp");
    let mut server = hickory_server::Server::new(Upstream);
    server.register_socket(socket);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    let task = tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    (addr, task)
}
