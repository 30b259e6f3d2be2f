package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/admin"
)

// build builds a command of the module into dir.
func build(t *testing.T, pkg, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// waitFor polls cond until it holds, failing after a bound far beyond
// what the step needs (it waits on progress, it does not time it).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 90s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOperatorRedrivesWhileTheServiceRuns is the end-to-end operation in
// two real processes: the service runs its consumer on the embedded log
// with the admin API mounted; a poison message dead-letters and its key
// parks; the ferry CLI, in another process, lists the DLQ through
// --server, is refused a redrive with a read-only token (nothing moves),
// and redrives with an operator's token while the service runs. The key's
// messages are then handled once each, in order, before a message of the
// key published after the redrive, and the audit log holds the redrive
// with its counts and the denial.
func TestOperatorRedrivesWhileTheServiceRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two binaries")
	}
	tmp := t.TempDir()
	bins := t.TempDir()
	ferryBin := build(t, "../../cmd/ferry", bins, "ferry")
	serviceBin := build(t, ".", bins, "billing")

	authFile, opsToken, viewerToken := writeAccess(t, tmp)
	svc := startService(t, serviceBin, tmp, authFile)
	url, handled, fixed := svc.url, svc.handled, svc.fixed

	// ferry runs the CLI in its own process, as an operator would.
	ferry := func(token string, args ...string) (string, int) {
		cmd := exec.Command(ferryBin, args...)
		cmd.Env = append(os.Environ(), "FERRY_SERVER="+url, "FERRY_TOKEN="+token)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	entries := func(token string) []admin.DeadLetter {
		out, code := ferry(token, "dlq", "list", "-g", "billing", "--json")
		if code != 0 {
			t.Fatalf("ferry dlq list: exit %d: %s", code, out)
		}
		var es []admin.DeadLetter
		if err := json.Unmarshal([]byte(out), &es); err != nil {
			t.Fatalf("dlq list --json: %v: %s", err, out)
		}
		return es
	}
	lines := func() []string {
		b, _ := os.ReadFile(handled)
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}

	ctx := context.Background()
	client, err := admin.NewClient(url, opsToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	produce := func(key, payload string) {
		t.Helper()
		if _, err := client.Produce(ctx, "orders", []admin.Message{{Key: key, Payload: payload}}); err != nil {
			t.Fatalf("produce %s %s: %v", key, payload, err)
		}
	}
	produce("k", "poison")
	produce("k", "k/1")
	produce("k", "k/2")
	produce("other", "o/0")
	waitFor(t, "the poison entry and the two parked behind it", func() bool {
		return len(entries(viewerToken)) == 3 && slices.Contains(lines(), "other o/0")
	})
	es := entries(viewerToken)
	if es[0].Class != "permanent" || es[1].Class != "parked" || es[2].Class != "parked" {
		t.Fatalf("entries: %+v", es)
	}
	if slices.ContainsFunc(lines(), func(l string) bool { return strings.HasPrefix(l, "k ") }) {
		t.Fatalf("a message of the parked key was handled: %q", lines())
	}

	// A token without redrive is refused, and nothing moves.
	out, code := ferry(viewerToken, "dlq", "redrive", "-g", "billing")
	if code == 0 || !strings.Contains(out, `may not redrive`) {
		t.Fatalf("redrive with the viewer's token: exit %d: %s", code, out)
	}
	for _, e := range entries(viewerToken) {
		if e.State != "dead" {
			t.Fatalf("after a refused redrive: %+v", e)
		}
	}

	// The fix is deployed; the operator redrives while the service runs.
	if err := os.WriteFile(fixed, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = ferry(opsToken, "dlq", "redrive", "-g", "billing")
	if code != 0 || !strings.Contains(out, "requested 3 entries") {
		t.Fatalf("redrive: exit %d: %s", code, out)
	}
	produce("k", "k/3")
	waitFor(t, "the key's messages handled", func() bool { return slices.Contains(lines(), "k k/3") })
	var ks []string
	for _, l := range lines() {
		if strings.HasPrefix(l, "k ") {
			ks = append(ks, l)
		}
	}
	if want := []string{"k poison", "k k/1", "k k/2", "k k/3"}; !slices.Equal(ks, want) {
		t.Fatalf("key k handled as %q, want %q (once each, in order)", ks, want)
	}
	waitFor(t, "the DLQ to empty", func() bool { return len(entries(viewerToken)) == 0 })

	// The group shows the consumer this process runs.
	out, code = ferry(viewerToken, "groups", "describe", "billing", "--json")
	var g admin.Group
	if code != 0 || json.Unmarshal([]byte(out), &g) != nil || len(g.Running) != 1 || len(g.Running[0].Owned) != 3 {
		t.Fatalf("groups describe: exit %d: %s", code, out)
	}

	// The audit log holds the redrive with its counts, and the denial.
	out, code = ferry(viewerToken, "audit", "--verb", "redrive", "--json")
	var recs []admin.AuditRecord
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil {
		t.Fatalf("audit: exit %d: %s", code, out)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s %s %d %s", r.Data.Actor, r.Data.Result, r.Data.Status, r.Data.Counts))
		if r.SpecVersion != "1.0" || r.Type != "dev.ferry.admin.redrive" || r.Data.RequestID == "" || r.Subject != "topic:billing.dlq" {
			t.Errorf("audit record: %+v", r)
		}
	}
	if want := []string{"viewer denied 403 ", "ops ok 200 redriven 3 of 3"}; !slices.Equal(got, want) {
		t.Fatalf("audit records %q, want %q", got, want)
	}

	svc.stop(t)
}
