package tracing_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/retry"
	"github.com/ferrymq/ferry/tracing"
)

// One message, published in a span, fails once (retried), then for good
// (dead-lettered), is redriven and handled: every span is in the
// publisher's trace, each a child of the publish span.
func TestOneTraceFromPublishThroughRetryToDLQAndRedrive(t *testing.T) {
	ctx := context.Background()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr := tracing.New(tp)
	b, _ := memlog.Backend(t)
	if err := b.EnsureTopic(ctx, "orders", 1); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int32
	handler := func(ctx context.Context, m *ferry.Message) error {
		if _, redriven := m.Header(dlq.HeaderRedriveOf); redriven {
			handled.Add(1)
			return nil
		}
		if consumer.Attempt(ctx) == 1 {
			return errors.New("timeout talking to the warehouse")
		}
		return ferry.Permanent(errors.New("order refers to an unknown item"))
	}
	var dead atomic.Int32
	c, err := consumer.New(b, "ship", []string{"orders"}, handler,
		consumer.WithMiddleware(tr.Middleware()),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		consumer.WithObserver(consumer.Observers(tr.Observer(), func(e consumer.Event) {
			if e.Kind == consumer.EventDeadLettered {
				dead.Add(1)
			}
		})))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(rctx)
	if err := tr.Publish(ctx, b, &ferry.Message{Topic: "orders", Key: []byte("order-1"), Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("the dead letter", func() bool { return dead.Load() == 1 })
	if _, err := tr.Redrive(ctx, "ship.dlq", dlq.Open(b, "ship.dlq"), dlq.RedriveOpts{}); err != nil {
		t.Fatal(err)
	}
	wait("the redriven message", func() bool { return handled.Load() == 1 })
	wait("the last span to end", func() bool { return len(rec.Ended()) >= 7 })

	var publish sdktrace.ReadOnlySpan
	names := map[string]int{}
	for _, s := range rec.Ended() {
		names[s.Name()]++
		if s.Name() == "publish orders" {
			publish = s
		}
	}
	if publish == nil {
		t.Fatalf("no publish span among %v", names)
	}
	want := map[string]int{"publish orders": 1, "handle orders": 3, "retry orders": 1, "dead-letter orders": 1, "redrive ship.dlq": 1}
	for name, n := range want {
		if names[name] != n {
			t.Errorf("%d spans %q, want %d (all: %v)", names[name], name, n, names)
		}
	}
	for _, s := range rec.Ended() {
		if s.Name() == "publish orders" || s.Name() == "redrive ship.dlq" {
			continue
		}
		if s.SpanContext().TraceID() != publish.SpanContext().TraceID() {
			t.Errorf("span %q is in trace %s, not the publisher's %s", s.Name(), s.SpanContext().TraceID(), publish.SpanContext().TraceID())
		}
		if s.Parent().SpanID() != publish.SpanContext().SpanID() {
			t.Errorf("span %q has parent %s, want the publish span %s", s.Name(), s.Parent().SpanID(), publish.SpanContext().SpanID())
		}
	}
}
