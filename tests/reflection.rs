//! Server reflection, as grpcurl (v1alpha) and buf curl or grpcui (v1) use it: both versions
//! list the services and describe, besides calldesk.v1 and health, every message calldesk puts
//! in error details (`google.rpc.BadRequest`, `ErrorInfo`, … and `google.rpc.Status`) with the
//! files they import, so that a tool that resolves `Any` details through reflection prints
//! them decoded (issue 32).

mod support;

use prost::Message;
use support::process::ServerProcess;

/// The messages of `google/rpc/error_details.proto` and `status.proto`.
const DETAIL_TYPES: [&str; 11] = [
    "google.rpc.BadRequest",
    "google.rpc.ErrorInfo",
    "google.rpc.RetryInfo",
    "google.rpc.DebugInfo",
    "google.rpc.QuotaFailure",
    "google.rpc.PreconditionFailure",
    "google.rpc.RequestInfo",
    "google.rpc.ResourceInfo",
    "google.rpc.Help",
    "google.rpc.LocalizedMessage",
    "google.rpc.Status",
];

/// The files reflection answered (decoded), whatever the version's types.
fn files(encoded: &[Vec<u8>]) -> Vec<prost_types::FileDescriptorProto> {
    encoded
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(&bytes[..]).expect("a descriptor"))
        .collect()
}

/// Whether `files` define the message `full_name`.
fn defines(files: &[prost_types::FileDescriptorProto], full_name: &str) -> bool {
    let (package, name) = full_name.rsplit_once('.').expect("a full name");
    files
        .iter()
        .any(|f| f.package() == package && f.message_type.iter().any(|m| m.name() == name))
}

/// One reflection version's client and requests; the two versions' types are alike.
macro_rules! reflection_checks {
    ($name:ident, $pb:path) => {
        async fn $name(addr: &str) {
            use pb::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            use $pb as pb;
            let channel = support::endpoint(addr).connect_lazy();
            let mut client = ServerReflectionClient::new(channel);
            let ask = |request: MessageRequest| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut requests = vec![ask(MessageRequest::ListServices(String::new()))];
            for symbol in DETAIL_TYPES {
                requests.push(ask(MessageRequest::FileContainingSymbol(symbol.into())));
            }
            for file in [
                "google/protobuf/any.proto",
                "google/protobuf/duration.proto",
            ] {
                requests.push(ask(MessageRequest::FileByFilename(file.into())));
            }
            let asked = requests.len();
            let mut answers = tokio::time::timeout(
                support::WAIT,
                client.server_reflection_info(tokio_stream::iter(requests)),
            )
            .await
            .expect("reflection answers")
            .expect("reflection")
            .into_inner();
            let mut responses = Vec::new();
            while responses.len() < asked {
                let answer = tokio::time::timeout(support::WAIT, answers.message())
                    .await
                    .expect("an answer in time")
                    .expect("no error")
                    .expect("an answer to every request");
                responses.push(answer.message_response.expect("a response"));
            }
            let MessageResponse::ListServicesResponse(list) = &responses[0] else {
                panic!("not a service list: {:?}", responses[0]);
            };
            let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
            assert!(
                services.contains(&"calldesk.v1.InteractionService"),
                "{services:?}"
            );
            for (symbol, response) in DETAIL_TYPES.iter().zip(&responses[1..]) {
                let MessageResponse::FileDescriptorResponse(found) = response else {
                    panic!(
                        "{}: {symbol} is not described: {response:?}",
                        stringify!($pb)
                    );
                };
                let files = files(&found.file_descriptor_proto);
                assert!(defines(&files, symbol), "{}: {symbol}", stringify!($pb));
            }
            for response in &responses[1 + DETAIL_TYPES.len()..] {
                assert!(
                    matches!(response, MessageResponse::FileDescriptorResponse(_)),
                    "{}: an imported file is not served: {response:?}",
                    stringify!($pb)
                );
            }
        }
    };
}

reflection_checks!(v1_describes_error_details, tonic_reflection::pb::v1);
reflection_checks!(
    v1alpha_describes_error_details,
    tonic_reflection::pb::v1alpha
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reflection_versions_describe_every_error_detail_type() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), &[]).await;
    v1_describes_error_details(server.addr()).await;
    v1alpha_describes_error_details(server.addr()).await;
}
