package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
)

// jsonMessage is how tests read a line of consume --json: the record as
// printed, plus Headers by name (the last value of a repeated name) for
// quick lookups. The ordered list is jsonRecord.Headers.
type jsonMessage struct {
	jsonRecord
	Headers map[string]string
}

// UnmarshalJSON decodes a jsonRecord and indexes its headers by name.
func (m *jsonMessage) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &m.jsonRecord); err != nil {
		return err
	}
	m.Headers = map[string]string{}
	for _, h := range m.jsonRecord.Headers {
		m.Headers[h.Key] = h.Value
	}
	return nil
}

// decodeField turns a field of consume --json back into bytes.
func decodeField(t *testing.T, enc, s string) []byte {
	t.Helper()
	switch enc {
	case encText:
		return []byte(s)
	case encBase64:
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("base64 %q: %v", s, err)
		}
		return b
	case encHex:
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("hex %q: %v", s, err)
		}
		return b
	}
	t.Fatalf("unknown encoding %q", enc)
	return nil
}

// readRecords parses consume --json output.
func readRecords(t *testing.T, out string) []jsonRecord {
	t.Helper()
	var recs []jsonRecord
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r jsonRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad JSON line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// seedLog writes msgs into a new directory's topic (created with
// partitions), in process, and closes the log.
func seedLog(t *testing.T, dir, topic string, partitions int, msgs ...*ferry.Message) {
	t.Helper()
	ctx := context.Background()
	l, err := commitlog.Open(ctx, dir, commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.CreateTopic(ctx, topic, commitlog.TopicConfig{Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		m.Topic = topic
	}
	if len(msgs) > 0 {
		if err := l.Commit(ctx, &commitlog.Batch{Messages: msgs}); err != nil {
			t.Fatal(err)
		}
	}
}

// binaryMessage has a key, payload and header value that are not valid
// UTF-8, and a repeated header name.
func binaryMessage() *ferry.Message {
	return &ferry.Message{
		Key:     []byte{0xff, 'k', 0x00},
		Payload: []byte{0x00, 0x01, 0xfe, 0xff, 0xc3, 0x28, '\n', 'x'},
		Headers: []ferry.Header{
			{Key: "ce-type", Value: []byte("blob")},
			{Key: "trace", Value: []byte{0xc0, 0xaf}},
			{Key: "ce-type", Value: []byte("second")},
			{Key: "empty", Value: nil},
		},
	}
}

func TestConsumeJSONIsLossless(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	bin := binaryMessage()
	text := &ferry.Message{Key: []byte("k2"), Payload: []byte(`{"ok":"é"}`), Headers: []ferry.Header{{Key: "a", Value: []byte("1")}, {Key: "a", Value: []byte("2")}}}
	seedLog(t, dir, "blobs", 1, bin, text)

	check := func(name string, recs []jsonRecord, wantEnc [2]string) {
		t.Helper()
		if len(recs) != 2 {
			t.Fatalf("%s: %d records, want 2", name, len(recs))
		}
		for i, want := range []*ferry.Message{bin, text} {
			r := recs[i]
			if r.Encoding != wantEnc[i] {
				t.Errorf("%s: message %d has encoding %q, want %q", name, i, r.Encoding, wantEnc[i])
			}
			if got := decodeField(t, r.Encoding, r.Key); !bytes.Equal(got, want.Key) {
				t.Errorf("%s: key %q, want %q", name, got, want.Key)
			}
			if got := decodeField(t, r.Encoding, r.Payload); !bytes.Equal(got, want.Payload) {
				t.Errorf("%s: payload %q, want %q", name, got, want.Payload)
			}
			if len(r.Headers) != len(want.Headers) {
				t.Fatalf("%s: headers %+v, want %d in order", name, r.Headers, len(want.Headers))
			}
			for j, h := range want.Headers {
				got := r.Headers[j]
				if got.Key != h.Key || got.KeyEncoding != "" || !bytes.Equal(decodeField(t, r.Encoding, got.Value), h.Value) {
					t.Errorf("%s: header %d is %+v, want %s=%q", name, j, got, h.Key, h.Value)
				}
			}
			if r.ID != want.ID.String() || r.Topic != "blobs" || r.Offset != uint64(i) {
				t.Errorf("%s: record %+v, want ID %s at blobs/0@%d", name, r, want.ID, i)
			}
		}
	}
	check("consume --json", readRecords(t, mustRun(t, dir, "", "consume", "blobs", "--json")), [2]string{"base64", "text"})
	check("tail --json", readRecords(t, mustRun(t, dir, "", "tail", "blobs", "--from", "earliest", "-n", "2", "--json")), [2]string{"base64", "text"})
	check("-e hex", readRecords(t, mustRun(t, dir, "", "consume", "blobs", "--json", "-e", "hex")), [2]string{"hex", "hex"})
	check("--encoding base64", readRecords(t, mustRun(t, dir, "", "consume", "blobs", "--json", "--encoding", "base64")), [2]string{"base64", "base64"})

	// -e text refuses to print the binary message altered, and names it.
	out, code := ferryRun(t, dir, "", "consume", "blobs", "--json", "-e", "text")
	if code != 1 || !strings.Contains(out, "blobs/0@0: the key is not valid UTF-8") || !strings.Contains(out, "-e base64") {
		t.Fatalf("-e text on a binary message: exit %d\n%s", code, out)
	}
	if out := mustRun(t, dir, "", "consume", "blobs", "--json", "-e", "text", "--from", "1"); readRecords(t, out)[0].Encoding != "text" {
		t.Fatalf("-e text on a text message: %s", out)
	}
	// The default text form prints the bytes as they are, as before.
	raw := mustRun(t, dir, "", "consume", "blobs", "-n", "1")
	if want := "blobs/0@0\t" + string(bin.Key) + "\t" + string(bin.Payload) + "\n"; raw != want {
		t.Fatalf("default form: %q, want %q", raw, want)
	}
	// jsonMessage (the tests' view) still finds headers by name.
	var m jsonMessage
	if err := json.Unmarshal([]byte(strings.Split(mustRun(t, dir, "", "consume", "blobs", "--json", "--from", "1"), "\n")[0]), &m); err != nil || m.Headers["a"] != "2" || len(m.jsonRecord.Headers) != 2 {
		t.Fatalf("jsonMessage: %+v %v", m, err)
	}
	if out, code := ferryRun(t, dir, "", "consume", "blobs", "-e", "utf16"); code != 2 || !strings.Contains(out, "want base64, hex or text") {
		t.Fatalf("bad -e: exit %d\n%s", code, out)
	}
}

// A header name that is not valid UTF-8 is kept too, in base64.
func TestConsumeJSONHeaderNameNotUTF8(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	seedLog(t, dir, "t", 1, &ferry.Message{Payload: []byte("p"), Headers: []ferry.Header{{Key: "\xffname", Value: []byte("v")}}})
	r := readRecords(t, mustRun(t, dir, "", "consume", "t", "--json"))[0]
	if r.Encoding != "text" || len(r.Headers) != 1 || r.Headers[0].KeyEncoding != "base64" || string(decodeField(t, "base64", r.Headers[0].Key)) != "\xffname" || r.Headers[0].Value != "v" {
		t.Fatalf("record %+v", r)
	}
}

func TestConsumeFormatAndVerbose(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	at := time.UnixMilli(1_790_000_000_123).UTC()
	m := &ferry.Message{ID: ferry.NewID(), Time: at, Key: []byte("c1"), Payload: []byte(`{"total":1}`),
		Headers: []ferry.Header{{Key: "ce-type", Value: []byte("order.placed")}, {Key: "x", Value: []byte("1")}, {Key: "x", Value: []byte("2")}}}
	seedLog(t, dir, "orders", 1, m)

	out := mustRun(t, dir, "", "consume", "orders", "--format", `%t/%p@%o\t%k=%v [%h] %T %i 100%%\n`)
	want := fmt.Sprintf("orders/0@0\tc1={\"total\":1} [ce-type=order.placed,x=1,x=2] 1790000000123 %s 100%%\n", m.ID)
	if out != want {
		t.Fatalf("--format:\n got %q\nwant %q", out, want)
	}
	if out := mustRun(t, dir, "", "tail", "orders", "--from", "earliest", "-n", "1", "-F", `%k\t%v`, "-e", "hex"); out != hex.EncodeToString([]byte("c1"))+"\t"+hex.EncodeToString(m.Payload) {
		t.Fatalf("tail -F with -e hex: %q", out)
	}

	out = mustRun(t, dir, "", "consume", "orders", "--verbose")
	for _, want := range []string{"orders/0@0", at.Format(time.RFC3339Nano), "id " + m.ID.String(), "key      c1", "header   ce-type=order.placed\n  header   x=1\n  header   x=2\n", `payload  {"total":1}`} {
		if !strings.Contains(out, want) {
			t.Errorf("--verbose lacks %q:\n%s", want, out)
		}
	}
	// The default form is as it always was.
	if out := mustRun(t, dir, "", "consume", "orders"); out != "orders/0@0\tc1\t{\"total\":1}\n" {
		t.Fatalf("default form: %q", out)
	}

	for _, c := range []struct {
		args []string
		text string
	}{
		{[]string{"--format", "%k %q"}, "unknown verb %q: want one of %k key, %v value (payload), %h headers, %T timestamp (ms), %p partition, %o offset, %t topic, %i ID, %% a percent sign"},
		{[]string{"--format", "%"}, "ends in a lone %"},
		{[]string{"--format", `\x`}, `unknown escape \x: want \n, \t, \r or \\`},
		{[]string{"--format", "%k", "--json"}, "choose one"},
		{[]string{"--verbose", "--json"}, "choose one"},
	} {
		out, code := ferryRun(t, dir, "", append([]string{"consume", "orders"}, c.args...)...)
		if code != 2 || !strings.Contains(out, c.text) {
			t.Errorf("consume %v: exit %d, %q; want exit 2 and %q", c.args, code, out, c.text)
		}
	}
}

// Every --from form gives the same start in consume, tail and replay.
func TestFromFormsAreTheSameEverywhere(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	now := time.Now()
	var msgs []*ferry.Message
	// Partition 0: five messages, 5h to 1h ago; partition 1: three, 3h
	// to 1h ago.
	for p, n := range []int{5, 3} {
		for i := 0; i < n; i++ {
			msgs = append(msgs, &ferry.Message{Partition: int32(p), PinPartition: true, Time: now.Add(-time.Duration(n-i) * time.Hour), Payload: []byte(fmt.Sprintf("p%d-%d", p, i))})
		}
	}
	seedLog(t, dir, "orders", 2, msgs...)

	for _, c := range []struct {
		from string
		want []string // partition:offset
	}{
		{"earliest", []string{"0:0", "0:1", "0:2", "0:3", "0:4", "1:0", "1:1", "1:2"}},
		{"latest", nil},
		{"3", []string{"0:3", "0:4"}},
		{"-2", []string{"0:3", "0:4", "1:1", "1:2"}},
		{"-10", []string{"0:0", "0:1", "0:2", "0:3", "0:4", "1:0", "1:1", "1:2"}}, // clamped at the start
		{now.Add(-210 * time.Minute).UTC().Format(time.RFC3339), []string{"0:2", "0:3", "0:4", "1:0", "1:1", "1:2"}},
		{"150m", []string{"0:3", "0:4", "1:1", "1:2"}},
		{"1h30m", []string{"0:4", "1:2"}},
	} {
		got := func(out string) []string {
			lines := strings.Fields(out)
			slices.Sort(lines)
			return lines
		}
		if out := got(mustRun(t, dir, "", "consume", "orders", "--from", c.from, "-F", `%p:%o\n`)); !slices.Equal(out, c.want) {
			t.Errorf("consume --from %s: %v, want %v", c.from, out, c.want)
		}
		if len(c.want) > 0 { // tail follows: stop it after what it should print
			out := got(mustRun(t, dir, "", "tail", "orders", "--from", c.from, "-n", fmt.Sprint(len(c.want)), "-F", `%p:%o\n`))
			if !slices.Equal(out, c.want) {
				t.Errorf("tail --from %s: %v, want %v", c.from, out, c.want)
			}
		}
		target := "copy-" + strings.NewReplacer(":", "", "-", "m").Replace(c.from)
		var res admin.ReplayResult
		if err := json.Unmarshal([]byte(stdoutOf(t, dir, "replay", "orders", "--from", c.from, "--to", target, "--json")), &res); err != nil {
			t.Fatal(err)
		}
		if res.Copied != len(c.want) || !res.Created {
			t.Errorf("replay --from %s: %+v, want %d copied into a created topic", c.from, res, len(c.want))
		}
		var origins []string
		for _, r := range readRecords(t, mustRun(t, dir, "", "consume", target, "--json")) {
			for _, h := range r.Headers {
				if h.Key == admin.ReplayOfHeader {
					p, off, _ := admin.ParseReplayOf(h.Value, "orders")
					origins = append(origins, fmt.Sprintf("%d:%d", p, off))
				}
			}
		}
		if slices.Sort(origins); !slices.Equal(origins, c.want) {
			t.Errorf("replay --from %s copied %v, want %v", c.from, origins, c.want)
		}
	}

	// A bad value names every form; so does groups reset --to.
	forms := []string{"earliest", "latest", "an offset", "RFC 3339", "-N (N before the end of each partition", "a duration ago (1h"}
	for _, args := range [][]string{
		{"consume", "orders", "--from", "yesterday"},
		{"tail", "orders", "--from", "yesterday"},
		{"replay", "orders", "--from", "yesterday", "--to", "x"},
		{"groups", "reset", "g", "--topic", "orders", "--to", "yesterday"},
		{"consume", "orders", "--from", "-1h"},
	} {
		out, code := ferryRun(t, dir, "", args...)
		if code != 2 || !strings.Contains(out, `"yesterday"`) && !strings.Contains(out, `"-1h"`) {
			t.Errorf("ferry %v: exit %d\n%s", args, code, out)
		}
		for _, f := range forms {
			if !strings.Contains(out, f) {
				t.Errorf("ferry %v: the error does not name %q:\n%s", args, f, out)
			}
		}
	}
	// A missing required flag says so.
	for _, c := range []struct {
		args []string
		text string
	}{
		{[]string{"replay", "orders", "--to", "x"}, `required flag(s) "from" not set`},
		{[]string{"replay", "orders", "--from", "earliest"}, `required flag(s) "to" not set`},
		{[]string{"replay", "orders"}, `required flag(s) "from", "to" not set`},
	} {
		if out, code := ferryRun(t, dir, "", c.args...); code != 2 || !strings.Contains(out, c.text) {
			t.Errorf("ferry %v: exit %d, %q; want exit 2 and %q", c.args, code, out, c.text)
		}
	}
}

// stdoutOf runs the binary with --dir dir and returns its stdout alone.
func stdoutOf(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(buildFerry(t), append([]string{"--dir", dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ferry %v: %v\n%s%s", args, err, out, stderr.String())
	}
	return string(out)
}

// replaySource seeds a directory with a topic "orders" of three
// partitions and n keyed messages, and returns the directory.
func replaySource(t *testing.T, n int) string {
	dir := filepath.Join(t.TempDir(), "data")
	var msgs []*ferry.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, &ferry.Message{Key: []byte(fmt.Sprintf("k%d", i)), Payload: []byte(fmt.Sprintf("order %d", i)), Headers: []ferry.Header{{Key: "n", Value: []byte(fmt.Sprint(i))}}})
	}
	seedLog(t, dir, "orders", 3, msgs...)
	return dir
}

// The binary creates a missing target with the source's partitions, and a
// rerun copies nothing, also when the target's deduplication window
// remembers no IDs at all (a negative window: as if hours had passed).
func TestReplayCreatesTargetAndCopiesOnce(t *testing.T) {
	dir := replaySource(t, 12)
	cmd := exec.Command(buildFerry(t), "--dir", dir, "replay", "orders", "--from", "earliest", "--to", "audit", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	var res admin.ReplayResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("replay --json: %v\n%s", err, stdout.String())
	}
	if res != (admin.ReplayResult{From: "orders", To: "audit", Created: true, Partitions: 3, Copied: 12}) {
		t.Fatalf("replay: %+v", res)
	}
	if !strings.Contains(stderr.String(), "created topic audit with 3 partitions, as orders has") {
		t.Fatalf("stderr: %q", stderr.String())
	}
	var desc struct {
		Partitions int `json:"partitions"`
	}
	json.Unmarshal([]byte(mustRun(t, dir, "", "topics", "describe", "audit", "--json")), &desc)
	if desc.Partitions != 3 {
		t.Fatalf("audit has %d partitions, want 3", desc.Partitions)
	}
	if out := mustRun(t, dir, "", "replay", "orders", "--from", "earliest", "--to", "audit"); out != "replayed 0 messages from orders into audit (12 already there)\n" {
		t.Fatalf("rerun: %q", out)
	}

	// A target without deduplication: only the ferry-replay-of record
	// keeps the rerun from copying again.
	l, err := commitlog.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTopic(context.Background(), "nodedup", commitlog.TopicConfig{Partitions: 3, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	for i, want := range []string{"replayed 12 messages from orders into nodedup (0 already there)\n", "replayed 0 messages from orders into nodedup (12 already there)\n"} {
		if out := mustRun(t, dir, "", "replay", "orders", "--from", "earliest", "--to", "nodedup"); out != want {
			t.Fatalf("replay %d into a topic without deduplication: %q, want %q", i+1, out, want)
		}
	}
	// New messages in the source are copied by the next run, alone.
	mustRun(t, dir, "", "produce", "orders", "-k", "late", "late order")
	if out := mustRun(t, dir, "", "replay", "orders", "--from", "earliest", "--to", "nodedup"); out != "replayed 1 messages from orders into nodedup (12 already there)\n" {
		t.Fatalf("replay after a new message: %q", out)
	}
	recs := readRecords(t, mustRun(t, dir, "", "consume", "nodedup", "--json"))
	seen := map[string]bool{}
	for _, r := range recs {
		var m jsonMessage
		b, _ := json.Marshal(r)
		json.Unmarshal(b, &m)
		of := m.Headers[admin.ReplayOfHeader]
		if seen[of] || of == "" || m.Headers[admin.ReplayOfIDHeader] == "" {
			t.Fatalf("copy %+v: ferry-replay-of %q missing or seen twice", r, of)
		}
		seen[of] = true
	}
	if len(recs) != 13 {
		t.Fatalf("nodedup holds %d messages, want 13", len(recs))
	}
}

// Two replays hours apart, past the target's 2-minute deduplication window
// (the log's clock is moved on), copy each message once.
func TestReplayRerunAfterDedupWindow(t *testing.T) {
	dir := replaySource(t, 20)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ctx := context.Background()
	open := func() *commitlog.Log {
		l, err := commitlog.Open(ctx, dir, commitlog.WithClock(clock), commitlog.WithDurability(commitlog.DurabilityNone))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	r := admin.Replay{From: "orders", To: "audit", Start: "earliest"}
	replay := func(l *commitlog.Log) (admin.ReplayResult, error) {
		b := embedded.New(l)
		defer b.Close()
		return admin.NewService(b).Replay(ctx, r)
	}

	l := open()
	res, err := replay(l)
	if err != nil || res.Copied != 20 || !res.Created {
		t.Fatalf("first replay: %+v %v", res, err)
	}
	info, _ := l.Topic("audit")
	if info.Config.DedupWindow != 2*time.Minute {
		t.Fatalf("audit's dedup window is %s; this test assumes the 2m default", info.Config.DedupWindow)
	}
	advance(3 * time.Hour)
	res, err = replay(l)
	if err != nil || res.Copied != 0 || res.AlreadyThere != 20 || res.Created {
		t.Fatalf("replay 3h later, same process: %+v %v", res, err)
	}
	l.Close()

	advance(3 * time.Hour)
	l = open() // the window is rebuilt on open: nothing is remembered now
	defer l.Close()
	res, err = replay(l)
	if err != nil || res.Copied != 0 || res.AlreadyThere != 20 {
		t.Fatalf("replay 6h later, reopened: %+v %v", res, err)
	}
	// The window has indeed passed: the log takes a copy's ID again.
	b := &commitlog.Batch{Messages: []*ferry.Message{{ID: admin.ReplayCopyID("orders", 0, 0, "audit"), Topic: "audit", Payload: []byte("x")}}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 0 {
		t.Fatalf("commit of a copy's ID after the window: duplicates %d, %v (the log still deduplicates: the test proves nothing)", b.Duplicates, err)
	}
	total := uint64(0)
	info, _ = l.Topic("audit")
	for _, p := range info.Partitions {
		total += p.End - p.Start
	}
	if total != 21 {
		t.Fatalf("audit holds %d messages, want the 20 copies and the one commit", total)
	}
}

func TestTailHelpIsItsOwn(t *testing.T) {
	dir := t.TempDir()
	tail := mustRun(t, dir, "", "tail", "--help")
	consume := mustRun(t, dir, "", "consume", "--help")
	if tail == consume {
		t.Fatal("tail --help is consume's")
	}
	if !strings.Contains(tail, "tail prints the messages appended to a topic from now on") || strings.Contains(tail, "consume prints") {
		t.Fatalf("tail --help:\n%s", tail)
	}
	for _, help := range []string{tail, consume} {
		for _, want := range []string{"--format", "--verbose", "--encoding", `{"key","value"}`, "base64"} {
			if !strings.Contains(help, want) {
				t.Errorf("help lacks %q:\n%s", want, help)
			}
		}
	}
}

func TestVersionJSON(t *testing.T) {
	var bi buildInfo
	out := mustRun(t, t.TempDir(), "", "version", "--json")
	if err := json.Unmarshal([]byte(out), &bi); err != nil {
		t.Fatalf("version --json: %v\n%s", err, out)
	}
	if bi.Version != "dev" || bi.Module != "github.com/ferrymq/ferry" || !strings.HasPrefix(bi.Go, "go") {
		t.Fatalf("version --json: %+v", bi)
	}
	if out := mustRun(t, t.TempDir(), "", "--version"); !strings.HasPrefix(out, "ferry dev (github.com/ferrymq/ferry") {
		t.Fatalf("--version: %q", out)
	}
	// A build stamped with VCS information names its revision (GOFLAGS
	// may turn stamping off, so ask for it).
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git checkout (%v): the revision cannot be checked", err)
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	out2, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	bi = buildInfo{}
	if err := json.Unmarshal(out2, &bi); err != nil || bi.Revision != strings.TrimSpace(string(head)) || bi.ModuleVersion == "" {
		t.Fatalf("version --json of a stamped build: %+v %v, want revision %s", bi, err, head)
	}
	text, _ := exec.Command(bin, "version").Output()
	if !strings.Contains(string(text), "revision "+bi.Revision[:12]) {
		t.Fatalf("version: %q", text)
	}
	_ = os.Remove(bin)
}

// A consume that stops at a message not due yet says so, and how to read
// past it, on the directory and through the admin API alike.
func TestConsumeSaysWhereADelayedMessageStopsIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "t")
	mustRun(t, dir, "", "produce", "t", "a", "b")
	mustRun(t, dir, "", "produce", "t", "--delay", "1h", "later")
	mustRun(t, dir, "", "produce", "t", "c")
	want := "t partition 0 stops at offset 2: a message not due until "
	if out := mustRun(t, dir, "", "consume", "t"); !strings.Contains(out, want) || !strings.Contains(out, "--partition 0 --from 3 reads past it") || strings.Contains(out, "\tc") {
		t.Fatalf("consume past a delayed message:\n%s", out)
	}
	url := startAdmin(t, "--dir", dir)
	if out, code := ferryExec(t, "--server", url, "consume", "t"); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("consume through the API past a delayed message: exit %d\n%s", code, out)
	}
}
