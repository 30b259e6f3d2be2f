package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/metrics"
)

var _ broker.Observer = (*metrics.Metrics)(nil)

// Requests by API (with those answered with an error), connections and
// bytes reach Prometheus.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	tb := startBroker(t, broker.WithObserver(m))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client(kgo.RecordRetries(0), kgo.RequestRetries(0))
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: []byte("x")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	cl.ProduceSync(sctx, &kgo.Record{Topic: "t", Partition: 0, Value: []byte("y")}, &kgo.Record{Topic: "nope", Value: []byte("z")})
	scancel()
	if n := testutil.ToFloat64(m.BrokerRequests("Produce")); n < 1 {
		t.Errorf("Produce requests counted: %v", n)
	}
	if n := testutil.ToFloat64(m.BrokerRequests("Metadata")); n < 1 {
		t.Errorf("Metadata requests counted: %v", n)
	}
	if n, err := testutil.GatherAndCount(reg, "ferry_broker_connections", "ferry_broker_bytes_total", "ferry_broker_request_duration_seconds"); err != nil || n < 3 {
		t.Errorf("broker series: %d, %v", n, err)
	}
}
