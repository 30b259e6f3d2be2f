package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/jetstream"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// ferryExec runs the binary with args as given (no --dir).
func ferryExec(t *testing.T, args ...string) (string, int) {
	t.Helper()
	return ferryIn(t, "", args...)
}

// startAdmin runs ferry admin with args on a free loopback port until the
// test ends, and returns its URL.
func startAdmin(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(buildFerry(t), append([]string{"admin", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	fields := strings.Fields(line) // admin API on URL (over ...)
	if !strings.HasPrefix(line, "admin API on ") || len(fields) < 4 {
		t.Fatalf("ferry admin printed %q", line)
	}
	return fields[3]
}

// consume and tail work through the admin API as they do on the
// directory: the same lines for every start, partition and output form;
// tail waits for what comes next and stops at -n; --group, which commits
// in the directory, is refused.
func TestConsumeAndTailThroughTheAdminAPI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "2")
	for i := range 6 {
		mustRun(t, dir, "", "produce", "orders", "-k", fmt.Sprintf("k%d", i%3), "-H", "n="+strconv.Itoa(i), fmt.Sprintf("order %d", i))
	}
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("\xff\x00 not utf-8"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, dir, "", "produce", "orders", "-k", "bin", "--headers-json", `{"ce-type":"x"}`, "--file", bin)
	mustRun(t, dir, "", "topics", "create", "many", "--partitions", "1")
	var lines strings.Builder
	for i := range 1234 { // more than a page
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	mustRun(t, dir, lines.String(), "produce", "many")
	url := startAdmin(t, "--dir", dir)
	sorted := func(out string) string {
		lines := strings.Split(strings.TrimSpace(out), "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	for _, args := range [][]string{
		{"consume", "orders"},
		{"consume", "orders", "--json"},
		{"consume", "orders", "--verbose"},
		{"consume", "orders", "--partition", "1"},
		{"consume", "orders", "--from", "-1"},
		{"consume", "orders", "--from", "2"},
		{"consume", "orders", "--from", "latest"},
		{"consume", "orders", "-F", "%p %o %k %h\n", "-e", "hex"},
		{"consume", "many"},
		{"consume", "many", "--from", "700"},
	} {
		local := mustRun(t, dir, "", args...) // read-only beside ferry admin
		remote, code := ferryExec(t, append([]string{"--server", url}, args...)...)
		if code != 0 || sorted(remote) != sorted(local) {
			t.Errorf("%v through --server: exit %d\n%s\nwant, as on the directory:\n%s", args, code, remote, local)
		}
	}
	if out, code := ferryExec(t, "--server", url, "consume", "orders", "-n", "3"); code != 0 || strings.Count(out, "\n") != 3 {
		t.Errorf("consume -n 3 through --server: exit %d\n%s", code, out)
	}
	if out, code := ferryExec(t, "--server", url, "consume", "orders", "--partition", "2"); code != exitBadInput || !strings.Contains(out, "partitions 0 to 1") {
		t.Errorf("consume of partition 2 of 2: exit %d: %s", code, out)
	}
	if out, code := ferryExec(t, "--server", url, "consume", "nope"); code != exitBadInput || !strings.Contains(out, `"nope"`) {
		t.Errorf("consume of a missing topic: exit %d: %s", code, out)
	}
	if out, code := ferryExec(t, "--server", url, "consume", "orders", "--group", "g"); code != exitBadInput || !strings.Contains(out, "--group") {
		t.Errorf("consume --group through --server: exit %d: %s, want refused", code, out)
	}

	// tail from the start of partition 0 waits past its end for one more.
	local := mustRun(t, dir, "", "consume", "orders", "--partition", "0")
	have := strings.Count(local, "\n")
	tail := exec.Command(buildFerry(t), "--server", url, "tail", "orders", "--partition", "0", "--from", "earliest", "-n", strconv.Itoa(have+1))
	var tailOut strings.Builder
	tail.Stdout, tail.Stderr = &tailOut, &tailOut
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	var next string
	for i := 0; ; i++ { // a key of partition 0
		p, code := ferryExec(t, "--server", url, "produce", "orders", "-k", fmt.Sprintf("new%d", i), "--json", "next")
		if code != 0 {
			t.Fatalf("produce through --server: exit %d: %s", code, p)
		}
		if strings.Contains(p, `"partition": 0`) {
			next = fmt.Sprintf("new%d", i)
			break
		}
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail: %v\n%s", err, tailOut.String())
	}
	if got := tailOut.String(); !strings.HasPrefix(got, local) || !strings.Contains(got, next+"\tnext") || strings.Count(got, "\n") != have+1 {
		t.Fatalf("tail through --server printed:\n%s\nwant partition 0's messages, then %s's", got, next)
	}
}

// seedBackendDLQ writes key k's poison message and one parked behind it
// to orders and billing.dlq of b.
func seedBackendDLQ(t *testing.T, b backend.Backend) {
	t.Helper()
	ctx := context.Background()
	for _, topic := range []string{"orders", "billing.dlq"} {
		if err := b.EnsureTopic(ctx, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for i, class := range []retry.Class{retry.ClassPermanent, dlq.ClassParked} {
		m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte("k"), Payload: []byte{byte('a' + i)}}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		e := dlq.NewEntry(m, "billing.dlq", dlq.Failure{Group: "billing", Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("poison"), Class: class})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
}

// remoteBackend is a backend the CLI reaches with a flag: its name, the
// flag and address, and how the test opens it itself.
type remoteBackend struct {
	name, flag, addr string
	open             func() (backend.Backend, func())
}

// remoteBackends starts an in-process nats-server with JetStream and a
// kfake cluster for the test.
func remoteBackends(t *testing.T) []remoteBackend {
	t.Helper()
	ctx := context.Background()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(ns.Shutdown)
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	return []remoteBackend{
		{"nats", "--nats", ns.ClientURL(), func() (backend.Backend, func()) {
			nc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			b, err := jetstream.New(ctx, nc)
			if err != nil {
				t.Fatal(err)
			}
			return b, func() { b.Close(); nc.Close() }
		}},
		{"kafka", "--kafka", strings.Join(kc.ListenAddrs(), ","), func() (backend.Backend, func()) {
			b, err := kafka.New(ctx, kc.ListenAddrs())
			if err != nil {
				t.Fatal(err)
			}
			return b, func() { b.Close() }
		}},
	}
}

// The DLQ commands work on NATS JetStream and on Kafka: directly (--nats,
// --kafka) and through ferry admin over each (--server).
func TestDLQOverNATSAndKafka(t *testing.T) {
	for _, c := range remoteBackends(t) {
		t.Run(c.name, func(t *testing.T) {
			b, closeB := c.open()
			seedBackendDLQ(t, b)
			closeB()
			list := func(args ...string) []admin.DeadLetter {
				t.Helper()
				out, code := ferryExec(t, append(args, "dlq", "list", "-g", "billing", "--json")...)
				var es []admin.DeadLetter
				if code != 0 || json.Unmarshal([]byte(out), &es) != nil {
					t.Fatalf("dlq list %v: exit %d: %s", args, code, out)
				}
				return es
			}
			if es := list(c.flag, c.addr); len(es) != 2 || es[0].Class != "permanent" || es[1].Class != "parked" || es[0].Key != "k" {
				t.Fatalf("dlq list %s: %+v", c.flag, es)
			}
			if out, code := ferryExec(t, c.flag, c.addr, "dlq", "show", "-g", "billing", list(c.flag, c.addr)[0].ID); code != 0 || !strings.Contains(out, "poison") {
				t.Fatalf("dlq show: exit %d: %s", code, out)
			}

			// ferry admin over the backend; the CLI through it.
			url := startAdmin(t, c.flag, c.addr)
			if es := list("--server", url); len(es) != 2 {
				t.Fatalf("dlq list --server: %+v", es)
			}
			if out, code := ferryExec(t, "--server", url, "produce", "orders", "-k", "k", "--json", "k/2", "k/3"); code != 0 || !strings.Contains(out, `"offset": 3`) {
				t.Fatalf("produce through ferry admin: exit %d: %s", code, out)
			}
			if out, code := ferryExec(t, "--server", url, "dlq", "redrive", "-g", "billing", "--class", "permanent"); code != 0 || !strings.Contains(out, "requested 2 entries") {
				t.Fatalf("redrive through ferry admin: exit %d: %s", code, out) // the parked entry goes with its key
			}
			if es := list("--server", url); len(es) != 2 || es[0].State != "requested" || es[1].State != "requested" {
				t.Fatalf("after the redrive: %+v", es)
			}
			if out, code := ferryExec(t, c.flag, c.addr, "dlq", "purge", "-g", "billing", "--json"); code != 0 || !strings.Contains(out, `"purged": 2`) {
				t.Fatalf("purge %s: exit %d: %s", c.flag, code, out)
			}
			if es := list(c.flag, c.addr); len(es) != 0 {
				t.Fatalf("after the purge: %+v", es)
			}
			out, code := ferryExec(t, "--server", url, "audit", "--verb", "redrive", "--json")
			var recs []admin.AuditRecord
			if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].Data.Counts != "redriven 2 of 2" {
				t.Fatalf("audit through ferry admin: exit %d: %s", code, out)
			}
		})
	}
}

// Where to work is named once, and an open address needs auth and TLS.
func TestAdminRefusesOpenListenAndMixedTargets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--dir", dir, "admin", "--listen", "0.0.0.0:0"}, "not a loopback address"},
		{[]string{"--dir", dir, "admin", "--listen", "0.0.0.0:0", "--auth", "x.json"}, "not a loopback address"},
		{[]string{"--dir", dir, "--server", "http://127.0.0.1:1", "topics", "list"}, "--dir and --server"},
		{[]string{"--nats", "nats://127.0.0.1:1", "--kafka", "127.0.0.1:1", "dlq", "list", "-g", "x"}, "give one"},
		{[]string{"--server", "http://127.0.0.1:1", "consume", "orders", "--group", "g"}, "--group reads and commits offsets in a data directory"},
		{[]string{"--server", "http://127.0.0.1:1", "produce", "orders", "--atomic", "x"}, "--atomic commits one batch"},
		{[]string{"--server", "http://127.0.0.1:1", "verify"}, "data directory (--dir) only"},
		{[]string{"--server", "ftp://x", "topics", "list"}, "want http://HOST:PORT"},
		{[]string{"--server", "http://127.0.0.1:8080", "admin"}, "--server is for the commands"},
	} {
		out, code := ferryExec(t, c.args...)
		if code != exitBadInput || !strings.Contains(out, c.says) {
			t.Errorf("ferry %v: exit %d %q, want exit 2 saying %q", c.args, code, out, c.says)
		}
	}
}

// topics alter changes retention, on the directory and through the admin
// API (audited); the partition count is refused with how to grow a
// topic instead; bad values and a missing topic are bad input.
func TestTopicsAlter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "2", "--retention", "1h")
	if out := mustRun(t, dir, "", "topics", "alter", "orders", "--retention", "2h"); !strings.Contains(out, "altered topic orders: retention 2h0m0s, retention bytes 0") {
		t.Fatalf("alter: %s", out)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"topics", "alter", "orders", "--partitions", "4"}, "ferry replay orders --from earliest --to NEW"},
		{[]string{"topics", "alter", "orders"}, "--retention or --retention-bytes"},
		{[]string{"topics", "alter", "orders", "--retention-bytes", "-1"}, "want 0 (unbounded) or more"},
		{[]string{"topics", "alter", "nope", "--retention", "1h"}, `"nope"`},
	} {
		if out, code := ferryRun(t, dir, "", c.args...); code != exitBadInput || !strings.Contains(out, c.says) {
			t.Errorf("ferry %v: exit %d %q, want exit 2 saying %q", c.args, code, out, c.says)
		}
	}
	url := startAdmin(t, "--dir", dir)
	out, code := ferryExec(t, "--server", url, "topics", "alter", "orders", "--retention", "0", "--retention-bytes", "1048576", "--json")
	var got admin.Topic
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Retention != "" || got.RetentionBytes != 1<<20 || got.Partitions != 2 {
		t.Fatalf("alter through --server: exit %d: %s", code, out)
	}
	out, code = ferryExec(t, "--server", url, "audit", "--verb", "admin", "--json")
	var recs []admin.AuditRecord
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].Data.Method != "PATCH" || recs[0].Data.Target != "topic:orders" {
		t.Fatalf("the alter's audit record: exit %d: %s", code, out)
	}
	if out, code := ferryExec(t, "--server", url, "topics", "alter", "ferry.audit", "--retention", "1h"); code == 0 || !strings.Contains(out, "ferry.audit") {
		t.Fatalf("alter of the audit topic: exit %d: %s", code, out)
	}
}

// groups delete removes a group's offsets, on the directory and through
// the admin API; a group that is not there is an error.
func TestGroupsDelete(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	mustRun(t, dir, "", "produce", "orders", "a", "b")
	mustRun(t, dir, "", "consume", "orders", "-g", "billing", "-n", "1")
	mustRun(t, dir, "", "consume", "orders", "-g", "shipping", "-n", "1")
	if out := mustRun(t, dir, "", "groups", "delete", "billing"); !strings.Contains(out, "deleted group billing") {
		t.Fatalf("groups delete: %s", out)
	}
	if out := mustRun(t, dir, "", "groups", "list"); strings.Contains(out, "billing") || !strings.Contains(out, "shipping") {
		t.Fatalf("groups after the delete:\n%s", out)
	}
	if out, code := ferryRun(t, dir, "", "groups", "delete", "billing"); code == 0 || !strings.Contains(out, "billing") {
		t.Fatalf("a second delete: exit %d: %s", code, out)
	}
	url := startAdmin(t, "--dir", dir)
	if out, code := ferryExec(t, "--server", url, "groups", "delete", "shipping", "--json"); code != 0 || !strings.Contains(out, `"deleted": true`) {
		t.Fatalf("groups delete through --server: exit %d: %s", code, out)
	}
	if out, code := ferryExec(t, "--server", url, "groups", "list", "--json"); code != 0 || strings.Contains(out, "shipping") {
		t.Fatalf("groups through --server after the delete: exit %d: %s", code, out)
	}
}

// Topics and groups are managed over NATS JetStream and Kafka as on a
// directory (the backends implement backend.Admin): topics list, create,
// describe and delete; groups list, describe and reset, with a group whose
// member committed through the backend.
func TestTopicsAndGroupsOverNATSAndKafka(t *testing.T) {
	ctx := context.Background()
	for _, c := range remoteBackends(t) {
		t.Run(c.name, func(t *testing.T) {
			run := func(args ...string) string {
				t.Helper()
				out, code := ferryExec(t, append([]string{c.flag, c.addr}, args...)...)
				if code != 0 {
					t.Fatalf("ferry %s %v: exit %d: %s", c.flag, args, code, out)
				}
				return out
			}
			topics := func() map[string]admin.Topic {
				t.Helper()
				var ts []admin.Topic
				if out := run("topics", "list", "--json"); json.Unmarshal([]byte(out), &ts) != nil {
					t.Fatalf("topics list --json: %s", out)
				}
				m := map[string]admin.Topic{}
				for _, tp := range ts {
					m[tp.Name] = tp
				}
				return m
			}
			if _, ok := topics()["x"]; ok {
				t.Fatal("topic x listed before it was created")
			}
			run("topics", "create", "x", "--partitions", "2", "--retention", "36h")
			if x, ok := topics()["x"]; !ok || x.Partitions != 2 || x.Retention != "36h0m0s" {
				t.Fatalf("after topics create x --partitions 2 --retention 36h, topics list shows %+v (listed: %v)", x, ok)
			}
			if out := run("topics", "describe", "x"); !strings.Contains(out, "36h0m0s") {
				t.Fatalf("topics describe x: %s", out)
			}
			if out, code := ferryExec(t, c.flag, c.addr, "topics", "create", "x", "--partitions", "2"); code == 0 || !strings.Contains(out, "exists") {
				t.Fatalf("creating x again: exit %d: %s", code, out)
			}
			run("topics", "delete", "x")
			if x, ok := topics()["x"]; ok {
				t.Fatalf("after topics delete x, topics list shows %+v", x)
			}
			if out, code := ferryExec(t, c.flag, c.addr, "topics", "delete", "x"); code == 0 || !strings.Contains(out, "not found") {
				t.Fatalf("deleting x again: exit %d: %s", code, out)
			}

			// A group whose member committed.
			b, closeB := c.open()
			defer closeB()
			if err := b.EnsureTopic(ctx, "in", 2); err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if err := b.Publish(ctx, &ferry.Message{Topic: "in", Partition: 0, PinPartition: true, Payload: []byte{byte(i)}}); err != nil {
					t.Fatal(err)
				}
			}
			s, err := b.Join(ctx, "billing", "m1", []string{"in"})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Leave()
			select {
			case <-s.Assignments():
			case <-time.After(30 * time.Second):
				t.Fatal("no assignment")
			}
			if err := b.Commit(ctx, s, backend.Offset{TopicPartition: backend.TopicPartition{Topic: "in", Partition: 0}, Offset: 2}); err != nil {
				t.Fatal(err)
			}
			s.Leave()
			var groups []admin.GroupSummary
			if out := run("groups", "list", "--json"); json.Unmarshal([]byte(out), &groups) != nil || len(groups) != 1 ||
				groups[0] != (admin.GroupSummary{Group: "billing", Partitions: 1, Lag: 3}) {
				t.Fatalf("groups list: %s, want billing with 1 partition and a lag of 3, no members", out)
			}
			run("groups", "reset", "billing", "--topic", "in", "--to", "latest")
			if out := run("groups", "list", "--json"); json.Unmarshal([]byte(out), &groups) != nil || len(groups) != 1 ||
				groups[0] != (admin.GroupSummary{Group: "billing", Partitions: 2, Lag: 0}) {
				t.Fatalf("groups list after the reset to latest: %s, want billing on 2 partitions without lag", out)
			}
			// Retention changes; a group goes.
			run("topics", "alter", "in", "--retention", "2h")
			if in := topics()["in"]; in.Retention != "2h0m0s" || in.Partitions != 2 {
				t.Fatalf("after topics alter in --retention 2h: %+v", in)
			}
			run("groups", "delete", "billing")
			if out := run("groups", "list", "--json"); json.Unmarshal([]byte(out), &groups) != nil || len(groups) != 0 {
				t.Fatalf("groups list after groups delete billing: %s", out)
			}
		})
	}
}

// ferry admin serves the web console beside the API, and samples the lag
// it charts.
func TestAdminServesTheConsole(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "1")
	url := startAdmin(t, "--dir", dir)
	for path, want := range map[string]string{"/ui/": "<title>ferry console</title>", "/ui/app.js": "a client of the admin API"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s: %s %.200s", path, resp.Status, body)
		}
	}
	// The sampler starts beside the listener: wait for it.
	var h admin.LagHistory
	for deadline := time.Now().Add(60 * time.Second); h.Interval != admin.DefaultLagInterval.String(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("lag history %+v: want it sampled every %v", h, admin.DefaultLagInterval)
		}
		resp, err := http.Get(url + "/api/v1/groups/billing/lag")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A message produced again with the same --id through the admin API is a
// duplicate, and the output says so, as it does on the directory.
func TestProduceDuplicateThroughTheAdminAPI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "2")
	url := startAdmin(t, "--dir", dir)
	id := "0190d5c2-7f5e-7a1b-9c3d-4e5f60718293"
	produce := func() produced {
		t.Helper()
		out, code := ferryExec(t, "--server", url, "produce", "--json", "orders", "--id", id, "-k", "k", "once")
		var p produced
		if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
			t.Fatalf("produce through the API: exit %d\n%s", code, out)
		}
		return p
	}
	first, again := produce(), produce()
	if first.Produced != 1 || first.Duplicates != 0 || first.Messages[0].Duplicate {
		t.Fatalf("first produce with --id: %+v", first)
	}
	if again.Produced != 0 || again.Duplicates != 1 || !again.Messages[0].Duplicate || again.Messages[0].Offset != first.Messages[0].Offset ||
		again.Messages[0].Partition != first.Messages[0].Partition {
		t.Fatalf("second produce of the same --id through the API: %+v (want a duplicate at the original's place %+v)", again, first.Messages[0])
	}
	out, code := ferryExec(t, "--server", url, "produce", "orders", "--id", id, "-k", "k", "once")
	if code != 0 || !strings.Contains(out, "1 duplicate(s)") {
		t.Fatalf("text output of a duplicate: exit %d\n%s", code, out)
	}
}
