// The calldesk v1 client for Go: calldesk/v1 is generated from proto/calldesk/v1/calldesk.proto
// by protoc-gen-go and protoc-gen-go-grpc (scripts/generate). The module is not published:
// point a replace directive at this directory, e.g.
//
//	require calldesk/clients/go v0.0.0
//	replace calldesk/clients/go => ../calldesk/clients/go
//
// The versions below are the oldest the generated code builds with (Debian 12's).
module calldesk/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
