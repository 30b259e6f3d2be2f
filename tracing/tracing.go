// Package tracing carries OpenTelemetry traces through ferry: the W3C
// trace context goes into a message's headers when it is published
// (Publish, Inject) and comes out in the consumer (Middleware), so one
// trace spans the producer, every handler attempt, the retries and the
// dead-letter queue. Dead letters keep the original headers, and a
// redrive copies them, so a redriven message's handling joins the same
// trace.
//
// Spans: "publish <topic>" (producer), "handle <topic>" per attempt
// (consumer, child of the producer), and, from Observer, "retry <topic>",
// "dead-letter <topic>" and "schedule <topic>" (children of the producer),
// and "redrive <dlq>" (Redrive).
package tracing

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
)

// Tracer makes ferry's spans with a TracerProvider.
type Tracer struct {
	tr        trace.Tracer
	prop      propagation.TextMapPropagator
	fields    []string // the headers prop reads
	rootSpans bool
}

// Option configures New.
type Option func(*Tracer)

// WithPropagator replaces the W3C trace-context propagator (for example
// with a composite that also carries baggage).
func WithPropagator(p propagation.TextMapPropagator) Option { return func(t *Tracer) { t.prop = p } }

// WithRootSpans makes Middleware start a new trace for a message that
// carries none (default: such messages are handled without a span, so
// untraced traffic costs nothing; see BENCHMARKS.md for what a span per
// message costs).
func WithRootSpans() Option { return func(t *Tracer) { t.rootSpans = true } }

// New returns a Tracer on tp (pass otel.GetTracerProvider() to use the
// global provider; ferry never reads it by itself).
func New(tp trace.TracerProvider, opts ...Option) *Tracer {
	t := &Tracer{tr: tp.Tracer("github.com/ferrymq/ferry"), prop: propagation.TraceContext{}}
	for _, o := range opts {
		o(t)
	}
	t.fields = t.prop.Fields()
	return t
}

// carries reports whether m has any header the propagator reads: a
// message without one has no trace to continue, found without parsing.
func (t *Tracer) carries(m *ferry.Message) bool {
	for _, h := range m.Headers {
		for _, f := range t.fields {
			if h.Key == f {
				return true
			}
		}
	}
	return false
}

// headers adapts a message's headers to propagation.TextMapCarrier.
type headers struct{ m *ferry.Message }

func (h headers) Get(key string) string {
	v, _ := h.m.Header(key)
	return string(v)
}

func (h headers) Set(key, value string) { h.m.SetHeader(key, []byte(value)) }

func (h headers) Keys() []string {
	keys := make([]string, len(h.m.Headers))
	for i, hd := range h.m.Headers {
		keys[i] = hd.Key
	}
	return keys
}

// Inject writes the trace context of ctx into m's headers.
func (t *Tracer) Inject(ctx context.Context, m *ferry.Message) { t.prop.Inject(ctx, headers{m}) }

// Extract returns ctx with the trace context m carries.
func (t *Tracer) Extract(ctx context.Context, m *ferry.Message) context.Context {
	return t.prop.Extract(ctx, headers{m})
}

func messageAttrs(m *ferry.Message) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.system", "ferry"),
		attribute.String("messaging.destination.name", m.Topic),
		attribute.String("messaging.message.id", m.ID.String()),
		attribute.Int("messaging.destination.partition.id", int(m.Partition)),
	}
}

// Publish publishes msgs through b inside a producer span per call, whose
// context each message carries. Messages without an ID get one first, so
// the span can name them.
func (t *Tracer) Publish(ctx context.Context, b backend.Backend, msgs ...*ferry.Message) error {
	name := "publish"
	if len(msgs) > 0 {
		name += " " + msgs[0].Topic
	}
	ctx, span := t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "ferry"), attribute.Int("messaging.batch.message_count", len(msgs))))
	defer span.End()
	for _, m := range msgs {
		if m.ID.IsZero() {
			m.ID = ferry.NewID()
		}
		t.Inject(ctx, m)
	}
	err := b.Publish(ctx, msgs...)
	failed(span, err)
	return err
}

// Middleware runs each handler attempt in a consumer span, child of the
// trace the message carries (a message without one gets no span unless
// WithRootSpans); the handler's context holds the span, so its
// own calls (and consumer.Emit'ed outputs it injects) join the trace.
func (t *Tracer) Middleware() consumer.Middleware {
	return func(next consumer.Handler) consumer.Handler {
		return func(ctx context.Context, m *ferry.Message) error {
			if !t.rootSpans && !t.carries(m) {
				return next(ctx, m)
			}
			ctx = t.Extract(ctx, m)
			if !t.rootSpans && !trace.SpanContextFromContext(ctx).IsValid() {
				return next(ctx, m)
			}
			ctx, span := t.tr.Start(ctx, "handle "+m.Topic, trace.WithSpanKind(trace.SpanKindConsumer))
			defer span.End()
			if span.IsRecording() { // an unsampled span costs no attributes
				span.SetAttributes(append(messageAttrs(m), attribute.Int("ferry.attempt", consumer.Attempt(ctx)))...)
			}
			err := next(ctx, m)
			failed(span, err)
			return err
		}
	}
}

// Observer returns an observer (for consumer.WithObserver) that records a
// span for each retry, dead letter and durable schedule, in the trace of
// the message.
func (t *Tracer) Observer() func(consumer.Event) {
	return func(e consumer.Event) {
		var name string
		switch e.Kind {
		case consumer.EventRetried:
			name = "retry "
		case consumer.EventDeadLettered:
			name = "dead-letter "
		case consumer.EventScheduled:
			name = "schedule "
		default:
			return
		}
		m := e.Message
		ctx := t.Extract(context.Background(), m)
		if !t.rootSpans && !trace.SpanContextFromContext(ctx).IsValid() {
			return
		}
		attrs := append(messageAttrs(m), attribute.Int("ferry.attempt", e.Attempt), attribute.String("ferry.failure.class", string(e.Class)))
		if e.Delay > 0 {
			attrs = append(attrs, attribute.String("ferry.retry.delay", e.Delay.String()))
		}
		_, span := t.tr.Start(ctx, name+m.Topic, trace.WithAttributes(attrs...))
		if e.Err != nil {
			span.RecordError(e.Err)
			if e.Kind == consumer.EventDeadLettered {
				span.SetStatus(codes.Error, e.Err.Error())
			}
		}
		span.End()
	}
}

// Redrive runs q.Redrive in a span. The redriven messages keep the trace
// context of their originals, so their handling joins the original traces.
func (t *Tracer) Redrive(ctx context.Context, name string, q *dlq.Queue, o dlq.RedriveOpts) (int, error) {
	ctx, span := t.tr.Start(ctx, "redrive "+name, trace.WithAttributes(attribute.String("messaging.system", "ferry")))
	defer span.End()
	n, err := q.Redrive(ctx, o)
	span.SetAttributes(attribute.String("ferry.redrive.count", strconv.Itoa(n)))
	failed(span, err)
	return n, err
}

// failed records err, if any, on span and marks the span failed.
func failed(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}
