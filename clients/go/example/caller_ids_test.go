package main

// The Go client's caller IDs (docs/api.md §3, "Caller IDs") against the real calldesk binary
// started with --caller-ids: ListCallerIds, StartCall with a caller_id of the agent's, an
// empty one (local presence), one outside the agent's list and a malformed one, each with its
// google.rpc detail.

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	calldeskv1 "calldesk/clients/go/calldesk/v1"
)

// go-agent's own line, New York first (its default), then Los Angeles and London; everyone
// else's (`*`), one toll-free number.
var callerIDs = map[string][]string{
	"go-agent": {"+12125550100", "+13105550100", "+442079460000"},
	"*":        {"+18005550100"},
}

func callerIDsClient(t *testing.T) calldeskv1.InteractionServiceClient {
	t.Helper()
	file := filepath.Join(t.TempDir(), "caller-ids.txt")
	var lines strings.Builder
	for _, agent := range []string{"go-agent", "*"} {
		lines.WriteString(agent + " " + strings.Join(callerIDs[agent], " ") + "\n")
	}
	if err := os.WriteFile(file, []byte(lines.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, "--caller-ids", file)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return calldeskv1.NewInteractionServiceClient(conn)
}

// as is a 10-second context whose calls name agent (development mode: x-agent-id).
func as(t *testing.T, agent string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "x-agent-id", agent)
}

func TestCallerIds(t *testing.T) {
	client := callerIDsClient(t)

	t.Run("ListCallerIds names the agent's own line, else the * line", func(t *testing.T) {
		for agent, want := range map[string][]string{"go-agent": callerIDs["go-agent"], "go-other": callerIDs["*"]} {
			listed, err := client.ListCallerIds(as(t, agent), &calldeskv1.ListCallerIdsRequest{})
			if err != nil {
				t.Fatalf("ListCallerIds as %s: %v", agent, err)
			}
			if !reflect.DeepEqual(listed.GetCallerIds(), want) || listed.GetDefaultCallerId() != want[0] {
				t.Fatalf("ListCallerIds as %s: %v (default %q), want %v", agent, listed.GetCallerIds(),
					listed.GetDefaultCallerId(), want)
			}
		}
	})

	t.Run("StartCall presents the caller ID asked for, else the nearest", func(t *testing.T) {
		// Asked for: London, for a customer in New York.
		asked, err := client.StartCall(as(t, "go-agent"),
			&calldeskv1.StartCallRequest{PhoneNumber: "+12125559999", CallerId: "+442079460000"})
		if err != nil {
			t.Fatalf("StartCall: %v", err)
		}
		if got := asked.GetInteraction().GetCallerId(); got != "+442079460000" {
			t.Fatalf("caller_id %q, want +442079460000", got)
		}
		// Empty: local presence picks Los Angeles' number for a customer in Los Angeles.
		nearest, err := client.StartCall(as(t, "go-agent"), &calldeskv1.StartCallRequest{PhoneNumber: "+13105559999"})
		if err != nil {
			t.Fatalf("StartCall: %v", err)
		}
		if got := nearest.GetInteraction().GetCallerId(); got != "+13105550100" {
			t.Fatalf("local presence chose %q, want +13105550100", got)
		}
		for _, id := range []string{asked.GetInteractionId(), nearest.GetInteractionId()} {
			if _, err := client.EndCall(as(t, "go-agent"), &calldeskv1.EndCallRequest{InteractionId: id}); err != nil {
				t.Fatalf("EndCall %s: %v", id, err)
			}
		}
	})

	t.Run("a caller ID not the agent's is PERMISSION_DENIED, CALLER_ID_NOT_ALLOWED", func(t *testing.T) {
		// The * line's number is not go-agent's: it has a line of its own.
		_, err := client.StartCall(as(t, "go-agent"),
			&calldeskv1.StartCallRequest{PhoneNumber: "+12125559999", CallerId: "+18005550100"})
		st := status.Convert(err)
		if st.Code() != codes.PermissionDenied {
			t.Fatalf("got %v, want PermissionDenied", err)
		}
		var reasons []string
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				reasons = append(reasons, info.GetReason())
			}
		}
		if !reflect.DeepEqual(reasons, []string{"CALLER_ID_NOT_ALLOWED"}) {
			t.Fatalf("ErrorInfo reasons %v in %v", reasons, st.Details())
		}
		if strings.Contains(st.Message(), "+18005550100") {
			t.Fatalf("the refusal names the whole number: %q", st.Message())
		}
	})

	t.Run("a malformed caller ID is INVALID_ARGUMENT on caller_id", func(t *testing.T) {
		_, err := client.StartCall(as(t, "go-agent"),
			&calldeskv1.StartCallRequest{PhoneNumber: "+12125559999", CallerId: "not a number"})
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
		var fields []string
		for _, d := range st.Details() {
			if bad, ok := d.(*errdetails.BadRequest); ok {
				for _, v := range bad.GetFieldViolations() {
					fields = append(fields, v.GetField())
				}
			}
		}
		if !reflect.DeepEqual(fields, []string{"caller_id"}) {
			t.Fatalf("BadRequest fields %v in %v", fields, st.Details())
		}
	})
}
