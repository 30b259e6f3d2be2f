package recordbatch

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

var kgoCodecs = []struct {
	c   Codec
	kgo kgo.CompressionCodec
}{
	{None, kgo.NoCompression()},
	{Gzip, kgo.GzipCompression()},
	{Snappy, kgo.SnappyCompression()},
	{LZ4, kgo.Lz4Compression()},
	{Zstd, kgo.ZstdCompression()},
}

// produced returns the records a test produces: null and empty keys and
// values, headers with null and empty values, distinct timestamps.
func produced(topic string, n int) []*kgo.Record {
	base := time.UnixMilli(1_700_000_000_000)
	var rs []*kgo.Record
	for i := range n {
		r := &kgo.Record{
			Topic:     topic,
			Timestamp: base.Add(time.Duration(i*7) * time.Millisecond),
			Value:     fmt.Appendf(nil, "value %d %s", i, bytes.Repeat([]byte("abc"), i%40)),
		}
		switch i % 4 {
		case 0:
			r.Key = fmt.Appendf(nil, "key-%d", i)
		case 1:
			r.Key = []byte{}
		case 2:
			r.Value = nil
		}
		if i%3 == 0 {
			r.Headers = []kgo.RecordHeader{{Key: "a", Value: []byte("1")}, {Key: "empty", Value: []byte{}}, {Key: fmt.Sprint(i), Value: nil}}
		}
		rs = append(rs, r)
	}
	return rs
}

// TestInteropFranzGo produces with the franz-go client, with every codec,
// idempotent and not, to an in-process kfake cluster, and decodes both
// what the client sent (captured from its Produce requests) and what the
// cluster serves in a raw Fetch response.
func TestInteropFranzGo(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()

	var mu sync.Mutex
	// records fields of Produce requests, by topic ID: Produce v13 names
	// topics by ID only
	sent := map[[16]byte][][]byte{}
	cluster.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.TopicID == ([16]byte{}) {
				t.Errorf("Produce v%d request names topic %q without its ID", req.GetVersion(), tp.Topic)
			}
			for _, p := range tp.Partitions {
				sent[tp.TopicID] = append(sent[tp.TopicID], bytes.Clone(p.Records))
			}
		}
		return nil, nil, false
	})

	for _, idempotent := range []bool{true, false} {
		for _, kc := range kgoCodecs {
			name := fmt.Sprintf("%v-idempotent-%v", kc.c, idempotent)
			t.Run(name, func(t *testing.T) {
				topic := "t-" + name
				opts := []kgo.Opt{
					kgo.SeedBrokers(cluster.ListenAddrs()...),
					kgo.ProducerBatchCompression(kc.kgo),
					kgo.AllowAutoTopicCreation(),
					kgo.ProducerLinger(50 * time.Millisecond), // several records per batch
					kgo.ProducerBatchMaxBytes(4 << 10),        // and several batches
				}
				if !idempotent {
					opts = append(opts, kgo.DisableIdempotentWrite())
				}
				client, err := kgo.NewClient(opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer client.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()

				want := produced(topic, 200)
				if err := client.ProduceSync(ctx, want...).FirstErr(); err != nil {
					t.Fatal(err)
				}

				id := topicID(ctx, t, client, topic)
				mu.Lock()
				requests := sent[id]
				mu.Unlock()
				if len(requests) == 0 {
					t.Fatal("no Produce request captured")
				}
				var fromProduce []Batch
				for _, records := range requests {
					bs, err := Decode(records, Limits{})
					if err != nil {
						t.Fatalf("decoding what franz-go sent: %v", err)
					}
					fromProduce = append(fromProduce, bs...)
				}
				checkProduced(t, "produce", want, fromProduce, kc.c, idempotent)

				fetched := fetchRaw(ctx, t, client, topic, id)
				fromFetch, err := Decode(fetched, Limits{})
				if err != nil {
					t.Fatalf("decoding what kfake served: %v", err)
				}
				checkProduced(t, "fetch", want, fromFetch, kc.c, idempotent)
				if len(fromFetch) < 2 {
					t.Fatalf("fetch served %d batch(es): the test wants several back to back", len(fromFetch))
				}
			})
		}
	}
}

func checkProduced(t *testing.T, what string, want []*kgo.Record, got []Batch, c Codec, idempotent bool) {
	t.Helper()
	i := 0
	for _, b := range got {
		if b.Codec() != c {
			t.Fatalf("%s: batch codec %v, want %v", what, b.Codec(), c)
		}
		if idempotent != (b.ProducerID >= 0) {
			t.Fatalf("%s: producer ID %d with idempotent %v", what, b.ProducerID, idempotent)
		}
		for _, r := range b.Records {
			if i >= len(want) {
				t.Fatalf("%s: more records than the %d produced", what, len(want))
			}
			w := want[i]
			ts := b.BaseTimestamp + r.TimestampDelta
			if ts != w.Timestamp.UnixMilli() || !sameBytes(r.Key, w.Key) || !sameBytes(r.Value, w.Value) {
				t.Fatalf("%s: record %d: key %q value %q ts %d, want %q %q %d", what, i, r.Key, r.Value, ts, w.Key, w.Value, w.Timestamp.UnixMilli())
			}
			if len(r.Headers) != len(w.Headers) {
				t.Fatalf("%s: record %d: %d headers, want %d", what, i, len(r.Headers), len(w.Headers))
			}
			for j, h := range r.Headers {
				if h.Key != w.Headers[j].Key || !sameBytes(h.Value, w.Headers[j].Value) {
					t.Fatalf("%s: record %d header %d: %q=%q, want %q=%q", what, i, j, h.Key, h.Value, w.Headers[j].Key, w.Headers[j].Value)
				}
			}
			i++
		}
	}
	if i != len(want) {
		t.Fatalf("%s: %d records, want %d", what, i, len(want))
	}
	t.Logf("%s: %d records in %d batches", what, i, len(got))
}

func topicID(ctx context.Context, t *testing.T, client *kgo.Client, topic string) [16]byte {
	t.Helper()
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	resp, err := meta.RequestWith(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Topics) != 1 || resp.Topics[0].ErrorCode != 0 {
		t.Fatalf("metadata for %q: %+v", topic, resp.Topics)
	}
	return resp.Topics[0].TopicID
}

// fetchRaw returns the record batches of partition 0 of topic from
// offset 0, as the Fetch response carries them.
func fetchRaw(ctx context.Context, t *testing.T, client *kgo.Client, topic string, id [16]byte) []byte {
	t.Helper()
	req := kmsg.NewPtrFetchRequest()
	req.MaxBytes = 64 << 20
	req.SessionEpoch = -1 // no fetch session
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = topic
	ft.TopicID = id
	fp := kmsg.NewFetchRequestTopicPartition()
	fp.PartitionMaxBytes = 64 << 20
	ft.Partitions = append(ft.Partitions, fp)
	req.Topics = append(req.Topics, ft)
	resp, err := req.RequestWith(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
		t.Fatalf("fetch response: %+v", resp)
	}
	p := resp.Topics[0].Partitions[0]
	if p.ErrorCode != 0 {
		t.Fatalf("fetch: error code %d", p.ErrorCode)
	}
	return p.RecordBatches
}

// TestInteropAppendBatch checks AppendBatch's output with franz-go's own
// parsers: kmsg's framing, an independent CRC-32C, and kgo's fetch
// processing, which validates the CRC, decompresses and parses records as
// a consumer does.
func TestInteropAppendBatch(t *testing.T) {
	for _, c := range allCodecs {
		t.Run(c.String(), func(t *testing.T) {
			b := testBatch(500, func(i int) Record {
				r := plain(i)
				switch i % 5 {
				case 1:
					r.Key = nil
				case 2:
					r.Value = nil
				case 3:
					r.Headers = append(r.Headers, Header{Key: "null", Value: nil}, Header{Key: "empty", Value: []byte{}})
				}
				return r
			})
			b.Attributes = 0 // not transactional: kgo would wait for a commit
			b.ProducerID, b.ProducerEpoch, b.BaseSequence = -1, -1, -1
			// two batches, as a Fetch response carries them
			data := encode(t, b, c)
			second := b
			second.BaseOffset += int64(len(b.Records))
			data, err := AppendBatch(data, second, c)
			if err != nil {
				t.Fatal(err)
			}

			var kb kmsg.RecordBatch
			if err := kb.ReadFrom(data); err != nil {
				t.Fatal(err)
			}
			crc := int32(crc32.Checksum(data[21:12+binary.BigEndian.Uint32(data[8:])], crc32.MakeTable(crc32.Castagnoli)))
			if kb.Magic != 2 || kb.CRC != crc || kb.NumRecords != int32(len(b.Records)) || kb.Attributes&7 != int16(c) ||
				kb.FirstOffset != b.BaseOffset || kb.LastOffsetDelta != b.LastOffsetDelta || kb.FirstTimestamp != b.BaseTimestamp {
				t.Fatalf("kmsg reads magic %d CRC %08x (want %08x) records %d attributes %#x offset %d", kb.Magic, kb.CRC, crc, kb.NumRecords, kb.Attributes, kb.FirstOffset)
			}

			rp := &kmsg.FetchResponseTopicPartition{
				Partition:     0,
				HighWatermark: second.BaseOffset + int64(len(second.Records)),
				RecordBatches: data,
			}
			fp, _ := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{Offset: b.BaseOffset, Topic: "t"}, rp, kgo.DefaultDecompressor(), nil)
			if fp.Err != nil {
				t.Fatal(fp.Err)
			}
			if len(fp.Records) != 2*len(b.Records) {
				t.Fatalf("kgo parsed %d records, want %d", len(fp.Records), 2*len(b.Records))
			}
			for i, kr := range fp.Records {
				batch := b
				if i >= len(b.Records) {
					batch = second
				}
				r := batch.Records[i%len(b.Records)]
				if kr.Offset != batch.BaseOffset+int64(r.OffsetDelta) || kr.Timestamp.UnixMilli() != batch.BaseTimestamp+r.TimestampDelta ||
					!bytes.Equal(kr.Key, r.Key) || !bytes.Equal(kr.Value, r.Value) || len(kr.Headers) != len(r.Headers) {
					t.Fatalf("kgo record %d: offset %d ts %v key %q value %q headers %d; want %+v", i, kr.Offset, kr.Timestamp, kr.Key, kr.Value, len(kr.Headers), r)
				}
				if (kr.Key == nil) != (r.Key == nil) || (kr.Value == nil) != (r.Value == nil) {
					t.Fatalf("kgo record %d: null key %v value %v, want %v %v", i, kr.Key == nil, kr.Value == nil, r.Key == nil, r.Value == nil)
				}
				for j, h := range kr.Headers {
					if h.Key != r.Headers[j].Key || !bytes.Equal(h.Value, r.Headers[j].Value) {
						t.Fatalf("kgo record %d header %d: %q=%q, want %q=%q", i, j, h.Key, h.Value, r.Headers[j].Key, r.Headers[j].Value)
					}
				}
			}
		})
	}
}
