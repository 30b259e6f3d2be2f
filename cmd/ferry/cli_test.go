package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
)

// ferryRun runs the binary with --dir dir and returns stdout+stderr and
// the exit code.
func ferryRun(t *testing.T, dir, stdin string, args ...string) (string, int) {
	t.Helper()
	return ferryIn(t, stdin, append([]string{"--dir", dir}, args...)...)
}

// ferryIn runs the binary with args as given and stdin, and returns
// stdout+stderr and the exit code.
func ferryIn(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(buildFerry(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func mustRun(t *testing.T, dir, stdin string, args ...string) string {
	t.Helper()
	out, code := ferryRun(t, dir, stdin, args...)
	if code != 0 {
		t.Fatalf("ferry %v: exit %d\n%s", args, code, out)
	}
	return out
}

func TestProduceConsumeRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "3")
	mustRun(t, dir, "", "produce", "orders", "-k", "c1", "-H", "ce-type=order.placed", `{"total":1}`, `{"total":2}`)
	mustRun(t, dir, "line a\nline b\n", "produce", "orders", "-k", "c2")
	file := filepath.Join(t.TempDir(), "msgs.txt")
	os.WriteFile(file, []byte("from file\n"), 0o644)
	mustRun(t, dir, "", "produce", "orders", "-k", "c3", "--file", file, "--headers-json", `{"ce-source":"test"}`)
	out := mustRun(t, dir, "", "consume", "orders", "--json")
	var got []jsonMessage
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m jsonMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		got = append(got, m)
	}
	if len(got) != 5 {
		t.Fatalf("consumed %d messages, want 5:\n%s", len(got), out)
	}
	perKey := map[string][]string{}
	for _, m := range got {
		perKey[m.Key] = append(perKey[m.Key], m.Payload)
		if m.Key == "c1" && m.Headers["ce-type"] != "order.placed" {
			t.Errorf("header lost: %+v", m)
		}
	}
	if fmt.Sprint(perKey["c1"]) != `[{"total":1} {"total":2}]` || fmt.Sprint(perKey["c2"]) != "[line a line b]" || fmt.Sprint(perKey["c3"]) != "[from file]" {
		t.Fatalf("per-key payloads %v", perKey)
	}
	var desc struct {
		Bounds []struct{ End uint64 } `json:"bounds"`
	}
	json.Unmarshal([]byte(mustRun(t, dir, "", "topics", "describe", "orders", "--json")), &desc)
	total := uint64(0)
	for _, p := range desc.Bounds {
		total += p.End
	}
	if len(desc.Bounds) != 3 || total != 5 {
		t.Fatalf("describe: %+v", desc)
	}
	if out := mustRun(t, dir, "", "consume", "orders", "--from", "latest"); strings.TrimSpace(out) != "" {
		t.Fatalf("--from latest printed %q", out)
	}
}

// Bad input gets a specific message and exit code 2, and changes nothing.
func TestBadInputExitCodes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	mustRun(t, dir, "", "produce", "orders", "ok")
	big := filepath.Join(t.TempDir(), "big.txt")
	os.WriteFile(big, []byte(strings.Repeat("x", 2<<20)+"\n"), 0o644)
	notFerry := t.TempDir()
	os.WriteFile(filepath.Join(notFerry, "notes.txt"), []byte("mine"), 0o644)
	for _, c := range []struct {
		dir  string
		args []string
		text string
	}{
		{dir, []string{"produce", "nope", "x"}, `topic "nope"`},
		{dir, []string{"consume", "nope"}, `topic "nope"`},
		{dir, []string{"consume", "orders", "--from", "yesterday"}, "want earliest, latest, an offset, or an RFC 3339 time"},
		{dir, []string{"consume", "orders", "--from", "99"}, "past the end"},
		{dir, []string{"produce", "orders", "--headers-json", "{bad", "x"}, "want a JSON object"},
		{dir, []string{"produce", "orders", "-H", "novalue", "x"}, "want NAME=VALUE"},
		{dir, []string{"produce", "orders", "--file", big}, "the limit is 1048576"},
		{dir, []string{"produce", "orders", "-p", "5", "x"}, "partitions 0 to 0"},
		{dir, []string{"topics", "create", "bad/name"}, "allowed are ASCII letters"},
		{dir, []string{"topics", "create", "orders"}, "already exists"},
		{dir, []string{"groups", "describe", "nobody"}, `no consumer group "nobody"`},
		{dir, []string{"dlq", "list"}, "--group"},
		{dir, []string{"dlq", "list", "-g", "g", "--class", "weird"}, "want one of transient"},
		{notFerry, []string{"topics", "list"}, "not a ferry data directory"},
		{notFerry, []string{"topics", "create", "x"}, "not a ferry data directory"},
		{filepath.Join(dir, "missing"), []string{"produce", "orders", "x"}, "no such file or directory"},
	} {
		out, code := ferryRun(t, c.dir, "", c.args...)
		if code != 2 || !strings.Contains(out, c.text) {
			t.Errorf("ferry %v: exit %d, output %q; want exit 2 and %q", c.args, code, out, c.text)
		}
	}
	out := mustRun(t, dir, "", "consume", "orders")
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "ok") {
		t.Fatalf("bad input changed the log:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a mistyped --dir was created")
	}
}

// seedDLQ runs a consumer in process that dead-letters every message whose
// payload starts with "poison", leaving a directory with a DLQ.
func seedDLQ(t *testing.T, dir string, good, poison int) {
	t.Helper()
	ctx := context.Background()
	l, err := commitlog.Open(ctx, dir, commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := embedded.New(l)
	defer b.Close()
	b.EnsureTopic(ctx, "orders", 2)
	var msgs []*ferry.Message
	for i := 0; i < good+poison; i++ {
		p := "order " + strconv.Itoa(i)
		if i < poison {
			p = "poison " + strconv.Itoa(i)
		}
		msgs = append(msgs, &ferry.Message{Topic: "orders", Key: []byte("k" + strconv.Itoa(i)), Payload: []byte(p)})
	}
	if err := l.Append(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	finished := make(chan struct{}, len(msgs))
	c, err := consumer.New(b, "billing", []string{"orders"}, func(ctx context.Context, m *ferry.Message) error {
		if strings.HasPrefix(string(m.Payload), "poison") {
			return ferry.Permanent(errors.New("cannot bill"))
		}
		return nil
	}, consumer.WithConcurrency(64), consumer.WithObserver(func(e consumer.Event) {
		if e.Kind == consumer.EventHandled || e.Kind == consumer.EventDeadLettered {
			finished <- struct{}{}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	for range msgs {
		<-finished
	}
	cancel()
	<-done
}

func TestDLQListShowRedrivePurge(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	seedDLQ(t, dir, 5, 3)
	var rows []struct {
		ID    string `json:"id"`
		Class string `json:"class"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, dir, "", "dlq", "list", "-g", "billing", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[0].Class != "permanent" || !strings.Contains(rows[0].Error, "cannot bill") {
		t.Fatalf("dlq list: %+v", rows)
	}
	show := mustRun(t, dir, "", "dlq", "show", "-g", "billing", rows[0].ID)
	for _, want := range []string{"source", "orders/", "poison", "attempts", "permanent"} {
		if !strings.Contains(show, want) {
			t.Fatalf("dlq show lacks %q:\n%s", want, show)
		}
	}
	if out := mustRun(t, dir, "", "dlq", "purge", "-g", "billing", "--key", "k0"); !strings.Contains(out, "purged 1 entries") {
		t.Fatalf("purge: %s", out)
	}
	out := mustRun(t, dir, "", "dlq", "redrive", "-g", "billing")
	if !strings.Contains(out, "requested 2/2") || !strings.Contains(out, "requested 2 entries") {
		t.Fatalf("redrive output (not a terminal: plain progress lines):\n%s", out)
	}
	if out := mustRun(t, dir, "", "dlq", "redrive", "-g", "billing"); !strings.Contains(out, "requested 0 entries") {
		t.Fatalf("second redrive: %s", out)
	}
	// No consumer runs: the two entries wait, requested, for their owner.
	if out := mustRun(t, dir, "", "dlq", "list", "-g", "billing"); strings.Count(out, "\n") != 3 || strings.Count(out, "requested") != 2 {
		t.Fatalf("entries left after redrive and purge:\n%s", out)
	}
	consumed := mustRun(t, dir, "", "consume", "orders")
	if n := strings.Count(consumed, "poison"); n != 3 {
		t.Fatalf("orders holds %d poison messages, want the 3 originals (a redrive publishes nothing there):\n%s", n, consumed)
	}
	mustRun(t, dir, "", "topics", "create", "orders.retry")
	// A move leaves requested entries to their owner (it may be handling
	// them), unless told the owner does not run.
	if out := mustRun(t, dir, "", "dlq", "redrive", "-g", "billing", "--to", "orders.retry"); !strings.Contains(out, `moved 0 entries to "orders.retry"`) || !strings.Contains(out, "left 2 entries") {
		t.Fatalf("move of requested entries: %s", out)
	}
	if out, code := ferryRun(t, dir, "", "dlq", "redrive", "-g", "billing", "--requested"); code != exitBadInput || !strings.Contains(out, "--requested is for a move") {
		t.Fatalf("--requested without --to: exit %d: %s", code, out)
	}
	if out := mustRun(t, dir, "", "dlq", "redrive", "-g", "billing", "--to", "orders.retry", "--requested"); !strings.Contains(out, `moved 2 entries to "orders.retry"`) {
		t.Fatalf("move: %s", out)
	}
	if out := mustRun(t, dir, "", "dlq", "list", "-g", "billing"); strings.Count(out, "\n") != 1 {
		t.Fatalf("entries left after the move:\n%s", out)
	}
}

// Writers are refused while another process owns the directory, with its
// PID; readers still work.
func TestLockedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	mustRun(t, dir, "", "produce", "orders", "before")
	l, err := commitlog.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, code := ferryRun(t, dir, "", "produce", "orders", "x")
	if code != 1 || !strings.Contains(out, "in use by process "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("produce to a locked directory: exit %d\n%s", code, out)
	}
	if out := mustRun(t, dir, "", "consume", "orders"); !strings.Contains(out, "before") {
		t.Fatalf("read-only consume of a locked directory:\n%s", out)
	}
	// tail follows what the owner appends. tail starts at the end, so the
	// owner keeps appending until tail has printed one (or 10 s pass).
	cmd := exec.Command(buildFerry(t), "--dir", dir, "tail", "orders")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	printed := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		n, _ := stdout.Read(buf)
		printed <- string(buf[:n])
	}()
	for i := 0; ; i++ {
		l.Append(context.Background(), &ferry.Message{Topic: "orders", Payload: []byte("appended by the owner")})
		select {
		case out := <-printed:
			if !strings.Contains(out, "appended by the owner") {
				t.Fatalf("tail printed %q", out)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		if i == 100 {
			t.Fatal("tail printed nothing in 10 s while the owner appended")
		}
	}
}

// TestRedriveProgressBarInTerminal runs a large redrive in a real terminal
// (tmux) and reads the screen: a progress bar is drawn while it runs.
func TestRedriveProgressBarInTerminal(t *testing.T) {
	if _, err := exec.LookPath("tmux"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("tmux is not installed: .ci/run installs it (apt-get install -y tmux)")
		}
		t.Skip("tmux is not installed (apt-get install -y tmux)")
	}
	dir := filepath.Join(t.TempDir(), "data")
	seedDLQ(t, dir, 0, 3000)
	session := fmt.Sprintf("ferry-test-%d", os.Getpid())
	done := filepath.Join(t.TempDir(), "done")
	script := fmt.Sprintf("%s --dir %s dlq redrive -g billing --rate 1500; touch %s; sleep 30", buildFerry(t), dir, done)
	if out, err := exec.Command("tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "10", script).CombinedOutput(); err != nil {
		t.Fatalf("tmux: %v %s", err, out)
	}
	defer exec.Command("tmux", "kill-session", "-t", session).Run()
	sawBar := false
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		screen, _ := exec.Command("tmux", "capture-pane", "-p", "-t", session).Output()
		s := string(screen)
		if strings.Contains(s, "redriving") && strings.Contains(s, "%") && strings.Contains(s, "/3000") {
			sawBar = true
		}
		if _, err := os.Stat(done); err == nil {
			if !strings.Contains(s, "requested 3000 entries") {
				t.Fatalf("final screen:\n%s", s)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !sawBar {
		t.Fatal("no progress bar seen on the terminal during the redrive")
	}
}

func TestGroupsResetAndReplay(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	seedDLQ(t, dir, 10, 0) // group billing consumed all 10 orders
	var groups []struct {
		Group string `json:"group"`
		Lag   uint64 `json:"lag"`
	}
	json.Unmarshal([]byte(mustRun(t, dir, "", "groups", "list", "--json")), &groups)
	if len(groups) != 1 || groups[0].Group != "billing" || groups[0].Lag != 0 {
		t.Fatalf("groups: %+v", groups)
	}
	mustRun(t, dir, "", "groups", "reset", "billing", "--topic", "orders", "--to", "earliest")
	json.Unmarshal([]byte(mustRun(t, dir, "", "groups", "list", "--json")), &groups)
	if groups[0].Lag != 10 {
		t.Fatalf("lag after reset to earliest: %+v", groups)
	}
	mustRun(t, dir, "", "topics", "create", "orders-copy")
	since := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	if out := mustRun(t, dir, "", "replay", "orders", "--from", since, "--to", "orders-copy"); !strings.Contains(out, "replayed 10 messages") {
		t.Fatalf("replay: %s", out)
	}
	if out := mustRun(t, dir, "", "replay", "orders", "--from", since, "--to", "orders-copy"); !strings.Contains(out, "replayed 0 messages") || !strings.Contains(out, "10 already there") {
		t.Fatalf("second replay: %s", out)
	}
	if out, code := ferryRun(t, dir, "", "replay", "orders", "--from", "noon", "--to", "orders-copy"); code != 2 || !strings.Contains(out, "RFC 3339") {
		t.Fatalf("bad --from: %d %s", code, out)
	}
}

func TestVerifyKillsAndChecks(t *testing.T) {
	out, code := ferryRun(t, t.TempDir(), "", "verify", "--runs", "3", "--json")
	if code != 0 {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	var res struct {
		Runs         int    `json:"runs"`
		Acknowledged int    `json:"acknowledged"`
		Lost         int    `json:"lost"`
		PaidTwice    int    `json:"paid_twice"`
		Unpaid       int    `json:"unpaid"`
		Verdict      string `json:"verdict"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	if res.Runs != 3 || res.Acknowledged < 600 || res.Lost != 0 || res.PaidTwice != 0 || res.Unpaid != 0 || res.Verdict != "PASS" {
		t.Fatalf("verify result %+v", res)
	}
}

func TestConsumeAsGroupResumes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	mustRun(t, dir, "", "produce", "orders", "a", "b", "c")
	if out := mustRun(t, dir, "", "consume", "orders", "-g", "audit", "-n", "2"); strings.Count(out, "\n") != 2 {
		t.Fatalf("first read: %q", out)
	}
	out := mustRun(t, dir, "", "consume", "orders", "-g", "audit")
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "c") {
		t.Fatalf("resume printed %q, want only the third message", out)
	}
	var groups []struct {
		Group string `json:"group"`
		Lag   uint64 `json:"lag"`
	}
	json.Unmarshal([]byte(mustRun(t, dir, "", "groups", "list", "--json")), &groups)
	if len(groups) != 1 || groups[0].Lag != 0 {
		t.Fatalf("groups: %+v", groups)
	}
}
