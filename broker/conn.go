package broker

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/semaphore"

	"github.com/ferrymq/ferry/broker/groups"
)

// conn is one client connection: a reader that parses and dispatches
// requests, and a writer that answers them in the order they were read.
type conn struct {
	s          *Server
	nc         net.Conn
	br         *bufio.Reader
	remote     string
	remoteHost string
	// pending holds the requests read and not yet answered, in order; its
	// capacity is the connection's in-flight bound.
	pending  chan *pending
	stopping atomic.Bool
	// inflight holds the bytes of the requests read and not answered.
	inflight *semaphore.Weighted

	// Authentication, set by the SASL requests (run in the reader, so
	// every later request sees them).
	nextSize   int64 // in-flight bytes of the request being dispatched
	sasl       *saslState
	principal  string // "User:<name>" once authenticated
	closeAfter bool   // authentication failed: close after answering
}

// pending is one request's answer to come.
type pending struct {
	key, version int16
	corr         int32
	flexible     bool
	read         time.Time
	size         int64 // bytes held in the connection's in-flight bound
	done         chan struct{}
	resp         kmsg.Response // nil: no answer (a produce with acks 0)
}

// request is what a handler gets: the parsed request and its context.
type request struct {
	ctx      context.Context
	c        *conn
	key      int16
	version  int16
	clientID string
	body     kmsg.Request
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{s: s, nc: nc, br: bufio.NewReaderSize(nc, 64<<10), remote: nc.RemoteAddr().String(), remoteHost: hostOf(nc.RemoteAddr()), pending: make(chan *pending, s.cfg.maxInFlight),
		inflight: semaphore.NewWeighted(int64(s.cfg.maxInFlightB))}
}

// shutdown stops reading: what was read is still answered, for
// closeGrace at most (a client that does not read its answers does not
// hold the server's Close).
func (c *conn) shutdown() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
	time.AfterFunc(closeGrace, func() { c.nc.Close() })
}

func (c *conn) serve() {
	if o := c.s.cfg.observer; o != nil {
		o.Connection(1)
		defer o.Connection(-1)
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	err := c.readLoop()
	close(c.pending)
	<-writerDone
	c.nc.Close()
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), c.stopping.Load():
	default:
		c.s.cfg.logger.Warn("connection closed", "remote", c.remote, "reason", err.Error())
	}
}

// errClose is a request the connection cannot go on after (Kafka closes
// the connection on them too: the client reconnects and renegotiates).
type errClose struct{ why string }

func (e errClose) Error() string { return e.why }

// Connection timeouts: a connection with no request for idleTimeout is
// closed (Kafka's connections.max.idle.ms), as is one that sends a
// request's bytes slower than requestTimeout or does not read an answer
// within writeTimeout; a closing server waits closeGrace for answers to
// go out.
const (
	idleTimeout    = 10 * time.Minute
	requestTimeout = 30 * time.Second
	writeTimeout   = time.Minute
	closeGrace     = 5 * time.Second
)

// maxOtherRequestBytes bounds every request but Produce: decoding one
// allocates up to some 160 times its size (an array's length is checked
// only against the bytes left), so only Produce, which carries records,
// may be large.
const maxOtherRequestBytes = 1 << 20

// maxUnauthenticatedBytes bounds a request before the connection
// authenticated (Kafka's sasl.server.max.receive.size).
const maxUnauthenticatedBytes = 512 << 10

// deadline sets the read deadline, unless the connection is stopping
// (shutdown's deadline must stay).
func (c *conn) deadline(d time.Duration) bool {
	c.nc.SetReadDeadline(time.Now().Add(d))
	if c.stopping.Load() {
		c.nc.SetReadDeadline(time.Now())
		return false
	}
	return true
}

func (c *conn) readLoop() error {
	var head [6]byte // the size and the API key
	for {
		if !c.deadline(idleTimeout) {
			return nil
		}
		if _, err := io.ReadFull(c.br, head[:4]); err != nil {
			return err
		}
		if !c.deadline(requestTimeout) {
			return nil
		}
		n := int32(binary.BigEndian.Uint32(head[:4]))
		if c.s.cfg.security != nil && c.principal == "" && n > maxUnauthenticatedBytes {
			return errClose{fmt.Sprintf("request of %d bytes before authentication: at most %d allowed", n, maxUnauthenticatedBytes)}
		}
		if n < 8 || int(n) > c.s.cfg.maxRequestBytes {
			return errClose{fmt.Sprintf("request of %d bytes: allowed 8 to %d (max request bytes)", n, c.s.cfg.maxRequestBytes)}
		}
		if _, err := io.ReadFull(c.br, head[4:6]); err != nil {
			return fmt.Errorf("request truncated: %w", err)
		}
		if key := int16(binary.BigEndian.Uint16(head[4:6])); key != 0 && n > maxOtherRequestBytes {
			return errClose{fmt.Sprintf("%s request of %d bytes: at most %d allowed (only Produce may be larger)", kmsg.NameForKey(key), n, maxOtherRequestBytes)}
		}
		// Wait for room in the in-flight bound before reading (and
		// holding) the request: TCP pushes back on the client meanwhile.
		size := min(int64(n), int64(c.s.cfg.maxInFlightB))
		if err := c.inflight.Acquire(c.s.ctx, size); err != nil {
			return err
		}
		// Read as the bytes come (a client announcing 100 MiB and
		// sending 4 bytes holds 64 KiB, not 100 MiB).
		buf := make([]byte, 2, min(int(n), 64<<10))
		copy(buf, head[4:6])
		for len(buf) < int(n) {
			if len(buf) == cap(buf) {
				buf = slices.Grow(buf, min(int(n)-len(buf), len(buf)))
			}
			m, err := c.br.Read(buf[len(buf):min(cap(buf), int(n))])
			buf = buf[:len(buf)+m]
			if err != nil && len(buf) < int(n) {
				c.inflight.Release(size)
				return fmt.Errorf("request truncated: %w", err)
			}
		}
		c.nextSize = size
		if o := c.s.cfg.observer; o != nil {
			o.Bytes(4+len(buf), 0)
		}
		if err := c.dispatch(buf); err != nil {
			return err
		}
	}
}

// dispatch parses one request and queues its answer.
func (c *conn) dispatch(buf []byte) error {
	r := kbin.Reader{Src: buf}
	key, version, corr := r.Int16(), r.Int16(), r.Int32()
	clientID := r.NullableString()
	if r.Complete() != nil {
		return errClose{"request header truncated"}
	}
	api, ok := apis[key]
	if !ok {
		return errClose{fmt.Sprintf("request with API key %d: not served (see the ApiVersions answer)", key)}
	}
	p := &pending{key: key, version: version, corr: corr, done: make(chan struct{}), read: time.Now(), size: c.nextSize}
	c.nextSize = 0
	if version < api.min || version > api.max {
		if key != apiVersionsKey {
			return errClose{fmt.Sprintf("%s v%d: served versions %d to %d", kmsg.NameForKey(key), version, api.min, api.max)}
		}
		// A client that asks for a newer ApiVersions than served gets
		// the v0 answer with the versions served, and asks again.
		p.version = 0
		p.resp = unsupportedAPIVersions()
		close(p.done)
		c.pending <- p
		return nil
	}
	if c.s.cfg.security != nil && c.principal == "" && key != apiVersionsKey && key != 17 && key != 36 {
		return errClose{fmt.Sprintf("%s before authentication: SaslHandshake and SaslAuthenticate first", kmsg.NameForKey(key))}
	}
	req := kmsg.RequestForKey(key)
	req.SetVersion(version)
	p.flexible = req.IsFlexible()
	if p.flexible {
		skipTags(&r)
	}
	if r.Complete() != nil {
		return errClose{fmt.Sprintf("%s v%d: header truncated", kmsg.NameForKey(key), version)}
	}
	if err := req.ReadFrom(r.Src); err != nil {
		return errClose{fmt.Sprintf("%s v%d from client %q: undecodable: %v", kmsg.NameForKey(key), version, deref(clientID), err)}
	}
	ctx := groups.ClientContext(c.s.ctx, deref(clientID), c.remoteHost)
	rq := &request{ctx: ctx, c: c, key: key, version: version, clientID: deref(clientID), body: req}
	c.pending <- p // blocks while maxInFlight requests wait: backpressure
	if api.inline {
		// Run in the reader: its effects must be ordered with the
		// connection's next requests (a produce's appends are queued
		// now; its answer may come later).
		api.handle(rq, func(resp kmsg.Response) { c.answer(p, resp) })
		if c.closeAfter {
			return errClose{"authentication failed"}
		}
		return nil
	}
	go api.handle(rq, func(resp kmsg.Response) { c.answer(p, resp) })
	return nil
}

func (c *conn) answer(p *pending, resp kmsg.Response) {
	if resp != nil {
		resp.SetVersion(p.version)
	}
	p.resp = resp
	if o := c.s.cfg.observer; o != nil {
		o.Request(kmsg.NameForKey(p.key), time.Since(p.read), failed(resp))
	}
	close(p.done)
}

func (c *conn) writeLoop() {
	bw := bufio.NewWriterSize(c.nc, 64<<10)
	var out []byte
	broken := false
	for p := range c.pending {
		<-p.done
		c.inflight.Release(p.size)
		if p.resp == nil || broken {
			continue
		}
		out = append(out[:0], 0, 0, 0, 0)
		out = kbin.AppendInt32(out, p.corr)
		// Flexible responses carry a tag buffer in their header, except
		// ApiVersions', whose header is always v0 (a client must read
		// it before it knows which versions the broker serves).
		if p.flexible && p.key != apiVersionsKey {
			out = append(out, 0)
		}
		out = p.resp.AppendTo(out)
		binary.BigEndian.PutUint32(out, uint32(len(out)-4))
		c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if o := c.s.cfg.observer; o != nil {
			o.Bytes(0, len(out))
		}
		if _, err := bw.Write(out); err != nil {
			broken = true
			c.nc.Close() // the reader stops too
			continue
		}
		if len(c.pending) == 0 {
			if err := bw.Flush(); err != nil {
				broken = true
				c.nc.Close()
			}
		}
	}
	if !broken {
		bw.Flush()
	}
}

// skipTags skips a tag buffer, stopping at the first byte missing (a
// count of billions in a short request ends at once).
func skipTags(r *kbin.Reader) {
	for n := r.Uvarint(); n > 0 && r.Ok(); n-- {
		r.Uvarint()
		r.Span(int(r.Uvarint()))
	}
}

func hostOf(a net.Addr) string {
	if h, _, err := net.SplitHostPort(a.String()); err == nil {
		return "/" + h
	}
	return a.String()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
