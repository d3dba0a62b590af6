// Command example starts a call on calldesk, follows it to the end and shows a NOT_FOUND:
//
//	go run ./example -addr 127.0.0.1:50051 -agent agent-7
//
// It prints one line per event and exits non-zero on anything unexpected.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	calldeskv1 "calldesk/clients/go/calldesk/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "calldesk's gRPC address (HOST:PORT)")
	agent := flag.String("agent", "agent-7", "the agent, sent as x-agent-id (development mode)")
	number := flag.String("number", "+12025550100", "the number to dial")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of the whole run")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *addr, *agent, *number, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run starts a call, watches it answer, ends and completes it (the stream then ends), and
// checks that an unknown interaction is NOT_FOUND.
func run(ctx context.Context, addr, agent, number string, out io.Writer) error {
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	client := calldeskv1.NewInteractionServiceClient(conn)
	// With --auth-tokens, send "authorization", "Bearer <token>" instead.
	ctx = metadata.AppendToOutgoingContext(ctx, "x-agent-id", agent)

	started, err := client.StartCall(ctx, &calldeskv1.StartCallRequest{PhoneNumber: number})
	if err != nil {
		return fmt.Errorf("StartCall: %w", err)
	}
	if started.GetOutcome() != calldeskv1.StartCallOutcome_START_CALL_OUTCOME_STARTED {
		return fmt.Errorf("StartCall: outcome %v", started.GetOutcome())
	}
	id := started.GetInteractionId()
	fmt.Fprintf(out, "started %s\n", id)

	stream, err := client.WatchInteraction(ctx, &calldeskv1.WatchInteractionRequest{InteractionId: id})
	if err != nil {
		return fmt.Errorf("WatchInteraction: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break // the stream ends right after the event that enters COMPLETED
		}
		if err != nil {
			return fmt.Errorf("WatchInteraction: %w", err)
		}
		fmt.Fprintf(out, "event %d %v %v\n", ev.GetSequence(), ev.GetState(), ev.GetProgress())
		switch ev.GetState() {
		case calldeskv1.InteractionState_INTERACTION_STATE_DELIVERED:
			if _, err := client.EndCall(ctx, &calldeskv1.EndCallRequest{InteractionId: id}); err != nil {
				return fmt.Errorf("EndCall: %w", err)
			}
		case calldeskv1.InteractionState_INTERACTION_STATE_WRAP_UP:
			req := &calldeskv1.CompleteInteractionRequest{InteractionId: id, Disposition: "done"}
			if _, err := client.CompleteInteraction(ctx, req); err != nil {
				return fmt.Errorf("CompleteInteraction: %w", err)
			}
		}
	}

	_, err = client.GetInteraction(ctx, &calldeskv1.GetInteractionRequest{InteractionId: "no-such-interaction"})
	if status.Code(err) != codes.NotFound {
		return fmt.Errorf("GetInteraction of an unknown id: want NOT_FOUND, got %v", err)
	}
	fmt.Fprintf(out, "unknown interaction: %v %s\n", status.Code(err), status.Convert(err).Message())
	return nil
}
