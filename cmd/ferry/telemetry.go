package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/metrics"
)

// telemetry serves /metrics and /healthz for a command run with
// --metrics-addr. A nil *telemetry (no flag) does nothing.
type telemetry struct {
	reg     *prometheus.Registry
	m       *metrics.Metrics
	printed prometheus.Counter
	srv     *http.Server

	mu     sync.Mutex
	checks []metrics.HealthCheck
}

// startTelemetry listens on addr (host:port; port 0 picks one) and says
// where on w.
func startTelemetry(addr string, w io.Writer) (*telemetry, error) {
	if addr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	t := &telemetry{reg: reg, m: m, printed: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ferry_cli_messages_printed_total", Help: "Messages ferry consume has printed."})}
	reg.MustRegister(t.printed)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, usageError{fmt.Errorf("--metrics-addr %s: %w", addr, err)}
	}
	t.srv = &http.Server{Handler: metrics.Handler(reg, metrics.Check("ferry", t.health))}
	go t.srv.Serve(ln)
	fmt.Fprintf(w, "serving metrics on http://%s/metrics and health on /healthz\n", ln.Addr())
	return t, nil
}

func (t *telemetry) health() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, c := range t.checks {
		if err := c.Check(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	return errors.Join(errs...)
}

// check adds a health check; remove it with the returned function.
func (t *telemetry) check(name string, fn func() error) func() {
	if t == nil {
		return func() {}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.checks = append(t.checks, metrics.Check(name, fn))
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		for i, c := range t.checks {
			if c.Name == name {
				t.checks = append(t.checks[:i], t.checks[i+1:]...)
				return
			}
		}
	}
}

// logOpts are the options that report a log's writes.
func (t *telemetry) logOpts() []commitlog.Opt {
	if t == nil {
		return nil
	}
	return []commitlog.Opt{commitlog.WithObserver(t.m)}
}

// watchLog exports a log's health (ferry_log_healthy and /healthz).
func (t *telemetry) watchLog(l *commitlog.Log) func() {
	if t == nil {
		return func() {}
	}
	t.m.WatchLog(l)
	return t.check("log", l.Healthy)
}

// observe wraps a consumer's observer so its events are counted too.
func (t *telemetry) observe(group string, fn func(consumer.Event)) func(consumer.Event) {
	if t == nil {
		return fn
	}
	return consumer.Observers(t.m.ConsumerObserver(group), fn)
}

// watch exports a running consumer's state and health.
func (t *telemetry) watch(group string, c *consumer.Consumer, b backend.Backend) func() {
	if t == nil {
		return func() {}
	}
	t.m.WatchConsumer(group, c, b)
	return t.check("consumer "+group, c.Healthy)
}

func (t *telemetry) countPrinted() {
	if t != nil {
		t.printed.Inc()
	}
}

func (t *telemetry) close() {
	if t != nil {
		t.srv.Close()
	}
}
