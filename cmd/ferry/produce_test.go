package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// logged opens dir read-only (beside an owner, if one runs) and returns
// every message of topic, by partition then offset.
func logged(t *testing.T, dir, topic string) []*ferry.Message {
	t.Helper()
	l, err := commitlog.Open(context.Background(), dir, commitlog.WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	msgs, err := readTopic(l, topic)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

type produced struct {
	Topic      string `json:"topic"`
	Produced   int    `json:"produced"`
	Duplicates int    `json:"duplicates"`
	Messages   []struct {
		ID        string `json:"id"`
		Partition int32  `json:"partition"`
		Offset    uint64 `json:"offset"`
		Duplicate bool   `json:"duplicate"`
	} `json:"messages"`
}

func produceJSON(t *testing.T, dir, stdin string, args ...string) produced {
	t.Helper()
	out := mustRun(t, dir, stdin, append([]string{"produce", "--json"}, args...)...)
	var p produced
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("produce --json: %v\n%s", err, out)
	}
	return p
}

// 100,000 lines on stdin are streamed in batches (one atomic batch of
// them used to be refused: at most 65534 messages), every one lands once,
// and the output says where they went.
func TestProduceStreams100kLines(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "2")
	var in strings.Builder
	for i := 1; i <= 100000; i++ {
		fmt.Fprintf(&in, "%d\n", i)
	}
	out := mustRun(t, dir, in.String(), "produce", "orders")
	if !strings.Contains(out, "produced 100000 message(s) to orders") || !strings.Contains(out, "partition 0:") || !strings.Contains(out, "partition 1:") {
		t.Fatalf("output does not say how many went where:\n%s", out)
	}
	msgs := logged(t, dir, "orders")
	if len(msgs) != 100000 {
		t.Fatalf("%d messages in the log, want 100000", len(msgs))
	}
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[string(m.Payload)] = true
	}
	for i := 1; i <= 100000; i++ {
		if !seen[fmt.Sprint(i)] {
			t.Fatalf("line %d missing", i)
		}
	}
	// All or nothing is explicit, and says its limit.
	out, code := ferryRun(t, dir, in.String(), "produce", "orders", "--atomic")
	if code != exitBadInput || !strings.Contains(out, "65534") {
		t.Fatalf("--atomic with 100000 messages: exit %d\n%s", code, out)
	}
	if n := len(logged(t, dir, "orders")); n != 100000 {
		t.Fatalf("a refused --atomic produce left %d messages, want 100000", n)
	}
}

// A line written to a pipe is published before the pipe ends.
func TestProduceSlowPipePublishesBeforeEOF(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	cmd := exec.Command(buildFerry(t), "--dir", dir, "produce", "orders")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitLines := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			// Read-only beside the producing process, which owns the
			// directory.
			if got := len(logged(t, dir, "orders")); got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d message(s) not in the log 30 s after they were written to the pipe (EOF not reached yet)", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	fmt.Fprintln(stdin, "first")
	waitLines(1)
	fmt.Fprintln(stdin, "second")
	waitLines(2)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("produce: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "produced 2 message(s)") {
		t.Fatalf("output:\n%s", out.String())
	}
}

// A binary file is one message with --whole, byte for byte; -0 splits on
// NUL only; -K splits key from value; a custom delimiter works.
func TestProduceFraming(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "bin")
	blob := []byte{0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0xff, 0xfe, '\n', '\n'}
	file := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(file, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, dir, "", "produce", "bin", "--whole", "--file", file)
	msgs := logged(t, dir, "bin")
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Payload, blob) {
		t.Fatalf("--whole of a binary file: %d message(s), first %q; want one, %q", len(msgs), msgs[0].Payload, blob)
	}

	mustRun(t, dir, "", "topics", "create", "nul")
	mustRun(t, dir, "a\nb\x00c\x00", "produce", "nul", "-0")
	if got := payloads(logged(t, dir, "nul")); got != "a\nb|c" {
		t.Fatalf("-0: %q, want \"a\\nb|c\"", got)
	}

	mustRun(t, dir, "", "topics", "create", "kv")
	mustRun(t, dir, "k1:v1\nk2:v:2\nnokey\n", "produce", "kv", "-K", ":")
	var kv []string
	for _, m := range logged(t, dir, "kv") {
		kv = append(kv, string(m.Key)+"="+string(m.Payload))
	}
	if strings.Join(kv, " ") != "k1=v1 k2=v:2 =nokey" {
		t.Fatalf("-K: %v", kv)
	}

	mustRun(t, dir, "", "topics", "create", "semi")
	mustRun(t, dir, "x;y;z", "produce", "semi", "--delimiter", ";")
	if got := payloads(logged(t, dir, "semi")); got != "x|y|z" {
		t.Fatalf("--delimiter ';': %q", got)
	}
	for _, bad := range [][]string{
		{"--whole", "-0"},
		{"-0", "--delimiter", ";"},
		{"--delimiter", ""},
		{"--delimiter", `\q`},
		{"-k", "a", "-K", ":"},
	} {
		out, code := ferryRun(t, dir, "x", append([]string{"produce", "semi"}, bad...)...)
		if code != exitBadInput {
			t.Errorf("produce %v: exit %d, want %d\n%s", bad, code, exitBadInput, out)
		}
	}
}

func payloads(msgs []*ferry.Message) string {
	var s []string
	for _, m := range msgs {
		s = append(s, string(m.Payload))
	}
	return strings.Join(s, "|")
}

// --id sets the message ID: producing it again inside the dedup window
// writes nothing and says so. Repeated -H keeps every value in order, and
// --headers-json adds its headers after them; --time and --delay set the
// record and delivery times.
func TestProduceIDHeadersTimes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	id := "0190d5c2-7f5e-7a1b-9c3d-4e5f60718293"
	first := produceJSON(t, dir, "", "orders", "--id", id, "once")
	again := produceJSON(t, dir, "", "orders", "--id", id, "once")
	if first.Produced != 1 || first.Messages[0].ID != id || first.Messages[0].Duplicate {
		t.Fatalf("first produce with --id: %+v", first)
	}
	if again.Produced != 0 || again.Duplicates != 1 || !again.Messages[0].Duplicate || again.Messages[0].Offset != first.Messages[0].Offset {
		t.Fatalf("second produce of the same --id: %+v (want a duplicate at the original's offset %d)", again, first.Messages[0].Offset)
	}
	if out, code := ferryRun(t, dir, "", "produce", "orders", "--id", id, "a", "b"); code != exitBadInput || !strings.Contains(out, "one message") {
		t.Fatalf("--id with two messages: exit %d\n%s", code, out)
	}
	if out, code := ferryRun(t, dir, "", "produce", "orders", "--id", "nope", "a"); code != exitBadInput || !strings.Contains(out, "UUID") {
		t.Fatalf("--id nope: exit %d\n%s", code, out)
	}

	mustRun(t, dir, "", "topics", "create", "h")
	mustRun(t, dir, "", "produce", "h", "-H", "a=1", "-H", "a=2", "--headers-json", `{"z":"3","b":"4"}`,
		"--time", "2026-01-02T03:04:05Z", "x")
	msgs := logged(t, dir, "h")
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	var hs []string
	for _, h := range msgs[0].Headers {
		hs = append(hs, h.Key+"="+string(h.Value))
	}
	if strings.Join(hs, " ") != "a=1 a=2 b=4 z=3" {
		t.Fatalf("headers %v, want a=1 a=2 b=4 z=3", hs)
	}
	if want := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC); !msgs[0].Time.Equal(want) {
		t.Fatalf("time %v, want %v", msgs[0].Time, want)
	}
	mustRun(t, dir, "", "topics", "create", "later")
	mustRun(t, dir, "", "produce", "later", "--delay", "1h", "x")
	l, err := commitlog.Open(context.Background(), dir, commitlog.WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.Read("later", 0, 0, commitlog.ReadOpts{})
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(res.WaitUntil); len(res.Messages) != 0 || d < 50*time.Minute || d > time.Hour {
		t.Fatalf("--delay 1h: %d message(s) readable now, due in %v", len(res.Messages), d)
	}
	for _, bad := range [][]string{
		{"--time", "yesterday"},
		{"--not-before", "soon"},
		{"--delay", "1h", "--not-before", "2026-01-02T03:04:05Z"},
		{"--delay", "-1s"},
		{"--batch", "0"},
	} {
		if out, code := ferryRun(t, dir, "", append([]string{"produce", "h", "x"}, bad...)...); code != exitBadInput {
			t.Errorf("produce %v: exit %d, want %d\n%s", bad, code, exitBadInput, out)
		}
	}
}

// A directory another process owns: produce says how to go on, and does
// not suggest a read-only open, which cannot help a writer.
func TestProduceToALockedDirectorySaysWhatToDo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	l, err := commitlog.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, code := ferryRun(t, dir, "", "produce", "orders", "x")
	if code != exitFailure || !strings.Contains(out, "stop that process") || strings.Contains(out, "read-only") || strings.Count(out, "ferry:") != 1 {
		t.Fatalf("produce to a locked directory: exit %d\n%s", code, out)
	}
}
