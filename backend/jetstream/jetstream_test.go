package jetstream_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/backendtest"
	"github.com/ferrymq/ferry/backend/jetstream"
	"github.com/ferrymq/ferry/internal/testsvc"
)

// natsServer is an in-process nats-server with JetStream on a fixed port
// and store directory, so it can be stopped and started again with its
// data.
type natsServer struct {
	t    testing.TB
	dir  string
	port int
	s    *server.Server
}

func startServer(t testing.TB) *natsServer {
	ns := &natsServer{t: t, dir: t.TempDir(), port: -1}
	ns.start()
	ns.port = ns.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		if ns.s != nil {
			ns.s.Shutdown()
			ns.s.WaitForShutdown()
		}
	})
	return ns
}

func (ns *natsServer) start() {
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: ns.port, JetStream: true, StoreDir: ns.dir, NoLog: true, NoSigs: true,
		SyncAlways: true, // fsync before ack, as ferry's embedded log does
	})
	if err != nil {
		ns.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		ns.t.Fatal("nats-server did not start")
	}
	ns.s = s
}

func (ns *natsServer) stop() {
	ns.s.Shutdown()
	ns.s.WaitForShutdown()
	ns.s = nil
}

func (ns *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", ns.port) }

func randomPrefix() string {
	var b [4]byte
	rand.Read(b[:])
	return "T" + strings.ToUpper(hex.EncodeToString(b[:]))
}

// connect returns a connection that reconnects forever and a backend with
// a prefix of its own; both are closed, and on a shared server the
// prefix's streams and buckets deleted, when t ends.
func connect(t *testing.T, url string, cleanup bool, opts ...jetstream.Option) backend.Backend {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond), nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	prefix := randomPrefix()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := jetstream.New(ctx, nc, append([]jetstream.Option{jetstream.WithPrefix(prefix), jetstream.WithSessionTimeout(2 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		if cleanup {
			deletePrefix(nc, prefix)
		}
		nc.Close()
	})
	return b
}

// deletePrefix removes what a test made on a shared server.
func deletePrefix(nc *nats.Conn, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := natsjs.New(nc)
	if err != nil {
		return
	}
	names := js.StreamNames(ctx)
	var doomed []string
	for n := range names.Name() {
		if strings.HasPrefix(n, prefix+"_") || strings.HasPrefix(n, "KV_"+prefix+"_") {
			doomed = append(doomed, n)
		}
	}
	for _, n := range doomed {
		js.DeleteStream(ctx, n)
	}
}

// The JetStream backend passes the conformance suite against an
// in-process nats-server, which the suite stops and restarts; the
// simulation runs there too (simWorld).
func TestConformanceEmbeddedServer(t *testing.T) {
	ns := startServer(t)
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) backend.Backend { return connect(t, ns.url(), false) },
		Outage: func(t *testing.T) func() {
			ns.stop()
			return ns.start
		},
		Simulation: simWorld(ns),
	})
}

// simWorld runs the simulation's seeds on ns (backendtest.NetworkSimWorld),
// each with a prefix of its own, in memory storage (the conformance tests
// cover file storage).
func simWorld(ns *natsServer) *backendtest.SimWorld {
	const session = time.Second
	return backendtest.NetworkSimWorld(session, func(t *testing.T) backend.Backend {
		return connect(t, ns.url(), false, jetstream.WithSessionTimeout(session), jetstream.WithMemoryStorage())
	})
}

// The JetStream backend passes the conformance suite against the NATS
// server of the project machine (127.0.0.1:4222, or $FERRY_TEST_NATS).
func TestConformanceRealServer(t *testing.T) {
	url := testsvc.RequireNATS(t)
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) backend.Backend { return connect(t, url, true) },
	})
}

// A member that joins an idle group gets its first assignment as soon as
// it has read the group's state, not at the next heartbeat tick (a
// quarter of the session timeout: 15 s here, 2.5 s with the default,
// which every member used to wait; issue 16, defect 12).
func TestFirstAssignmentWithoutWaitingForATick(t *testing.T) {
	ns := startServer(t)
	b := connect(t, ns.url(), false, jetstream.WithSessionTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.EnsureTopic(ctx, "first", 2); err != nil {
		t.Fatal(err)
	}
	s, err := b.Join(ctx, "g", "m", []string{"first"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Leave()
	select {
	case tps := <-s.Assignments():
		if len(tps) != 2 {
			t.Fatalf("first assignment %v, want both partitions", tps)
		}
	case <-time.After(10 * time.Second): // well before the 15 s tick
		t.Fatal("no assignment before the heartbeat tick")
	}
}
