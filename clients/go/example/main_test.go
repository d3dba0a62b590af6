package main

// The example against the real calldesk binary: CALLDESK_BIN names it (clients/go/run-tests
// sets it to the freshly built target/debug/calldesk). No sleeps: the server's "listening"
// line and the stream's events are awaited, each under a deadline.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var listening = regexp.MustCompile(`calldesk listening on (\S+)`)

// startServer runs `calldesk serve` on a free loopback port with a fast simulated switch and
// extraArgs (e.g. "--caller-ids", FILE), and returns its address; the server is stopped
// (SIGINT) when the test ends.
func startServer(t *testing.T, extraArgs ...string) string {
	t.Helper()
	bin := os.Getenv("CALLDESK_BIN")
	if bin == "" {
		t.Fatal("CALLDESK_BIN is not set: point it at a calldesk binary (clients/go/run-tests does)")
	}
	dir := t.TempDir()
	var stderr bytes.Buffer
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"),
		"--sim-ring", "20ms", "--sim-answer", "20ms"}, extraArgs...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	addrs := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() { // keeps draining stdout until the server exits
			if m := listening.FindStringSubmatch(scanner.Text()); m != nil {
				addrs <- m[1]
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case addr := <-addrs:
		return addr
	case err := <-exited:
		t.Fatalf("calldesk serve exited (%v) before listening; stderr:\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no 'calldesk listening on' line within 30s; stderr:\n%s", stderr.String())
	}
	return ""
}

func TestExampleAgainstCalldesk(t *testing.T) {
	addr := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	if err := run(ctx, addr, "go-agent", "+12025550100", &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "started ") {
		t.Fatalf("want a 'started ID' line first, got %q", lines)
	}
	id := strings.TrimPrefix(lines[0], "started ")
	want := []string{
		"started " + id,
		"event 1 INTERACTION_STATE_DELIVERY_PENDING CALL_PROGRESS_DIALING",
		"event 2 INTERACTION_STATE_DELIVERY_PENDING CALL_PROGRESS_RINGING",
		"event 3 INTERACTION_STATE_DELIVERED CALL_PROGRESS_CONNECTED",
		"event 4 INTERACTION_STATE_WRAP_UP CALL_PROGRESS_ENDED",
		"event 5 INTERACTION_STATE_COMPLETED CALL_PROGRESS_ENDED",
		"unknown interaction: NotFound interaction not found",
	}
	if got, wanted := strings.Join(lines, "\n"), strings.Join(want, "\n"); got != wanted {
		t.Fatalf("output differs\n got:\n%s\nwant:\n%s", got, wanted)
	}
	fmt.Println("go client: StartCall, WatchInteraction (5 events, gapless), NOT_FOUND: ok")
}
