package commitlog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
)

// sampleBatch encodes a batch like the writer does: two partitions, a
// tombstone, a delayed message, headers and an offset commit.
func sampleBatch() []byte {
	now := time.Unix(1_700_000_000, 0).UnixNano()
	mk := func(off uint64, key, val string) *ferry.Message {
		m := &ferry.Message{ID: ferry.NewID(), Offset: off, Time: time.Unix(0, now), Key: []byte(key), Payload: []byte(val)}
		return m
	}
	a := []*ferry.Message{mk(0, "a", "one"), mk(1, "b", "two"), mk(3, "c", "")}
	a[1].Headers = []ferry.Header{{Key: ferry.HeaderType, Value: []byte("x")}}
	a[2].Payload = nil
	b := []*ferry.Message{mk(7, "", "three")}
	b[0].NotBefore = time.Unix(0, now+int64(time.Second))
	buf := make([]byte, batchHeaderSize)
	buf = encodeSection(buf, 1, 0, a, now)
	buf = encodeSection(buf, 1, 1, b, now)
	buf = encodeControlSection(buf, []controlOp{{op: opCommitOffset, group: "g", topicID: 1, partition: 0, offset: 4}}, now)
	putBatchHeader(buf, 0, 3, now)
	return buf
}

func sampleCheckpoint() []byte {
	return encodeCheckpoint(&checkpoint{
		seg: 2, pos: 100, nextTopicID: 3,
		topics: []checkpointTopic{{id: 1, name: "orders", config: TopicConfig{Partitions: 2}.withDefaults(), parts: []checkpointPartition{
			{start: 0, next: 10, entries: []indexEntry{{first: 0, last: 4, seg: 0, pos: 0, size: 100, count: 5}, {first: 5, last: 9, seg: 1, pos: 0, size: 80, count: 5}}},
			{start: 0, next: 0},
		}}},
		groups: map[string]map[groupKey]uint64{"g": {{1, 0}: 4}},
	})
}

// decodeAll runs every decoder over a batch the way recovery and reads do.
func decodeAll(b []byte) error {
	h, err := decodeBatchHeader(b)
	if err != nil {
		return err
	}
	return forEachSection(b, h, func(sh sectionHeader, body []byte, at int) error {
		if _, err := checkSection(b[at : at+sectionHeaderSize+len(body)]); err != nil {
			return err
		}
		d := newRecordDecoder(sh, body)
		var m ferry.Message
		for {
			ok, err := d.next(&m)
			if err != nil || !ok {
				return err
			}
			if m.Offset < sh.first || m.Offset > sh.last {
				return fmt.Errorf("offset %d outside [%d, %d]", m.Offset, sh.first, sh.last)
			}
			if sh.topic == controlTopicID {
				if _, err := decodeControl(m.Payload); err != nil {
					return err
				}
			}
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	good := sampleBatch()
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(make([]byte, batchHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := decodeAll(b)
		// Any input either decodes or fails; corrupt input must never panic.
		// Input the fuzzer could not make valid must not pass the checksum:
		// a valid result implies a valid CRC over the bytes.
		if err == nil {
			if _, herr := decodeBatchHeader(b); herr != nil {
				t.Fatalf("decoded but header invalid: %v", herr)
			}
		}
		// Recovery's reader agrees with the decoder on framing.
		r := newBatchReader(bytes.NewReader(b), 0, int64(len(b)))
		if nb, rerr := r.next(); rerr == nil && len(nb) > len(b) {
			t.Fatalf("reader returned %d bytes from %d", len(nb), len(b))
		}
	})
}

func FuzzDecodeCheckpoint(f *testing.F) {
	f.Add(sampleCheckpoint())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ck, err := decodeCheckpoint(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to an equal checkpoint (varints may be
		// non-minimal in the input, so compare values, not bytes).
		again, err := decodeCheckpoint(encodeCheckpoint(ck))
		if err != nil || !reflect.DeepEqual(again, ck) {
			t.Fatalf("checkpoint does not round-trip: %v", err)
		}
	})
}

func FuzzDecodeControl(f *testing.F) {
	f.Add(controlOp{op: opCreateTopic, topicID: 1, name: "t", config: TopicConfig{Partitions: 3}.withDefaults()}.encode(nil))
	f.Add(controlOp{op: opCommitOffset, group: "g", topicID: 1, offset: 9}.encode(nil))
	f.Add(controlOp{op: opDeleteTopic, topicID: 2}.encode(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeControl(b)
		if err != nil {
			return
		}
		again, err := decodeControl(c.encode(nil))
		if err != nil || again != c {
			t.Fatalf("control record does not round-trip: %+v vs %+v (%v)", again, c, err)
		}
	})
}

func TestSamplesDecode(t *testing.T) {
	if err := decodeAll(sampleBatch()); err != nil {
		t.Fatal(err)
	}
	if _, err := decodeCheckpoint(sampleCheckpoint()); err != nil {
		t.Fatal(err)
	}
	// Regenerate the committed seed corpus with FERRY_WRITE_CORPUS=1.
	if os.Getenv("FERRY_WRITE_CORPUS") == "" {
		return
	}
	for name, data := range map[string][]byte{"FuzzDecodeBatch/sample": sampleBatch(), "FuzzDecodeCheckpoint/sample": sampleCheckpoint()} {
		p := filepath.Join("testdata", "fuzz", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)), 0o644)
	}
}
