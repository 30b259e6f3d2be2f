package bench

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
)

// A peer that cannot run here is reported with its reason and skipped,
// and the run goes on: never a silent zero.
func TestUnavailablePeerIsReported(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no redis-server to be found
	r, err := Run(context.Background(), Options{Dir: t.TempDir(), Quick: true, Only: []string{"redis"}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(r.Results) != 0 || len(r.Unavailable) != 1 {
		t.Fatalf("results %+v, unavailable %+v: want no line and one unavailable peer", r.Results, r.Unavailable)
	}
	u := r.Unavailable[0]
	if u.Scenario != "redis" || u.System != redisSystem || !strings.Contains(u.Reason, "redis-server") {
		t.Fatalf("unavailable %+v", u)
	}
	var out bytes.Buffer
	if err := r.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "not measured (peer unavailable):") || !strings.Contains(out.String(), u.Reason) {
		t.Fatalf("the table does not say which peer was not measured and why:\n%s", out.String())
	}
}

func TestUnknownScenarioIsRefused(t *testing.T) {
	if _, err := Run(context.Background(), Options{Dir: t.TempDir(), Quick: true, Only: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "unknown scenario") {
		t.Fatalf("Run with an unknown scenario: %v", err)
	}
}

// RabbitMQ and PostgreSQL on a port where nothing listens: both are
// reported unavailable, with the connection's error, and no line is made.
func TestServiceDownIsReported(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(context.Background(), Options{Dir: t.TempDir(), Quick: true, Only: []string{"rabbitmq", "rabbitmq-stream", "river"},
		RabbitMQURL: fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", port),
		PostgresDSN: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable&connect_timeout=2", port)})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(r.Results) != 0 || len(r.Unavailable) != 3 {
		t.Fatalf("results %+v, unavailable %+v: want no line and three unavailable peers", r.Results, r.Unavailable)
	}
	for i, want := range []string{rabbitQuorum.system, rabbitStream.system, riverSystem} {
		if u := r.Unavailable[i]; u.System != want || !strings.Contains(u.Reason, "refused") {
			t.Errorf("unavailable[%d] = %+v, want %s with the refused connection", i, u, want)
		}
	}
}
