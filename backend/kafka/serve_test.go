package kafka_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/backendtest"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/commitlog"
)

// served is ferry serve in-process (package broker over a commitlog in a
// directory) on a fixed port, so it can be stopped and started again.
type served struct {
	t    testing.TB
	dir  string
	addr string
	log  *commitlog.Log
	srv  *broker.Server
	done chan error
}

func startServed(t testing.TB) *served {
	s := &served{t: t, dir: t.TempDir(), addr: "127.0.0.1:" + itoa(freePorts(t, 1)[0])}
	s.start()
	t.Cleanup(func() {
		if s.srv != nil {
			s.stop()
		}
	})
	return s
}

func itoa(n int) string { return (&net.TCPAddr{Port: n}).String()[1:] }

func (s *served) start() {
	l, err := commitlog.Open(context.Background(), s.dir)
	if err != nil {
		s.t.Fatal(err)
	}
	srv, err := broker.New(l, broker.WithGroupSessionTimeouts(100*time.Millisecond, time.Minute))
	if err != nil {
		s.t.Fatal(err)
	}
	var ln net.Listener
	for range 100 { // the port was just let go; another process may hold it a moment
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	s.log, s.srv, s.done = l, srv, make(chan error, 1)
	go func() { s.done <- srv.Serve(context.Background(), ln) }()
}

func (s *served) stop() {
	s.srv.Close()
	<-s.done
	s.log.Close()
	s.srv = nil
}

// The Kafka backend passes the conformance suite against ferry serve:
// ferry's runtime works across processes on the embedded log, through the
// Kafka protocol (the suite stops and restarts the server). Unlike Kafka,
// the server deduplicates by message ID (the ferry-id header becomes the
// log's message ID).
func TestConformanceAgainstServe(t *testing.T) {
	s := startServed(t)
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) backend.Backend {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b, err := kafka.New(ctx, []string{s.addr}, kafka.WithSessionTimeout(2*time.Second), kafka.WithReplicationFactor(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		NoDedupReport: "ferry serve drops a message whose ferry-id it holds, but a Kafka produce response cannot say which were dropped",
		Outage: func(t *testing.T) func() {
			s.stop()
			return s.start
		},
		Simulation: backendtest.NetworkSimWorld(time.Second, func(t *testing.T) backend.Backend {
			s := startServed(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b, err := kafka.New(ctx, []string{s.addr}, kafka.WithSessionTimeout(time.Second), kafka.WithReplicationFactor(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		}),
	})
}
