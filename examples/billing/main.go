// Command billing is a service that owns an embedded ferry log, runs a
// consumer over it, and mounts the admin API beside it, so that an
// operator lists and redrives its dead letters while it runs:
//
//	go run ./examples/billing --dir ./service-data --admin 127.0.0.1:8080 &
//	ferry --server http://127.0.0.1:8080 dlq list -g billing
//	ferry --server http://127.0.0.1:8080 dlq redrive -g billing
//
// The consumer (group billing, topic orders) appends each message it
// handles to --handled as "KEY PAYLOAD" and fails a message whose payload
// is "poison" permanently (and panics on one whose payload is "panic"), so
// it is dead-lettered and its key parks, until the file --fixed exists
// (the fix deployed); a message whose payload is "timeout" fails its first
// attempt as the payment provider would, and is retried. Its calls to the
// payments dependency fail while the file --down exists (an outage: a
// retryable error, so the circuit breaker around the handler opens and
// handling pauses), and never return while the file --hang exists (a call
// made without a deadline: it waits until the service stops). The admin handler also serves the web console
// at /ui/, with the group's lag sampled every --lag-every. Messages are
// produced through the API (POST /api/v1/topics/orders/messages). With
// --metrics ADDR it serves Prometheus metrics on /metrics (the log, the
// consumer, its DLQ billing.dlq) and health on /healthz. SIGTERM or Ctrl-C
// stops it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/metrics"
	"github.com/ferrymq/ferry/retry"
)

func main() {
	dir := flag.String("dir", "./service-data", "data directory")
	addr := flag.String("admin", "127.0.0.1:8080", "address of the admin API")
	authFile := flag.String("auth", "", "access file of the admin API (tokens, roles); none: loopback only, everyone may do everything")
	handled := flag.String("handled", "handled.txt", "file the handler appends KEY PAYLOAD lines to")
	fixed := flag.String("fixed", "fixed", "while this file does not exist, a \"poison\" payload fails permanently (and a \"panic\" one panics)")
	down := flag.String("down", "down", "while this file exists, the payments dependency is down: every call fails (retryably)")
	hang := flag.String("hang", "hang", "while this file exists, calls to the payments dependency never return (until the service stops)")
	lagEvery := flag.Duration("lag-every", 10*time.Second, "how often the console's lag history is sampled")
	metricsAddr := flag.String("metrics", "", "serve Prometheus metrics on /metrics and health on /healthz at this address (host:port); none: no metrics")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *dir, *addr, *authFile, *handled, *fixed, *down, *hang, *metricsAddr, *lagEvery); err != nil {
		fmt.Fprintln(os.Stderr, "billing:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, addr, authFile, handledFile, fixedFile, downFile, hangFile, metricsAddr string, lagEvery time.Duration) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The metrics go on a registry of the service's own (ferry never
	// registers on the global one).
	promReg := prometheus.NewRegistry()
	m, err := metrics.New(promReg)
	if err != nil {
		return err
	}
	l, err := commitlog.Open(ctx, dir, commitlog.WithObserver(m))
	if err != nil {
		return err
	}
	defer l.Close()
	m.WatchLog(l)
	b := embedded.New(l)
	defer b.Close()
	if err := b.EnsureTopic(ctx, "orders", 3); err != nil {
		return err
	}
	out, err := os.OpenFile(handledFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	var mu sync.Mutex
	exists := func(name string) bool { _, err := os.Stat(name); return err == nil }
	handle := func(ctx context.Context, m *ferry.Message) error {
		switch string(m.Payload) {
		case "poison", "panic":
			if exists(fixedFile) {
				break
			}
			if string(m.Payload) == "panic" {
				panic("billing: an order without a customer")
			}
			return ferry.Permanent(errors.New("cannot bill a poison order"))
		case "timeout":
			if consumer.Attempt(ctx) == 1 {
				return errors.New("payment provider timed out")
			}
		}
		// The call to the payments dependency.
		if exists(hangFile) {
			<-ctx.Done() // no deadline: only the consumer stopping ends it
			return ctx.Err()
		}
		if exists(downFile) {
			return errors.New("payments: connection refused") // retryable
		}
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(out, "%s %s\n", m.Key, m.Payload); err != nil {
			return err
		}
		return out.Sync()
	}
	c, err := consumer.New(b, "billing", []string{"orders"}, handle, consumer.WithLogger(logger),
		consumer.WithRetryPolicy(retry.Policy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}),
		// While payments is down, handling pauses instead of dead-lettering.
		consumer.WithCircuitBreaker(consumer.BreakerSettings{OpenFor: time.Second}),
		consumer.WithObserver(m.ConsumerObserver("billing")))
	if err != nil {
		return err
	}
	if metricsAddr != "" {
		if err := m.WatchConsumer("billing", c, b); err != nil {
			return err
		}
		if err := m.WatchDLQ("billing.dlq", dlq.Open(b, "billing.dlq"), 5*time.Second); err != nil {
			return err
		}
		mln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics %s: %w", metricsAddr, err)
		}
		ms := &http.Server{Handler: metrics.Handler(promReg, metrics.Check("log", l.Healthy), metrics.Check("billing", c.Healthy)),
			ReadHeaderTimeout: 10 * time.Second}
		go ms.Serve(mln)
		defer ms.Close()
		fmt.Printf("metrics on http://%s/metrics\n", mln.Addr())
	}

	// The admin API: one Service over the backend, the consumer
	// registered for its live state, and the handler on a listener.
	var reg admin.Registry
	defer reg.Add(c)()
	var auth *admin.Auth
	if authFile != "" {
		if auth, err = admin.LoadAuth(authFile); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	svc := admin.NewService(b, admin.WithRegistry(&reg), admin.WithLogger(logger), admin.WithBackendName("embedded"))
	go svc.RecordLag(ctx, lagEvery)
	srv := &http.Server{Handler: admin.NewHandler(svc, auth), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-runErr:
		return err
	}
	fmt.Printf("admin API on http://%s\nconsole on http://%s/ui/\n", ln.Addr(), ln.Addr())
	if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
