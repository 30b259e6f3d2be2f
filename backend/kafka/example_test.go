package kafka_test

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
)

// A backend on a Kafka cluster (here franz-go's in-process kfake):
// replication factor for the topics it creates, group session timeout,
// the prefix of the transactional IDs used for exactly-once, and franz-go
// options (TLS, SASL, timeouts) for every client it makes.
func ExampleNew() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	ctx := context.Background()
	b, err := kafka.New(ctx, cluster.ListenAddrs(),
		kafka.WithReplicationFactor(3),
		kafka.WithSessionTimeout(10*time.Second),
		kafka.WithTransactionalIDPrefix("billing"),
		kafka.WithClientOptions(kgo.ClientID("billing-service")),
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
	res, _ := b.Fetch(ctx, backend.TopicPartition{Topic: "orders", Partition: m.Partition}, m.Offset, 10)
	fmt.Printf("partition %d offset %d: %s\n", m.Partition, m.Offset, res.Messages[0].Payload)
	// Output: partition 1 offset 0: order 1
}
