"""calldesk v1, generated from proto/calldesk/v1/calldesk.proto by scripts/generate:
`calldesk_pb2` (messages and enums) and `calldesk_pb2_grpc` (`InteractionServiceStub`), each
with a `.pyi` type stub."""
