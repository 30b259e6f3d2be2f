package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/retry"
)

// routerScenario consumes a backlog with a no-op handler: ferry's runtime
// (lanes, watermark commits, retry policy) on its in-memory log, and
// Watermill's router with its retry middleware on its in-memory GoChannel
// pub/sub. Each uses its own in-memory transport: the comparison is of
// the processing layers, not of a shared transport.
func routerScenario(ctx context.Context, _ string, s sizes) ([]Result, error) {
	n := s.routerN
	l, err := memLog(ctx)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := backlog(ctx, l, n, 10_000); err != nil {
		return nil, err
	}
	b := embedded.New(l)
	defer b.Close()
	el, err := consumeAll(ctx, b, n, func() {}, consumer.WithRetryPolicy(retry.Policy{MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond}))
	if err != nil {
		return nil, err
	}
	ferryRes := Result{Scenario: "router", System: "ferry runtime (lanes, concurrency 64, retry policy)", Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el)}

	wm, err := watermillRouter(ctx, n)
	if err != nil {
		return nil, err
	}
	ratio := ferryRes.MsgsPerSec / wm.MsgsPerSec
	wm.Ratio, wm.Note = ratio, fmt.Sprintf("ferry is %.2fx this", ratio)
	return []Result{ferryRes, wm}, nil
}

func watermillRouter(ctx context.Context, n int) (Result, error) {
	logger := watermill.NopLogger{}
	pubSub := gochannel.NewGoChannel(gochannel.Config{Persistent: true, OutputChannelBuffer: 1024}, logger)
	defer pubSub.Close()
	payload := make([]byte, payloadSize)
	batch := make([]*message.Message, 0, 1000)
	for i := range n {
		batch = append(batch, message.NewMessage(watermill.NewULID(), payload))
		if len(batch) == cap(batch) || i == n-1 {
			if err := pubSub.Publish("in", batch...); err != nil {
				return Result{}, err
			}
			batch = batch[:0]
		}
	}
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		return Result{}, err
	}
	router.AddMiddleware(middleware.Retry{MaxRetries: 5, InitialInterval: 100 * time.Millisecond, Logger: logger}.Middleware)
	var handled atomic.Int64
	all := make(chan struct{})
	router.AddConsumerHandler("bench", "in", pubSub, func(*message.Message) error {
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- router.Run(rctx) }()
	select {
	case <-all:
	case err := <-done:
		return Result{}, fmt.Errorf("watermill router ended early: %v", err)
	case <-time.After(10 * time.Minute):
		return Result{}, fmt.Errorf("watermill handled %d of %d in 10 minutes", handled.Load(), n)
	}
	el := time.Since(start)
	router.Close()
	return Result{Scenario: "router", System: "watermill router + retry middleware (GoChannel)", Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el)}, nil
}
