package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/metrics"
	"github.com/ferrymq/ferry/outbox"
	"github.com/ferrymq/ferry/retry"
	"github.com/ferrymq/ferry/vfs"
)

// scrape GETs /metrics and parses it.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not valid exposition format: %v", err)
	}
	return fams
}

// sum adds the samples of a family whose labels include want.
func sum(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	total := 0.0
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// A run with retries and dead letters, then a scrape of /metrics over
// HTTP: every counter says what happened, the gauges what is held, and
// /healthz follows the consumer.
func TestScrapeAfterRetriesAndDeadLetters(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, log := memlog.Backend(t, commitlog.WithObserver(m))
	if err := b.EnsureTopic(ctx, "in", 2); err != nil {
		t.Fatal(err)
	}
	var finished atomic.Int64
	handler := func(ctx context.Context, msg *ferry.Message) error {
		switch k := string(msg.Key); {
		case k == "poison":
			return ferry.Permanent(errors.New("cannot handle"))
		case k == "flaky" && consumer.Attempt(ctx) == 1:
			return errors.New("try again")
		}
		return nil
	}
	c, err := consumer.New(b, "g", []string{"in"}, handler, consumer.WithCommitInterval(10*time.Millisecond),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}),
		consumer.WithObserver(consumer.Observers(m.ConsumerObserver("g"), func(e consumer.Event) {
			if e.Kind == consumer.EventHandled || e.Kind == consumer.EventDeadLettered {
				finished.Add(1)
			}
		})))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WatchConsumer("g", c, b); err != nil {
		t.Fatal(err)
	}
	if err := m.WatchDLQ("g.dlq", dlq.Open(b, "g.dlq"), 0); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(metrics.Handler(reg, metrics.Check("log", log.Healthy), metrics.Check("g", c.Healthy)))
	defer srv.Close()

	var msgs []*ferry.Message
	for i := range 10 {
		msgs = append(msgs, &ferry.Message{Topic: "in", Key: []byte("ok"), Payload: fmt.Appendf(nil, "%d", i)})
	}
	for i := range 5 {
		msgs = append(msgs, &ferry.Message{Topic: "in", Key: []byte("flaky"), Payload: fmt.Appendf(nil, "%d", i)})
	}
	msgs = append(msgs, &ferry.Message{Topic: "in", Key: []byte("poison")}, &ferry.Message{Topic: "in", Key: []byte("poison")})
	if err := b.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("every message", func() bool { return finished.Load() == 17 })
	var fams map[string]*dto.MetricFamily
	waitFor("the commits (lag 0)", func() bool {
		fams = scrape(t, srv.URL)
		return sum(fams, "ferry_consumer_lag_messages", nil) == 0
	})
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ferry_consumer_events_total", map[string]string{"group": "g", "topic": "in", "event": "handled"}, 15},
		{"ferry_consumer_retries_total", map[string]string{"class": "transient"}, 5},
		{"ferry_consumer_dead_letters_total", map[string]string{"class": "permanent"}, 1},
		{"ferry_consumer_dead_letters_total", map[string]string{"class": "parked"}, 1},
		{"ferry_dlq_entries", map[string]string{"dlq": "g.dlq", "class": "permanent"}, 1},
		{"ferry_dlq_entries", map[string]string{"dlq": "g.dlq", "class": "parked"}, 1},
		{"ferry_consumer_parked_keys", map[string]string{"group": "g"}, 1},
		{"ferry_consumer_parked_messages", map[string]string{"group": "g"}, 1},
		{"ferry_consumer_handle_duration_seconds", map[string]string{"outcome": "handled"}, 15},
		{"ferry_consumer_handle_duration_seconds", map[string]string{"outcome": "retried"}, 5},
		{"ferry_consumer_in_flight", nil, 0},
		{"ferry_consumer_buffered", nil, 0},
	}
	for _, c := range checks {
		if got := sum(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The log wrote the 17 published messages and the 2 dead letters (plus
	// offset commits): every append acknowledged was observed.
	if got := sum(fams, "ferry_log_messages_total", nil); got < 19 {
		t.Errorf("ferry_log_messages_total = %v, want at least 19", got)
	}
	// The writer reports a group commit, then each append's latency: a
	// scrape in between (the consumer's loops still append: commits, the
	// purge watcher's reads do not) sees them apart, so look again until
	// the log is quiet.
	for deadline := time.Now().Add(10 * time.Second); ; {
		a, f := sum(fams, "ferry_log_appends_total", nil), sum(fams, "ferry_log_append_duration_seconds", nil)
		if a >= 3 && a == f {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("appends %v, append latency samples %v: want equal and at least 3", a, f)
			break
		}
		time.Sleep(10 * time.Millisecond)
		fams = scrape(t, srv.URL)
	}
	if got := sum(fams, "ferry_log_fsync_duration_seconds", nil); got < 1 {
		t.Errorf("no fsync observed (%v) with durability always", got)
	}
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz while running: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body := new(strings.Builder)
	fmt.Fprint(body, resp.Status)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/healthz after the consumer stopped: %s, want 503", body)
	}
}

// The relay observer counts what was relayed and failed, and its lag.
func TestRelayObserver(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	obs := m.RelayObserver("orders")
	obs(outbox.RelayStats{Published: 40, Lag: 1500 * time.Millisecond})
	obs(outbox.RelayStats{Err: errors.New("broker away"), Failures: 1, Delay: time.Second})
	obs(outbox.RelayStats{Published: 2, Lag: 250 * time.Millisecond})
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	fams := scrape(t, srv.URL)
	for name, want := range map[string]float64{"ferry_outbox_relayed_total": 42, "ferry_outbox_relay_failures_total": 1, "ferry_outbox_relay_lag_seconds": 0.25} {
		if got := sum(fams, name, map[string]string{"relay": "orders"}); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// Registering twice on one registry is refused with a clear error, and a
// nil registry is refused: ferry never falls back to the global one.
func TestNewRefusesBadRegistries(t *testing.T) {
	if _, err := metrics.New(nil); err == nil {
		t.Fatal("nil registry accepted")
	}
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil || !strings.Contains(err.Error(), "register") {
		t.Fatalf("second registration: %v", err)
	}
}

// ferry_log_healthy follows the watched log's Healthy: absent before
// WatchLog, 1 while the log accepts writes, 0 once a failed fsync has
// made it refuse them, and 1 again for the log a reopen watches instead.
func TestLogHealthy(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	if got := sum(scrape(t, srv.URL), "ferry_log_healthy", nil); got != -1 {
		t.Fatalf("ferry_log_healthy = %v before any log is watched, want it absent", got)
	}
	mem := vfs.NewMemFS()
	ffs := vfs.NewFaultFS(mem)
	l, err := commitlog.Open(ctx, "/log", commitlog.WithFS(ffs), commitlog.WithObserver(m))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.CreateTopic(ctx, "t", commitlog.TopicConfig{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	m.WatchLog(l)
	if err := l.Append(ctx, &ferry.Message{Topic: "t", Payload: []byte("ok")}); err != nil {
		t.Fatal(err)
	}
	if got := sum(scrape(t, srv.URL), "ferry_log_healthy", nil); got != 1 {
		t.Fatalf("ferry_log_healthy = %v while the log writes, want 1", got)
	}
	ffs.SetInjector(func(op vfs.Op, _ string, _ int64) error {
		if op == vfs.OpSync {
			return vfs.EIO
		}
		return nil
	})
	if err := l.Append(ctx, &ferry.Message{Topic: "t", Payload: []byte("lost")}); err == nil {
		t.Fatal("an append whose fsync failed was acknowledged")
	}
	if l.Healthy() == nil {
		t.Fatal("the log is healthy after a failed fsync")
	}
	if got := sum(scrape(t, srv.URL), "ferry_log_healthy", nil); got != 0 {
		t.Fatalf("ferry_log_healthy = %v after the log failed, want 0", got)
	}
	l.Close()
	ffs.SetInjector(nil)
	l2, err := commitlog.Open(ctx, "/log", commitlog.WithFS(ffs), commitlog.WithObserver(m))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	m.WatchLog(l2)
	if got := sum(scrape(t, srv.URL), "ferry_log_healthy", nil); got != 1 {
		t.Fatalf("ferry_log_healthy = %v for the reopened log, want 1", got)
	}
}

// ferry_consumer_healthy follows the consumer's Healthy: 1 while it runs,
// 0 while its breaker is open (beside ferry_consumer_breaker_state 2), 1
// again once the breaker closes, and 0 after Run returns.
func TestConsumerHealthy(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := memlog.Backend(t, commitlog.WithObserver(m))
	if err := b.EnsureTopic(ctx, "in", 1); err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	var handled atomic.Int64
	handler := func(ctx context.Context, msg *ferry.Message) error {
		if down.Load() {
			return errors.New("dependency down")
		}
		handled.Add(1)
		return nil
	}
	c, err := consumer.New(b, "g", []string{"in"}, handler,
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}),
		consumer.WithCircuitBreaker(consumer.BreakerSettings{ConsecutiveFailures: 2, OpenFor: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WatchConsumer("g", c, b); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	gauge := func(name string) float64 { return sum(scrape(t, srv.URL), name, map[string]string{"group": "g"}) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	if got := gauge("ferry_consumer_healthy"); got != 0 {
		t.Fatalf("ferry_consumer_healthy = %v before Run, want 0", got)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	<-c.Ready()
	waitFor("healthy 1 while running", func() bool { return gauge("ferry_consumer_healthy") == 1 })

	down.Store(true)
	if err := b.Publish(ctx, &ferry.Message{Topic: "in", Key: []byte("k")}); err != nil {
		t.Fatal(err)
	}
	// The breaker opens and half-opens (a probe fails) in turn while the
	// dependency is down: wait for a scrape that sees it open.
	waitFor("a scrape with the breaker open", func() bool {
		fams := scrape(t, srv.URL)
		open := sum(fams, "ferry_consumer_breaker_state", map[string]string{"group": "g"}) == 2
		if open && sum(fams, "ferry_consumer_healthy", map[string]string{"group": "g"}) != 0 {
			t.Fatal("ferry_consumer_healthy is 1 in a scrape where the breaker is open")
		}
		return open
	})
	down.Store(false)
	waitFor("the message handled", func() bool { return handled.Load() == 1 })
	waitFor("breaker closed and healthy again", func() bool {
		fams := scrape(t, srv.URL)
		return sum(fams, "ferry_consumer_breaker_state", map[string]string{"group": "g"}) == 0 &&
			sum(fams, "ferry_consumer_healthy", map[string]string{"group": "g"}) == 1
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := gauge("ferry_consumer_healthy"); got != 0 {
		t.Fatalf("ferry_consumer_healthy = %v after Run returned, want 0", got)
	}
}

// A watched DLQ exports every class, 0 while it holds none of it: a queue
// that was empty has a value to grow from. The classes are those the admin
// API filters DLQ entries by: every class a dead letter can have.
func TestDLQEntriesZeroWhenEmpty(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := memlog.Backend(t)
	if err := m.WatchDLQ("g.dlq", dlq.Open(b, "g.dlq"), 0); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	fams := scrape(t, srv.URL)
	for _, class := range admin.Classes {
		want := map[string]string{"dlq": "g.dlq", "class": class}
		if n := samples(fams, "ferry_dlq_entries", want); n != 1 {
			t.Errorf("ferry_dlq_entries{class=%q} of an empty DLQ: %d samples, want 1", class, n)
		} else if got := sum(fams, "ferry_dlq_entries", want); got != 0 {
			t.Errorf("ferry_dlq_entries{class=%q} of an empty DLQ = %v, want 0", class, got)
		}
	}
}

// samples counts the samples of a family whose labels include want.
func samples(fams map[string]*dto.MetricFamily, name string, want map[string]string) int {
	n := 0
	if f := fams[name]; f != nil {
	next:
		for _, m := range f.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			n++
		}
	}
	return n
}

// A process running consumers of two groups, each with its DLQ, exports
// the gauges of both: watching the second is no duplicate registration.
func TestTwoGroupsOnOneRegistry(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := memlog.Backend(t)
	if err := b.EnsureTopic(ctx, "in", 1); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"billing", "shipping"} {
		c, err := consumer.New(b, g, []string{"in"}, func(context.Context, *ferry.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if err := m.WatchConsumer(g, c, b); err != nil {
			t.Fatalf("watch the consumer of %s: %v", g, err)
		}
		if err := m.WatchDLQ(g+".dlq", dlq.Open(b, g+".dlq"), 0); err != nil {
			t.Fatalf("watch %s.dlq: %v", g, err)
		}
	}
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	fams := scrape(t, srv.URL)
	for _, g := range []string{"billing", "shipping"} {
		if got := sum(fams, "ferry_consumer_healthy", map[string]string{"group": g}); got != 0 {
			t.Errorf("ferry_consumer_healthy{group=%q} = %v, want 0 (not running)", g, got)
		}
		if got := sum(fams, "ferry_dlq_entries", map[string]string{"dlq": g + ".dlq", "class": "permanent"}); got != 0 {
			t.Errorf("ferry_dlq_entries{dlq=%q} = %v, want 0", g+".dlq", got)
		}
	}
}
