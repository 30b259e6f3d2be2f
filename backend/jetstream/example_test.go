package jetstream_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/jetstream"
)

// A backend on a NATS server with JetStream (here one in-process, with
// fsync before ack): names under a prefix of their own, one replica,
// message IDs remembered for five minutes, messages kept for a week.
func ExampleNew() {
	dir, _ := os.MkdirTemp("", "ferry-example")
	defer os.RemoveAll(dir)
	srv, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true, SyncAlways: true})
	go srv.Start()
	srv.ReadyForConnections(10 * time.Second)
	defer srv.Shutdown()

	ctx := context.Background()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	b, err := jetstream.New(ctx, nc,
		jetstream.WithPrefix("SHOP"),
		jetstream.WithReplicas(1),
		jetstream.WithDuplicateWindow(5*time.Minute),
		jetstream.WithMaxAge(7*24*time.Hour),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()

	b.EnsureTopic(ctx, "orders", 4)
	m := &ferry.Message{Topic: "orders", Key: []byte("customer-7"), Payload: []byte("order 1")}
	if err := b.Publish(ctx, m); err != nil {
		fmt.Println(err)
		return
	}
	again := &ferry.Message{ID: m.ID, Topic: "orders", Key: m.Key, Payload: m.Payload}
	b.Publish(ctx, again) // a retry: the duplicate window drops it
	_, end, _ := b.Bounds(ctx, backend.TopicPartition{Topic: "orders", Partition: m.Partition})
	res, _ := b.Fetch(ctx, backend.TopicPartition{Topic: "orders", Partition: m.Partition}, 0, 10)
	fmt.Printf("partition %d holds %d message: %s\n", m.Partition, end, res.Messages[0].Payload)
	// Output: partition 1 holds 1 message: order 1
}
