package admin

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ferrymq/ferry"
)

// Browse, get, search and tail read what was produced, through the
// Client, with binary payloads in base64.
func TestBrowseSearchTail(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	c := f.client(t, tokenOf("root"))
	var in []Message
	for i := range 5 {
		in = append(in, Message{Key: "b", Payload: fmt.Sprintf("m%d", i), Headers: []Header{{Key: "n", Value: fmt.Sprint(i % 2)}}})
	}
	bin := NewMessage(&ferry.Message{Key: []byte("b"), Payload: []byte{0xff, 0}})
	in = append(in, bin)
	out, err := c.Produce(ctx, "orders", in)
	if err != nil || len(out) != 6 {
		t.Fatalf("produce: %+v %v", out, err)
	}
	p := PartitionOf("b", 2)
	page, err := c.Messages(ctx, "orders", p, "earliest", 2)
	if err != nil || len(page.Messages) != 2 || page.Next != page.Messages[1].Offset+1 {
		t.Fatalf("page 1: %+v %v", page, err)
	}
	var all []Message
	for next := "earliest"; ; {
		pg, err := c.Messages(ctx, "orders", p, next, 2)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, pg.Messages...)
		if pg.Next == pg.End {
			break
		}
		next = fmt.Sprint(pg.Next)
	}
	if got := all[len(all)-1]; got.Encoding != EncodingBase64 || got.Payload != "/wA=" {
		t.Fatalf("binary payload: %+v", got)
	}
	if _, err := c.Messages(ctx, "orders", p, "999", 0); !errors.Is(err, ferry.ErrOffsetOutOfRange) {
		t.Fatalf("beyond the end: %v", err)
	}
	m, err := c.Message(ctx, "orders", p, out[2].Offset)
	if err != nil || m.Payload != "m2" {
		t.Fatalf("get: %+v %v", m, err)
	}
	key := "b"
	res, err := c.Search(ctx, "orders", Search{Key: &key, Header: "n=1"})
	if err != nil || len(res.Messages) != 2 || res.Messages[0].Payload != "m1" || res.Messages[1].Payload != "m3" || res.Truncated {
		t.Fatalf("search: %+v %v", res, err)
	}
	res, err = c.Search(ctx, "orders", Search{Header: "n", Scan: 3})
	if err != nil || !res.Truncated || res.Scanned != 3 {
		t.Fatalf("bounded search: %+v %v", res, err)
	}
	tctx, cancel := context.WithCancel(ctx)
	var tailed []string
	err = c.Tail(tctx, "orders", -1, "earliest", func(m Message) error {
		if dm, err := m.Decode(); err == nil && string(dm.Key) == "b" {
			tailed = append(tailed, m.Payload)
		}
		if len(tailed) == 6 {
			cancel()
		}
		return nil
	})
	if err != nil || len(tailed) != 6 || tailed[0] != "m0" || tailed[4] != "m4" {
		t.Fatalf("tail: %q %v", tailed, err)
	}
	if err := c.Tail(ctx, "nope", -1, "earliest", func(Message) error { return nil }); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("tail of a missing topic: %v", err)
	}
}
