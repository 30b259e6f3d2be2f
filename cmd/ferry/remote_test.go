package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
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

// The DLQ commands work on NATS JetStream and on Kafka: directly (--nats,
// --kafka) and through ferry admin over each (--server).
func TestDLQOverNATSAndKafka(t *testing.T) {
	ctx := context.Background()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer ns.Shutdown()
	kc, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()

	for _, c := range []struct {
		name, flag, addr string
		open             func() (backend.Backend, func())
	}{
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
	} {
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
			cmd := exec.Command(buildFerry(t), "admin", c.flag, c.addr, "--listen", "127.0.0.1:0")
			stdout, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			fields := strings.Fields(line) // admin API on URL (over ...)
			if !strings.HasPrefix(line, "admin API on ") || len(fields) < 4 {
				t.Fatalf("ferry admin printed %q", line)
			}
			url := fields[3]
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
		{[]string{"--server", "http://127.0.0.1:1", "consume", "orders"}, "data directory (--dir) only"},
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
