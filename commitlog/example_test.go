package commitlog_test

import (
	"context"
	"fmt"
	"os"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// Produce durably and read back.
func Example() {
	dir, _ := os.MkdirTemp("", "ferry-example-")
	defer os.RemoveAll(dir)
	ctx := context.Background()

	log, err := commitlog.Open(ctx, dir) // fsync before ack by default
	if err != nil {
		panic(err)
	}
	defer log.Close()

	if err := log.CreateTopic(ctx, "orders", commitlog.TopicConfig{Partitions: 4}); err != nil {
		panic(err)
	}
	m := &ferry.Message{Topic: "orders", Key: []byte("customer-7"), Payload: []byte(`{"total":42}`)}
	if err := log.Append(ctx, m); err != nil { // durable when it returns
		panic(err)
	}
	res, err := log.Fetch(ctx, "orders", m.Partition, 0, commitlog.ReadOpts{})
	if err != nil {
		panic(err)
	}
	fmt.Printf("partition %d offset %d: %s\n", res.Messages[0].Partition, res.Messages[0].Offset, res.Messages[0].Payload)
	// Output: partition 1 offset 0: {"total":42}
}

// Consume-transform-produce: the output and the consumer's input offset
// are written in one atomic batch.
func ExampleLog_Commit() {
	dir, _ := os.MkdirTemp("", "ferry-example-")
	defer os.RemoveAll(dir)
	ctx := context.Background()
	log, err := commitlog.Open(ctx, dir)
	if err != nil {
		panic(err)
	}
	defer log.Close()
	log.CreateTopic(ctx, "orders", commitlog.TopicConfig{})
	log.CreateTopic(ctx, "payments", commitlog.TopicConfig{})
	log.Append(ctx, &ferry.Message{Topic: "orders", Key: []byte("c1"), Payload: []byte("order 1")})

	res, _ := log.Read("orders", 0, 0, commitlog.ReadOpts{})
	in := res.Messages[0]
	err = log.Commit(ctx, &commitlog.Batch{
		Messages: []*ferry.Message{{Topic: "payments", Key: in.Key, Payload: []byte("paid: " + string(in.Payload))}},
		Group:    "payments",
		Offsets:  []commitlog.Offset{{Topic: "orders", Partition: in.Partition, Offset: in.Offset + 1}},
	})
	if err != nil {
		panic(err)
	}
	next, _ := log.CommittedOffset("payments", "orders", 0)
	fmt.Println("group payments resumes orders/0 at offset", next)
	// Output: group payments resumes orders/0 at offset 1
}

// Publishing the same message ID twice within the dedup window writes it
// once.
func ExampleBatch_duplicates() {
	dir, _ := os.MkdirTemp("", "ferry-example-")
	defer os.RemoveAll(dir)
	ctx := context.Background()
	log, _ := commitlog.Open(ctx, dir)
	defer log.Close()
	log.CreateTopic(ctx, "orders", commitlog.TopicConfig{})

	id := ferry.NewID()
	log.Append(ctx, &ferry.Message{ID: id, Topic: "orders", Payload: []byte("once")})
	retry := &commitlog.Batch{Messages: []*ferry.Message{{ID: id, Topic: "orders", Payload: []byte("once")}}}
	log.Commit(ctx, retry)
	_, end, _ := log.Bounds("orders", 0)
	fmt.Println("duplicates:", retry.Duplicates, "messages in log:", end)
	// Output: duplicates: 1 messages in log: 1
}
