package consumer_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/metrics"
	"github.com/ferrymq/ferry/tracing"
)

// BenchmarkObservability: the no-op runtime benchmark (10k keys, 8
// partitions, concurrency 64) without observability, with Prometheus
// metrics, and with metrics plus OpenTelemetry tracing (a span per
// handler call of a traced message, batched to an exporter that drops
// them). The backlog's messages carry no trace context: "metrics+tracing"
// is what enabling tracing costs untraced traffic; the span-per-message
// variants start a trace per message (WithRootSpans), every one sampled or
// 1%: the cost of an OpenTelemetry span per message. Compare the msgs/s
// in one run.
func BenchmarkObservability(b *testing.B) {
	b.Run("off", func(b *testing.B) { consumer.BenchConsume(b, 10_000, 64, func() {}) })
	b.Run("metrics", func(b *testing.B) {
		m, err := metrics.New(prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		consumer.BenchConsume(b, 10_000, 64, func() {}, consumer.WithObserver(m.ConsumerObserver("bench")))
	})
	for _, s := range []struct {
		name    string
		sampler sdktrace.Sampler
		opts    []tracing.Option
	}{
		{"metrics+tracing", sdktrace.AlwaysSample(), nil},
		{"metrics+tracing-span-per-message", sdktrace.AlwaysSample(), []tracing.Option{tracing.WithRootSpans()}},
		{"metrics+tracing-span-per-message-1pct", sdktrace.TraceIDRatioBased(0.01), []tracing.Option{tracing.WithRootSpans()}},
	} {
		b.Run(s.name, func(b *testing.B) {
			m, err := metrics.New(prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(s.sampler), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			defer tp.Shutdown(b.Context())
			tr := tracing.New(tp, s.opts...)
			consumer.BenchConsume(b, 10_000, 64, func() {}, consumer.WithObserver(consumer.Observers(m.ConsumerObserver("bench"), tr.Observer())),
				consumer.WithMiddleware(tr.Middleware()))
		})
	}
}
