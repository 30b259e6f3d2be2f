package broker_test

// Adversarial review tests. Each test asserts the behaviour a Kafka client
// (or a server operator) is entitled to; the ones that fail show defects.

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/broker/recordbatch"
	"github.com/ferrymq/ferry/commitlog"
)

// rawConn is a connection speaking the Kafka framing by hand.
type rawConn struct {
	t   testing.TB
	nc  net.Conn
	br  *bufio.Reader
	cor int32
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// encode frames req (at its set version) with a request header.
func (c *rawConn) encode(req kmsg.Request) []byte {
	c.cor++
	out := []byte{0, 0, 0, 0}
	out = kbin.AppendInt16(out, req.Key())
	out = kbin.AppendInt16(out, req.GetVersion())
	out = kbin.AppendInt32(out, c.cor)
	out = kbin.AppendNullableString(out, kmsg.StringPtr("review"))
	if req.IsFlexible() {
		out = append(out, 0)
	}
	out = req.AppendTo(out)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

func (c *rawConn) send(req kmsg.Request) {
	c.t.Helper()
	if _, err := c.nc.Write(c.encode(req)); err != nil {
		c.t.Fatal(err)
	}
}

// recv reads one response into resp (of the version of the request).
func (c *rawConn) recv(resp kmsg.Response, deadline time.Duration) error {
	c.nc.SetReadDeadline(time.Now().Add(deadline))
	var size [4]byte
	if _, err := io.ReadFull(c.br, size[:]); err != nil {
		return err
	}
	buf := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return err
	}
	buf = buf[4:] // correlation ID
	if resp.IsFlexible() && resp.Key() != 18 {
		buf = buf[1:]
	}
	return resp.ReadFrom(buf)
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// A client that sends only the 4-byte size of a large request and then
// stalls makes the server allocate the whole request buffer at once:
// 8 such connections (32 bytes sent) pin 800 MiB of heap. Memory should
// grow with the bytes received, not with the bytes announced.
func TestReviewAnnouncedSizeIsAllocatedBeforeItArrives(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1) // the server is up and serving
	runtime.GC()
	before := heapInUse()
	const conns = 8
	for range conns {
		c := dialRaw(t, tb.addr)
		c.nc.Write(binary.BigEndian.AppendUint32(nil, 100<<20-1))
	}
	time.Sleep(500 * time.Millisecond)
	runtime.GC()
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap grew by %d MiB after %d connections sent 4 bytes each", grown>>20, conns)
	if grown > 64<<20 {
		t.Fatalf("heap grew by %d MiB for %d bytes received: the server allocates announced request sizes up front", grown>>20, 4*conns)
	}
}

// A request whose array length is as large as its remaining bytes makes
// kmsg allocate len × sizeof(element): a 10 MiB CreateTopics request
// allocates 800 MiB (at the default 100 MiB bound: 8 GiB, per request).
func TestReviewArrayLengthAmplification(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	const body = 10 << 20
	// CreateTopics v2: header, topics array of length body-ish, then
	// filler bytes (the elements are garbage; the allocation comes first).
	req := []byte{0, 0, 0, 0}
	req = kbin.AppendInt16(req, 19)
	req = kbin.AppendInt16(req, 2)
	req = kbin.AppendInt32(req, 1)
	req = kbin.AppendNullableString(req, nil)
	req = kbin.AppendInt32(req, body-8)
	req = append(req, make([]byte, body)...)
	binary.BigEndian.PutUint32(req, uint32(len(req)-4))
	runtime.GC()
	before := totalAlloc()
	c := dialRaw(t, tb.addr)
	c.nc.Write(req)
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c.nc) // closed by the server (undecodable)
	alloc := totalAlloc() - before
	t.Logf("a %d MiB request allocated %d MiB", len(req)>>20, alloc>>20)
	if alloc > 4*uint64(len(req)) {
		t.Fatalf("a %d MiB request made the server allocate %d MiB", len(req)>>20, alloc>>20)
	}
}

// One small Fetch request naming the same partition many times, with a
// huge MaxBytes, makes the server build a response of MaxBytes: the
// client, not the broker, bounds a response (Kafka caps it with the
// broker's fetch.max.bytes, 55 MiB by default, and answers a partition
// named twice once).
func TestReviewFetchAmplification(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client(kgo.DefaultProduceTopic("t"))
	val := make([]byte, 100<<10)
	for range 10 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: val}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	req := kmsg.NewPtrFetchRequest()
	req.SetVersion(12)
	req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes, req.SessionEpoch = -1, 100, 1, 1<<31-1, -1
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "t"
	for range 400 {
		p := kmsg.NewFetchRequestTopicPartition()
		p.Partition, p.FetchOffset, p.PartitionMaxBytes, p.LogStartOffset, p.CurrentLeaderEpoch = 0, 0, 1<<31-1, -1, -1
		ft.Partitions = append(ft.Partitions, p)
	}
	req.Topics = append(req.Topics, ft)
	c := dialRaw(t, tb.addr)
	raw := c.encode(req)
	c.nc.Write(raw)
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	var size [4]byte
	if _, err := io.ReadFull(c.br, size[:]); err != nil {
		t.Fatal(err)
	}
	n := binary.BigEndian.Uint32(size[:])
	t.Logf("a %d-byte fetch request got a %d MiB response", len(raw), n>>20)
	if n > 64<<20 {
		t.Fatalf("a %d-byte fetch request got a %d MiB response: no broker-side bound on fetch responses", len(raw), n>>20)
	}
}

// A client that sends requests and never reads the responses leaves the
// connection's writer blocked in Write forever (there is no write
// deadline), so Close, which waits for every connection, never returns.
func TestReviewCloseHangsOnAClientThatDoesNotRead(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client(kgo.DefaultProduceTopic("t"))
	val := make([]byte, 512<<10)
	for range 8 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: val}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	c := dialRaw(t, tb.addr)
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetReadBuffer(4 << 10)
	}
	req := kmsg.NewPtrFetchRequest()
	req.SetVersion(12)
	req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes, req.SessionEpoch = -1, 100, 1, 8<<20, -1
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "t"
	p := kmsg.NewFetchRequestTopicPartition()
	p.Partition, p.FetchOffset, p.PartitionMaxBytes, p.LogStartOffset, p.CurrentLeaderEpoch = 0, 0, 8<<20, -1, -1
	ft.Partitions = append(ft.Partitions, p)
	req.Topics = append(req.Topics, ft)
	for range 10 {
		c.nc.Write(c.encode(req)) // about 40 MiB of answers, never read
	}
	time.Sleep(time.Second)
	closed := make(chan struct{})
	go func() { tb.srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		c.nc.Close() // let the test's cleanup finish
		<-closed
		t.Fatal("Server.Close did not return within 10s: a connection whose client does not read blocks it")
	}
}

// A Fetch with one partition out of range and another at its end waits
// the whole max wait before the client learns of the error (Kafka answers
// at once when any partition has an error).
func TestReviewFetchErrorWaitsForMaxWait(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 2)
	cl := tb.client()
	req := kmsg.NewPtrFetchRequest()
	req.SetVersion(12)
	// The longest wait the server grants (30 s): an answer within the
	// request's 10 s can only be the error's.
	req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes, req.SessionEpoch = -1, 30000, 1, 1<<20, -1
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "t"
	for part, off := range []int64{0, 99} {
		p := kmsg.NewFetchRequestTopicPartition()
		p.Partition, p.FetchOffset, p.PartitionMaxBytes, p.LogStartOffset, p.CurrentLeaderEpoch = int32(part), off, 1<<20, -1, -1
		ft.Partitions = append(ft.Partitions, p)
	}
	req.Topics = append(req.Topics, ft)
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	resp, err := req.RequestWith(rctx, cl)
	if err != nil {
		t.Fatalf("the error was not answered before the max wait (errors should not wait): %v", err)
	}
	if code := resp.Topics[0].Partitions[1].ErrorCode; code != kerr.OffsetOutOfRange.Code {
		t.Fatalf("partition 1: %v, want OFFSET_OUT_OF_RANGE", kerr.ErrorForCode(code))
	}
}

// An idempotent producer's retry of a batch the log no longer remembers
// (more than DedupMaxIDs IDs written to the topic since) is written a
// second time: the broker accepts any earlier sequence as a retry, and
// only the log's bounded dedup window stands between it and a duplicate.
// Kafka answers a retry older than the last five batches with an error,
// never by writing it again.
func TestReviewOldRetryBeyondDedupWindowDuplicates(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := tb.log.CreateTopic(ctx, "t", commitlog.TopicConfig{Partitions: 1, DedupMaxIDs: 100}); err != nil {
		t.Fatal(err)
	}
	cl := tb.client()
	init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
	if err != nil || init.ErrorCode != 0 {
		t.Fatalf("InitProducerId: %v %v", err, init)
	}
	pid := init.ProducerID
	if r := produceBatch(t, ctx, cl, "t", pid, 0, 0, "a", "b", "c"); r.ErrorCode != 0 {
		t.Fatalf("first: %v", kerr.ErrorForCode(r.ErrorCode))
	}
	seq := int32(3)
	for range 10 {
		vals := make([]string, 50)
		for i := range vals {
			vals[i] = fmt.Sprint(seq + int32(i))
		}
		if r := produceBatch(t, ctx, cl, "t", pid, 0, seq, vals...); r.ErrorCode != 0 {
			t.Fatalf("seq %d: %v", seq, kerr.ErrorForCode(r.ErrorCode))
		}
		seq += 50
	}
	_, before, _ := tb.log.Bounds("t", 0)
	r := produceBatch(t, ctx, cl, "t", pid, 0, 0, "a", "b", "c")
	_, after, _ := tb.log.Bounds("t", 0)
	if after != before {
		t.Fatalf("a retry of sequence 0 after 10 newer batches: %v at offset %d, and the log grew from %d to %d: written twice", kerr.ErrorForCode(r.ErrorCode), r.BaseOffset, before, after)
	}
}

var _ = recordbatch.None
