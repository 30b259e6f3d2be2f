package kafka_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/backendtest"
	"github.com/ferrymq/ferry/backend/kafka"
)

// cluster is an in-process kfake cluster keeping its data in a directory
// (fsynced writes) on fixed ports, so it can be stopped and started again.
type cluster struct {
	t     testing.TB
	dir   string
	ports []int
	c     *kfake.Cluster
}

func freePorts(t testing.TB, n int) []int {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		defer l.Close()
	}
	return ports
}

func startCluster(t testing.TB) *cluster {
	c := &cluster{t: t, dir: t.TempDir(), ports: freePorts(t, 3)}
	c.start()
	t.Cleanup(func() {
		if c.c != nil {
			c.c.Close()
		}
	})
	return c
}

func (c *cluster) start() {
	kc, err := kfake.NewCluster(kfake.Ports(c.ports...), kfake.DataDir(c.dir), kfake.SyncWrites(),
		kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		c.t.Fatal(err)
	}
	c.c = kc
}

func (c *cluster) stop() {
	c.c.Close()
	c.c = nil
}

func (c *cluster) seeds() []string {
	var s []string
	for _, p := range c.ports {
		s = append(s, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return s
}

const noDedup = "Kafka keeps no record of message IDs: its idempotent producer drops only its own retries (documented in package kafka)"

// The Kafka backend passes the conformance suite against a kfake cluster
// of three brokers, which the suite stops and restarts (data on disk).
func TestConformance(t *testing.T) {
	c := startCluster(t)
	backendtest.Run(t, backendtest.Harness{
		New: func(t *testing.T) backend.Backend {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			b, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		Outage: func(t *testing.T) func() {
			c.stop()
			return c.start
		},
		NoIDDedup:  noDedup,
		Simulation: simWorld(),
	})
}

// simWorld runs the simulation's seeds (backendtest.NetworkSimWorld),
// each on a kfake cluster of its own in memory (the scenarios all use the
// same topic and group names; the conformance tests cover data on disk).
func simWorld() *backendtest.SimWorld {
	const session = time.Second
	return backendtest.NetworkSimWorld(session, func(t *testing.T) backend.Backend {
		kc, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(kc.Close)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := kafka.New(ctx, kc.ListenAddrs(), kafka.WithSessionTimeout(session))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}
