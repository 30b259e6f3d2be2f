package broker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/commitlog"
)

// testBroker is a broker on a loopback port over a log in a temporary
// directory.
type testBroker struct {
	t    testing.TB
	dir  string
	log  *commitlog.Log
	srv  *broker.Server
	addr string
	done chan error
}

func startBroker(t testing.TB, opts ...broker.Opt) *testBroker {
	t.Helper()
	tb := &testBroker{t: t, dir: t.TempDir()}
	tb.start("127.0.0.1:0", opts...)
	t.Cleanup(tb.stop)
	return tb
}

func (tb *testBroker) start(addr string, opts ...broker.Opt) {
	tb.t.Helper()
	l, err := commitlog.Open(context.Background(), tb.dir)
	if err != nil {
		tb.t.Fatal(err)
	}
	srv, err := broker.New(l, opts...)
	if err != nil {
		tb.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.log, tb.srv, tb.addr, tb.done = l, srv, ln.Addr().String(), make(chan error, 1)
	go func() { tb.done <- srv.Serve(context.Background(), ln) }()
}

// stop closes the server and the log (again is a no-op).
func (tb *testBroker) stop() {
	if tb.srv == nil {
		return
	}
	tb.srv.Close()
	// A stop right after a start may close the server before its Serve
	// goroutine began: that Serve says so, and served nothing.
	if err := <-tb.done; err != nil && !errors.Is(err, broker.ErrServerClosed) {
		tb.t.Errorf("Serve: %v", err)
	}
	if err := tb.log.Close(); err != nil {
		tb.t.Errorf("closing the log: %v", err)
	}
	tb.srv = nil
}

func (tb *testBroker) client(opts ...kgo.Opt) *kgo.Client {
	tb.t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(tb.addr)}, opts...)...)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Cleanup(cl.Close)
	return cl
}

func (tb *testBroker) createTopic(ctx context.Context, name string, partitions int32) {
	tb.t.Helper()
	adm := kadm.NewClient(tb.client())
	resp, err := adm.CreateTopic(ctx, partitions, 1, nil, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		tb.t.Fatalf("create topic %s: %v", name, err)
	}
}

// Eight idempotent producers and a group of three members that changes
// while they consume: every record produced is consumed, each partition's
// records in offset order, and the group's committed offsets end at the
// partitions' ends.
func TestProducersAndAGroupWithRealClients(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tb.createTopic(ctx, "orders", 6)

	const producers, perProducer = 8, 250
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := tb.client(kgo.DefaultProduceTopic("orders"))
			for i := range perProducer {
				rec := &kgo.Record{Key: fmt.Appendf(nil, "p%d-k%d", p, i%10), Value: fmt.Appendf(nil, "p%d/%d", p, i),
					Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("v")}}}
				cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
					if err != nil {
						t.Errorf("produce: %v", err)
					}
				})
			}
			if err := cl.Flush(ctx); err != nil {
				t.Error(err)
			}
		}()
	}

	type seen struct {
		partition int32
		offset    int64
	}
	var mu sync.Mutex
	got := map[string]seen{}
	last := map[int32]int64{}
	consume := func(ctx context.Context, name string) {
		cl := tb.client(kgo.ConsumerGroup("g"), kgo.ConsumeTopics("orders"), kgo.ClientID(name),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.Balancers(kgo.CooperativeStickyBalancer()))
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			fs.EachRecord(func(r *kgo.Record) {
				mu.Lock()
				defer mu.Unlock()
				if prev, ok := last[r.Partition]; ok && r.Offset <= prev && got[string(r.Value)] == (seen{}) {
					t.Errorf("partition %d: offset %d after %d", r.Partition, r.Offset, prev)
				}
				last[r.Partition] = max(last[r.Partition], r.Offset)
				if len(r.Headers) < 2 || r.Headers[0].Key != broker.HeaderID || r.Headers[1].Key != "h" {
					t.Errorf("record %s: headers %v, want ferry-id then h", r.Value, r.Headers)
				}
				got[string(r.Value)] = seen{r.Partition, r.Offset}
			})
			cl.CommitUncommittedOffsets(context.Background())
		}
		cl.CommitUncommittedOffsets(context.Background())
		cl.Close() // leaves the group: a stopped member must not keep its partitions
	}
	cctx, stopAll := context.WithCancel(ctx)
	var cw sync.WaitGroup
	start := func(name string) context.CancelFunc {
		mctx, stop := context.WithCancel(cctx)
		cw.Add(1)
		go func() { defer cw.Done(); consume(mctx, name) }()
		return stop
	}
	start("a")
	stopB := start("b")
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	waitFor(t, 30*time.Second, func() bool { return count() > 100 })
	start("c")
	stopB()
	wg.Wait()
	waitFor(t, 60*time.Second, func() bool { return count() == producers*perProducer })
	stopAll()
	cw.Wait()

	// Every record once in the log, and each at the offset consumed.
	total := 0
	adm := kadm.NewClient(tb.client())
	ends, err := adm.ListEndOffsets(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	ends.Each(func(o kadm.ListedOffset) { total += int(o.Offset) })
	if total != producers*perProducer {
		t.Fatalf("the log holds %d records, want %d", total, producers*perProducer)
	}
	committed, err := adm.FetchOffsets(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		c, _ := committed.Lookup("orders", o.Partition)
		if c.At != o.Offset {
			t.Errorf("partition %d: committed %d, end %d", o.Partition, c.At, o.Offset)
		}
	})
}

// A producer's records keep their order within a partition: what one
// producer sent with one key comes back in the order sent.
func TestPerKeyOrderOfOneProducer(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 3)
	cl := tb.client(kgo.DefaultProduceTopic("t"), kgo.MaxBufferedRecords(50))
	const n = 2000
	for i := range n {
		cl.Produce(ctx, &kgo.Record{Key: fmt.Appendf(nil, "k%d", i%4), Value: fmt.Appendf(nil, "%d", i)}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rd := tb.client(kgo.ConsumeTopics("t"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	byKey := map[string][]int{}
	seen := 0
	for seen < n {
		fs := rd.PollFetches(ctx)
		if err := fs.Err(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			var v int
			fmt.Sscan(string(r.Value), &v)
			byKey[string(r.Key)] = append(byKey[string(r.Key)], v)
			seen++
		})
	}
	for k, vs := range byKey {
		if !sort.IntsAreSorted(vs) || len(vs) != n/4 {
			t.Errorf("key %s: %d records, in order %v", k, len(vs), sort.IntsAreSorted(vs))
		}
	}
}

func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Topic configs given at creation map onto the log's and are described
// back in Kafka's names; an unsupported one is refused and creates
// nothing.
func TestTopicConfigs(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(tb.client())
	ms, policy := "3600000", "compact"
	if _, err := adm.CreateTopic(ctx, 2, 1, map[string]*string{"retention.ms": &ms, "cleanup.policy": &policy}, "c"); err != nil {
		t.Fatal(err)
	}
	info, err := tb.log.Topic("c")
	if err != nil || info.Config.RetentionAge != time.Hour || !info.Config.Compact {
		t.Fatalf("the log's topic: %+v, %v", info.Config, err)
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, rc := range rcs {
		for _, c := range rc.Configs {
			got[c.Key] = c.MaybeValue()
		}
	}
	if got["retention.ms"] != "3600000" || got["cleanup.policy"] != "compact" || got["retention.bytes"] != "-1" {
		t.Fatalf("described configs %v", got)
	}
	bad := "1"
	resp, _ := adm.CreateTopic(ctx, 1, 1, map[string]*string{"segment.jitter.ms": &bad}, "d")
	if resp.Err == nil || !strings.Contains(resp.ErrMessage, `topic config "segment.jitter.ms": not supported`) {
		t.Fatalf("an unsupported config: %v %q", resp.Err, resp.ErrMessage)
	}
	if _, err := tb.log.Topic("d"); err == nil {
		t.Fatal("a refused CreateTopics created the topic")
	}
}

// A topic's partition count is fixed: CreatePartitions is refused with
// why, and the topic keeps its partitions.
func TestCreatePartitionsRefusedWithWhy(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tb.createTopic(ctx, "fixed", 2)
	adm := kadm.NewClient(tb.client())
	resps, err := adm.CreatePartitions(ctx, 2, "fixed")
	if err != nil {
		t.Fatal(err)
	}
	r := resps["fixed"]
	if r.Err == nil || !strings.Contains(r.ErrMessage, "fixed at creation") {
		t.Fatalf("CreatePartitions: %v %q", r.Err, r.ErrMessage)
	}
	if info, _ := tb.log.Topic("fixed"); len(info.Partitions) != 2 {
		t.Fatalf("the topic has %d partitions", len(info.Partitions))
	}
}
