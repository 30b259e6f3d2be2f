package broker

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/internal/memlog"
)

// FuzzRequest feeds one framed request to a connection: whatever the
// bytes, the server answers or closes that connection, never panics or
// hangs, and goes on serving.
func FuzzRequest(f *testing.F) {
	for _, req := range []kmsg.Request{
		kmsg.NewPtrApiVersionsRequest(), kmsg.NewPtrMetadataRequest(), kmsg.NewPtrProduceRequest(),
		kmsg.NewPtrFetchRequest(), kmsg.NewPtrJoinGroupRequest(), kmsg.NewPtrOffsetCommitRequest(),
		kmsg.NewPtrCreateTopicsRequest(), kmsg.NewPtrEndTxnRequest(), kmsg.NewPtrListOffsetsRequest(),
	} {
		for _, v := range []int16{0, 4, req.MaxVersion()} {
			req.SetVersion(v)
			f.Add(kmsg.NewRequestFormatter(kmsg.FormatterClientID("fuzz")).AppendRequest(nil, req, 1))
		}
	}
	l := memlog.Open(f)
	s, err := New(l)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, frame []byte) {
		client, server := net.Pipe()
		c := newConn(s, server)
		done := make(chan struct{})
		go func() { c.serve(); close(done) }()
		go io.Copy(io.Discard, client)
		client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		client.Write(frame)
		client.Close()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the connection did not end after its client closed")
		}
	})
}
